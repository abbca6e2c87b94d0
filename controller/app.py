"""The platform controller's process: three watches, a tenant work queue, the health port.

Root tasks under the shared lifecycle: the Namespace watch, the RoleBinding watch (grants and
our bindings: one label selector), the operator Pod watch (Lease release), the workers, the
Lease releases and the health listener. Watches only put tenants on the queue; workers
reconcile them (controller.reconcile) once the Namespace and RoleBinding lists are in. Every
tenant known at start (a grant or a binding of ours) is reconciled then: bindings of tenants
whose grant is gone are removed, missing ones made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api
from prometheus_client import CollectorRegistry

from controller.config import ControllerConfig
from controller.events import GrantEvents
from controller.leases import OperatorPods, run_releases
from controller.metrics import ControllerMetrics
from controller.ownership import OwnershipIndex, TrackedNamespaces
from controller.reconcile import ReconcileError, ReconcileSettings, TenantReconciler
from controller.rolebinding_store import RoleBindingStore
from controller.workqueue import WorkQueue
from tenancy_common import health
from tenancy_common.kube import make_api_client
from tenancy_common.lifecycle import install_stop_signals, run_roots
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace_cache import WatchMetrics, staleness_check
from tenancy_common.namespace_watch import WatchSettings, watch_namespaces, watch_objects
from tenancy_common.platform_objects import CONTROLLER_LABEL

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0
"""At stop, reconciles under way get this long to finish (below the pod's grace period)."""


class PlatformController:
    def __init__(
        self,
        config: ControllerConfig,
        registry: CollectorRegistry | None = None,
        *,
        watch_settings: WatchSettings | None = None,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = ControllerMetrics(self.registry)
        self._watch_metrics = WatchMetrics(self.registry)
        self._watch_settings = watch_settings or WatchSettings()
        self.cache = TrackedNamespaces()
        self.ownership = OwnershipIndex(config.rule, self.cache)
        self.store = RoleBindingStore(config.tenant_namespace_pattern, self._bindings_changed)
        self.pods = OperatorPods(
            config.tenant_namespace_pattern,
            config.operator_container,
            self.store.grant,
            self.metrics,
        )
        self.queue: WorkQueue[TenantName] = WorkQueue(
            backoff_initial_s=config.backoff_initial_s, backoff_max_s=config.backoff_max_s
        )
        self.errors: dict[TenantName, str] = {}
        """Tenants whose last reconcile failed -> why."""
        self.waiting: dict[TenantName, dict[str, str]] = {}
        self.reconciles = 0
        self.started = asyncio.Event()
        """Set once the first lists are in and every known tenant is queued."""
        self._changed_at: dict[TenantName, float] = {}
        """Tenants whose namespaces changed and are not published yet -> since when."""
        self._refresh_scheduled = False
        self._reconciler: TenantReconciler | None = None
        self._events: GrantEvents | None = None
        self.health_port: int | None = None
        self.metrics.tenants.set_function(self.store.granted)
        self.metrics.bindings.set_function(self.store.binding_count)
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        self.metrics.waiting.set_function(lambda: sum(len(w) for w in self.waiting.values()))

    # -- what the watches tell ---------------------------------------------------------

    def _namespaces_changed(self) -> None:
        if not self._refresh_scheduled:
            self._refresh_scheduled = True
            asyncio.get_running_loop().call_soon(self._refresh_ownership)

    def _refresh_ownership(self) -> None:
        self._refresh_scheduled = False
        now = time.monotonic()
        timed = self.started.is_set()  # the first lists are no change to time
        for tenant in self.ownership.refresh():
            if timed:
                self._changed_at.setdefault(tenant, now)
            self.queue.add(tenant)

    def _bindings_changed(self, tenants: set[TenantName], namespaces: set[NamespaceName]) -> None:
        for tenant in tenants:
            self.queue.add(tenant)
        for namespace in namespaces:
            owner = self.ownership.owner(namespace)
            if owner is not None:
                self.queue.add(owner)  # it may wait for another tenant's binding to go

    # -- probes ------------------------------------------------------------------------

    def readiness_checks(self) -> dict[str, health.ReadinessCheck]:
        def synced() -> str | None:
            missing = [
                what
                for what, event in (
                    ("namespaces", self.cache.synced),
                    ("rolebindings", self.store.synced),
                    ("operator pods", self.pods.synced),
                )
                if not event.is_set()
            ]
            return f"not synced: {', '.join(missing)}" if missing else None

        return {
            "synced": synced,
            "namespace-staleness": staleness_check(
                self.cache, self.config.max_namespace_staleness_s
            ),
        }

    def readiness_warnings(self) -> dict[str, health.ReadinessCheck]:
        def failing() -> str | None:
            if not self.errors:
                return None
            shown = sorted(self.errors.items())[:5]
            more = len(self.errors) - len(shown)
            text = "; ".join(f"{tenant}: {why}" for tenant, why in shown)
            return f"{len(self.errors)} tenants failing: {text}" + (f" (+{more})" if more else "")

        def waiting() -> str | None:
            shown = [
                f"{tenant}: {ns} ({why})"
                for tenant, namespaces in sorted(self.waiting.items())
                for ns, why in sorted(namespaces.items())
            ]
            if not shown:
                return None
            more = f" (+{len(shown) - 5})" if len(shown) > 5 else ""
            return f"{len(shown)} namespaces not given yet: {'; '.join(shown[:5])}{more}"

        return {"tenants": failing, "namespaces-waiting": waiting}

    # -- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, api: ApiClient | None = None) -> None:
        own_client = api is None
        client = api if api is not None else await make_api_client(self.config.kubeconfig)
        try:
            await self._run(client, stop)
        finally:
            if own_client:
                await client.close()

    async def _run(self, api: ApiClient, stop: asyncio.Event) -> None:
        config = self.config
        self._reconciler = TenantReconciler(
            api,
            store=self.store,
            ownership=self.ownership,
            settings=ReconcileSettings(
                cluster_role_template=config.cluster_role_template,
                terminating_recheck_s=config.terminating_recheck_s,
            ),
            tenant_namespace_pattern=config.tenant_namespace_pattern,
        )
        self._events = GrantEvents(api)
        rbac, core = RbacAuthorizationV1Api(api), CoreV1Api(api)
        app = health.build_health_app(
            self.registry, self.readiness_checks(), self.readiness_warnings()
        )

        def bound(port: int) -> None:
            self.health_port = port

        logger.info(
            "controller starting",
            extra={
                "tenant_namespace_pattern": config.tenant_namespace_pattern.pattern,
                "workers": config.workers,
            },
        )
        await run_roots(
            {
                "namespace-watch": watch_namespaces(
                    api,
                    self.cache,
                    stop=stop,
                    on_change=self._namespaces_changed,
                    settings=self._watch_settings,
                    metrics=self._watch_metrics,
                ),
                "rolebinding-watch": watch_objects(
                    api,
                    self.store,
                    rbac.list_role_binding_for_all_namespaces,
                    stop=stop,
                    what="rolebinding",
                    label_selector=CONTROLLER_LABEL,
                    settings=self._watch_settings,
                ),
                "operator-pod-watch": watch_objects(
                    api,
                    self.pods,
                    core.list_pod_for_all_namespaces,
                    stop=stop,
                    what="operator pod",
                    label_selector=config.operator_pod_selector,
                    settings=self._watch_settings,
                ),
                "workers": self._run_workers(stop),
                "lease-releases": _until(stop, run_releases(api, self.pods, self.metrics)),
                "health": health.serve_until(
                    app, config.health_bind_address, config.health_port, stop, started=bound
                ),
            },
            stop,
        )

    async def _run_workers(self, stop: asyncio.Event) -> None:
        synced: asyncio.Future[Any] = asyncio.gather(
            self.cache.synced.wait(), self.store.synced.wait()
        )
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if stop.is_set():
            synced.cancel()
            await asyncio.gather(synced, return_exceptions=True)
            return
        self._refresh_ownership()
        for tenant in sorted(self.store.tenants()):
            self.queue.add(tenant)
        logger.info("lists in, reconciling every tenant", extra={"tenants": len(self.queue)})
        self.started.set()
        workers = [
            asyncio.create_task(self._worker(), name=f"worker-{i}")
            for i in range(self.config.workers)
        ]
        try:
            await stop.wait()
        finally:
            self.queue.shut_down()
            _, pending = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self) -> None:
        while (tenant := await self.queue.get()) is not None:
            try:
                await self._reconcile(tenant)
            finally:
                self.queue.done(tenant)

    async def _reconcile(self, tenant: TenantName) -> None:
        assert self._reconciler is not None
        assert self._events is not None
        started = time.monotonic()
        try:
            outcome = await self._reconciler.reconcile(tenant)
        except ReconcileError as exc:
            await self._failed(tenant, str(exc))
            return
        except Exception as exc:  # a bug for one tenant must not stop the others
            logger.exception("reconcile failed unexpectedly", extra={"tenant": tenant})
            await self._failed(tenant, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.reconciles += 1
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
        self.queue.forget(tenant)
        if self.errors.pop(tenant, None) is not None:
            logger.info("tenant reconciled again", extra={"tenant": tenant})
        await self._events.recovered(tenant, self.store.grant(tenant))
        if outcome.waiting:
            self.waiting[tenant] = outcome.waiting
        else:
            self.waiting.pop(tenant, None)
        for other in outcome.blocked_by:
            self.queue.add(other)
        if outcome.requeue_after_s is not None:
            self.queue.add_after(tenant, outcome.requeue_after_s)
        changed_at = self._changed_at.get(tenant)
        if changed_at is not None and (self.store.grant(tenant) is None or not outcome.waiting):
            del self._changed_at[tenant]
            if outcome.published is not None:
                self.metrics.change_to_published.observe(time.monotonic() - changed_at)

    async def _failed(self, tenant: TenantName, why: str) -> None:
        assert self._events is not None
        self.metrics.reconcile_errors.labels(tenant).inc()
        delay_s = self.queue.retry(tenant)
        if self.errors.get(tenant) != why:
            logger.error(
                "cannot reconcile a tenant",
                extra={"tenant": tenant, "error": why, "retry_in_s": delay_s},
            )
        self.errors[tenant] = why
        grant = self.store.grant(tenant)
        if grant is not None:
            await self._events.failed(tenant, grant, why)


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` (a coroutine that never returns) until `stop`."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopping):
            pending.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)


async def serve(config: ControllerConfig) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    controller = PlatformController(config)
    try:
        await controller.run(stop)
    except Exception:
        logger.exception("controller failed")
        return 1
    return 0
