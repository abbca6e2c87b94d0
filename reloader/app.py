"""The reloader: follow the tenant's namespaces and keep the operator on exactly that set.

Roots: the namespace watch (shared list+watch cache), the health listener, the control
loop, and in process mode an orphan reaper. The control loop is level-triggered: after
any event it recomputes the desired value from the whole cache and lets the restart
schedule decide when to act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from reloader.child import ChildProcess, become_subreaper, reap_orphans
from reloader.config import ReloaderConfig
from reloader.deployment import DeploymentPatcher
from reloader.desired import (
    EnvTooLargeError,
    canonical,
    changes,
    check_env_size,
    desired_namespaces,
)
from reloader.metrics import ReloaderMetrics
from reloader.schedule import RestartSchedule, crash_backoff_s
from tenancy_common import health
from tenancy_common.kube import make_api_client
from tenancy_common.lifecycle import run_roots, wait_stopped
from tenancy_common.namespace_watch import (
    NamespaceCache,
    WatchMetrics,
    WatchSettings,
    watch_namespaces,
)

logger = logging.getLogger(__name__)


class Reloader:
    def __init__(
        self,
        config: ReloaderConfig,
        registry: CollectorRegistry | None = None,
        *,
        environ: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        watch_settings: WatchSettings | None = None,
    ) -> None:
        self.config = config
        self._watch_settings = watch_settings or WatchSettings()
        self.registry = registry or CollectorRegistry()
        self.metrics = ReloaderMetrics(self.registry)
        self.cache = NamespaceCache()
        self.schedule = RestartSchedule(config.schedule)
        self._clock = clock
        self._wake = asyncio.Event()
        self.applied: str | None = None
        """The value in force: what the child runs with or the Deployment has; "" while stopped for emptiness."""
        self.refused: str | None = None
        self.exit_code = 0
        self.stop_signal = signal.SIGTERM
        self.last_error: str | None = None
        self.health_port: int | None = None
        self.child = (
            ChildProcess(
                config.command,
                config.target_env,
                grace_period_s=config.grace_period_s,
                kill_wait_s=config.kill_wait_s,
                environ=environ,
            )
            if config.mode == "process"
            else None
        )
        self._patcher: DeploymentPatcher | None = None

    # -- decisions -------------------------------------------------------------------------

    def desired(self) -> str:
        names = desired_namespaces(
            self.cache.snapshot(), rule=self.config.rule, tenant=self.config.tenant
        )
        self.metrics.namespaces.set(len(names))
        return canonical(names)

    def readiness_checks(self) -> dict[str, health.ReadinessCheck]:
        def synced() -> str | None:
            return None if self.cache.synced.is_set() else "namespace list not synced"

        def target() -> str | None:
            if self.applied == "":
                return "no namespace selected: the operator is kept stopped"
            if self.refused is not None:
                return "the desired namespace list is too large for one environment variable"
            if self.child is not None and not self.child.running:
                return "the operator is not running"
            return self.last_error

        return {"namespaces": synced, "operator": target}

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        api = await make_api_client(self.config.kubeconfig)
        try:
            if self.config.target_deployment is not None and self.config.container is not None:
                namespace, name = self.config.target_deployment
                self._patcher = DeploymentPatcher(
                    api, namespace, name, self.config.container, self.config.target_env
                )
            roots: dict[str, Any] = {
                "health": self._serve_health(stop),
                "namespaces": self._watch(api, stop),
                "control": self.control(stop),
            }
            if self.child is not None and become_subreaper():
                roots["reaper"] = self._reap(stop)
            await run_roots(roots, stop)
        finally:
            await api.close()
        return self.exit_code

    async def _watch(self, api: ApiClient, stop: asyncio.Event) -> None:
        await watch_namespaces(
            api,
            self.cache,
            stop=stop,
            label_selector=self.config.label_selector,
            on_change=self._wake.set,
            settings=self._watch_settings,
            metrics=WatchMetrics(self.registry),
        )

    async def _serve_health(self, stop: asyncio.Event) -> None:
        def started(port: int) -> None:
            self.health_port = port

        app = health.build_health_app(self.registry, self.readiness_checks())
        await health.serve_until(
            app, self.config.health_bind_address, self.config.health_port, stop, started=started
        )

    async def _reap(self, stop: asyncio.Event) -> None:
        assert self.child is not None
        child = self.child
        while not await wait_stopped(stop, 1.0):
            for pid in reap_orphans(lambda: child.pid):
                logger.debug("reaped orphan", extra={"pid": pid})

    async def control(self, stop: asyncio.Event) -> None:
        """Start once the initial list is complete, then follow changes until `stop`."""
        if not await _first(self.cache.synced.wait(), stop):
            return
        await self._apply(self.desired(), "initial")
        consecutive_failures = 0
        try:
            while not stop.is_set():
                desired = self.desired()
                in_force = desired if desired == self.refused else self.applied
                self.schedule.observe(self._clock(), desired, in_force)
                exited = await self._wait_for_something(stop, self.schedule.due_in(self._clock()))
                if stop.is_set():
                    break
                if exited is not None:
                    consecutive_failures = await self._crashed(exited, consecutive_failures, stop)
                    if self.exit_code:
                        return
                    continue
                if self._wake.is_set():
                    self._wake.clear()
                    continue
                pending = self.schedule.pending
                if pending is not None and self.schedule.due_in(self._clock()) == 0:
                    await self._apply(pending, "namespaces")
        finally:
            await self._shutdown()

    async def _wait_for_something(self, stop: asyncio.Event, timeout_s: float | None) -> int | None:
        """Sleep until an event, stop, the schedule's due time, or the child exiting;
        returns the child's exit status when that is what woke us."""
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
        ]
        exit_waiter = None
        if self.child is not None and self.child.running:
            exit_waiter = asyncio.ensure_future(self.child.wait())
            waiters.append(exit_waiter)
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if (
            exit_waiter is not None
            and self.child is not None
            and not self.child.running
            and not stop.is_set()
        ):
            return await self.child.wait()
        return None

    async def _crashed(self, code: int, failures: int, stop: asyncio.Event) -> int:
        """The child exited on its own: back off and start it again, or give up."""
        assert self.child is not None
        ran_s = asyncio.get_running_loop().time() - self.child.started_at
        failures = 1 if ran_s >= self.config.healthy_after_s else failures + 1
        self.metrics.child_up.set(0)
        self.metrics.child_exits.labels(str(code)).inc()
        if failures >= self.config.max_restarts:
            logger.error(
                "operator keeps exiting, giving up",
                extra={"exit_code": code, "consecutive_failures": failures},
            )
            self.exit_code = code or 1
            return failures
        delay_s = crash_backoff_s(
            failures, self.config.backoff_initial_s, self.config.backoff_max_s
        )
        logger.warning(
            "operator exited on its own, restarting after backoff",
            extra={"exit_code": code, "consecutive_failures": failures, "backoff_s": delay_s},
        )
        if await wait_stopped(stop, delay_s):
            return failures
        self.applied = None
        await self._apply(self.desired(), "crash")
        return failures

    async def _apply(self, value: str, reason: str) -> None:
        """Put `value` in force: restart the child / patch the Deployment; "" stops it."""
        try:
            if value:
                check_env_size(self.config.target_env, value)
        except EnvTooLargeError as exc:
            logger.error("refusing the new namespace list", extra={"error": str(exc)})
            self.metrics.refused.inc()
            self.refused = value
            self.schedule.restarted(self._clock())
            return
        self.refused = None
        added, removed = changes(self.applied, value)
        try:
            if self.child is not None:
                await self._apply_process(value)
            else:
                await self._apply_deployment(value)
        except (ApiException, OSError, LookupError, ValueError) as exc:
            self.last_error = f"cannot update the operator: {exc}"
            logger.error("cannot update the operator", extra={"error": str(exc)})
            return  # still pending: retried after the next event or min interval
        finally:
            self.schedule.restarted(self._clock())
        self.last_error = None
        self.applied = value
        self.metrics.empty.set(0 if value else 1)
        self.metrics.restarts.labels(reason if value else "empty").inc()
        self.metrics.last_restart.set(time.time())
        if value:
            logger.info(
                "operator (re)started with the new namespace list",
                extra={
                    "reason": reason,
                    "added": added,
                    "removed": removed,
                    "namespaces": value.count(",") + 1,
                },
            )
        else:
            logger.warning("no namespace selected: the operator is kept stopped until one appears")

    async def _apply_process(self, value: str) -> None:
        assert self.child is not None
        if self.child.running:
            code = await self.child.stop()
            self.metrics.child_exits.labels(str(code)).inc()
        self.metrics.child_up.set(0)
        if value:
            await self.child.start(value)
            self.metrics.child_up.set(1)

    async def _apply_deployment(self, value: str) -> None:
        assert self._patcher is not None
        patched = await self._patcher.apply(value or None)
        logger.info(
            "deployment %s",
            "patched" if patched else "already up to date",
            extra={"value_len": len(value)},
        )

    async def _shutdown(self) -> None:
        """Forward the stop signal to the child and take its exit status as ours."""
        if self.child is None or not self.child.running:
            return
        code = await asyncio.shield(self.child.stop(self.stop_signal))
        self.metrics.child_up.set(0)
        if code is not None and not self.exit_code:
            self.exit_code = code
        logger.info("operator stopped", extra={"exit_code": code})


async def _first(waiting: Any, stop: asyncio.Event) -> bool:
    """Await `waiting` unless `stop` comes first; True when `waiting` finished."""
    task = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, stopper, return_exceptions=True)
    return task.done() and not task.cancelled()
