"""Deployment mode with --release-lease: a rolling update's old operator pod, once the kubelet
reports its operator stopped, does not keep the standby waiting for its Lease; live pods and
strangers keep theirs, and so does a pod that merely left the API or the Deployment's selector
(relabelled, force-deleted) with its KEDA possibly still running: that Lease expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from tenancy_common.lease import format_micro_time
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.test_reloader_deployment import deployment_args
from tests.reloader_harness import eventually, label, running_reloader

LEASE = ("keda-alpha", "alpha.operator.keda-tenancy.io")
POD_LABELS = {"app.kubernetes.io/name": "operator", "app.kubernetes.io/instance": "alpha"}


def held_by(kube_api: FakeKubeAPI, holder: str, renewed: datetime) -> None:
    stamp = format_micro_time(renewed)
    kube_api.put_lease(
        *LEASE,
        {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": stamp},
    )


def holder(kube_api: FakeKubeAPI) -> str:
    return str(kube_api.leases[LEASE]["spec"]["holderIdentity"])


def running() -> dict[str, Any]:
    return {"containerStatuses": [{"name": "keda-operator", "state": {"running": {}}}]}


def terminated(at: datetime) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "finishedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    return {"containerStatuses": [{"name": "keda-operator", "state": state}]}


def operator_deployment(kube_api: FakeKubeAPI) -> None:
    kube_api.add_deployment(
        "keda-alpha",
        "keda-operator",
        [{"name": "keda-operator", "env": [{"name": "WATCH_NAMESPACE", "value": "a1"}]}],
    )
    kube_api.deployments[("keda-alpha", "keda-operator")]["spec"]["selector"] = {
        "matchLabels": POD_LABELS
    }


def releases(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("keda_tenancy_reloader_lease_releases_total") or 0.0


def unproven(registry: CollectorRegistry) -> float:
    """Operator pods deleted with no report that their operator stopped (a force deletion)."""
    name = "keda_tenancy_reloader_operator_pods_deleted_unproven_total"
    return registry.get_sample_value(name) or 0.0


ARGS = f"--release-lease={LEASE[0]}/{LEASE[1]}"


async def test_the_old_pods_lease_is_released_when_its_operator_stops(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-old", POD_LABELS, running())
    kube_api.put_pod("keda-alpha", "keda-operator-new", POD_LABELS, running())  # the standby
    kube_api.put_pod("keda-alpha", "unrelated", {"app": "x"}, terminated(datetime.now(UTC)))
    held_by(kube_api, "keda-operator-old_u1", datetime.now(UTC) - timedelta(seconds=3))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        assert holder(kube_api) == "keda-operator-old_u1"  # alive: kept
        # The rolling update stops the old pod: its container has terminated.
        kube_api.put_pod(
            "keda-alpha", "keda-operator-old", POD_LABELS, terminated(datetime.now(UTC))
        )
        await eventually(lambda: holder(kube_api) == "")
        assert releases(r.registry) == 1


async def test_a_restarted_or_stranger_pod_keeps_the_lease_and_a_deleted_dead_one_releases(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-a", POD_LABELS, running())
    kube_api.put_pod("keda-alpha", "keda-operator-b", POD_LABELS, running())
    held_by(kube_api, "keda-operator-b_u2", datetime.now(UTC) - timedelta(seconds=1))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        kube_api.put_pod("keda-alpha", "keda-operator-a", POD_LABELS, terminated(datetime.now(UTC)))
        await eventually(lambda: kube_api.requests["get lease"] >= 1)
        assert holder(kube_api) == "keda-operator-b_u2"  # a is not the holder
        # b's container restarted in place and renewed since: its new process is the leader.
        held_by(kube_api, "keda-operator-b_u3", datetime.now(UTC) + timedelta(seconds=2))
        gets = kube_api.requests["get lease"]
        kube_api.put_pod("keda-alpha", "keda-operator-b", POD_LABELS, terminated(datetime.now(UTC)))
        await eventually(lambda: kube_api.requests["get lease"] > gets)
        assert holder(kube_api) == "keda-operator-b_u3"
        assert releases(r.registry) == 0
        # Then b is deleted, its last status terminated, and had not renewed after its death
        # (the watch missed its last update: the DELETED event carries the same proof).
        held_by(kube_api, "keda-operator-b_u3", datetime.now(UTC) - timedelta(seconds=1))
        kube_api.delete_pod("keda-alpha", "keda-operator-b")
        await eventually(lambda: holder(kube_api) == "")
        assert releases(r.registry) == 1


async def test_a_relabelled_running_operator_pod_keeps_its_lease_until_it_stops(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """Relabelling a pod takes it out of the Deployment's selector (a watch by that selector
    gets DELETED) and its ReplicaSet starts a replacement, but its KEDA runs on and leads:
    releasing its Lease would let the replacement's KEDA lead beside it."""
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-old", POD_LABELS, running())
    kube_api.put_pod("keda-alpha", "keda-operator-new", POD_LABELS, running())
    held_by(kube_api, "keda-operator-old_u1", datetime.now(UTC) - timedelta(seconds=3))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        debugged = {"app.kubernetes.io/name": "operator-debug"}
        kube_api.put_pod("keda-alpha", "keda-operator-old", debugged, running())
        # A later event on the same watch: once it is counted, the relabel was handled too.
        kube_api.delete_pod("keda-alpha", "keda-operator-new")
        await eventually(lambda: unproven(r.registry) == 1 or kube_api.requests["put lease"])
        assert holder(kube_api) == "keda-operator-old_u1"
        assert kube_api.requests["put lease"] == 0
        # Out of the selector, it is still followed: its operator stops, the Lease is freed.
        kube_api.put_pod("keda-alpha", "keda-operator-old", debugged, terminated(datetime.now(UTC)))
        await eventually(lambda: holder(kube_api) == "")
        assert releases(r.registry) == 1


async def test_a_force_deleted_pod_last_seen_running_keeps_its_lease(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """`kubectl delete --force --grace-period=0` removes the pod from the API at once, while
    the kubelet may still be running (or unable to stop) its KEDA: no proof it stopped, so the
    Lease is left to expire on its own (KEDA's lease duration)."""
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-old", POD_LABELS, running())
    held_by(kube_api, "keda-operator-old_u1", datetime.now(UTC) - timedelta(seconds=3))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        kube_api.delete_pod("keda-alpha", "keda-operator-old")
        await eventually(lambda: unproven(r.registry) == 1 or kube_api.requests["put lease"])
        assert holder(kube_api) == "keda-operator-old_u1"
        assert kube_api.requests["put lease"] == 0
        assert releases(r.registry) == 0


async def test_a_graceful_deletion_releases_once_the_kubelet_reports_the_operator_stopped(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """`kubectl delete pod` (its supervisor SIGKILLed, so nobody else releases): marked for
    deletion, still running: kept; its container reported terminated: released at once."""
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-old", POD_LABELS, running())
    kube_api.put_pod("keda-alpha", "keda-operator-new", POD_LABELS, running())
    held_by(kube_api, "keda-operator-old_u1", datetime.now(UTC) - timedelta(seconds=3))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        kube_api.delete_pod("keda-alpha", "keda-operator-old", grace_period_s=30)
        kube_api.delete_pod("keda-alpha", "keda-operator-new")  # a later event, as above
        await eventually(lambda: unproven(r.registry) == 1)
        assert holder(kube_api) == "keda-operator-old_u1"  # terminating, but still running
        kube_api.put_pod(
            "keda-alpha", "keda-operator-old", POD_LABELS, terminated(datetime.now(UTC))
        )
        await eventually(lambda: holder(kube_api) == "")
        assert releases(r.registry) == 1
        kube_api.finalize_pod("keda-alpha", "keda-operator-old")  # the kubelet removes it
        gets = kube_api.requests["get lease"]
        await eventually(lambda: kube_api.requests["get lease"] > gets)
        assert releases(r.registry) == 1  # nothing more to release
