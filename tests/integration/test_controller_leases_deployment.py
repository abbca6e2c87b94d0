"""The platform controller's Lease release (only on the kubelet's proof that the operator
stopped) and its deployment-mode apply, against the fake API."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tenancy_common.lease import format_micro_time
from tests.controller_harness import (
    OPERATOR_POD_LABELS,
    TENANT_LABEL,
    lease_name,
    published,
    register,
    running_controller,
    settled,
)
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import eventually


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def running(name: str = "keda-operator") -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [{"name": name, "state": {"running": {}}}]}


def terminated(finished: datetime) -> dict[str, Any]:
    return {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "keda-operator",
                "state": {"terminated": {"exitCode": 0, "finishedAt": format_micro_time(finished)}},
            }
        ],
    }


def held_by(kube_api: FakeKubeAPI, tenant: str, pod: str, renewed: datetime) -> None:
    kube_api.put_lease(
        f"keda-{tenant}",
        lease_name(tenant),
        {
            "holderIdentity": f"{pod}_0b6e4d1c-5c53-4f5d-9a43-0d1f8b3a7e55",
            "leaseDurationSeconds": 15,
            "acquireTime": format_micro_time(renewed),
            "renewTime": format_micro_time(renewed),
        },
    )


def holder(kube_api: FakeKubeAPI, tenant: str) -> str:
    return str(kube_api.leases[(f"keda-{tenant}", lease_name(tenant))]["spec"]["holderIdentity"])


async def test_a_lease_is_released_on_proof_of_termination_never_on_deletion_alone(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    renewed = datetime.now(UTC) - timedelta(seconds=5)
    held_by(kube_api, "alpha", "op-alpha", renewed)
    held_by(kube_api, "beta", "op-beta", renewed)
    kube_api.put_pod("keda-alpha", "op-alpha", OPERATOR_POD_LABELS, running())
    kube_api.put_pod("keda-beta", "op-beta", OPERATOR_POD_LABELS, running())
    registry = CollectorRegistry()
    async with running_controller(kubeconfig, registry=registry) as controller:

        def sample(name: str) -> float:
            return registry.get_sample_value(f"keda_tenancy_controller_{name}_total") or 0.0

        # Force-deleted (its node lost): DELETED without a terminated container is no proof.
        kube_api.delete_pod("keda-alpha", "op-alpha", grace_period_s=0)
        await eventually(lambda: sample("unproven_pod_deletions") == 1)
        await settled(controller, kube_api)
        assert holder(kube_api, "alpha").startswith("op-alpha_")
        assert sample("lease_releases") == 0

        # The kubelet reports beta's operator container terminated: released at once.
        kube_api.put_pod("keda-beta", "op-beta", OPERATOR_POD_LABELS, terminated(datetime.now(UTC)))
        await eventually(lambda: holder(kube_api, "beta") == "")
        assert sample("lease_releases") == 1
        assert holder(kube_api, "alpha").startswith("op-alpha_")


async def test_a_lease_renewed_after_the_pod_died_is_someone_alive_and_kept(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    died = datetime.now(UTC) - timedelta(seconds=10)
    held_by(kube_api, "alpha", "op-alpha", datetime.now(UTC))
    kube_api.put_pod("keda-alpha", "op-alpha", OPERATOR_POD_LABELS, terminated(died))
    # Another pod's operator holds the Lease: never released for op-alpha's death.
    kube_api.put_pod("keda-alpha", "op-other", OPERATOR_POD_LABELS, terminated(died))
    async with running_controller(kubeconfig) as controller:
        await settled(controller, kube_api)
        assert holder(kube_api, "alpha").startswith("op-alpha_")
        assert kube_api.requests["put lease"] == 0


async def test_deployment_mode_applies_watch_namespace_and_replicas(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "delta", mode="deployment")
    for name in ("d2", "d1"):
        kube_api.relabel_new(name, {TENANT_LABEL: "delta"})

    def operator() -> tuple[int, str | None]:
        deployment = kube_api.deployments[("keda-delta", "keda-operator")]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        return deployment["spec"]["replicas"], env.get("WATCH_NAMESPACE")

    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: operator() == (1, "d1,d2"))
        assert published(kube_api, "delta") == "d1,d2"
        assert kube_api.applied_by == {"keda-tenancy-controller"}
        # The bindings were made before the Deployment was told about the namespaces.
        assert kube_api.operations.index("patch deployment") > max(
            kube_api.operations.index(f"create rolebinding {ns}") for ns in ("d1", "d2")
        )
        for name in ("d1", "d2"):
            kube_api.relabel(name, {TENANT_LABEL: None})
        # No namespace: scaled to zero, never an empty WATCH_NAMESPACE (all namespaces).
        await eventually(lambda: operator()[0] == 0)
        assert operator()[1] == "d1,d2"
        await settled(controller, kube_api)
        applies = kube_api.requests["apply deployment"]
        await settled(controller, kube_api)
        assert kube_api.requests["apply deployment"] == applies  # nothing sent when it matches


async def test_label_change_to_published_is_timed_for_changes_not_for_the_first_lists(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    kube_api.relabel_new("a1", {TENANT_LABEL: "alpha"})
    registry = CollectorRegistry()
    name = "keda_tenancy_controller_namespace_change_to_published_seconds_count"
    async with running_controller(kubeconfig, registry=registry) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1")
        await settled(controller, kube_api)
        assert (registry.get_sample_value(name) or 0) == 0
        kube_api.relabel_new("a2", {TENANT_LABEL: "alpha"})
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2")
        await eventually(lambda: registry.get_sample_value(name) == 1)


async def test_the_health_port_answers_probes_and_metrics(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha", bindable=False)  # its namespace waits for a binding
    kube_api.relabel_new("a1", {TENANT_LABEL: "alpha"})
    async with running_controller(kubeconfig) as controller:
        await eventually(
            lambda: controller.health_port is not None and "alpha" in controller.errors
        )
        base = f"http://127.0.0.1:{controller.health_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/readyz") as response:
                text = await response.text()
                assert response.status == 200, text
                assert "[!]tenants: 1 tenants failing: alpha:" in text
            async with session.get(f"{base}/livez") as response:
                assert response.status == 200
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
        assert "keda_tenancy_controller_tenants 1.0" in metrics
        assert 'keda_tenancy_controller_reconcile_errors_total{tenant="alpha"}' in metrics
