"""keda-tenancy-supervise: the operator starts only once its Lease is free (so it leads at its
first attempt instead of waiting as a standby), and its Lease is released the moment it exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from reloader.operator_health import OperatorHealthSettings, probe_url
from reloader.supervise import Supervisor, SupervisorConfig, parse_config
from tenancy_common.lease import format_micro_time
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import CHILD, ChildLog, eventually

LEASE = ("keda-alpha", "alpha.operator.keda-tenancy.io")
POD = "keda-operator-7f9c-new"


def hold(
    kube_api: FakeKubeAPI, holder: str, *, renewed: datetime | None = None, duration_s: int = 15
) -> None:
    """The Lease as a leader leaves it after acquiring or renewing it."""
    stamp = format_micro_time(renewed or datetime.now(UTC))
    kube_api.put_lease(
        *LEASE,
        {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        },
    )


def holder(kube_api: FakeKubeAPI) -> str:
    return str(kube_api.leases[LEASE]["spec"]["holderIdentity"])


class Running:
    def __init__(self, supervisor: Supervisor, task: asyncio.Task[int], log: ChildLog) -> None:
        self.supervisor, self.task, self.log = supervisor, task, log

    def sample(self, name: str) -> float:
        return self.supervisor.registry.get_sample_value(name) or 0.0

    async def readyz(self) -> tuple[int, str]:
        await eventually(lambda: self.supervisor.health_port is not None)
        url = f"http://127.0.0.1:{self.supervisor.health_port}/readyz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def supervising(
    kubeconfig: str,
    tmp_path: Path,
    *child: str,
    lease_wait_s: float = 30.0,
    operator_probes: bool = False,
) -> AsyncIterator[Running]:
    log = ChildLog(tmp_path / "child.log")
    config = SupervisorConfig(
        lease=LEASE,
        command=(*CHILD, f"--log={log.path}", *child),
        kubeconfig=kubeconfig,
        lease_wait_s=lease_wait_s,
        grace_period_s=2.0,
        health_bind_address="127.0.0.1",
        health_port=0,
        operator_health=(
            OperatorHealthSettings(
                probe_url(("/keda", *child)) or "", start_grace_s=0.0, timeout_s=0.5
            )
            if operator_probes
            else None
        ),
    )
    supervisor = Supervisor(config, CollectorRegistry(), hostname=POD)
    stop = asyncio.Event()
    supervisor.stop_event = stop  # type: ignore[attr-defined]
    task = asyncio.create_task(supervisor.run(stop))
    try:
        yield Running(supervisor, task, log)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_operator_starts_when_the_old_pods_operator_lets_go(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hold(kube_api, "keda-operator-7f9c-old_1b4e")
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: kube_api.requests["watch lease"] == 1)
        # Ready while it waits: the Deployment stops the old pod only once this one is ready.
        status, body = await run.readyz()
        assert status == 200
        assert "waiting for the Lease" in body
        for _ in range(3):  # the old leader renews: still waiting
            await asyncio.sleep(0.2)
            hold(kube_api, "keda-operator-7f9c-old_1b4e")
        assert run.log.starts() == []
        hold(kube_api, "")  # the old pod's operator exited and its Lease was released
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=2)
        # One list and one watch: no polling while it waited.
        assert kube_api.requests["list lease"] == 1
        assert kube_api.requests["watch lease"] == 1
        assert (await run.readyz())[0] == 200
        assert run.sample("keda_tenancy_supervise_operator_up") == 1


async def test_no_lease_starts_the_operator_at_once_with_its_environment_untouched(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    monkeypatch.setenv("KEEP_ME", "kept")
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        start = run.log.events("start")[0]
        # Never an empty WATCH_NAMESPACE: KEDA reads that as every namespace.
        assert start["has_env"] is False
        assert start["other"] == "kept"
        assert kube_api.requests["watch lease"] == 0


async def test_a_lease_left_by_this_pods_earlier_operator_is_released_first(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """The container restarted in place: the holder on our hostname is dead."""
    hold(kube_api, f"{POD}_earlier", renewed=datetime.now(UTC) - timedelta(seconds=2))
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        assert holder(kube_api) == ""
        assert run.sample("keda_tenancy_supervise_lease_releases_total") == 1


async def test_sigterm_stops_the_operator_and_releases_its_lease_at_once(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    async with supervising(kubeconfig, tmp_path, "--term-exit=0") as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        hold(kube_api, f"{POD}_5d1a")  # KEDA took the Lease
        run.supervisor.stop_signal = signal.SIGTERM
        run.supervisor.stop_event.set()  # type: ignore[attr-defined]
        assert await asyncio.wait_for(run.task, 5) == 0
        assert [e["signal"] for e in run.log.events("signal")] == [signal.SIGTERM]
        assert holder(kube_api) == ""
        assert kube_api.leases[LEASE]["spec"]["leaseDurationSeconds"] == 1


async def test_an_operator_that_dies_has_its_lease_released_and_its_status_returned(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        hold(kube_api, f"{POD}_5d1a")
        pid = run.supervisor.child.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(run.task, 5) == 137
        assert holder(kube_api) == ""
        assert run.supervisor.readiness() == "operator exited"


async def test_a_live_leader_elsewhere_keeps_its_lease_when_ours_exits(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    async with supervising(kubeconfig, tmp_path, "--term-exit=0", lease_wait_s=0.5) as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        hold(kube_api, "keda-operator-7f9c-other_9a0c")  # another pod leads
        run.supervisor.stop_event.set()  # type: ignore[attr-defined]
        assert await asyncio.wait_for(run.task, 5) == 0
        assert holder(kube_api) == "keda-operator-7f9c-other_9a0c"


async def test_a_holder_that_stops_renewing_is_waited_for_only_its_lease_duration(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hold(kube_api, "keda-operator-7f9c-old_1b4e", duration_s=1)
    async with supervising(kubeconfig, tmp_path) as run:
        for _ in range(8):  # renewals move the expiry on
            await asyncio.sleep(0.25)
            hold(kube_api, "keda-operator-7f9c-old_1b4e", duration_s=1)
        assert run.log.starts() == []
        # Renewals stop (the old pod was lost without a release): started within its duration.
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        assert holder(kube_api) == "keda-operator-7f9c-old_1b4e"  # KEDA decides, not us


async def test_the_wait_is_bounded(kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path) -> None:
    hold(kube_api, "keda-operator-7f9c-old_1b4e")
    async with supervising(kubeconfig, tmp_path, lease_wait_s=0.5) as run:
        # Renewed all along, but the wait ends: KEDA starts as a standby, as without us.
        for _ in range(4):
            hold(kube_api, "keda-operator-7f9c-old_1b4e")
            await asyncio.sleep(0.2)
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)
        assert holder(kube_api) == "keda-operator-7f9c-old_1b4e"


async def test_a_dropped_or_expired_watch_is_followed_again(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hold(kube_api, "keda-operator-7f9c-old_1b4e")
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: kube_api.requests["watch lease"] == 1)
        kube_api.compact()
        kube_api.drop_watches()
        await eventually(lambda: kube_api.requests["watch lease"] == 2, timeout_s=3)
        assert run.log.starts() == []
        kube_api.delete_lease(*LEASE)
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=3)


async def test_a_stop_while_waiting_never_starts_the_operator(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hold(kube_api, "keda-operator-7f9c-old_1b4e")
    async with supervising(kubeconfig, tmp_path) as run:
        await eventually(lambda: kube_api.requests["watch lease"] == 1)
        run.supervisor.stop_event.set()  # type: ignore[attr-defined]
        assert await asyncio.wait_for(run.task, 5) == 0
    assert run.log.starts() == []


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--", "/keda"], "--lease NAMESPACE/NAME is required"),
        (["--lease=keda-alpha", "--", "/keda"], "--lease NAMESPACE/NAME is required"),
        (["--lease=keda-alpha/x"], "the operator command goes after '--'"),
        (["--lease=keda-alpha/x", "--lease-wait=soon", "--", "/keda"], "soon"),
    ],
)
def test_bad_flags_are_refused_clearly(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def test_flags_and_their_environment_defaults() -> None:
    config = parse_config(
        [
            "--lease=keda-alpha/alpha.operator.keda-tenancy.io",
            "--",
            "/keda",
            "--zap-log-level=info",
        ],
        {"KEDA_TENANCY_SUPERVISE_LEASE_WAIT": "5s"},
    )
    assert config.lease == LEASE
    assert config.command == ("/keda", "--zap-log-level=info")
    assert config.lease_wait_s == 5.0
    assert config.health_port == 8090
