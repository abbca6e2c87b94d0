"""keda-tenancy-operator-pod --mode=deployment: KEDA starts only once its Lease is free or
expired (so it leads at its first attempt), and the Lease is released when KEDA exits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fakes.kube_api import FakeKubeAPI
from tests.operator_pod_harness import CHILD, HOSTNAME, LEASE, NAMESPACE, http_get, running_pod
from tests.reloader_harness import ChildLog, eventually

RENEWED = "2026-01-01T00:00:00.000000Z"


def deployment_args(kubeconfig: str, log: Path, *flags: str) -> list[str]:
    return [
        "--mode=deployment",
        f"--kubeconfig={kubeconfig}",
        f"--lease={NAMESPACE}/{LEASE}",
        "--grace-period=2s",
        "--request-timeout=1s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
        *flags,
        "--",
        *CHILD,
        f"--log={log}",
    ]


def held_by(holder: str, duration_s: int = 15) -> dict[str, object]:
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": duration_s,
        "acquireTime": RENEWED,
        "renewTime": RENEWED,
    }


async def test_waits_for_a_held_lease_and_starts_keda_when_it_is_released(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.put_lease(NAMESPACE, LEASE, held_by("keda-operator-old-pod_1"))
    async with running_pod(
        deployment_args(kubeconfig, log.path), environ={"WATCH_NAMESPACE": "a1,a2"}
    ) as pod:
        await eventually(lambda: pod.deployment is not None and pod.deployment.phase == "waiting")
        await asyncio.sleep(0.5)
        assert log.starts() == []  # the old pod's KEDA still leads
        assert pod.probes is not None
        assert pod.probes.port is not None
        status, body = await http_get(pod.probes.port, "/readyz")
        assert status == 200  # ready: the Deployment may stop the old pod, which frees it
        assert "waiting for KEDA's Lease to be free" in body
        kube_api.put_lease(NAMESPACE, LEASE, held_by(""))  # the old pod released it
        await eventually(lambda: log.starts() == ["a1,a2"])  # its env as the Deployment has it


async def test_starts_keda_when_a_held_lease_expires(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """A holder that stopped renewing (a pod gone without releasing) is waited out, once."""
    log = ChildLog(tmp_path / "child.log")
    kube_api.put_lease(NAMESPACE, LEASE, held_by("keda-operator-lost-pod_1", duration_s=1))
    async with running_pod(deployment_args(kubeconfig, log.path, "--lease-wait=1m")):
        await asyncio.sleep(0.5)
        assert log.starts() == []
        await eventually(lambda: len(log.starts()) == 1, timeout_s=5)


async def test_a_lease_of_an_earlier_run_of_this_pod_is_released_and_keda_starts_at_once(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.put_lease(NAMESPACE, LEASE, held_by(f"{HOSTNAME}_earlier"))
    async with running_pod(deployment_args(kubeconfig, log.path, "--lease-wait=1m")):
        await eventually(lambda: len(log.starts()) == 1)
        assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""


async def test_releases_the_lease_when_keda_exits_only_if_this_pods_keda_holds_it(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    async with running_pod(deployment_args(kubeconfig, log.path)) as pod:
        await eventually(lambda: len(log.starts()) == 1)  # no Lease at all: free
        kube_api.put_lease(NAMESPACE, LEASE, held_by(f"{HOSTNAME}_keda"))  # KEDA leads
    assert pod.task.result() == 0  # type: ignore[attr-defined]
    assert len(log.events("signal")) == 1
    assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""

    log2 = ChildLog(tmp_path / "child2.log")
    kube_api.put_lease(NAMESPACE, LEASE, held_by(""))
    async with running_pod(deployment_args(kubeconfig, log2.path)):
        await eventually(lambda: len(log2.starts()) == 1)
        kube_api.put_lease(NAMESPACE, LEASE, held_by("keda-operator-new-pod_7"))
    assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == (
        "keda-operator-new-pod_7"
    )
