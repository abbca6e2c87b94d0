"""Process mode against the fake API with a real child process standing in for /keda."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import ChildLog, eventually, label, reloader_args, running_reloader


async def test_follows_labels_deletions_and_moves(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.relabel_new("b1", label("beta"))
    async with running_reloader(
        reloader_args(kubeconfig, log.path), environ={"KEEP_ME": "yes", "WATCH_NAMESPACE": "x"}
    ) as r:
        await eventually(lambda: log.starts() == ["a1"])
        assert log.events("start")[0]["other"] == "yes"  # the rest of the environment is kept
        kube_api.relabel_new("a2", label("alpha"))  # label added
        await eventually(lambda: log.starts()[-1] == "a1,a2")
        kube_api.relabel("a1", to(None))  # label removed
        await eventually(lambda: log.starts()[-1] == "a2")
        kube_api.relabel_new("a3", label("alpha"))
        await eventually(lambda: log.starts()[-1] == "a2,a3")
        kube_api.delete("a3")  # namespace deleted
        await eventually(lambda: log.starts()[-1] == "a2")
        kube_api.relabel("b1", to("alpha"))  # moved in from another tenant
        await eventually(lambda: log.starts()[-1] == "a2,b1")
        kube_api.relabel("a2", to("beta"))  # moved away: leaves at once
        await eventually(lambda: log.starts()[-1] == "b1")
        assert r.child is not None
        assert r.child.running
    assert all(value for value in log.starts())


def to(tenant: str | None) -> dict[str, str | None]:
    """The label change that gives a namespace to `tenant` (None: to nobody)."""
    return {"keda-tenancy.io/tenant": tenant}


async def test_with_a_removal_delay_moves_still_leave_at_once(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    for name in ("a1", "a2", "a3"):
        kube_api.relabel_new(name, label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path, "--removal-delay=20s")) as r:
        assert r.config.label_selector is None  # it must see where a namespace went
        await eventually(lambda: log.starts() == ["a1,a2,a3"])
        kube_api.relabel("a3", to(None))  # lost its label: held for the removal delay
        await asyncio.sleep(0.6)
        assert log.starts() == ["a1,a2,a3"]
        kube_api.relabel("a2", to("beta"))  # moved to another tenant: goes at once
        await eventually(lambda: len(log.starts()) == 2, timeout_s=3)
        assert log.starts()[-1] == "a1"


async def test_terminating_namespaces_stay_until_gone(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.relabel_new("a2", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path)):
        await eventually(lambda: log.starts() == ["a1,a2"])
        kube_api.delete("a2", terminating=True)
        await asyncio.sleep(0.5)
        assert log.starts() == ["a1,a2"]  # KEDA must still watch it to remove its finalizers
        kube_api.finalize("a2")
        await eventually(lambda: log.starts() == ["a1,a2", "a1"])


async def test_empty_set_keeps_the_child_stopped(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    async with running_reloader(reloader_args(kubeconfig, log.path)) as r:
        await eventually(r.cache.synced.is_set)
        await asyncio.sleep(0.4)
        assert log.starts() == []  # never started with an empty value (KEDA: all namespaces)
        assert r.readiness_checks()["operator"]() is not None
        kube_api.relabel_new("a1", label("alpha"))
        await eventually(lambda: log.starts() == ["a1"])
        assert r.readiness_checks()["operator"]() is None
        kube_api.delete("a1")  # the last one goes
        await eventually(lambda: r.child is not None and not r.child.running)
        assert r.metrics.empty._value.get() == 1
        assert "no namespace" in str(r.readiness_checks()["operator"]())
        kube_api.relabel_new("a9", label("alpha"))
        await eventually(lambda: log.starts()[-1] == "a9")
    assert None not in log.starts()
    assert "" not in log.starts()


async def test_a_burst_gives_exactly_one_restart(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a0", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path, "--debounce=300ms")):
        await eventually(lambda: log.starts() == ["a0"])
        for i in range(200):
            kube_api.relabel_new(f"burst-{i:03d}", label("alpha"))
            if i % 20 == 0:
                await asyncio.sleep(0.01)  # events keep trickling in within the quiet period
        await eventually(lambda: len(log.starts()) == 2)
        await asyncio.sleep(0.6)
        assert len(log.starts()) == 2
        assert len(str(log.starts()[-1]).split(",")) == 201


async def test_no_restart_when_nothing_changed(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path)):
        await eventually(lambda: log.starts() == ["a1"])
        kube_api.relabel("a1", {"unrelated": "x"})
        kube_api.relabel_new("b1", label("beta"))
        kube_api.relabel("a1", to(None))
        kube_api.relabel("a1", to("alpha"))  # flaps back before the quiet period ends
        await asyncio.sleep(0.6)
        assert log.starts() == ["a1"]


async def test_a_label_change_reaches_the_operator_within_debounce_plus_one_second(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    argv = reloader_args(kubeconfig, log.path, "--debounce=500ms", "--grace-period=5s")
    async with running_reloader(argv):
        await eventually(lambda: log.starts() == ["a1"])
        changed_at = time.monotonic()
        kube_api.relabel_new("a2", label("alpha"))
        await eventually(lambda: len(log.starts()) == 2)
        latency_s = log.events("start")[1]["t"] - changed_at  # CLOCK_MONOTONIC is system-wide
        print(f"label change -> operator running with the new env: {latency_s:.3f}s")
        assert log.starts()[-1] == "a1,a2"
        assert 0.5 <= latency_s < 1.5


async def test_probes_and_metrics(kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path) -> None:
    log = ChildLog(tmp_path / "child.log")
    async with (
        running_reloader(reloader_args(kubeconfig, log.path)) as r,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: r.health_port is not None and r.cache.synced.is_set())
        base = f"http://127.0.0.1:{r.health_port}"

        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path) as response:
                return response.status, await response.text()

        assert (await get("/healthz"))[0] == 200
        status, body = await get("/readyz")
        assert status == 503
        assert "no namespace selected" in body
        kube_api.relabel_new("a1", label("alpha"))
        await eventually(lambda: log.starts() == ["a1"])
        assert await get("/readyz") == (200, "ok")
        _, metrics = await get("/metrics")
        for line in (
            "keda_tenancy_reloader_namespaces 1.0",
            "keda_tenancy_reloader_child_up 1.0",
            "keda_tenancy_reloader_empty_namespace_set 0.0",
            'keda_tenancy_reloader_restarts_total{reason="namespaces"} 1.0',
            'keda_tenancy_namespace_watch_relists_total{reason="start"} 1.0',
        ):
            assert line in metrics.splitlines(), line
        assert "keda_tenancy_reloader_last_restart_timestamp_seconds" in metrics
        assert "keda_tenancy_namespace_watch_staleness_seconds " in metrics


async def test_gone_relist_catches_up(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    kube_api.relabel_new("a2", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path)) as r:
        await eventually(lambda: log.starts() == ["a1,a2"] and kube_api.open_watches == 1)
        kube_api.silence_watches()
        kube_api.delete("a1")
        kube_api.compact()
        kube_api.drop_watches()
        kube_api.silence_watches(False)
        await eventually(lambda: log.starts()[-1] == "a2")
        relists = "keda_tenancy_namespace_watch_relists_total"
        assert r.registry.get_sample_value(relists, {"reason": "start"}) == 1
        assert r.registry.get_sample_value(relists, {"reason": "expired"}) == 1


async def test_silent_stream_reconnects(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.bookmarks = False
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path)) as r:
        await eventually(lambda: log.starts() == ["a1"] and kube_api.open_watches == 1)
        kube_api.silence_watches()
        kube_api.relabel_new("a2", label("alpha"))  # not delivered on the silent stream
        watches = kube_api.requests["watch namespaces"]
        await eventually(lambda: kube_api.requests["watch namespaces"] > watches)
        kube_api.silence_watches(False)
        await eventually(lambda: log.starts()[-1] == "a1,a2")
        reconnects = r.registry.get_sample_value("keda_tenancy_namespace_watch_reconnects_total")
        assert reconnects is not None
        assert reconnects >= 1
        assert len(log.starts()) == 2  # the reconnect itself restarted nothing


async def test_child_ignoring_sigterm_is_killed_after_the_grace_period(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    argv = reloader_args(kubeconfig, log.path, "--grace-period=500ms", child=["--ignore-term"])
    async with running_reloader(argv):
        await eventually(lambda: log.starts() == ["a1"])
        kube_api.relabel_new("a2", label("alpha"))
        await eventually(lambda: len(log.starts()) == 2, timeout_s=10)
        signalled = log.events("signal")[0]["t"]
        restarted = log.events("start")[1]["t"]
        assert restarted - signalled >= 0.45  # it got its grace period, then SIGKILL


async def test_crash_loop_backs_off_then_exits_non_zero(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    argv = reloader_args(
        kubeconfig,
        log.path,
        "--max-restarts=4",
        "--backoff-initial=100ms",
        "--backoff-max=1s",
        child=["--exit-code=3"],
    )
    config = ReloaderConfig.from_args(argv, {})
    reloader = Reloader(config, CollectorRegistry())
    code = await asyncio.wait_for(reloader.run(asyncio.Event()), 20)
    assert code == 3
    starts = [e["t"] for e in log.events("start")]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    assert gaps[2] >= 0.4


async def test_env_too_large_is_refused_and_the_child_kept(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader(reloader_args(kubeconfig, log.path)) as r:
        await eventually(lambda: log.starts() == ["a1"])
        for i in range(2200):  # 2200 x 61 bytes > 128 KiB
            kube_api.relabel_new(f"n{i:04d}-" + "x" * 54, label("alpha"))
        await eventually(lambda: r.metrics.refused._value.get() >= 1)
        assert log.starts() == ["a1"]
        assert r.child is not None
        assert r.child.running
        assert "too large" in str(r.readiness_checks()["operator"]())


async def test_sigterm_is_forwarded_and_the_exit_code_propagated(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    argv = reloader_args(kubeconfig, log.path, child=["--term-exit=7", "--orphan"])
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "reloader", *argv)
    try:
        await eventually(lambda: log.starts() == ["a1"])
        orphan = int(await _read_when_present(Path(str(log.path) + ".orphan")))
        # The grandchild outlives its parent: the reloader adopts it (subreaper, like PID 1) ...
        await eventually(lambda: _parent_of(orphan) in (process.pid, None), timeout_s=5)
        assert _parent_of(orphan) in (process.pid, None)
        # ... and reaps it when it exits, so no zombie is left behind.
        await eventually(lambda: _parent_of(orphan) is None, timeout_s=5)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 7
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert log.events("signal")[0]["signal"] == signal.SIGTERM


async def test_crash_loop_as_pid_1_keeps_the_exit_status(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """The real entry point, reaping an orphan per run: the reloader still learns each
    exit status (3, not 255) and gives up with it."""
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    argv = reloader_args(
        kubeconfig,
        log.path,
        "--max-restarts=3",
        "--backoff-initial=300ms",
        "--backoff-max=300ms",
        child=["--exit-code=3", "--orphan"],
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "reloader", *argv)
    try:
        assert await asyncio.wait_for(process.wait(), 20) == 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert len(log.starts()) == 3


async def _read_when_present(path: Path) -> str:
    await eventually(lambda: path.exists() and path.read_text().strip())
    return path.read_text().strip()


def _parent_of(pid: int) -> int | None:
    """The parent of `pid`, None once it has been reaped (a zombie still has one)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return int(fields["PPid"].strip())


async def test_a_port_in_use_ends_the_reloader_with_status_1(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    kube_api.relabel_new("a1", label("alpha"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = reloader_args(kubeconfig, log.path, f"--health-port={port}")
        reloader = Reloader(ReloaderConfig.from_args(argv, {}), CollectorRegistry())
        assert await asyncio.wait_for(reloader.run(asyncio.Event()), 10) == 1
    assert reloader.child is not None
    assert not reloader.child.running


async def test_a_bad_kubeconfig_ends_the_reloader_with_status_1(tmp_path: Path) -> None:
    argv = reloader_args(str(tmp_path / "missing"), tmp_path / "child.log")
    reloader = Reloader(ReloaderConfig.from_args(argv, {}), CollectorRegistry())
    assert await asyncio.wait_for(reloader.run(asyncio.Event()), 10) == 1
