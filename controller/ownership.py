"""Which namespaces the tenancy rule gives each tenant, kept current from the namespace watch.

The one Namespace watch fills a `TrackedNamespaces` cache (tenancy_common's NamespaceCache,
which also notes what changed); `OwnershipIndex.refresh` decides the changed namespaces again
with the same `TenancyRule.decide` the router and the reloader use, and reports the tenants
whose namespaces changed (a namespace that moves reports both its old and its new owner).
Rules that read only a namespace's own labels and name are re-decided for the changed
namespaces alone; a rule that reads other namespaces (HNC roots marked by a label), and every
relist, re-decides them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache
from tenancy_common.tenancy import HncTreeRule, TenancyRule, Verdict


class TrackedNamespaces(NamespaceCache):
    """A NamespaceCache that remembers which names changed since `take_changes`."""

    def __init__(self) -> None:
        super().__init__()
        self._changed: set[NamespaceName] = set()
        self._relisted = False

    def replace(self, namespaces: Iterable[Namespace]) -> bool:
        self._relisted = True
        return super().replace(namespaces)

    def apply(self, event_type: str, namespace: Namespace) -> bool:
        changed = super().apply(event_type, namespace)
        if changed:
            self._changed.add(namespace.name)
        return changed

    def take_changes(self) -> tuple[bool, set[NamespaceName]]:
        """(relisted since the last call, names changed since)."""
        relisted, changed = self._relisted, self._changed
        self._relisted, self._changed = False, set()
        return relisted, changed


def reads_other_namespaces(rule: TenancyRule) -> bool:
    return any(isinstance(r, HncTreeRule) and r.root_label_key is not None for r in rule.rules)


class OwnershipIndex:
    def __init__(self, rule: TenancyRule, cache: TrackedNamespaces) -> None:
        self._rule = rule
        self._cache = cache
        self._full = reads_other_namespaces(rule)
        self._owner: dict[NamespaceName, tuple[TenantName, bool]] = {}
        """Namespace -> (its tenant, whether it is Terminating)."""
        self._by_tenant: dict[TenantName, set[NamespaceName]] = {}

    def owner(self, namespace: NamespaceName) -> TenantName | None:
        owned = self._owner.get(namespace)
        return owned[0] if owned is not None else None

    def namespaces_of(self, tenant: TenantName) -> tuple[set[NamespaceName], set[NamespaceName]]:
        """(active, terminating) namespaces the rule gives `tenant` now."""
        active: set[NamespaceName] = set()
        terminating: set[NamespaceName] = set()
        for name in self._by_tenant.get(tenant) or ():
            (terminating if self._owner[name][1] else active).add(name)
        return active, terminating

    def refresh(self) -> set[TenantName]:
        """Decide what changed again; the tenants whose namespaces (or their state) changed."""
        relisted, changed = self._cache.take_changes()
        names: Iterable[NamespaceName]
        if relisted or self._full:
            names = set(self._owner) | set(self._cache.snapshot())
        else:
            names = changed
        snapshot = self._cache.snapshot()
        touched: set[TenantName] = set()
        for name in names:
            namespace = snapshot.get(name)
            new: tuple[TenantName, bool] | None = None
            if namespace is not None:
                decision = self._rule.decide(namespace, snapshot)
                if decision.verdict is Verdict.OWNED and decision.tenant is not None:
                    new = (decision.tenant, namespace.terminating)
            old = self._owner.get(name)
            if new == old:
                continue
            if old is not None:
                touched.add(old[0])
                self._by_tenant[old[0]].discard(name)
                if not self._by_tenant[old[0]]:
                    del self._by_tenant[old[0]]
            if new is None:
                self._owner.pop(name, None)
            else:
                touched.add(new[0])
                self._owner[name] = new
                self._by_tenant.setdefault(new[0], set()).add(name)
        return touched
