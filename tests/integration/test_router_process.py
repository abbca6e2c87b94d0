"""The installed entry point as a real process: starts, serves, exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_router_process_serves_and_stops_on_sigterm(
    pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    secure, health = free_port(), free_port()
    argv = [
        a
        for a in router_args(pki, tenancy_file())
        if not a.startswith(("--secure-port", "--health-port"))
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        *argv,
        f"--secure-port={secure}",
        f"--health-port={health}",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{health}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("router never became ready")
        aggregator = pki.client_context(pki.aggregator())
        path = METRIC_PATH.format(ns="beta-ns", metric="m")
        response = await raw_request(secure, aggregator, path, (("X-Remote-User", "u"),))
        assert response.status == 200
        # No cluster source (static tenancy, requestheader CA from flags): the Kubernetes
        # client, about 40 MB, is never imported.
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
        print(f"static router RSS {rss_mb:.0f} MB")
        assert rss_mb < 80
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    logs = (await process.stderr.read()).decode()
    assert '"tenant":"beta"' in logs
    assert '"status":200' in logs
