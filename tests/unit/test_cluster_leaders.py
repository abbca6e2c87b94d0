"""The cluster scenarios' two-leaders check (tests/e2e/cluster/leaders.py), on made-up
histories: what it must flag, and what a correct hand-over looks like."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.e2e.cluster.leaders import (
    Instance,
    LeaseRecord,
    lease_violations,
    merge_runs,
    overlapping_leaders,
    parse_log,
)

T0 = datetime(2026, 12, 7, 16, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held(holder: str, renewed: float, acquired: float = 0.0) -> LeaseRecord:
    return LeaseRecord(holder, at(renewed), at(acquired), 15)


def run(pod: str, *lines: tuple[float, str], finished: float | None = None) -> Instance:
    return Instance(
        pod, [(at(s), text) for s, text in lines], at(finished) if finished is not None else None
    )


def keda(pod: str, acquired: float, stopped: float | None = None) -> Instance:
    lines = [
        (acquired - 1, '{"msg": "starting the operator"}'),
        (acquired, "successfully acquired lease ns/l"),
    ]
    if stopped is not None:
        lines.append((stopped, '{"msg": "operator stopped"}'))
    return run(pod, *lines)


def test_a_release_while_the_holders_keda_runs_is_flagged() -> None:
    """The defect: the reloader released a relabelled (or force-deleted) pod's Lease."""
    records = [held("p_1", 10), held("", 10.5, 10.5), held("q_2", 13, 13)]
    found = lease_violations(records, [keda("p", 0), keda("q", 13)])
    assert len(found) == 1
    assert "p_1" in found[0]
    assert overlapping_leaders([keda("p", 0), keda("q", 13)], records)


def test_a_release_after_the_holders_keda_stopped_or_an_expiry_is_not() -> None:
    released = [held("p_1", 10), held("", 11.2, 11.2), held("q_2", 13, 13)]
    assert lease_violations(released, [keda("p", 0, stopped=11), keda("q", 13)]) == []
    assert overlapping_leaders([keda("p", 0, stopped=11), keda("q", 13)], released) == []
    expired = [held("p_1", 10), held("q_2", 41, 41)]  # p stopped renewing: 15 s later, q took it
    assert lease_violations(expired, [keda("p", 0), keda("q", 41)]) == []
    assert overlapping_leaders([keda("p", 0), keda("q", 41)], expired) == []
    assert overlapping_leaders([keda("p", 0), keda("q", 20)], expired)  # before it expired
    # A run whose container ended (its log stream closed) stopped by its last line.
    ended = run("p", (0, "successfully acquired lease ns/l"), (10.8, "bye"), finished=12)
    assert lease_violations(released, [ended]) == []


def test_timestamps_and_runs_read_twice() -> None:
    lines = parse_log(
        "2026-12-07T16:00:01.123456789Z successfully acquired lease ns/l\n"
        '2026-12-07T16:00:02Z {"msg": "operator stopped"}\nno stamp\n'
    )
    assert lines == [
        (at(1.123456), "successfully acquired lease ns/l"),
        (at(2), '{"msg": "operator stopped"}'),
    ]
    followed = run("p", (0, "a"), (1, "b"), finished=5)
    read_again = run("p", (0, "a"))
    other = run("q", (0, "a"))
    merged = merge_runs([followed, read_again, other])
    assert [(r.pod, len(r.lines), r.finished_at) for r in merged] == [
        ("p", 2, at(5)),
        ("q", 1, None),
    ]
