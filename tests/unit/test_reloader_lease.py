"""Which Leases the reloader may release: only a dead process's, never a live holder's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reloader.lease_gate import verdict
from tenancy_common.lease import format_micro_time, holder_hostname, release_for

DIED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
NOW = DIED + timedelta(seconds=1)


def lease(holder: str, renewed: datetime | None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "alpha.operator.keda-tenancy.io", "resourceVersion": "41"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "leaseTransitions": 3,
            **({"renewTime": format_micro_time(renewed)} if renewed else {}),
            **spec,
        },
    }


@pytest.mark.parametrize(
    ("identity", "hostname"),
    [
        ("keda-operator-7d9f-x2x_0b9c3f4e-5d6a-4b1e-9f00-1234567890ab", "keda-operator-7d9f-x2x"),
        ("host.example.com_abc", "host.example.com"),
        ("no-separator", ""),
        ("trailing_", ""),
        ("", ""),
    ],
)
def test_holder_hostname(identity: str, hostname: str) -> None:
    assert holder_hostname(identity) == hostname


def test_a_dead_holders_lease_is_released_like_client_go_does() -> None:
    before = lease("pod-a_uuid-1", DIED - timedelta(seconds=2))
    released = release_for(before, hostname="pod-a", died_at=DIED, now=NOW)
    assert released is not None
    assert released["spec"]["holderIdentity"] == ""
    assert released["spec"]["leaseDurationSeconds"] == 1
    assert (
        released["spec"]["renewTime"] == released["spec"]["acquireTime"] == format_micro_time(NOW)
    )
    assert released["spec"]["leaseTransitions"] == 3  # the next holder counts the transition
    assert released["metadata"]["resourceVersion"] == "41"  # the write's precondition
    assert before["spec"]["holderIdentity"] == "pod-a_uuid-1"  # the input is not changed


@pytest.mark.parametrize(
    ("why", "before"),
    [
        ("another host holds it", lease("pod-b_uuid-2", DIED - timedelta(seconds=2))),
        ("renewed after the death: alive", lease("pod-a_uuid-3", DIED + timedelta(milliseconds=1))),
        ("renewed at the very moment", lease("pod-a_uuid-3", DIED)),
        ("already released", lease("", DIED - timedelta(seconds=2))),
        ("no renew time to judge by", lease("pod-a_uuid-1", None)),
        ("an unparsable renew time", lease("pod-a_uuid-1", None, renewTime="yesterday")),
        ("a hostname prefix is not the hostname", lease("pod-a-2_uuid", DIED - timedelta(1))),
    ],
)
def test_never_a_live_or_foreign_holder(why: str, before: dict[str, Any]) -> None:
    assert release_for(before, hostname="pod-a", died_at=DIED, now=NOW) is None, why


def test_acquire_time_judges_when_never_renewed() -> None:
    before = lease("pod-a_u", None, acquireTime=format_micro_time(DIED - timedelta(seconds=1)))
    assert release_for(before, hostname="pod-a", died_at=DIED, now=NOW) is not None


def test_no_hostname_releases_nothing() -> None:
    before = lease("_uuid", DIED - timedelta(seconds=2))
    assert release_for(before, hostname="", died_at=DIED, now=NOW) is None


def test_a_pods_operator_died_when_its_container_terminated() -> None:
    from reloader.operator_pods import died_at  # noqa: PLC0415

    def pod(state: dict[str, Any], name: str = "keda-operator") -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"name": name, "state": state}]}}

    finished = {"terminated": {"finishedAt": "2026-12-01T12:00:00Z"}}
    # Whole seconds from the kubelet: the death was within the second after.
    assert died_at(pod(finished), "keda-operator") == DIED + timedelta(seconds=1)
    precise = {"terminated": {"finishedAt": "2026-12-01T12:00:00.250000Z"}}
    assert died_at(pod(precise), "keda-operator") == DIED + timedelta(milliseconds=250)
    assert died_at(pod({"running": {}}), "keda-operator") is None
    assert died_at(pod({"waiting": {}}), "keda-operator") is None
    assert died_at(pod(finished, name="sidecar"), "keda-operator") is None
    assert died_at({"status": {}}, "keda-operator") is None


@pytest.mark.parametrize(
    ("holder", "expected"),
    [
        ("", "free"),  # released, as client-go and the supervisor release one
        ("keda-operator-7f9c-new_5d1a", "own"),  # this pod's earlier container
        ("keda-operator-7f9c-old_1b4e", "held"),
        ("keda-operator-7f9c-new", "held"),  # not a controller-runtime identity
        ("keda-operator-7f9c-new-x_5d1a", "held"),  # a longer pod name is someone else
    ],
)
def test_when_the_supervisor_may_start_the_operator(holder: str, expected: str) -> None:
    assert verdict(lease(holder, NOW), "keda-operator-7f9c-new") == expected


def test_no_lease_at_all_is_free() -> None:
    assert verdict(None, "keda-operator-7f9c-new") == "free"


def test_only_the_kubelets_report_proves_an_operator_stopped() -> None:
    """A pod in a terminal phase has stopped its containers for good; a pod that is merely
    being deleted (deletionTimestamp) or shows its container running or waiting proves
    nothing, whatever event it came with."""
    from reloader.operator_pods import died_at, runs_container  # noqa: PLC0415

    def pod(phase: str, state: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        statuses = [{"name": "keda-operator", "state": state}]
        return {"metadata": metadata, "status": {"phase": phase, "containerStatuses": statuses}}

    before = datetime.now(UTC)
    assert died_at(pod("Failed", {"running": {}}), "keda-operator") is not None  # podgc, evicted
    assert died_at(pod("Succeeded", {"waiting": {}}), "keda-operator") is not None
    assert (died_at(pod("Failed", {"running": {}}), "keda-operator") or before) >= before
    deleting = {"deletionTimestamp": "2026-12-01T12:00:00Z"}
    assert died_at(pod("Running", {"running": {}}, **deleting), "keda-operator") is None
    assert died_at(pod("Pending", {"waiting": {}}), "keda-operator") is None
    assert died_at(pod("Failed", {"running": {}}), "other") is None  # not an operator pod
    assert runs_container(pod("Running", {"running": {}}), "keda-operator")
    assert runs_container({"spec": {"containers": [{"name": "keda-operator"}]}}, "keda-operator")
    assert not runs_container(pod("Running", {"running": {}}), "other")
