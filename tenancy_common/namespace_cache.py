"""The namespace cache both binaries decide from, and its metrics.

Apart from `namespace_watch`, which fills it from the API server, so that a process
without a cluster source need not import the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Gauge

from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace

DEFAULT_MAX_STALENESS = "5m"
"""A healthy watch confirms the cache at least every minute; a dead stream is noticed within
150 s and a failed relist retried within 30 s: 5 minutes is none of that."""


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "keda_tenancy_namespace_watch_"
        self.reconnects = Counter(
            prefix + "reconnects",
            "Watch streams re-opened after an error, timeout or silence.",
            registry=registry,
        )
        self.relists = Counter(
            prefix + "relists",
            "Full LISTs, by reason (start, expired, too-large-resource-version, error, failures).",
            ["reason"],
            registry=registry,
        )
        self.namespaces = Gauge(
            prefix + "namespaces", "Namespaces in the cache.", registry=registry
        )
        self.last_current = Gauge(
            prefix + "last_current_timestamp_seconds",
            "Unix time the cache was last confirmed current (LIST, event, bookmark, verification).",
            registry=registry,
        )
        self.staleness = Gauge(
            prefix + "staleness_seconds",
            "Seconds since the cache was last confirmed current (since start before the first LIST).",
            registry=registry,
        )

    def follow(self, cache: NamespaceCache) -> None:
        """Compute the staleness at each scrape from `cache`."""
        self.staleness.set_function(cache.staleness_s)


class NamespaceCache:
    """Namespaces by name; `synced` is set once the first complete LIST is in.

    `confirm_current` records when the cache was last known to equal the API server's state
    (the watch calls it on a LIST, an event, a bookmark and a verified quiet stream);
    `staleness_s` is the time since
    (since the cache was made, before the first LIST). `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: dict[NamespaceName, Namespace] = {}
        self._view = MappingProxyType(self._items)
        self.synced = asyncio.Event()
        self._clock = clock
        self._current_at = clock()

    def snapshot(self) -> Mapping[NamespaceName, Namespace]:
        """A live read-only view (no copy: the router reads it on every cache miss)."""
        return self._view

    def get(self, name: NamespaceName) -> Namespace | None:
        return self._items.get(name)

    def __len__(self) -> int:
        return len(self._items)

    def confirm_current(self) -> None:
        self._current_at = self._clock()

    def staleness_s(self) -> float:
        return max(0.0, self._clock() - self._current_at)

    def replace(self, namespaces: Iterable[Namespace]) -> bool:
        fresh = {ns.name: ns for ns in namespaces}
        changed = fresh != self._items
        self._items.clear()
        self._items.update(fresh)
        self.confirm_current()
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


def staleness_check(cache: NamespaceCache, max_staleness_s: float) -> Callable[[], str | None]:
    """A /readyz check (or warning): None while the cache was confirmed current within
    `max_staleness_s` (0: never fails), else why not. Before the first LIST the `synced`
    checks speak instead."""

    def check() -> str | None:
        if max_staleness_s <= 0 or not cache.synced.is_set():
            return None
        stale_s = cache.staleness_s()
        if stale_s <= max_staleness_s:
            return None
        return (
            f"namespace list not confirmed current for {stale_s:.0f}s "
            f"(bound {max_staleness_s:g}s): the watch is failing, see the log"
        )

    return check
