"""The namespace cache both binaries decide from, and its metrics.

Apart from `namespace_watch`, which fills it from the API server, so that a process
without a cluster source need not import the Kubernetes client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge

from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "keda_tenancy_namespace_watch_"
        self.reconnects = Counter(
            prefix + "reconnects",
            "Watch streams re-opened after an error, timeout or silence.",
            registry=registry,
        )
        self.relists = Counter(
            prefix + "relists", "Full LISTs (start and 410 Gone).", registry=registry
        )
        self.namespaces = Gauge(
            prefix + "namespaces", "Namespaces in the cache.", registry=registry
        )


class NamespaceCache:
    """Namespaces by name; `synced` is set once the first complete LIST is in."""

    def __init__(self) -> None:
        self._items: dict[NamespaceName, Namespace] = {}
        self._view = MappingProxyType(self._items)
        self.synced = asyncio.Event()

    def snapshot(self) -> Mapping[NamespaceName, Namespace]:
        """A live read-only view (no copy: the router reads it on every cache miss)."""
        return self._view

    def get(self, name: NamespaceName) -> Namespace | None:
        return self._items.get(name)

    def __len__(self) -> int:
        return len(self._items)

    def replace(self, namespaces: Iterable[Namespace]) -> bool:
        fresh = {ns.name: ns for ns in namespaces}
        changed = fresh != self._items
        self._items.clear()
        self._items.update(fresh)
        self.synced.set()
        return changed

    def apply(self, event_type: str, namespace: Namespace) -> bool:
        """Apply one watch event; True when the cache changed."""
        if event_type == "DELETED":
            return self._items.pop(namespace.name, None) is not None
        if self._items.get(namespace.name) == namespace:
            return False
        self._items[namespace.name] = namespace
        return True
