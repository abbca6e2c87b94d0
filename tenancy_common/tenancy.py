"""The tenancy rule: which tenant owns a namespace, shared by the router and the reloader.

A rule is pure: it reads the Namespace (and, for HNC, the other namespaces in the
cache) and proposes candidate tenants. Several rules may be combined; when the
candidates disagree the namespace belongs to nobody (fail closed), because routing
one tenant's metrics to another tenant's KEDA is the one outcome we must never have.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.namespace import Namespace

HNC_DEPTH_SUFFIX = ".tree.hnc.x-k8s.io/depth"

NamespaceLookup = Mapping[NamespaceName, Namespace]


class Rule(Protocol):
    """One way of reading a tenant off a namespace."""

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        """Tenant names this rule proposes (unvalidated); empty when it has no opinion."""
        ...

    def label_selector(self, tenant: TenantName) -> str | None:
        """A server-side selector that contains every namespace of `tenant`, or None for all."""
        ...


@dataclass(frozen=True, slots=True)
class LabelValueRule:
    """The value of one label is the tenant (Capsule's `capsule.clastix.io/tenant`, our own)."""

    key: str

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        value = namespace.labels.get(self.key)
        return frozenset((value,)) if value else frozenset()

    def label_selector(self, tenant: TenantName) -> str | None:
        return f"{self.key}={tenant}"


@dataclass(frozen=True, slots=True)
class HncTreeRule:
    """HNC trees: the tenant is the root namespace whose depth label the namespace carries.

    HNC labels every namespace with `<ancestor>.tree.hnc.x-k8s.io/depth` for each ancestor
    and itself, and its webhook keeps users from editing those labels. Roots are either
    listed or marked by a label on the root namespace (`key` or `key=value`).
    """

    roots: frozenset[str] = frozenset()
    root_label_key: str | None = None
    root_label_value: str | None = None

    def _is_root(self, name: str, others: NamespaceLookup) -> bool:
        if name in self.roots:
            return True
        if self.root_label_key is None:
            return False
        root = others.get(NamespaceName(name))
        if root is None:
            return False
        value = root.labels.get(self.root_label_key)
        if value is None:
            return False
        return self.root_label_value is None or value == self.root_label_value

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        ancestors = (
            key.removesuffix(HNC_DEPTH_SUFFIX)
            for key in namespace.labels
            if key.endswith(HNC_DEPTH_SUFFIX)
        )
        return frozenset(name for name in ancestors if self._is_root(name, others))

    def label_selector(self, tenant: TenantName) -> str | None:
        return f"{tenant}{HNC_DEPTH_SUFFIX}"


@dataclass(frozen=True, slots=True)
class NamePatternRule:
    """A regular expression over the namespace name with a named group `tenant`."""

    pattern: re.Pattern[str]

    def __post_init__(self) -> None:
        if "tenant" not in self.pattern.groupindex:
            raise ValueError(f"name pattern {self.pattern.pattern!r} has no (?P<tenant>...) group")

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        match = self.pattern.fullmatch(namespace.name)
        tenant = match.group("tenant") if match else None
        return frozenset((tenant,)) if tenant else frozenset()

    def label_selector(self, tenant: TenantName) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class StaticRule:
    """Namespaces listed per tenant in a file; needs no cluster."""

    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, namespaces_by_tenant: Mapping[TenantName, Iterable[str]]) -> StaticRule:
        owners: dict[str, set[str]] = {}
        for tenant, names in namespaces_by_tenant.items():
            for name in names:
                owners.setdefault(name, set()).add(tenant)
        return cls({name: frozenset(tenants) for name, tenants in owners.items()})

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        return self.owners.get(namespace.name, frozenset())

    def label_selector(self, tenant: TenantName) -> str | None:
        return None


class Verdict(enum.Enum):
    OWNED = "owned"
    UNMAPPED = "unmapped"
    CONFLICT = "conflict"
    INVALID_TENANT = "invalid_tenant"


@dataclass(frozen=True, slots=True)
class Decision:
    """Who owns a namespace, and why nobody does when `tenant` is None."""

    verdict: Verdict
    tenant: TenantName | None = None
    candidates: frozenset[str] = frozenset()


_UNMAPPED = Decision(Verdict.UNMAPPED)


@dataclass(frozen=True, slots=True)
class TenancyRule:
    """All configured rules together; the single place a namespace's owner is decided."""

    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("no tenancy rule configured")

    @property
    def needs_cluster(self) -> bool:
        """False when only a static file decides, so no namespace watch is needed."""
        return not all(isinstance(rule, StaticRule) for rule in self.rules)

    def decide(self, namespace: Namespace, others: NamespaceLookup) -> Decision:
        candidates: frozenset[str] = frozenset()
        for rule in self.rules:
            candidates |= rule.candidates(namespace, others)
        if not candidates:
            return _UNMAPPED
        if len(candidates) > 1:
            return Decision(Verdict.CONFLICT, candidates=candidates)
        (tenant,) = candidates
        # The tenant name is spliced into upstream URLs: anything but a DNS label is refused.
        if not is_dns1123_label(tenant):
            return Decision(Verdict.INVALID_TENANT, candidates=candidates)
        return Decision(Verdict.OWNED, TenantName(tenant), candidates)

    def label_selector(self, tenant: TenantName) -> str | None:
        """Narrow a single tenant's namespace watch server-side where one rule allows it."""
        if len(self.rules) != 1:
            return None  # label selectors cannot express "A or B"; filter client-side
        return self.rules[0].label_selector(tenant)
