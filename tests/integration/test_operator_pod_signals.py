"""The installed entrypoint as the kubelet runs it: SIGTERM is forwarded to KEDA, which gets
its grace period (then SIGKILL), the Lease is released, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.fakes.kube_api import FakeKubeAPI
from tests.operator_pod_harness import HOSTNAME, LEASE, NAMESPACE, process_args, publish
from tests.reloader_harness import ChildLog, eventually

ENTRYPOINT = Path(sys.executable).parent / "keda-tenancy-operator-pod"


async def run_until_sigterm(
    kube_api: FakeKubeAPI, kubeconfig: str, log: ChildLog, *flags: str, child: tuple[str, ...] = ()
) -> tuple[int, list[dict[str, object]]]:
    publish(kube_api, "a1,a2")
    args = process_args(kubeconfig, log.path, f"--lease={NAMESPACE}/{LEASE}", *flags, child=child)
    process = await asyncio.create_subprocess_exec(
        str(ENTRYPOINT), *args, stderr=asyncio.subprocess.PIPE, env={**os.environ}
    )
    try:
        await eventually(lambda: log.starts() == ["a1,a2"], timeout_s=15)
        spec = {
            "holderIdentity": f"{HOSTNAME}_keda",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": "2026-01-01T00:00:00.000000Z",
        }
        kube_api.put_lease(NAMESPACE, LEASE, spec)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert process.returncode is not None
    return process.returncode, lines


async def test_sigterm_stops_keda_gracefully_releases_the_lease_and_exits_0(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    code, lines = await run_until_sigterm(kube_api, kubeconfig, log)
    assert code == 0
    assert [e["signal"] for e in log.events("signal")] == [signal.SIGTERM]
    assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""
    assert any(line["msg"] == "released KEDA's Lease" for line in lines)


async def test_a_keda_that_ignores_sigterm_is_killed_after_the_grace_period(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "child.log")
    code, lines = await run_until_sigterm(
        kube_api, kubeconfig, log, "--grace-period=500ms", child=("--ignore-term",)
    )
    assert code == 0
    assert any("killing it" in str(line["msg"]) for line in lines)
    assert kube_api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == ""


async def test_a_bad_flag_is_a_usage_error() -> None:
    process = await asyncio.create_subprocess_exec(
        str(ENTRYPOINT), "--mode=process", "--", "/keda", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"--namespaces-configmap" in stderr
