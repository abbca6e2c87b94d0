"""--forward-grpc: a connection made while the operator is down is held, not refused, and
reaches the operator once it listens; it ends when the operator's end does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from reloader.config import ReloaderConfig
from reloader.forward import Forwarder, parse_address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def forwarding(target_port: int, dial_wait_s: float = 10.0) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(("127.0.0.1", 0), ("127.0.0.1", target_port), dial_wait_s=dial_wait_s)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.serve(stop))
    try:
        async with asyncio.timeout(5):
            while forwarder.port is None:
                await asyncio.sleep(0.01)
        yield forwarder
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An operator stand-in: answers in upper case; `bye` ends the connection from its side."""
    while data := await reader.read(1024):
        if data == b"bye":
            break
        writer.write(data.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_connection_waits_for_the_operator_and_ends_with_it() -> None:
    port = free_port()
    async with forwarding(port) as forwarder:
        assert forwarder.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)  # accepted
        writer.write(b"client hello")  # sent while no operator listens: held, not refused
        await writer.drain()
        await asyncio.sleep(0.3)
        server = await asyncio.start_server(echo, "127.0.0.1", port)  # the operator is up
        try:
            assert await asyncio.wait_for(reader.readexactly(12), 5) == b"CLIENT HELLO"
            writer.write(b"bye")  # the operator's end closes ...
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # ... and so does ours
        finally:
            writer.close()
            server.close()
            await server.wait_closed()


async def test_a_target_that_does_not_answer_is_dialed_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SYNs unanswered (a pod that has just exited, a Service rule not yet updated): no dial
    sits on it, and the held connection gets through once the operator answers."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = int(blackhole.getsockname()[1])
    queued = socket.create_connection(("127.0.0.1", port))  # accept queue full: SYNs dropped
    caplog.set_level(logging.INFO, logger="reloader.forward")
    async with forwarding(port) as forwarder:
        assert forwarder.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        writer.write(b"hello")
        await writer.drain()
        await asyncio.sleep(0.6)  # longer than the first dial's timeout
        queued.close()
        blackhole.close()
        server = await asyncio.start_server(echo, "127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
    reached = [r for r in caplog.records if r.getMessage() == "reached the operator's gRPC port"]
    assert len(reached) == 1
    assert reached[0].dials >= 2  # type: ignore[attr-defined]


async def test_no_operator_in_time_closes_the_connection() -> None:
    async with forwarding(free_port(), dial_wait_s=0.3) as forwarder:
        assert forwarder.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not hung
        writer.close()


@pytest.mark.parametrize(
    ("text", "address"), [(":9666", ("", 9666)), ("127.0.0.1:9667", ("127.0.0.1", 9667))]
)
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["9666", "host:", "host:0", "host:70000", "host:x"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An operator that answers each request 200 ms after it came in (concurrently, as gRPC
    streams are), and whose connections die with it."""
    answers = []

    async def answer(data: bytes) -> None:
        await asyncio.sleep(0.2)
        writer.write(b"answer:" + data)

    while data := await reader.read(1024):
        answers.append(asyncio.create_task(answer(data)))
    await asyncio.gather(*answers)
    writer.close()


async def test_drain_lets_the_request_in_flight_be_answered_then_closes() -> None:
    port = free_port()
    server = await asyncio.start_server(slow, "127.0.0.1", port)
    try:
        async with forwarding(port) as forwarder:
            assert forwarder.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            writer.write(b"one")  # in flight when the restart begins
            await writer.drain()
            await asyncio.sleep(0.05)
            draining = asyncio.create_task(forwarder.drain(quiet_s=0.02, max_s=3))
            received = await asyncio.wait_for(reader.read(), 5)  # until the forwarder closes
            await asyncio.wait_for(draining, 5)
            assert received == b"answer:one"  # answered first, then closed while idle
            writer.close()
            # Until resume(), a new connection is held, not sent to the stopping operator.
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            writer.write(b"three")
            await writer.drain()
            await asyncio.sleep(0.4)
            assert not reader.at_eof()
            assert reader._buffer == b""  # nothing answered yet
            forwarder.resume()
            assert await asyncio.wait_for(reader.readexactly(12), 5) == b"answer:three"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_listens_on_the_bind_address_only() -> None:
    """`--forward-grpc=:PORT=...` listens on --forward-grpc-bind-address (the chart: the pod
    IP), loopback by default, never on every address of the pod."""
    port = free_port()
    for env, reachable, unreachable in (
        ({}, "127.0.0.1", "127.0.0.2"),
        (
            {"KEDA_TENANCY_RELOADER_FORWARD_GRPC_BIND_ADDRESS": "127.0.0.2"},
            "127.0.0.2",
            "127.0.0.1",
        ),
    ):
        config = ReloaderConfig.from_args(
            [
                "--tenant=a",
                "--tenant-label-key=k",
                f"--forward-grpc=:{port}=127.0.0.1:{free_port()}",
                "--",
                "/keda",
            ],
            env,
        )
        assert config.forward_grpc is not None
        forwarder = Forwarder(*config.forward_grpc, dial_wait_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(forwarder.serve(stop))
        try:
            async with asyncio.timeout(5):
                while forwarder.port is None:
                    await asyncio.sleep(0.01)
            _, writer = await asyncio.open_connection(reachable, port)
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(unreachable, port)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)


async def test_connections_beyond_the_bound_are_closed_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="reloader.forward")
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = int(server.sockets[0].getsockname()[1])
    refused: list[int] = []
    forwarder = Forwarder(
        ("127.0.0.1", 0),
        ("127.0.0.1", target),
        max_connections=2,
        on_refused=lambda: refused.append(1),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.serve(stop))
    opened: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(5):
            while forwarder.port is None:
                await asyncio.sleep(0.01)
        assert forwarder.port is not None
        for _ in range(2):  # within the bound: spliced to the operator
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            opened.append(writer)
            writer.write(b"ping")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"PING"
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        opened.append(writer)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        assert refused == [1]
        assert forwarder.open_connections == 2
        assert "refusing gRPC connections" in caplog.text
        opened[0].close()  # one of the two ends: a new one fits again
        async with asyncio.timeout(5):
            while forwarder.open_connections > 1:
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        opened.append(writer)
        writer.write(b"pong")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"PONG"
        assert refused == [1]
    finally:
        for writer in opened:
            writer.close()
        stop.set()
        await asyncio.wait_for(task, 5)
        server.close()
        await server.wait_closed()
