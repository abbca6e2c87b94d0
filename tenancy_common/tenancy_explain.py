"""Why a tenancy rule gives a namespace to a tenant, or to none: one line per rule.

For people (the router's explain command), never for a decision: `TenancyRule.decide` stays
the one place ownership is decided; this only reads the same rules back in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import (
    HNC_DEPTH_SUFFIX,
    HncTreeRule,
    LabelValueRule,
    NamePatternRule,
    NamespaceLookup,
    Rule,
    StaticRule,
    TenancyRule,
)


@dataclass(frozen=True, slots=True)
class RuleFinding:
    rule: str
    """What the rule is, e.g. `label keda-tenancy.io/tenant`."""
    proposes: tuple[str, ...]
    """The tenants it proposes for the namespace (sorted; empty: no opinion)."""
    reason: str
    """Why, in words: `label keda-tenancy.io/tenant=alpha`, `no label keda-tenancy.io/tenant`."""


def explain_rules(
    rule: TenancyRule, namespace: Namespace, others: NamespaceLookup
) -> list[RuleFinding]:
    return [_finding(one, namespace, others) for one in rule.rules]


def _finding(rule: Rule, namespace: Namespace, others: NamespaceLookup) -> RuleFinding:
    proposes = tuple(sorted(rule.candidates(namespace, others)))
    if isinstance(rule, LabelValueRule):
        value = namespace.labels.get(rule.key)
        reason = f"label {rule.key}={value}" if value else f"no label {rule.key}"
        return RuleFinding(f"label {rule.key}", proposes, reason)
    if isinstance(rule, HncTreeRule):
        return RuleFinding("HNC tree", proposes, _hnc_reason(rule, namespace, proposes))
    if isinstance(rule, NamePatternRule):
        source = rule.pattern.pattern
        if proposes:
            reason = f"the name pattern {source!r}"
        else:
            reason = f"name does not match pattern {source!r}"
        return RuleFinding("name pattern", proposes, reason)
    if isinstance(rule, StaticRule):
        reason = "the tenancy file's list" if proposes else "not listed in the tenancy file"
        return RuleFinding("tenancy file", proposes, reason)
    # A rule kind added later: still say what it proposed.
    name = type(rule).__name__
    reason = f"proposes {', '.join(proposes)}" if proposes else "proposes no tenant"
    return RuleFinding(name, proposes, reason)


def _hnc_reason(rule: HncTreeRule, namespace: Namespace, proposes: tuple[str, ...]) -> str:
    if proposes:
        return f"the HNC tree of root {', '.join(proposes)}"
    ancestors = sorted(
        key.removesuffix(HNC_DEPTH_SUFFIX)
        for key in namespace.labels
        if key.endswith(HNC_DEPTH_SUFFIX)
    )
    if not ancestors:
        return "no HNC tree label (*.tree.hnc.x-k8s.io/depth)"
    return f"in HNC trees of {', '.join(ancestors)}, none of them a tenant root"
