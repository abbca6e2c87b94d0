"""keda-tenancy-operator-forward, the platform layout's stdlib sidecar of KEDA's metrics adapter
in deployment mode, as a real process: what keda-tenancy-grpc-forward does (the adapter's
reconnect held until the new operator listens, given up after --dial-wait, SIGTERM letting the
adapter's connection finish, probes and metrics), without the heavy packages."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.integration.test_reloader_forward import free_port
from tests.integration.test_reloader_grpc_forward_cli import Operators, exchange

ROOT = Path(__file__).resolve().parents[2]
MODULE = "operator_pod.forward_entry"
"""The console script's module (keda-tenancy-operator-forward)."""
HEAVY = ("prometheus_client", "aiohttp", "kubernetes_asyncio", "yaml", "cryptography", "reloader")

Start = Callable[..., Awaitable["Forward"]]


class Forward:
    def __init__(self, process: subprocess.Popen[bytes], listen: int, target: int, health: int):
        self.process, self.listen, self.target, self.health = process, listen, target, health

    async def get(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.health)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    async def metric(self, line_start: str) -> float:
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {line_start} in /metrics")

    async def exited(self, within_s: float = 10.0) -> int:
        deadline = time.monotonic() + within_s
        while (code := self.process.poll()) is None:
            assert time.monotonic() < deadline, "the forwarder did not exit"
            await asyncio.sleep(0.05)
        return code


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Forward] = []

    async def run(*flags: str, env: dict[str, str] | None = None) -> Forward:
        listen, target, health = free_port(), free_port(), free_port()
        process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
            [
                sys.executable,
                "-m",
                MODULE,
                f"--listen=127.0.0.1:{listen}",
                f"--target=127.0.0.1:{target}",
                "--health-bind-address=127.0.0.1",
                "--log-format=text",
                *flags,
            ],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                # The port through its env default, the old sidecar's variable.
                "KEDA_TENANCY_GRPC_FORWARD_HEALTH_PORT": str(health),
                **(env or {}),
            },
        )
        forward = Forward(process, listen, target, health)
        started.append(forward)
        deadline = time.monotonic() + 10
        while True:
            try:
                if (await forward.get("/readyz"))[0] == 200:
                    return forward
            except (OSError, ValueError, IndexError):
                pass
            assert process.poll() is None, "the forwarder exited"
            assert time.monotonic() < deadline, "the forwarder did not become ready"
            await asyncio.sleep(0.05)

    try:
        yield run
    finally:
        for forward in started:
            if forward.process.poll() is None:
                forward.process.kill()
            forward.process.wait(5)


async def test_a_reconnect_before_the_operator_listens_is_held_then_spliced(start: Start) -> None:
    forward = await start()
    operators = Operators()
    old = await operators.serve(forward.target)
    reader, writer = await exchange(forward.listen, b"one")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"ONE"
    writer.write(b"bye")  # the old operator's end closes (its pod is gone) ...
    old.close()
    await old.wait_closed()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # ... and so does the adapter's
    writer.close()
    # The adapter reconnects at once: accepted and held while nothing listens, not refused.
    reader, writer = await exchange(forward.listen, b"two")
    await asyncio.sleep(0.5)
    assert await forward.metric("keda_tenancy_grpc_forward_open_connections") == 1.0
    new = await operators.serve(forward.target)  # the new leader listens
    try:
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"TWO"
    finally:
        writer.close()
        new.close()
        await new.wait_closed()
        await operators.finished()


async def test_a_connection_is_closed_once_no_operator_listened_within_the_dial_wait(
    start: Start,
) -> None:
    forward = await start("--dial-wait=300ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", forward.listen)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    errors = 'keda_tenancy_grpc_forward_errors_total{reason="operator_not_listening"}'
    assert await forward.metric(errors) == 1.0
    assert await forward.metric("keda_tenancy_grpc_forward_open_connections") == 0.0
    assert forward.process.poll() is None  # one connection given up on, the process serves on


async def test_probes_and_metrics_say_connections_bytes_errors_and_memory(start: Start) -> None:
    """What a platform team watches, under the old sidecar's metric names: ready once it
    listens (whether or not the operator does), connections held, bytes spliced, errors, and
    the process's own memory."""
    forward = await start("--dial-wait=300ms")
    assert (await forward.get("/livez"))[0] == 200
    assert (await forward.get("/healthz"))[0] == 200
    assert (await forward.get("/nope"))[0] == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", forward.listen)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    operators = Operators()
    server = await operators.serve(forward.target)
    try:
        reader, writer = await exchange(forward.listen, b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        _, metrics = await forward.get("/metrics")
        for line in (
            "keda_tenancy_grpc_forward_connections_total 2.0",
            "keda_tenancy_grpc_forward_open_connections 1.0",
            'keda_tenancy_grpc_forward_bytes_total{direction="to_operator"} 5.0',
            'keda_tenancy_grpc_forward_bytes_total{direction="to_adapter"} 5.0',
            'keda_tenancy_grpc_forward_errors_total{reason="operator_not_listening"} 1.0',
            'keda_tenancy_grpc_forward_errors_total{reason="refused"} 0.0',
        ):
            assert line in metrics.splitlines()
        assert await forward.metric("process_resident_memory_bytes") > 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
        await operators.finished()


async def test_sigterm_forwards_until_the_adapter_is_gone(start: Start) -> None:
    forward = await start("--shutdown-grace=30s")
    operators = Operators()
    server = await operators.serve(forward.target)
    try:
        reader, writer = await exchange(forward.listen, b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"BEFORE"
        forward.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        writer.write(b"after")  # the adapter's last requests still get through
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"AFTER"
        assert forward.process.poll() is None
        writer.close()  # the adapter has exited: well before the 30 s grace
        assert await forward.exited() == 0
    finally:
        server.close()
        await server.wait_closed()
        await operators.finished()


async def test_sigterm_stops_after_the_grace_with_a_connection_still_open(start: Start) -> None:
    forward = await start("--shutdown-grace=1s")
    operators = Operators()
    server = await operators.serve(forward.target)
    try:
        reader, writer = await exchange(forward.listen, b"held")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"HELD"
        forward.process.send_signal(signal.SIGTERM)
        assert await forward.exited() == 0
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left hanging
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
        await operators.finished()


def test_a_target_is_required() -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, "--listen=127.0.0.1:1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2
    assert b"is not HOST:PORT" in done.stderr


def test_the_program_loads_no_heavy_package_and_no_openssl() -> None:
    """What keeps it small (import-linter checks the imports written; this, what is loaded):
    no third-party package, and no ssl module (4.4 MiB; the TLS it splices is not its own)."""
    program = (
        f"import sys; from {MODULE} import main; sys.argv = ['x', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(m for m, v in sys.modules.items() if v is not None), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=True,
    )
    loaded = {name.split(".")[0] for name in done.stderr.decode().split()}
    assert "operator_pod" in loaded
    assert "asyncio" in loaded
    assert not loaded & {*HEAVY, "ssl", "_ssl"}
