"""The control loop under fake time: debounce, bursts, max wait, minimum gap, removal
delay, crash backoff, giving up, empty sets, refused values, retries and resync.

The clock only moves when a test advances it, so every timing below is exact and no
test sleeps for real; the target is an in-memory stand-in for the operator.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reloader.child import ChildStartError
from reloader.control import Controller
from reloader.metrics import ReloaderMetrics
from reloader.schedule import CrashPolicy, SchedulePolicy
from reloader.targets import ApplyError
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache
from tenancy_common.tenancy import LabelValueRule, TenancyRule

KEY = "keda-tenancy.io/tenant"
DEFAULT_SCHEDULE = SchedulePolicy()
DEFAULT_CRASH = CrashPolicy()


async def settle() -> None:
    """Let every ready task run until the loop is idle (nothing here does real I/O)."""
    for _ in range(60):
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        entry = (self.t + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time forward, stopping at every deadline on the way so the loop reacts
        at the moment it asked for."""
        end = self.t + seconds
        while True:
            await settle()
            due = [at for at, future in self._sleepers if at <= end and not future.done()]
            if not due:
                break
            self.t = max(self.t, min(due))
            for at, future in self._sleepers:
                if at <= self.t and not future.done():
                    future.set_result(None)
        self.t = end
        await settle()

    async def run_until(self, done: Callable[[], bool], limit_s: float = 3600) -> None:
        """Jump from deadline to deadline until `done()`."""
        end = self.t + limit_s
        await settle()
        while not done():
            due = [at for at, future in self._sleepers if not future.done()]
            assert due, "nothing is scheduled"
            assert min(due) <= end, "not within the limit"
            self.t = max(self.t, min(due))
            for at, future in self._sleepers:
                if at <= self.t and not future.done():
                    future.set_result(None)
            await settle()


class FakeTarget:
    """Records what was put in force and when; crashes, start failures and API errors on demand."""

    def __init__(self, clock: FakeClock, *, process: bool = True) -> None:
        self.clock = clock
        self.process = process
        self.applied: list[tuple[float, str]] = []
        self.starts: list[tuple[float, str]] = []
        self.fail_with: list[Exception] = []
        self.shutdown_signal: signal.Signals | None = None
        self.exit_on_shutdown = 0
        self._running = False
        self._exit: asyncio.Future[int] | None = None
        self._exit_seen = True

    @property
    def running(self) -> bool | None:
        return self._running if self.process else None

    def exited(self) -> Coroutine[Any, Any, int] | None:
        if self._exit is None or self._exit_seen:
            return None
        return self._seen(self._exit)

    async def _seen(self, future: asyncio.Future[int]) -> int:
        code = await asyncio.shield(future)  # the controller cancels its waiter often
        self._exit_seen = True
        return code

    def crash(self, code: int) -> None:
        assert self._exit is not None
        assert self._running
        self._running = False
        self._exit.set_result(code)

    async def apply(self, value: str) -> bool:
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.applied.append((self.clock.t, value))
        acted = self._running or bool(value) or not self.process
        if self._running:
            self._running = False
            self._exit_seen = True
        if value and self.process:
            self._running = True
            self._exit = asyncio.get_running_loop().create_future()
            self._exit_seen = False
            self.starts.append((self.clock.t, value))
        return acted

    async def shutdown(self, sig: signal.Signals) -> int | None:
        self.shutdown_signal = sig
        if self._running:
            self._running = False
            return self.exit_on_shutdown
        return None

    def values(self) -> list[str]:
        return [value for _, value in self.applied]


class Harness:
    def __init__(
        self,
        *,
        schedule: SchedulePolicy = DEFAULT_SCHEDULE,
        crash: CrashPolicy = DEFAULT_CRASH,
        process: bool = True,
        resync_s: float = 0.0,
    ) -> None:
        self.clock = FakeClock()
        self.target = FakeTarget(self.clock, process=process)
        self.cache = NamespaceCache()
        self.metrics = ReloaderMetrics(CollectorRegistry())
        self.stop = asyncio.Event()
        self.controller = Controller(
            target=self.target,
            cache=self.cache,
            rule=TenancyRule((LabelValueRule(KEY),)),
            tenant=TenantName("alpha"),
            target_env="WATCH_NAMESPACE",
            schedule=schedule,
            crash=crash,
            metrics=self.metrics,
            clock=self.clock,
            resync_s=resync_s,
        )
        self.task: asyncio.Task[int] | None = None

    def listed(self, *names: str, tenant: str = "alpha") -> None:
        self.cache.replace(ns(name, tenant) for name in names)
        self.controller.wake()

    def put(self, name: str, tenant: str | None = "alpha", *, terminating: bool = False) -> None:
        self.cache.apply("MODIFIED", ns(name, tenant, terminating=terminating))
        self.controller.wake()

    def delete(self, name: str) -> None:
        self.cache.apply("DELETED", ns(name))
        self.controller.wake()

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.restarts.labels(**labels) if labels else getattr(self.metrics, name)
        return float(value._value.get())


def ns(name: str, tenant: str | None = "alpha", *, terminating: bool = False) -> Namespace:
    return Namespace(NamespaceName(name), {KEY: tenant} if tenant else {}, terminating)


@pytest.fixture
async def make() -> AsyncIterator[type[Harness]]:
    """Build a Harness and run its controller; stopped and awaited at the end."""
    started: list[Harness] = []

    class Running(Harness):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            self.task = asyncio.create_task(self.controller.run(self.stop))
            started.append(self)

    yield Running
    for harness in started:
        harness.stop.set()
        assert harness.task is not None
        await asyncio.wait_for(harness.task, 5)


def names(*items: str) -> str:
    return ",".join(items)


def starts_at(h: Harness) -> list[float]:
    return [round(t, 6) for t, _ in h.target.starts]


# -- start ---------------------------------------------------------------------------------


async def test_starts_only_after_the_initial_list_and_at_once(make: type[Harness]) -> None:
    h = make()
    await h.clock.advance(60)
    assert h.target.applied == []
    assert h.controller.readiness() == "the operator has not been started yet"
    h.listed("a2", "a1")
    await h.clock.advance(0)
    assert h.target.starts == [(60.0, "a1,a2")]  # no debounce for the first start
    assert h.controller.readiness() is None
    assert h.metric("", reason="initial") == 1


async def test_an_empty_set_never_starts_the_operator(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=2, min_interval_s=0))
    h.listed("b1", tenant="beta")
    await h.clock.advance(10)
    assert h.target.starts == []
    assert "no namespace selected" in str(h.controller.readiness())
    assert h.metric("empty") == 1
    h.put("a1")
    await h.clock.advance(1.9)
    assert h.target.starts == []
    await h.clock.advance(0.1)
    assert h.target.starts == [(12.0, "a1")]  # as soon as one appears (after the debounce)
    assert h.metric("empty") == 0
    h.delete("a1")  # the last one goes: stopped, not restarted with ""
    await h.clock.advance(2)
    assert h.target.running is False
    assert h.target.values() == ["", "a1", ""]
    assert [value for _, value in h.target.starts] == ["a1"]
    assert h.metric("", reason="empty") == 1
    assert "no namespace selected" in str(h.controller.readiness())


# -- coalescing ----------------------------------------------------------------------------


async def test_a_burst_of_200_gives_exactly_one_restart(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=2, max_wait_s=30, min_interval_s=5))
    h.listed("a000")
    await h.clock.advance(10)
    for i in range(1, 201):
        h.put(f"a{i:03d}")
        await h.clock.advance(0.005)  # one event every 5 ms for a second
    await h.clock.advance(60)
    assert len(h.target.starts) == 2
    at, value = h.target.starts[1]
    assert at == pytest.approx(10 + 199 * 0.005 + 2)  # the quiet period after the last event
    assert len(value.split(",")) == 201


async def test_continuous_churn_is_bounded_by_max_wait(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=2, max_wait_s=30, min_interval_s=5))
    h.listed("a0")
    await h.clock.advance(0)
    for i in range(1, 80):  # a change every second, never 2s of quiet
        h.put(f"a{i}")
        await h.clock.advance(1)
    assert starts_at(h)[:3] == [0.0, 30.0, 60.0]


async def test_restarts_keep_the_minimum_gap(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=0, max_wait_s=30, min_interval_s=5))
    h.listed("a0")
    await h.clock.advance(1)
    h.put("a1")  # due at once, but the last start was at 0
    await h.clock.advance(5)
    h.put("a2")
    await h.clock.advance(10)
    assert starts_at(h) == [0.0, 5.0, 10.0]


async def test_no_restart_when_nothing_changed(make: type[Harness]) -> None:
    h = make()
    h.listed("a1", "a2")
    await h.clock.advance(10)
    h.put("a1")  # same labels again (a resync, a MODIFIED of something else)
    h.put("b1", "beta")  # another tenant's namespace
    h.put("x1", None)  # nobody's
    h.put("a2", None)  # flaps out ...
    await h.clock.advance(1)
    h.put("a2")  # ... and back within the quiet period
    h.listed("a1", "a2")  # a relist with the same content
    await h.clock.advance(120)
    assert h.target.values() == ["a1,a2"]


async def test_removals_wait_for_the_removal_delay_moves_do_not(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=2, min_interval_s=0, removal_delay_s=20))
    h.listed("a1", "a2", "a3")
    await h.clock.advance(0)
    h.put("a3", None)  # lost its label: held
    await h.clock.advance(19.9)
    assert h.target.values() == ["a1,a2,a3"]
    await h.clock.advance(0.1)
    assert h.target.applied[-1] == (20.0, "a1,a2")
    h.put("a2", "beta")  # moved to another tenant: only the debounce
    await h.clock.advance(2)
    assert h.target.applied[-1] == (22.0, "a1")
    h.put("a9")  # additions are not held either
    await h.clock.advance(2)
    assert h.target.applied[-1] == (24.0, "a1,a9")
    h.put("a9", None)  # a held removal that turns into a move goes at once
    await h.clock.advance(5)
    h.put("a9", "beta")
    await h.clock.advance(0)
    assert h.target.applied[-1] == (29.0, "a1")


async def test_terminating_namespaces_stay_until_deleted(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=2, min_interval_s=0))
    h.listed("a1", "a2")
    await h.clock.advance(0)
    h.put("a2", terminating=True)
    await h.clock.advance(30)
    assert h.target.values() == ["a1,a2"]
    h.delete("a2")
    await h.clock.advance(2)
    assert h.target.values() == ["a1,a2", "a1"]


# -- crashes -------------------------------------------------------------------------------


async def test_crash_loop_backs_off_then_gives_up(make: type[Harness]) -> None:
    crash = CrashPolicy(max_restarts=5, backoff_initial_s=1, backoff_max_s=4, healthy_after_s=60)
    h = make(crash=crash)
    h.listed("a1")
    for _ in range(5):
        await h.clock.advance(10)
        h.target.crash(3)
    assert h.task is not None
    assert await asyncio.wait_for(h.task, 1) == 3
    # Crashes at 10, 20, 30, 40 and 50; backoff 1s, 2s, 4s, then capped at 4s; the
    # fifth consecutive failure gives up with the operator's exit status.
    assert starts_at(h) == [0.0, 11.0, 22.0, 34.0, 44.0]
    assert h.metric("consecutive_failures") == 5
    assert h.metrics.child_up._value.get() == 0
    assert "giving up" in str(h.controller.readiness())


async def test_backoff_doubles_and_resets_after_a_healthy_run(make: type[Harness]) -> None:
    crash = CrashPolicy(max_restarts=10, backoff_initial_s=1, backoff_max_s=60, healthy_after_s=60)
    h = make(crash=crash)
    h.listed("a1")
    await h.clock.advance(0)
    restarted_after = []
    for ran_s in (1, 1, 1, 100, 1):
        await h.clock.advance(ran_s)
        crashed_at, runs = h.clock.t, len(h.target.starts)
        h.target.crash(1)
        await settle()
        assert (
            h.controller.readiness() == "the operator is not running (restarting after it exited)"
        )
        await h.clock.run_until(lambda: len(h.target.starts) > runs)  # noqa: B023
        restarted_after.append(h.clock.t - crashed_at)
    assert restarted_after == [1, 2, 4, 1, 2]


async def test_namespace_changes_wait_for_the_crash_backoff(make: type[Harness]) -> None:
    crash = CrashPolicy(max_restarts=10, backoff_initial_s=8, backoff_max_s=60)
    h = make(schedule=SchedulePolicy(debounce_s=1, min_interval_s=0), crash=crash)
    h.listed("a1")
    await h.clock.advance(0)
    h.target.crash(2)
    await h.clock.advance(1)
    h.put("a2")
    await h.clock.advance(5)
    assert len(h.target.starts) == 1  # no early start that would dodge the backoff
    await h.clock.advance(2)
    assert h.target.starts[-1] == (8.0, "a1,a2")  # and the restart has the newest value
    assert h.metric("", reason="crash") == 1


async def test_start_failures_count_as_crashes(make: type[Harness]) -> None:
    h = make(crash=CrashPolicy(max_restarts=3, backoff_initial_s=1, backoff_max_s=1))
    h.target.fail_with = [ChildStartError(127, "cannot run /keda: not found")] * 3
    h.listed("a1")
    await h.clock.advance(10)
    assert h.task is not None
    assert await asyncio.wait_for(h.task, 1) == 127
    assert h.target.starts == []


# -- values that cannot go in ----------------------------------------------------------------


async def test_a_value_too_large_for_execve_is_refused(make: type[Harness]) -> None:
    h = make(schedule=SchedulePolicy(debounce_s=1, min_interval_s=0))
    h.listed("a1")
    await h.clock.advance(0)
    big = [f"a{i:05d}-" + "x" * 56 for i in range(2100)]  # 2100 x 64 bytes > 128 KiB
    for name in big:
        h.put(name)
    await h.clock.advance(30)
    assert h.target.values() == ["a1"]  # no restart: the running operator is kept
    assert h.target.running
    assert "too large" in str(h.controller.readiness())
    assert h.metrics.refused._value.get() == 1  # refused once, not on every event
    for name in big[1:]:
        h.delete(name)
    await h.clock.advance(1)
    assert h.target.values() == ["a1", f"{big[0]},a1"]
    assert h.controller.readiness() is None


async def test_apply_errors_are_retried_with_backoff(make: type[Harness]) -> None:
    h = make(
        schedule=SchedulePolicy(debounce_s=0, min_interval_s=0),
        crash=CrashPolicy(backoff_initial_s=1, backoff_max_s=60),
        process=False,
    )
    h.target.fail_with = [ApplyError("cannot update deployment: 403")] * 3
    h.listed("a1")
    await h.clock.advance(0.5)
    assert "403" in str(h.controller.readiness())
    await h.clock.advance(20)
    assert h.target.applied == [(7.0, "a1")]  # after 1 + 2 + 4 seconds
    assert h.controller.readiness() is None
    assert h.metrics.apply_errors._value.get() == 3


async def test_deployment_mode_resyncs(make: type[Harness]) -> None:
    h = make(process=False, resync_s=300, crash=CrashPolicy(backoff_initial_s=1, backoff_max_s=60))
    h.listed("a1")
    await h.clock.advance(700)
    assert h.target.applied == [(0.0, "a1"), (300.0, "a1"), (600.0, "a1")]
    h.target.fail_with = [ApplyError("503")] * 2  # a failed resync backs off, no busy loop
    await h.clock.advance(300)
    assert h.target.applied[-1] == (903.0, "a1")  # 900 failed, 901 failed, 903 went
    assert h.metrics.apply_errors._value.get() == 2


# -- stopping ------------------------------------------------------------------------------


async def test_stop_forwards_the_signal_and_returns_the_exit_status(make: type[Harness]) -> None:
    h = make()
    h.listed("a1")
    await h.clock.advance(0)
    h.target.exit_on_shutdown = 130
    h.controller.stop_signal = signal.SIGINT
    h.stop.set()
    assert h.task is not None
    assert await asyncio.wait_for(h.task, 1) == 130
    assert h.target.shutdown_signal == signal.SIGINT


async def test_stop_while_kept_stopped_exits_zero(make: type[Harness]) -> None:
    h = make()
    h.listed()
    await h.clock.advance(0)
    h.stop.set()
    assert h.task is not None
    assert await asyncio.wait_for(h.task, 1) == 0
