"""Process mode with --release-lease: a restarted operator does not wait out the Lease of
the one that just died, and a live holder's Lease is never taken."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from tenancy_common.lease import LeaseReleaser, format_micro_time
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import ChildLog, eventually, label, reloader_args, running_reloader

LEASE = ("keda-alpha", "alpha.operator.keda-tenancy.io")


def held_by(kube_api: FakeKubeAPI, holder: str, renewed: datetime | None = None) -> None:
    """The Lease as a leader leaves it after acquiring or renewing it."""
    stamp = format_micro_time(renewed or datetime.now(UTC))
    kube_api.put_lease(
        *LEASE,
        {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        },
    )


def holder(kube_api: FakeKubeAPI) -> str:
    return str(kube_api.leases[LEASE]["spec"]["holderIdentity"])


def releases(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("keda_tenancy_reloader_lease_releases_total") or 0.0


async def test_a_restart_releases_the_dead_childs_lease(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    args = reloader_args(kubeconfig, log.path, f"--release-lease={LEASE[0]}/{LEASE[1]}")
    async with running_reloader(args) as r:
        await eventually(lambda: log.starts() == ["a1"])
        held_by(kube_api, f"{socket.gethostname()}_first-child")  # the child became leader
        kube_api.relabel_new("a2", label("alpha"))
        await eventually(lambda: log.starts() == ["a1", "a1,a2"])
        assert holder(kube_api) == ""  # free for the new child at its first attempt
        assert releases(r.registry) == 1
        assert kube_api.requests["put lease"] == 1


async def test_a_live_or_foreign_holder_keeps_its_lease(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    args = reloader_args(kubeconfig, log.path, f"--release-lease={LEASE[0]}/{LEASE[1]}")
    async with running_reloader(args) as r:
        await eventually(lambda: log.starts() == ["a1"])
        held_by(kube_api, "keda-operator-other-pod_uuid")  # another replica leads
        kube_api.relabel_new("a2", label("alpha"))
        await eventually(lambda: log.starts() == ["a1", "a1,a2"])
        assert holder(kube_api) == "keda-operator-other-pod_uuid"
        # Held under our hostname but renewed after our child died: someone alive.
        held_by(kube_api, f"{socket.gethostname()}_x", datetime.now(UTC) + timedelta(seconds=5))
        kube_api.relabel_new("a3", label("alpha"))
        await eventually(lambda: len(log.starts()) == 3)
        assert holder(kube_api) == f"{socket.gethostname()}_x"
        assert releases(r.registry) == 0
        assert kube_api.requests["put lease"] == 0


async def test_a_crashed_child_is_released_too(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    args = reloader_args(
        kubeconfig,
        log.path,
        f"--release-lease={LEASE[0]}/{LEASE[1]}",
        "--backoff-initial=100ms",
        child=["--exit-code=3"],
    )
    held_by(kube_api, f"{socket.gethostname()}_crashed", datetime.now(UTC) - timedelta(seconds=1))
    async with running_reloader(args) as r:
        await eventually(lambda: len(log.starts()) >= 2)
        assert holder(kube_api) == ""
        assert releases(r.registry) >= 1


async def test_a_renewal_between_read_and_write_wins(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    from tenancy_common.kube import make_api_client  # noqa: PLC0415

    died = datetime.now(UTC)
    held_by(kube_api, "pod-a_uuid", died - timedelta(seconds=1))
    kube_api.renew_leases_after_get = True  # the holder renews just after our read
    api = await make_api_client(kubeconfig)
    try:
        releaser = LeaseReleaser(api, *LEASE)
        assert not await releaser.release(hostname="pod-a", died_at=died)
        assert holder(kube_api) == "pod-a_uuid"
        assert kube_api.requests["put lease"] == 1  # tried, refused with 409
        kube_api.leases.clear()  # no Lease at all: nothing to do, no error
        assert not await releaser.release(hostname="pod-a", died_at=died)
    finally:
        await api.close()


async def test_a_rolling_updates_new_pod_starts_its_operator_once_the_old_one_lets_go(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """The chart's process mode rolled (an upgrade): the old pod's operator still leads when
    the new pod starts. Its operator starts only once the Lease is free, and leads at once."""
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    held_by(kube_api, "keda-operator-old-pod_uuid")
    args = reloader_args(kubeconfig, log.path, f"--release-lease={LEASE[0]}/{LEASE[1]}")
    async with running_reloader(args) as r:
        await eventually(lambda: kube_api.requests["watch lease"] == 1)
        await eventually(lambda: r.health_port is not None)
        url = f"http://127.0.0.1:{r.health_port}/readyz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            # Ready meanwhile: the Deployment stops the old pod only once this one is ready.
            assert response.status == 200
            assert "waiting for the operator's Lease" in await response.text()
        await asyncio.sleep(0.3)
        assert log.starts() == []
        held_by(kube_api, "")  # the old pod's reloader released it at its shutdown
        await eventually(lambda: log.starts() == ["a1"], timeout_s=2)


async def test_shutdown_releases_the_lease_of_the_operator_it_stopped(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    args = reloader_args(kubeconfig, log.path, f"--release-lease={LEASE[0]}/{LEASE[1]}")
    async with running_reloader(args) as r:
        await eventually(lambda: log.starts() == ["a1"])
        held_by(kube_api, f"{socket.gethostname()}_child")  # the child became leader
        registry = r.registry
    assert holder(kube_api) == ""
    assert releases(registry) == 1


async def test_lease_wait_zero_starts_at_once(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    held_by(kube_api, "keda-operator-old-pod_uuid")
    args = reloader_args(
        kubeconfig, log.path, f"--release-lease={LEASE[0]}/{LEASE[1]}", "--lease-wait=0s"
    )
    async with running_reloader(args):
        await eventually(lambda: log.starts() == ["a1"])
        assert kube_api.requests["watch lease"] == 0
