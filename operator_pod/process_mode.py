"""Process mode: run KEDA as our child on exactly the published namespace set.

Level-triggered: every ConfigMap state (`offer`) replaces the desired value; the loop restarts
KEDA with it once it has been quiet for the debounce (at most `max_wait_s` after the first
change). Undecided and empty both keep KEDA stopped (namespace_set). A KEDA that exits on its
own is restarted after an exponential backoff, until `max_restarts` exits in a row make this
process give up and exit 1 (the kubelet then shows the crash loop). After every exit of KEDA
(planned or not) its Lease is released (lease.py), so the next KEDA leads at once; before each
restart the gRPC forwarder drains the adapter's connections while idle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from operator_pod.child import ChildProcess, ChildStartError
from operator_pod.forward import Forwarder
from operator_pod.kube import Obj
from operator_pod.lease import LeaseReleaser
from operator_pod.metrics import Metrics
from operator_pod.namespace_set import Decision, decide

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    debounce_s: float = 0.2
    max_wait_s: float = 2.0
    max_restarts: int = 10
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 60.0

    def backoff_s(self, failures: int) -> float:
        return float(min(self.backoff_initial_s * 2 ** max(failures - 1, 0), self.backoff_max_s))


class ProcessMode:
    def __init__(
        self,
        child: ChildProcess,
        metrics: Metrics,
        *,
        env_name: str,
        policy: RestartPolicy,
        releaser: LeaseReleaser | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.child = child
        self._metrics = metrics
        self._env_name = env_name
        self._policy = policy
        self._releaser = releaser
        self._forwarder = forwarder
        self._wake = asyncio.Event()
        self.decision: Decision | None = None
        """The last usable decision read (None: the ConfigMap not read yet)."""
        self.refused: str | None = None
        """Why the last value read was refused (KEDA keeps the one in force)."""
        self.in_force: str | None = None
        """WATCH_NAMESPACE KEDA was last started with; "" while kept stopped."""
        self.last_error: str | None = None
        self.gave_up = False
        self.stop_signal = signal.SIGTERM
        self._failures = 0
        self._not_before = 0.0
        self._first_change_at = 0.0
        self._changed_at = 0.0
        self._started_at = 0.0
        self._exit_seen = True
        self._restarting = False
        self._stop: asyncio.Event | None = None
        # A KEDA of an earlier run of this container died before we started.
        self._died_at: datetime | None = datetime.now(UTC)

    # -- inputs and state --------------------------------------------------------------

    @property
    def desired(self) -> str:
        """What KEDA should run with now ("" = not at all)."""
        return (self.decision.value or "") if self.decision is not None else ""

    def offer(self, configmap: Obj | None) -> None:
        """The ConfigMap as last read (None: it does not exist)."""
        decision = decide(configmap, self._env_name)
        if decision.refused:
            if self.refused != decision.reason:
                logger.error(
                    "refusing the namespace set; KEDA keeps the one in force",
                    extra={"reason": decision.reason},
                )
                self._metrics.refused.inc()
            self.refused = decision.reason
            return
        self.refused = None
        self._metrics.namespace_set_empty.set(1 if decision.reason == "empty" else 0)
        if self.decision == decision:
            return
        now = time.monotonic()
        if self.desired == (self.in_force or ""):
            self._first_change_at = now  # a new change begins
        self._changed_at = now
        logger.info(
            "namespace set read",
            extra={"state": decision.reason, "namespaces": _count(decision.value)},
        )
        self.decision = decision
        self._wake.set()

    def readiness(self) -> str | None:
        """None while KEDA runs with a decided set (a pending change included)."""
        if self.gave_up:
            return f"KEDA exited {self._failures} times in a row; giving up"
        if self.decision is None:
            return "the namespace set has not been read yet"
        if self.decision.value is None and not self.child.running:
            if self.decision.reason == "empty":
                return "the namespace set is empty: KEDA is kept stopped"
            return "the namespace set is not decided yet: KEDA is kept stopped"
        if self.last_error is not None:
            return self.last_error
        if not self.child.running and not self._restarting:
            return "KEDA is not running (restarting after it exited)"
        return None

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Until `stop` (or giving up); the exit status of this process."""
        self._stop = stop
        try:
            while not stop.is_set() and not self.gave_up:
                self._wake.clear()
                delay_s = await self._step()
                if delay_s == 0.0 or stop.is_set():
                    continue
                code = await self._wait(stop, delay_s)
                if code is not None and not stop.is_set():
                    await self._crashed(code)
        finally:
            await self._shutdown()
        return 1 if self.gave_up else 0

    async def _step(self) -> float | None:
        """Act on what is due; how long to sleep (0: act again, None: until an event)."""
        if self.decision is None:
            return None
        target, now = self.desired, time.monotonic()
        change = target != self.in_force
        restart = not change and bool(target) and not self.child.running
        if not change and not restart:
            return None
        due = now
        if change and self.in_force is not None:  # the first decision acts at once
            due = min(
                self._changed_at + self._policy.debounce_s,
                self._first_change_at + self._policy.max_wait_s,
            )
        due = max(due, self._not_before)  # a crash's backoff, or a stop that failed
        if due > now:
            return due - now
        await self._apply(target, "namespaces" if change else "crash")
        return 0.0

    async def _apply(self, target: str, reason: str) -> None:
        # Ready throughout a planned restart: the pod stays in the Service the adapter reaches
        # KEDA through, and the forwarder holds its connections meanwhile.
        self._restarting = True
        try:
            await self._restart(target, reason)
        finally:
            self._restarting = False

    async def _restart(self, target: str, reason: str) -> None:
        if self.child.running:
            if self._forwarder is not None:
                await self._forwarder.drain()  # close the adapter's connections while idle
            code = await self.child.stop()
            if code is None:
                self._retry_later("KEDA survived SIGKILL; not starting a second one")
                return
            self._ended(planned=True)
            await self._release()
        elif not self._exit_seen and self.child.pid is not None:
            self._ended(planned=False)  # it exited on its own just now, unnoticed yet
            await self._release()
        self.in_force = target
        self._metrics.namespaces.set(_count(target))
        if not target or (self._stop is not None and self._stop.is_set()):
            self.last_error = None
            return
        await self._release()
        try:
            await self.child.start(target)
        except ChildStartError as exc:
            logger.error("cannot start KEDA", extra={"error": str(exc)})
            self._count_failure(exc.code, ran_s=0.0)
            self._retry_later(str(exc))
            return
        self.last_error = None
        self._exit_seen = False
        self._started_at = time.monotonic()
        self._metrics.operator_up.set(1)
        self._metrics.operator_starts.labels(reason).inc()
        if self._forwarder is not None:
            self._forwarder.resume()

    def _retry_later(self, error: str) -> None:
        self.last_error = error
        self._not_before = time.monotonic() + self._policy.backoff_s(max(self._failures, 1))

    async def _wait(self, stop: asyncio.Event, timeout_s: float | None) -> int | None:
        """Sleep until an offer, `stop`, `timeout_s`, or KEDA exiting on its own (its status)."""
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
        ]
        exit_waiter = None
        if not self._exit_seen and self.child.pid is not None:
            exit_waiter = asyncio.ensure_future(self.child.wait())
            waiters.append(exit_waiter)
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if exit_waiter is not None and exit_waiter.done() and not exit_waiter.cancelled():
            return int(exit_waiter.result())
        return None

    async def _crashed(self, code: int) -> None:
        ran_s = time.monotonic() - self._started_at
        logger.warning("KEDA exited", extra={"code": code, "ran_s": round(ran_s, 3)})
        self._metrics.operator_exits.labels(str(code)).inc()
        self._ended(planned=False)
        await self._release()
        self._count_failure(code, ran_s)
        if not self.gave_up:
            self._not_before = time.monotonic() + self._policy.backoff_s(self._failures)

    def _count_failure(self, code: int, ran_s: float) -> None:
        self._failures = 1 if ran_s >= self._policy.healthy_after_s else self._failures + 1
        if self._failures > self._policy.max_restarts:
            self.gave_up = True
            logger.error(
                "KEDA keeps exiting; giving up", extra={"failures": self._failures, "code": code}
            )

    def _ended(self, *, planned: bool) -> None:
        self._exit_seen = True
        self._died_at = datetime.now(UTC)
        self._metrics.operator_up.set(0)
        if planned:
            self._failures = 0

    async def _release(self) -> None:
        """Release the Lease KEDA held when it exited (once per exit)."""
        died_at, self._died_at = self._died_at, None
        releaser = self._releaser
        if releaser is not None and died_at is not None and await releaser.release(died_at):
            self._metrics.lease_releases.inc()

    async def _shutdown(self) -> None:
        if self.child.running:
            await self.child.stop(self.stop_signal)
        if not self.child.running:
            if not self._exit_seen:
                self._ended(planned=True)
            await self._release()


def _count(value: str | None) -> int:
    return len(value.split(",")) if value else 0
