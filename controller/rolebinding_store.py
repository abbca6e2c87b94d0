"""The one RoleBinding watch's store: every tenant's grant and every binding of ours.

Filled by a single cluster-wide list+watch with the label selector `keda-tenancy.io/platform-
controller` (tenancy_common.namespace_watch.watch_objects), so it costs one watch whatever the
number of tenants. Only slim values are kept. A grant counts only under its own name in a
namespace the tenant namespace pattern maps to a tenant; a binding only under the name its
tenant label implies. Each change calls `on_change(tenants, namespaces)`: the tenants whose
objects changed, and the namespaces whose bindings did (their owners may be waiting for them).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller.objects import (
    GRANT_NAME,
    Binding,
    tenant_of_namespace,
)
from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.platform_objects import BINDING_PREFIX, CONTROLLER_LABEL

Key = tuple[str, str]
"""(namespace, name)"""


class RoleBindingStore:
    def __init__(
        self,
        tenant_namespace_pattern: re.Pattern[str],
        on_change: Callable[[set[TenantName], set[NamespaceName]], None] = lambda t, n: None,
    ) -> None:
        self._pattern = tenant_namespace_pattern
        self.on_change = on_change
        self._grants: dict[TenantName, dict[str, Any]] = {}
        self._bindings: dict[TenantName, dict[NamespaceName, Binding]] = {}
        self._by_namespace: dict[NamespaceName, set[TenantName]] = {}
        self._keys: dict[Key, tuple[str, TenantName]] = {}
        """Every object held: (namespace, name) -> ("grant" | "binding", tenant)."""
        self.synced = asyncio.Event()

    # -- reads -------------------------------------------------------------------------

    def grant(self, tenant: TenantName) -> Mapping[str, Any] | None:
        return self._grants.get(tenant)

    def tenants(self) -> set[TenantName]:
        """Tenants with a grant or a binding (a binding without a grant is to be removed)."""
        return set(self._grants) | set(self._bindings)

    def granted(self) -> int:
        return len(self._grants)

    def bindings_of(self, tenant: TenantName) -> dict[NamespaceName, Binding]:
        return dict(self._bindings.get(tenant) or {})

    def holders(self, namespace: NamespaceName) -> set[TenantName]:
        """Tenants with a binding of ours in `namespace` (one being deleted still grants)."""
        return set(self._by_namespace.get(namespace) or ())

    def binding_count(self) -> int:
        return len(self._keys) - len(self._grants)

    def __len__(self) -> int:
        return len(self._keys)

    # -- the WatchedStore protocol -----------------------------------------------------

    def confirm_current(self) -> None:
        pass

    def replace(self, items: Iterable[Any]) -> bool:
        touched_tenants: set[TenantName] = set(self.tenants())
        touched_ns: set[NamespaceName] = set(self._by_namespace)
        self._grants.clear()
        self._bindings.clear()
        self._by_namespace.clear()
        self._keys.clear()
        for item in items:
            self._put(item, touched_tenants, touched_ns)
        self.synced.set()
        self.on_change(touched_tenants, touched_ns)
        return True

    def apply(self, event_type: str, item: Any) -> bool:
        tenants: set[TenantName] = set()
        namespaces: set[NamespaceName] = set()
        meta = item.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type != "DELETED" and self._unchanged(key, item):
            return False  # our own write, seen again on the watch
        self._drop(key, tenants, namespaces)
        if event_type != "DELETED":
            self._put(item, tenants, namespaces)
        if tenants or namespaces:
            self.on_change(tenants, namespaces)
        return bool(tenants or namespaces)

    # -- our own writes, seen before the watch brings them -----------------------------

    def created(self, item: Mapping[str, Any]) -> None:
        self.apply("ADDED", item)

    def removed(self, namespace: str, name: str) -> None:
        self.apply("DELETED", {"metadata": {"namespace": namespace, "name": name}})

    # -- internals ---------------------------------------------------------------------

    def _unchanged(self, key: Key, item: Mapping[str, Any]) -> bool:
        held = self._keys.get(key)
        if held is None:
            return False
        kind, tenant = held
        meta = item.get("metadata") or {}
        if kind == "grant":
            return self._grants.get(tenant) == _slim_grant(meta)
        old = (self._bindings.get(tenant) or {}).get(NamespaceName(key[0]))
        return old is not None and old == Binding.from_object(item)

    def _put(
        self, item: Mapping[str, Any], tenants: set[TenantName], namespaces: set[NamespaceName]
    ) -> None:
        meta = item.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        role = (meta.get("labels") or {}).get(CONTROLLER_LABEL)
        if role == "grant" and name == GRANT_NAME:
            tenant = tenant_of_namespace(self._pattern, namespace)
            if tenant is None:
                return
            self._grants[tenant] = _slim_grant(meta)
            self._keys[(namespace, name)] = ("grant", tenant)
            tenants.add(tenant)
        elif role == "binding":
            binding = Binding.from_object(item)
            if not is_dns1123_label(binding.tenant) or name != BINDING_PREFIX + binding.tenant:
                return
            self._bindings.setdefault(binding.tenant, {})[binding.namespace] = binding
            self._by_namespace.setdefault(binding.namespace, set()).add(binding.tenant)
            self._keys[(namespace, name)] = ("binding", binding.tenant)
            tenants.add(binding.tenant)
            namespaces.add(binding.namespace)

    def _drop(self, key: Key, tenants: set[TenantName], namespaces: set[NamespaceName]) -> None:
        held = self._keys.pop(key, None)
        if held is None:
            return
        kind, tenant = held
        tenants.add(tenant)
        if kind == "grant":
            self._grants.pop(tenant, None)
            return
        namespace = NamespaceName(key[0])
        namespaces.add(namespace)
        of_tenant = self._bindings.get(tenant) or {}
        of_tenant.pop(namespace, None)
        if not of_tenant:
            self._bindings.pop(tenant, None)
        holders = self._by_namespace.get(namespace) or set()
        holders.discard(tenant)
        if not holders:
            self._by_namespace.pop(namespace, None)


def _slim_grant(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "uid": meta.get("uid", ""),
            "annotations": dict(meta.get("annotations") or {}),
        }
    }
