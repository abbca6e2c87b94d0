"""A router process under hostile callers: memory stays bounded before authentication,
the aggregator is still answered, and SIGTERM still stops it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args

USER = (("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class RouterProcess:
    def __init__(self, process: asyncio.subprocess.Process, secure: int, health: int) -> None:
        self.process, self.secure, self.health = process, secure, health

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
async def router_process(
    pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> AsyncIterator[RouterProcess]:
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
        "--log-level=warning",
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"http://127.0.0.1:{health}/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("router never became ready")
        yield RouterProcess(process, secure, health)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def flood_without_reading(
    port: int, context: ssl.SSLContext, request: bytes, total: int
) -> int:
    """Pipeline `request` on one connection, never reading: how many bytes got sent."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    chunk = request * (65536 // len(request))
    sent = 0
    try:
        while sent < total:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 3)  # blocks once the router stops reading
            except TimeoutError:
                break
            sent += len(chunk)
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.transport.abort()
    return sent


@pytest.mark.parametrize(
    ("certificate", "request_bytes"),
    [
        (False, b"GET / HTTP/1.1\r\n\r\n"),  # each answered 401 Unauthorized
        (True, b"GET /apis HTTP/1.1\r\nX-Remote-User: u\r\n\r\n"),  # each answered locally
    ],
    ids=["without-certificate", "aggregator-certificate"],
)
async def test_a_pipelining_client_that_never_reads_cannot_grow_the_router_or_hold_it_up(
    router_process: RouterProcess, pki: Pki, certificate: bool, request_bytes: bytes
) -> None:
    # Answers are ~20x the size of these requests: unread, they would pile up in memory.
    port = router_process.secure
    flooder = pki.client_context(pki.aggregator() if certificate else None)
    aggregator = pki.client_context(pki.aggregator())
    path = METRIC_PATH.format(ns="alpha-ns", metric="m")
    assert (await raw_request(port, aggregator, path, USER)).status == 200
    before = rss_mb(router_process.pid)
    floods = [
        asyncio.create_task(flood_without_reading(port, flooder, request_bytes, 10 << 20))
        for _ in range(4)
    ]
    await asyncio.sleep(1)
    started = time.monotonic()
    answer = await asyncio.wait_for(raw_request(port, aggregator, path, USER), 20)
    during_s = time.monotonic() - started
    sent = sum(await asyncio.gather(*floods))
    after = rss_mb(router_process.pid)
    print(
        f"sent {sent / 1e6:.1f} MB; RSS {before:.0f} -> {after:.0f} MB; answer in {during_s:.2f} s"
    )
    assert answer.status == 200
    assert after - before < 40
    # And SIGTERM still stops it, within the grace period, while the flood goes on.
    floods = [
        asyncio.create_task(flood_without_reading(port, flooder, request_bytes, 1 << 30))
        for _ in range(4)
    ]
    await asyncio.sleep(1)
    router_process.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    assert await asyncio.wait_for(router_process.process.wait(), 30) == 0
    print(f"stopped {time.monotonic() - stopping:.1f} s after SIGTERM")
    await asyncio.gather(*floods)


async def test_idle_connections_without_a_certificate_are_capped(
    router_process: RouterProcess, pki: Pki
) -> None:
    port = router_process.secure
    no_certificate = pki.client_context(None)
    before = rss_mb(router_process.pid)
    writers = []
    try:
        for _ in range(600):
            try:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=no_certificate, server_hostname="localhost"
                )
            except (ConnectionError, ssl.SSLError):
                continue
            writers.append(writer)
        await asyncio.sleep(0.5)
        after = rss_mb(router_process.pid)
        metrics = await metrics_text(router_process.health)
        connections = float(
            next(
                line.split()[-1]
                for line in metrics.splitlines()
                if line.startswith("keda_tenancy_router_open_connections ")
            )
        )
        print(
            f"{len(writers)} opened, router holds {connections:.0f}; RSS {before:.0f} -> {after:.0f} MB"
        )
        assert connections <= 256
        aggregator = pki.client_context(pki.aggregator())
        path = METRIC_PATH.format(ns="alpha-ns", metric="m")
        assert (await raw_request(port, aggregator, path, USER)).status == 200
    finally:
        for writer in writers:
            writer.transport.abort()


async def metrics_text(health: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{health}/metrics") as response,
    ):
        return await response.text()


async def test_one_tenants_huge_answers_stay_bounded_and_cost_the_others_nothing(
    router_process: RouterProcess, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    port = router_process.secure
    aggregator = pki.client_context(pki.aggregator())
    alpha, beta = (
        METRIC_PATH.format(ns="alpha-ns", metric="m"),
        METRIC_PATH.format(ns="beta-ns", metric="m"),
    )
    assert (await raw_request(port, aggregator, alpha, USER)).status == 200
    before = rss_mb(router_process.pid)
    backends["alpha"].pad_bytes = 12 << 20  # far beyond any ExternalMetricValueList
    huge = await asyncio.gather(*(raw_request(port, aggregator, alpha, USER) for _ in range(8)))
    peak = rss_mb(router_process.pid)
    answer = await raw_request(port, aggregator, beta, USER)
    print(f"RSS {before:.0f} -> {peak:.0f} MB; alpha {sorted({a.status for a in huge})}")
    assert {a.status for a in huge} == {502}
    assert "too large" in str(huge[0].json()["message"])
    assert answer.status == 200
    assert peak - before < 40
