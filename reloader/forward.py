"""Process mode: hold the operator's gRPC port across restarts and splice it to the operator.

KEDA's metrics adapter reaches the operator's gRPC metrics service through one long-lived
connection. When the operator restarts, that connection drops and the adapter reconnects at
once; with nothing listening it is refused, and gRPC's reconnect backoff (1 s, then 1.6 s, ...)
then decides when the adapter next tries, whenever the new operator is actually ready. Here
the reloader owns the listening port instead: a connection is accepted at once and held (its
TLS handshake waits) until the operator's own port, on loopback, accepts, then the bytes are
copied both ways unchanged (TLS stays end to end between adapter and operator). So requests
wait exactly as long as the operator takes to serve again, and the connection ends with the
operator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
DIAL_INTERVAL_S = 0.05


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`:PORT` for every address); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Forwarder:
    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        dial_wait_s: float = 10.0,
    ) -> None:
        """`dial_wait_s`: how long a connection is held for an operator that is not
        listening (gRPC gives a connection attempt 5 s at least, then backs off)."""
        self._listen = listen
        self._target = target
        self._dial_wait_s = dial_wait_s
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        host, port = self._listen
        server = await asyncio.start_server(self._accepted, host or None, port)
        self.port = int(server.sockets[0].getsockname()[1])
        logger.info(
            "forwarding the operator's gRPC port",
            extra={
                "listen": f"{host}:{self.port}",
                "target": f"{self._target[0]}:{self._target[1]}",
            },
        )
        try:
            await stop.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            upstream = await self._dial()
            if upstream is None:
                logger.warning(
                    "the operator's gRPC port did not accept in time, closing a connection",
                    extra={"wait_s": self._dial_wait_s},
                )
                return
            up_reader, up_writer = upstream
            try:
                await _splice(reader, writer, up_reader, up_writer)
            finally:
                await _close(up_writer)
        finally:
            await _close(writer)
            self._connections.discard(task)

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._dial_wait_s
        while True:
            try:
                return await asyncio.open_connection(*self._target)
            except OSError:
                if loop.time() >= deadline:
                    return None
            await asyncio.sleep(DIAL_INTERVAL_S)


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side ends; then both end."""
    one = asyncio.ensure_future(_copy(a_reader, b_writer))
    two = asyncio.ensure_future(_copy(b_reader, a_writer))
    try:
        await asyncio.wait({one, two}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (one, two):
            task.cancel()
        await asyncio.gather(one, two, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
