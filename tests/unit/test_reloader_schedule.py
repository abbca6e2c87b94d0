"""The restart schedule with fake time: each case is a script of observations and the
answer `due_in` must give afterwards."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reloader.schedule import CrashPolicy, RestartSchedule, SchedulePolicy, crash_backoff_s

POLICY = SchedulePolicy(debounce_s=2, max_wait_s=10, min_interval_s=5, removal_delay_s=4)


@dataclass(frozen=True)
class Seen:
    """observe(at, desired, in_force, urgent)."""

    at: float
    desired: str
    in_force: str | None
    urgent: bool = False


@dataclass(frozen=True)
class Restarted:
    at: float


@dataclass(frozen=True)
class Failed:
    at: float
    retry_in_s: float


Step = Seen | Restarted | Failed

CASES: list[tuple[str, list[Step], float, float | None]] = [
    ("nothing pending", [], 0, None),
    ("nothing in force yet: debounced like any change", [Seen(0, "a", None)], 0, 2),
    ("equal value: nothing to do", [Seen(0, "a", "a")], 0, None),
    ("an addition waits for the quiet period", [Seen(100, "a,b", "a")], 100, 2),
    (
        "quiet period restarts with each change",
        [Seen(100, "a,b", "a"), Seen(101.5, "a,b,c", "a")],
        101.5,
        2,
    ),
    ("due once quiet", [Seen(100, "a,b", "a"), Seen(101.5, "a,b,c", "a")], 103.5, 0),
    (
        "an unrelated event does not extend the quiet period",
        [Seen(100, "a,b", "a"), Seen(101.5, "a,b", "a")],
        102,
        0,
    ),
    (
        "max wait bounds churn",
        [Seen(float(t), f"a,{t}", "a") for t in range(11)],
        10,
        0,
    ),
    ("a flap back cancels", [Seen(0, "a,b", "a"), Seen(1, "a", "a")], 5, None),
    ("removal only: held", [Seen(0, "a", "a,b")], 0, 4),
    # Not held, and b's removal is not put off by the addition: due 2 s after it was seen.
    ("removal then addition: not held", [Seen(0, "a", "a,b"), Seen(1, "a,c", "a,b")], 1, 1),
    ("a move to another tenant is not held", [Seen(0, "a", "a,b", urgent=True)], 0, 2),
    (
        "a held removal that becomes a move is released",
        [Seen(0, "a", "a,b"), Seen(1, "a", "a,b", urgent=True)],
        1,
        1,
    ),
    ("emptying is a removal too", [Seen(0, "", "a")], 0, 4),
    ("from empty: an addition", [Seen(0, "a", "")], 0, 2),
    ("minimum gap after a restart", [Restarted(10), Seen(10, "a,b", "a")], 10, 5),
    ("the gap counts from the restart", [Restarted(10), Seen(14, "a,b", "a")], 14, 2),
    # A new tenant: its first namespace not readable yet, the operator was kept stopped ("" put
    # in force at 10); readable at 11, it starts after the quiet period, not 5 s after 10.
    ("no gap after a stop: nothing runs to restart", [Restarted(10), Seen(11, "a", "")], 11, 2),
    ("after a stop, the next restart keeps its gap", [Restarted(13), Seen(14, "a,b", "a")], 14, 4),
    # The RoleBinding manager removes a namespace's binding a fixed time after it left: the old
    # operator must be stopped by then, neither churn nor the minimum gap may put it off.
    (
        "churn does not put off a removal",
        [Seen(0, "a,c", "a,b"), Seen(1.5, "a,c,d", "a,b"), Seen(3, "a,c,d,e", "a,b")],
        3,
        0,
    ),
    ("the minimum gap does not hold a removal", [Restarted(10), Seen(10, "a", "a,b", True)], 10, 2),
    ("nor a held one beyond its hold", [Restarted(10), Seen(10, "a", "a,b")], 10, 4),
    (
        "a removal taken back is an addition again",
        [Restarted(10), Seen(10, "a", "a,b", True), Seen(11, "a,b,c", "a,b")],
        11,
        4,
    ),
    ("a failure defers the retry", [Seen(0, "a,b", "a"), Failed(2, 8)], 2, 8),
    ("a failed removal too", [Seen(0, "a", "a,b", True), Failed(2, 8)], 2, 8),
    (
        "a restart clears the failure",
        [Seen(0, "a,b", "a"), Failed(2, 8), Restarted(3), Seen(20, "a,b,c", "a,b")],
        20,
        2,
    ),
]


@pytest.mark.parametrize(
    ("steps", "now", "due"), [pytest.param(s, n, d, id=i) for i, s, n, d in CASES]
)
def test_schedule(steps: list[Step], now: float, due: float | None) -> None:
    schedule = RestartSchedule(POLICY)
    for step in steps:
        if isinstance(step, Seen):
            schedule.observe(step.at, step.desired, step.in_force, urgent=step.urgent)
        elif isinstance(step, Restarted):
            schedule.restarted(step.at)
        else:
            schedule.failed(step.at, step.retry_in_s)
    assert schedule.due_in(now) == due


def test_a_burst_coalesces_into_one_restart() -> None:
    schedule = RestartSchedule(SchedulePolicy(debounce_s=2, max_wait_s=30, min_interval_s=5))
    running, now, restarts = "a0", 0.0, []
    names = ["a0"]
    for i in range(200):
        names.append(f"n{i:03d}")
        schedule.observe(now, ",".join(names), running)
        if schedule.due_in(now) == 0:
            restarts.append(now)
            schedule.restarted(now)
        now += 0.005
    now += 2
    assert schedule.due_in(now) == 0
    assert schedule.pending == ",".join(names)
    assert restarts == []


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0), (1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (20, 30), (10_000, 30)],
)
def test_crash_backoff(failures: int, delay: float) -> None:
    assert crash_backoff_s(failures, 1, 30) == delay
    assert CrashPolicy(backoff_initial_s=1, backoff_max_s=30).backoff_s(failures) == delay
