"""Lease release: one cluster-wide watch of operator pods; a tenant's Lease is cleared only on
the kubelet's proof that the holder's operator container stopped.

The store keeps no pods: each listed or changed pod is looked at once. A pod whose operator
container is reported `terminated` (or whose phase is Succeeded/Failed) is proof
(tenancy_common.pod_status); its tenant's Lease (the grant's `keda-tenancy.io/lease`) is then
released by tenancy_common.lease, only if that pod holds it and did not renew it after it died,
with a resourceVersion precondition. A DELETED event without that proof (a force deletion, a
lost node) is not proof: the Lease is left to expire. Releases run one at a time on their own
task, each bounded by a timeout, so a slow API call never holds the watch.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from controller.metrics import ControllerMetrics
from controller.objects import LEASE_ANNOTATION, tenant_of_namespace
from tenancy_common.lease import LeaseReleaser
from tenancy_common.names import TenantName
from tenancy_common.pod_status import died_at, runs_container

logger = logging.getLogger(__name__)

MAX_PENDING = 10_000


class OperatorPods:
    """The pod watch's store (tenancy_common.namespace_watch.WatchedStore): offers each
    terminated operator to `LeaseReleases`."""

    def __init__(
        self,
        pattern: re.Pattern[str],
        container: str,
        grant: Callable[[TenantName], Mapping[str, Any] | None],
        metrics: ControllerMetrics,
    ) -> None:
        self._pattern = pattern
        self._container = container
        self._grant = grant
        self._metrics = metrics
        self._handled: dict[tuple[str, str], datetime] = {}
        """Pods whose death was already offered (with that time): each is released once."""
        self.queue: asyncio.Queue[tuple[str, str, str, datetime]] = asyncio.Queue(MAX_PENDING)
        self.synced = asyncio.Event()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def confirm_current(self) -> None:
        pass

    def replace(self, items: Iterable[Any]) -> bool:
        seen: set[tuple[str, str]] = set()
        count = 0
        for pod in items:
            count += 1
            meta = pod.get("metadata") or {}
            seen.add((str(meta.get("namespace", "")), str(meta.get("name", ""))))
            self._seen(pod, deleted=False)
        self._handled = {key: when for key, when in self._handled.items() if key in seen}
        self._count = count
        self.synced.set()
        return False

    def apply(self, event_type: str, item: Any) -> bool:
        if event_type == "ADDED":
            self._count += 1
        self._seen(item, deleted=event_type == "DELETED")
        if event_type == "DELETED":
            self._count = max(0, self._count - 1)
            meta = item.get("metadata") or {}
            self._handled.pop((str(meta.get("namespace", "")), str(meta.get("name", ""))), None)
        return False

    def _seen(self, pod: Mapping[str, Any], *, deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        tenant = tenant_of_namespace(self._pattern, namespace)
        if tenant is None:
            return
        stopped = died_at(dict(pod), self._container)
        if stopped is None:
            if deleted and runs_container(dict(pod), self._container):
                self._metrics.unproven_deletions.inc()
                logger.info(
                    "an operator pod was deleted without a report that its operator stopped: "
                    "a Lease it holds is left to expire",
                    extra={"tenant": tenant, "pod": name},
                )
            return
        if self._handled.get((namespace, name)) == stopped:
            return
        grant = self._grant(tenant)
        lease = ((grant or {}).get("metadata") or {}).get("annotations", {}).get(LEASE_ANNOTATION)
        if not lease:
            return
        self._handled[(namespace, name)] = stopped
        try:
            self.queue.put_nowait((namespace, str(lease), name, stopped))
        except asyncio.QueueFull:
            logger.warning("too many Lease releases pending: this one is left to expire")


async def run_releases(api: ApiClient, pods: OperatorPods, metrics: ControllerMetrics) -> None:
    """Release the Leases `pods` offers, one at a time, until cancelled."""
    while True:
        namespace, lease, pod, stopped = await pods.queue.get()
        releaser = LeaseReleaser(api, namespace, lease)
        try:
            if await releaser.release(hostname=pod, died_at=stopped):
                metrics.lease_releases.inc()
        except Exception:  # release() handles API errors; anything else is a bug to log
            logger.exception("Lease release failed", extra={"namespace": namespace, "pod": pod})
