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

    def never_yields(self, tenant: str) -> str | None:
        """Why this rule can never propose `tenant` for any namespace, or None if it can."""
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

    def never_yields(self, tenant: str) -> str | None:
        return None


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
        # Safe only when the candidates read nothing but the namespace's own labels: with a
        # root label they also read the roots, and an outer root (a root above the tenant's)
        # carries no <tenant> depth label, so a narrowed watch would never see it.
        if self.root_label_key is not None:
            return None
        return f"{tenant}{HNC_DEPTH_SUFFIX}"

    def never_yields(self, tenant: str) -> str | None:
        if tenant in self.roots or self.root_label_key is not None:
            return None
        return f"it is not one of the HNC roots {sorted(self.roots)}"


_GROUP = "(?P<tenant>"
_START, _END = "\x01", "\x02"
"""Markers no namespace name contains (names are DNS-1123 labels)."""
_PARSES_MEMO_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class NamePatternRule:
    """A regular expression over the namespace name with a named group `tenant`.

    A pattern can often split one name in several ways (`(?P<tenant>[a-z0-9-]+?)--.+` reads
    `a--b--prod` as tenant `a` or `a--b`); re returns just one of them, chosen by the
    pattern's greediness. Every tenant the pattern can read off the name is a candidate, so
    an ambiguous name is a conflict, owned by nobody, whatever the greediness says.
    """

    pattern: re.Pattern[str]
    _group: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _marked: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _starts: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _ends: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _memo: dict[str, frozenset[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        source, flags = self.pattern.pattern, self.pattern.flags
        if "tenant" not in self.pattern.groupindex:
            raise ValueError(f"name pattern {source!r} has no (?P<tenant>...) group")
        open_at, close_at = _tenant_group_span(source)
        inner = source[open_at + len(_GROUP) : close_at]
        before, after = source[:open_at], source[close_at + 1 :]
        group = f"{_GROUP}{inner})"
        # Each parse puts the tenant between two markers: a pattern with the markers around
        # the group matches a marked name exactly when that split is one of its parses.
        object.__setattr__(self, "_group", re.compile(inner, flags))
        object.__setattr__(
            self, "_marked", re.compile(f"{before}{_START}{group}{_END}{after}", flags)
        )
        object.__setattr__(self, "_starts", re.compile(f"{before}{_START}{group}{after}", flags))
        object.__setattr__(self, "_ends", re.compile(f"{before}{group}{_END}{after}", flags))

    def candidates(self, namespace: Namespace, others: NamespaceLookup) -> frozenset[str]:
        return self.parses(namespace.name)

    def parses(self, name: str) -> frozenset[str]:
        """Every tenant the pattern can read off `name` (memoised: names never change)."""
        found = self._memo.get(name)
        if found is None:
            found = self._all_parses(name)
            if len(self._memo) >= _PARSES_MEMO_LIMIT:
                self._memo.clear()
            self._memo[name] = found
        return found

    def _all_parses(self, name: str) -> frozenset[str]:
        if self.pattern.fullmatch(name) is None:
            return frozenset()  # most names: one match, as before
        cuts = range(len(name) + 1)
        starts = [i for i in cuts if self._starts.fullmatch(f"{name[:i]}{_START}{name[i:]}")]
        ends = [j for j in cuts if self._ends.fullmatch(f"{name[:j]}{_END}{name[j:]}")]
        found = set()
        for i in starts:
            for j in ends:
                if j < i:
                    continue
                marked = f"{name[:i]}{_START}{name[i:j]}{_END}{name[j:]}"
                match = self._marked.fullmatch(marked)
                if match is not None and match.span("tenant") == (i + 1, j + 1) and name[i:j]:
                    found.add(name[i:j])
        return frozenset(found)

    def never_yields(self, tenant: str) -> str | None:
        if self._group.fullmatch(tenant) is None:
            return (
                f"it does not round-trip through the name pattern {self.pattern.pattern!r} "
                "(its (?P<tenant>...) group never matches that name)"
            )
        return None

    def label_selector(self, tenant: TenantName) -> str | None:
        return None


def _tenant_group_span(source: str) -> tuple[int, int]:
    """Where `(?P<tenant>` opens and its `)` closes in a pattern's source.

    Refuses the assertions the marker check cannot evaluate faithfully: lookarounds and
    word boundaries would see the markers next to the tenant instead of the name's letters.
    """
    open_at = close_at = -1
    depth, in_class, i = 0, False, 0
    while i < len(source):
        char = source[i]
        if char == "\\":
            if not in_class and source[i + 1 : i + 2] in ("b", "B"):
                raise ValueError(f"name pattern {source!r}: \\b and \\B are not supported")
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class, i = True, i + 1
            i += source[i : i + 1] == "^"
            i += source[i : i + 1] == "]"  # a ']' first in a class is a member, not its end
            continue
        elif char == "(":
            if source.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                raise ValueError(f"name pattern {source!r}: lookarounds are not supported")
            if source.startswith(_GROUP, i):
                open_at, depth = i, 0
            depth += 1
        elif char == ")":
            depth -= 1
            if open_at >= 0 and close_at < 0 and depth == 0:
                close_at = i
        i += 1
    if open_at < 0 or close_at < 0:
        raise ValueError(f"name pattern {source!r} has no (?P<tenant>...) group")
    return open_at, close_at


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

    def never_yields(self, tenant: str) -> str | None:
        if any(tenant in tenants for tenants in self.owners.values()):
            return None
        return "the tenancy file lists no namespace for it"


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

    def never_owns(self, tenant: str) -> str | None:
        """Why a configured tenant could never own a namespace under this rule, or None when
        its name round-trips through some rule. Checked at start: a typo, or a name that a
        pattern can never read back, fails loudly instead of owning nothing in silence."""
        if not is_dns1123_label(tenant):
            return f"tenant {tenant!r} is not a DNS-1123 label"
        reasons = [rule.never_yields(tenant) for rule in self.rules]
        if all(reasons):
            return f"no tenancy rule can yield tenant {tenant!r}: " + "; ".join(
                reason for reason in reasons if reason
            )
        return None

    def label_selector(self, tenant: TenantName) -> str | None:
        """Narrow a single tenant's namespace watch server-side where one rule allows it."""
        if len(self.rules) != 1:
            return None  # label selectors cannot express "A or B"; filter client-side
        return self.rules[0].label_selector(tenant)
