"""keda-tenancy-grpc-forward, the adapter's sidecar in deployment mode, as a real process:
the adapter's reconnect after the old operator pod is gone is held until the new one
listens, and SIGTERM lets the adapter's connection finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_reloader_forward import echo, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def ports() -> AsyncIterator[tuple[int, int, subprocess.Popen[bytes]]]:
    listen, target = free_port(), free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [
            sys.executable,
            "-m",
            "reloader.forward_cli",
            f"--listen=127.0.0.1:{listen}",
            f"--target=127.0.0.1:{target}",
            "--shutdown-grace=5s",
            "--log-format=text",
            "--health-port=0",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", listen)
            except OSError:
                assert time.monotonic() < deadline, "the forwarder did not listen"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield listen, target, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(5)


class Operators:
    """Operator stand-ins (tests.integration.test_reloader_forward.echo) whose connections can
    be waited for, so none is left running when a test ends."""

    def __init__(self) -> None:
        self.handlers: set[asyncio.Task[None]] = set()

    async def serve(self, port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            await echo(reader, writer)

        return await asyncio.start_server(handle, "127.0.0.1", port)

    async def finished(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), 5)


async def exchange(listen: int, text: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    writer.write(text)
    await writer.drain()
    return reader, writer


async def test_a_rolled_operator_is_reached_without_a_refused_reconnect(
    ports: tuple[int, int, subprocess.Popen[bytes]],
) -> None:
    listen, target, _ = ports
    operators = Operators()
    old = await operators.serve(target)
    reader, writer = await exchange(listen, b"one")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ONE"
    writer.write(b"bye")  # the old operator's end closes (its pod is gone) ...
    old.close()
    await old.wait_closed()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # ... and so does the adapter's
    writer.close()
    # The adapter reconnects at once: accepted and held while nothing listens, not refused.
    reader, writer = await exchange(listen, b"two")
    await asyncio.sleep(0.5)
    new = await operators.serve(target)  # the new leader listens
    try:
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"TWO"
    finally:
        writer.close()
        new.close()
        await new.wait_closed()
        await operators.finished()  # each ends once the forwarder has closed its side


async def test_sigterm_forwards_until_the_adapter_is_gone(
    ports: tuple[int, int, subprocess.Popen[bytes]],
) -> None:
    listen, target, process = ports
    operators = Operators()
    server = await operators.serve(target)
    try:
        reader, writer = await exchange(listen, b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"BEFORE"
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        writer.write(b"after")  # the adapter's last requests still get through
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"AFTER"
        assert process.poll() is None
        writer.close()  # the adapter has exited
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < 4:
            await asyncio.sleep(0.05)
        assert process.poll() == 0
    finally:
        server.close()
        await server.wait_closed()
        await operators.finished()


def test_a_target_is_required() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reloader.forward_cli", "--listen=127.0.0.1:1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2
    assert b"is not HOST:PORT" in done.stderr


async def test_probes_and_metrics_count_connections_bytes_and_errors() -> None:
    """What a platform team watches: the sidecar is ready once it listens, and its metrics
    say how many adapter connections it held, the bytes spliced, and those it gave up on."""
    listen, target, health_port = free_port(), free_port(), free_port()
    # The port through its env default, as a pod spec may set it.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["KEDA_TENANCY_GRPC_FORWARD_HEALTH_PORT"] = str(health_port)
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [
            sys.executable,
            "-m",
            "reloader.forward_cli",
            f"--listen=127.0.0.1:{listen}",
            f"--target=127.0.0.1:{target}",
            "--health-bind-address=127.0.0.1",
            "--dial-wait=300ms",
            "--log-format=text",
        ],
        env=env,
    )
    server = None
    operators = Operators()
    try:

        async def get(path: str) -> tuple[int, str]:
            url = f"http://127.0.0.1:{health_port}{path}"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status, await response.text()

        deadline = time.monotonic() + 10
        while True:
            try:
                status, _ = await get("/readyz")
            except aiohttp.ClientError:
                assert time.monotonic() < deadline, "no probes served"
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                break
        assert (await get("/livez"))[0] == 200
        assert (await get("/healthz"))[0] == 200
        # No operator listening: the connection is held for --dial-wait, then given up on.
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        server = await operators.serve(target)
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        metrics = (await get("/metrics"))[1]
        assert "keda_tenancy_grpc_forward_connections_total 2.0" in metrics
        assert "keda_tenancy_grpc_forward_open_connections 1.0" in metrics
        assert 'keda_tenancy_grpc_forward_bytes_total{direction="to_operator"} 5.0' in metrics
        assert 'keda_tenancy_grpc_forward_bytes_total{direction="to_adapter"} 5.0' in metrics
        assert (
            'keda_tenancy_grpc_forward_errors_total{reason="operator_not_listening"} 1.0' in metrics
        )
        writer.close()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        if server is not None:
            server.close()
            await server.wait_closed()
        await operators.finished()
