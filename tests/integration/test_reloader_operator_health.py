"""KEDA's own probes, asked through the wrapper that runs it: a KEDA that runs but stops
answering (here: SIGSTOP, alive and silent) fails the wrapper's /livez and /readyz, so the
kubelet restarts the container; a KEDA just started (or not running) is not asked."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from reloader.operator_health import probe_url
from reloader.supervise import parse_config
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.test_reloader_forward import free_port
from tests.integration.test_reloader_supervise import supervising
from tests.reloader_harness import ChildLog, eventually, label, reloader_args, running_reloader

CHECK = ("--check-operator-health=true", "--operator-probe-timeout=500ms")


async def get(port: int | None, path: str) -> tuple[int, str]:
    assert port is not None
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def answering(port: int | None) -> None:
    """The stand-in listens a moment after it started."""
    for _ in range(100):
        if (await get(port, "/livez"))[0] == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(await get(port, "/livez"))


@contextmanager
def hung(pid: int | None) -> Iterator[None]:
    """The operator alive but answering nothing (a deadlock looks the same from outside)."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_process_mode_a_hung_operator_fails_livez_and_readyz(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    probes = f"--health-probe-bind-address=127.0.0.1:{free_port()}"
    argv = reloader_args(kubeconfig, log.path, *CHECK, "--operator-start-grace=0s", child=[probes])
    async with running_reloader(argv) as r:
        await eventually(lambda: log.starts() == ["a1"])
        assert r.child is not None
        await eventually(lambda: r.health_port is not None)
        await answering(r.health_port)
        assert (await get(r.health_port, "/readyz"))[0] == 200
        with hung(r.child.pid):
            for path in ("/livez", "/healthz"):
                status, body = await get(r.health_port, path)
                assert status == 503
                assert "[-]operator-healthz failed: KEDA's /healthz did not answer" in body
            status, body = await get(r.health_port, "/readyz")
            assert status == 503
            assert "operator-readyz failed" in body
        assert (await get(r.health_port, "/livez"))[0] == 200  # answers again: alive
        failures = r.registry.get_sample_value(
            "keda_tenancy_reloader_operator_probe_failures_total", {"endpoint": "/healthz"}
        )
        assert failures == 2


async def test_process_mode_an_operator_in_its_start_grace_is_not_asked(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    probes = f"--health-probe-bind-address=127.0.0.1:{free_port()}"
    argv = reloader_args(kubeconfig, log.path, *CHECK, "--operator-start-grace=1h", child=[probes])
    async with running_reloader(argv) as r:
        await eventually(lambda: log.starts() == ["a1"])
        assert r.child is not None
        await eventually(lambda: r.health_port is not None)
        with hung(r.child.pid):
            assert (await get(r.health_port, "/livez"))[0] == 200
            assert (await get(r.health_port, "/readyz"))[0] == 200


async def test_process_mode_without_the_flag_keda_is_never_asked(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    probes = f"--health-probe-bind-address=127.0.0.1:{free_port()}"
    async with running_reloader(reloader_args(kubeconfig, log.path, child=[probes])) as r:
        await eventually(lambda: log.starts() == ["a1"])
        assert r.child is not None
        await eventually(lambda: r.health_port is not None)
        with hung(r.child.pid):
            assert (await get(r.health_port, "/livez"))[0] == 200


async def test_deployment_mode_supervisor_fails_livez_for_a_hung_operator(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    probes = f"--health-probe-bind-address=127.0.0.1:{free_port()}"
    async with supervising(kubeconfig, tmp_path, probes, operator_probes=True) as run:
        await eventually(lambda: len(run.log.starts()) == 1, timeout_s=5)
        supervisor = run.supervisor
        await eventually(lambda: supervisor.health_port is not None)
        await answering(supervisor.health_port)
        with hung(supervisor.child.pid):
            status, body = await get(supervisor.health_port, "/livez")
            assert status == 503
            assert "operator-healthz failed" in body
            assert (await get(supervisor.health_port, "/readyz"))[0] == 503
        assert (await get(supervisor.health_port, "/livez"))[0] == 200


@pytest.mark.parametrize(
    ("args", "url"),
    [
        ([], "http://127.0.0.1:8081"),  # KEDA's default
        (["--health-probe-bind-address=:9081"], "http://127.0.0.1:9081"),
        (["--health-probe-bind-address", "0.0.0.0:8081"], "http://127.0.0.1:8081"),
        (["--health-probe-bind-address=10.0.0.4:8081"], "http://10.0.0.4:8081"),
        (["--health-probe-bind-address=[::1]:8081"], "http://[::1]:8081"),
        (["--health-probe-bind-address=0"], None),  # KEDA serves none
    ],
)
def test_the_probe_address_is_read_from_the_operators_own_flag(
    args: list[str], url: str | None
) -> None:
    assert probe_url(["/keda", "--leader-elect", *args]) == url


def test_supervisor_flags() -> None:
    config = parse_config(
        [
            "--lease=ns/name",
            "--check-operator-health=true",
            "--operator-start-grace=45s",
            "--",
            "/keda",
            "--health-probe-bind-address=:8081",
        ],
        {},
    )
    assert config.operator_health is not None
    assert config.operator_health.url == "http://127.0.0.1:8081"
    assert config.operator_health.start_grace_s == 45
    assert parse_config(["--lease=ns/name", "--", "/keda"], {}).operator_health is None
