"""The control loop: keep the operator on exactly the desired namespaces.

Level-triggered: after any event it recomputes the desired value from the whole cache
and lets the restart schedule decide when to act. The operator is started only once the
initial list is complete and never with an empty value; one that exits on its own is
restarted after an exponential backoff, until too many consecutive failures make the
reloader give up (and exit non-zero, so that Kubernetes shows a crash loop).

All waiting goes through the injected clock, so tests drive it with fake time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable
from typing import Any

from reloader.access import Gate
from reloader.child import ChildStartError
from reloader.clock import Clock, LoopClock
from reloader.desired import (
    Desired,
    EnvTooLargeError,
    changes,
    check_env_size,
    desired_namespaces,
    moved_away,
)
from reloader.metrics import ReloaderMetrics
from reloader.schedule import CrashPolicy, RestartSchedule, SchedulePolicy
from reloader.targets import ApplyError, Target
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace_cache import NamespaceCache
from tenancy_common.tenancy import TenancyRule

logger = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        *,
        target: Target,
        cache: NamespaceCache,
        rule: TenancyRule | None,
        tenant: TenantName | None,
        target_env: str,
        schedule: SchedulePolicy,
        crash: CrashPolicy,
        metrics: ReloaderMetrics,
        clock: Clock | None = None,
        resync_s: float = 0.0,
        gate: Gate | None = None,
    ) -> None:
        """`gate`: which desired namespaces the operator may be given (None: all)."""
        self._target = target
        self._gate = gate
        self._cache = cache
        self._rule = rule
        self._tenant = tenant
        self._target_env = target_env
        self._schedule = RestartSchedule(schedule)
        self._crash = crash
        self._metrics = metrics
        self._clock: Clock = clock or LoopClock()
        self._resync_s = resync_s
        self._wake = asyncio.Event()
        self.applied: str | None = None
        """The value in force (what the operator runs with); "" while kept stopped for emptiness."""
        self.refused: str | None = None
        """A desired value refused as too large; the operator keeps `applied`."""
        self.last_error: str | None = None
        self.exit_code = 0
        self.gave_up = False
        self.stop_signal = signal.SIGTERM
        """The signal forwarded to the operator at shutdown (the one we received)."""
        self._failures = 0
        self._apply_failures = 0
        self._crash_restart_at: float | None = None
        self._started_at = 0.0
        self._resync_at: float | None = None

    # -- inputs ------------------------------------------------------------------------

    def wake(self) -> None:
        """Something in the cache changed: recompute (cheap to call for every event)."""
        self._wake.set()

    def desired(self) -> Desired:
        desired = desired_namespaces(self._cache.snapshot(), rule=self._rule, tenant=self._tenant)
        self._metrics.namespaces.set(len(desired.names))
        return desired

    async def admitted(self) -> Desired:
        """The desired namespaces the gate lets the operator have now."""
        desired = self.desired()
        if self._gate is None:
            return desired
        admitted = await self._gate.admit(desired.names)
        return Desired(tuple(NamespaceName(ns) for ns in admitted), desired.contested)

    def readiness(self) -> str | None:
        """None when the operator runs with the desired namespaces, else why not."""
        if self.gave_up:
            return f"the operator failed {self._failures} times in a row; giving up"
        if self.refused is not None:
            return "the desired namespace list is too large for one environment variable"
        if self.applied == "":
            return "no namespace selected: the operator is kept stopped"
        if self.last_error is not None:
            return self.last_error
        if self.applied is None:
            return "the operator has not been started yet"
        if self._target.running is False:
            return "the operator is not running (restarting after it exited)"
        return None

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Follow the cache until `stop` (or giving up); the exit status to report."""
        try:
            if not await first(self._cache.synced.wait(), stop):
                return self.exit_code
            await self._apply(await self.admitted(), "initial")
            while not stop.is_set() and not self.gave_up:
                self._wake.clear()
                timeout = await self._step()
                if self._gate is not None and (retry_s := self._gate.retry_in_s()) is not None:
                    timeout = retry_s if timeout is None else min(timeout, retry_s)
                if timeout == 0.0:
                    continue
                code = await self._wait(stop, timeout)
                if code is not None and not stop.is_set():
                    self._failed(code, ran_s=self._clock.now() - self._started_at)
        finally:
            await self._shutdown()
        return self.exit_code

    async def _step(self) -> float | None:
        """Act on whatever is due now; how long to sleep (0: act again at once, None: until an event)."""
        now = self._clock.now()
        desired = await self.admitted()
        if self._crash_restart_at is not None:
            if now < self._crash_restart_at:
                return self._crash_restart_at - now
            self._crash_restart_at = None
            await self._apply(desired, "crash")
            return 0.0
        in_force = desired.value if desired.value == self.refused else self.applied
        urgent = bool(moved_away(in_force, desired))
        self._schedule.observe(now, desired.value, in_force, urgent=urgent)
        due_in = self._schedule.due_in(now)
        if due_in == 0.0:
            await self._apply(desired, "namespaces")
            return 0.0
        if due_in is None and self.applied and self._resync_at is not None:
            if now >= self._resync_at:
                await self._put(self.applied, "resync")
                return 0.0
            return self._resync_at - now
        return due_in

    async def _wait(self, stop: asyncio.Event, timeout_s: float | None) -> int | None:
        """Sleep until an event, stop, `timeout_s`, or the operator exiting on its own;
        the exit status when that is what woke us."""
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
        ]
        if timeout_s is not None:
            waiters.append(asyncio.ensure_future(self._clock.sleep(timeout_s)))
        exited = self._target.exited()
        exit_waiter = asyncio.ensure_future(exited) if exited is not None else None
        if exit_waiter is not None:
            waiters.append(exit_waiter)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if exit_waiter is not None and not exit_waiter.cancelled():
            return int(exit_waiter.result())  # child.wait() does not raise
        return None

    # -- acting ------------------------------------------------------------------------

    async def _apply(self, desired: Desired, reason: str) -> None:
        await self._put(desired.value, reason)

    async def _put(self, value: str, reason: str) -> None:
        """Put `value` in force: restart the operator / patch the Deployment ("" stops it)."""
        if value:
            try:
                check_env_size(self._target_env, value)
            except EnvTooLargeError as exc:
                if self.refused != value:
                    logger.error("refusing the new namespace list", extra={"error": str(exc)})
                    self._metrics.refused.inc()
                self.refused = value
                return
        self.refused = None
        added, removed = changes(self.applied, value)
        try:
            changed = await self._target.apply(value)
        except ChildStartError as exc:
            self.last_error = str(exc)
            logger.error("cannot start the operator", extra={"error": str(exc)})
            self._failed(exc.code, ran_s=0.0)
            return
        except ApplyError as exc:
            self._apply_failures += 1
            retry_in_s = self._crash.backoff_s(self._apply_failures)
            now = self._clock.now()
            self._schedule.failed(now, retry_in_s)
            if self._resync_at is not None:
                self._resync_at = now + retry_in_s
            self.last_error = str(exc)
            self._metrics.apply_errors.inc()
            logger.error(
                "cannot update the operator, retrying",
                extra={"error": str(exc), "retry_in_s": retry_in_s},
            )
            return
        now = self._clock.now()
        self._schedule.restarted(now)
        self._resync_at = now + self._resync_s if self._resync_s > 0 else None
        self._apply_failures = 0
        self.last_error = None
        previous, self.applied = self.applied, value
        if self._target.running:
            self._started_at = now
        self._metrics.empty.set(0 if value else 1)
        if changed:
            self._metrics.restarts.labels(reason if value else "empty").inc()
            self._metrics.last_restart.set(time.time())
        if not value:
            if previous != "":
                logger.warning(
                    "no namespace selected: the operator is kept stopped until one appears",
                    extra={"reason": reason, "removed": removed},
                )
        elif changed:
            logger.info(
                "operator restarted with the new namespace list"
                if self._target.running is not None
                else "deployment patched with the new namespace list",
                extra={
                    "reason": reason,
                    "added": added,
                    "removed": removed,
                    "namespaces": len(value.split(",")),
                },
            )
        else:
            logger.log(
                logging.DEBUG if reason == "resync" else logging.INFO,
                "operator already has the namespace list",
                extra={"reason": reason, "namespaces": len(value.split(","))},
            )

    def _failed(self, code: int, *, ran_s: float) -> None:
        """The operator exited on its own (or could not start): back off, or give up."""
        healthy = ran_s >= self._crash.healthy_after_s
        self._failures = 1 if healthy else self._failures + 1
        self._metrics.consecutive_failures.set(self._failures)
        if self._failures >= self._crash.max_restarts:
            logger.error(
                "operator keeps failing, giving up",
                extra={"exit_code": code, "consecutive_failures": self._failures},
            )
            self.exit_code = code or 1
            self.gave_up = True
            return
        delay_s = self._crash.backoff_s(self._failures)
        self._crash_restart_at = self._clock.now() + delay_s
        logger.warning(
            "operator exited on its own, restarting after backoff",
            extra={
                "exit_code": code,
                "ran_s": round(ran_s, 3),
                "consecutive_failures": self._failures,
                "backoff_s": delay_s,
            },
        )

    async def _shutdown(self) -> None:
        """Forward the stop signal to the operator and take its exit status as ours."""
        code = await asyncio.shield(self._target.shutdown(self.stop_signal))
        if code is not None and not self.gave_up:
            self.exit_code = code
            logger.info("operator stopped", extra={"exit_code": code})


async def first(waiting: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Await `waiting` unless `stop` comes first; True when `waiting` finished."""
    task = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    return task.done() and not task.cancelled()
