"""Each rule's reading of a namespace, in the words the explain command prints."""

from __future__ import annotations

import re
from types import MappingProxyType

from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import (
    HncTreeRule,
    LabelValueRule,
    NamePatternRule,
    StaticRule,
    TenancyRule,
)
from tenancy_common.tenancy_explain import explain_rules

RULE = TenancyRule((
    LabelValueRule("keda-tenancy.io/tenant"),
    HncTreeRule(roots=frozenset({"beta"})),
    NamePatternRule(re.compile(r"(?P<tenant>[a-z0-9-]+?)--.+")),
    StaticRule.from_lists({"gamma": ["legacy"]}),
))  # fmt: skip


def reasons(name: str, **labels: str) -> list[tuple[str, tuple[str, ...], str]]:
    namespace = Namespace(NamespaceName(name), MappingProxyType(labels))
    return [(f.rule, f.proposes, f.reason) for f in explain_rules(RULE, namespace, {})]


def test_a_namespace_no_rule_claims_says_what_each_rule_looked_for() -> None:
    assert reasons("loose", **{"other.tree.hnc.x-k8s.io/depth": "1"}) == [
        ("label keda-tenancy.io/tenant", (), "no label keda-tenancy.io/tenant"),
        ("HNC tree", (), "in HNC trees of other, none of them a tenant root"),
        ("name pattern", (), "name does not match pattern '(?P<tenant>[a-z0-9-]+?)--.+'"),
        ("tenancy file", (), "not listed in the tenancy file"),
    ]


def test_each_claim_is_worded_as_what_it_is_owned_by() -> None:
    found = reasons(
        "alpha--dev", **{"keda-tenancy.io/tenant": "alpha", "beta.tree.hnc.x-k8s.io/depth": "1"}
    )
    assert [(proposes, reason) for _, proposes, reason in found] == [
        (("alpha",), "label keda-tenancy.io/tenant=alpha"),
        (("beta",), "the HNC tree of root beta"),
        (("alpha",), "the name pattern '(?P<tenant>[a-z0-9-]+?)--.+'"),
        ((), "not listed in the tenancy file"),
    ]
    assert reasons("legacy")[3] == ("tenancy file", ("gamma",), "the tenancy file's list")
