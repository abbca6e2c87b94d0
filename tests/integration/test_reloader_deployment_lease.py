"""Deployment mode with --release-lease: a rolling update's old operator pod, once dead, does
not keep the standby waiting for its Lease; live pods and strangers keep theirs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from reloader.lease import format_micro_time
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


async def test_a_deleted_pod_releases_and_a_live_one_does_not(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    operator_deployment(kube_api)
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.put_pod("keda-alpha", "keda-operator-a", POD_LABELS, running())
    kube_api.put_pod("keda-alpha", "keda-operator-b", POD_LABELS, running())
    held_by(kube_api, "keda-operator-b_u2", datetime.now(UTC) - timedelta(seconds=1))
    async with running_reloader([*deployment_args(kubeconfig), ARGS]) as r:
        await eventually(lambda: kube_api.requests["watch pods"] >= 1)
        kube_api.delete_pod("keda-alpha", "keda-operator-a")  # not the holder
        await eventually(lambda: kube_api.requests["get lease"] >= 1)
        assert holder(kube_api) == "keda-operator-b_u2"
        # b's container restarted in place and renewed since: its new process is the leader.
        held_by(kube_api, "keda-operator-b_u3", datetime.now(UTC) + timedelta(seconds=2))
        gets = kube_api.requests["get lease"]
        kube_api.put_pod("keda-alpha", "keda-operator-b", POD_LABELS, terminated(datetime.now(UTC)))
        await eventually(lambda: kube_api.requests["get lease"] > gets)
        assert holder(kube_api) == "keda-operator-b_u3"
        assert releases(r.registry) == 0
        # Then b is deleted (and had not renewed after its death): released.
        held_by(kube_api, "keda-operator-b_u3", datetime.now(UTC) - timedelta(seconds=1))
        kube_api.delete_pod("keda-alpha", "keda-operator-b")
        await eventually(lambda: holder(kube_api) == "")
        assert releases(r.registry) == 1
