"""Process mode: hold the operator's gRPC port across restarts and splice it to the operator
(the idea of reloader/forward.py, which this package may not import).

KEDA's metrics adapter reaches the operator's gRPC metrics service through one long-lived
connection. When the operator restarts, that connection drops and the adapter reconnects at
once; with nothing listening it is refused, and gRPC's reconnect backoff (1 s, then 1.6 s, ...)
then decides when the adapter next tries, whenever the new operator is actually ready. Here
this process owns the listening port instead: a connection is accepted at once and held (its
TLS handshake waits) until the operator's own port, on loopback, accepts, then the bytes are
copied both ways unchanged (TLS stays end to end between adapter and operator). So requests
wait exactly as long as the operator takes to serve again.

Before the operator is stopped for a restart, each connection is closed at its first idle
moment (within a second): the operator has answered everything the adapter sent, 20 ms ago,
and the adapter has sent nothing for 60 ms. The adapter then reconnects with no request lost, where KEDA's gRPC server,
which stops without draining, would fail any request it had accepted. Under TLS requests
cannot be counted, so "answered" means the operator sent bytes after the adapter's last ones:
with two requests in flight, the slower one can still be cut off, as it would be without this.

At most `max_connections` connections are held or spliced at once: the adapter keeps one per
replica, and each held connection costs dials. Further ones are closed as soon as accepted,
counted (`on_refused`) and logged (once per REFUSAL_LOG_INTERVAL_S, with the count since).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from operator_pod.prometheus import Counter, Gauge, Registry

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
DIAL_INTERVAL_S = 0.05
DIAL_TIMEOUT_S = 2.0
DIALS_AT_ONCE = 20
"""Dials pending at once: one every DIAL_INTERVAL_S, each given DIAL_TIMEOUT_S."""
REFUSAL_LOG_INTERVAL_S = 10.0


class ForwardMetrics:
    def __init__(self, registry: Registry, prefix: str) -> None:
        prefix += "grpc_forward_"
        self.open_connections = Gauge(
            prefix + "open_connections",
            "Adapter connections accepted and not yet closed (held or spliced).",
            registry=registry,
        )
        self.connections = Counter(
            prefix + "connections", "Adapter connections accepted.", registry=registry
        )
        self.bytes = Counter(
            prefix + "bytes",
            "Bytes copied, by direction (to_operator, to_adapter).",
            ["direction"],
            registry=registry,
        )
        self.errors = Counter(
            prefix + "errors",
            "Adapter connections closed unserved, by reason (operator_not_listening: it did "
            "not accept in time; refused: beyond the maximum held at once).",
            ["reason"],
            registry=registry,
        )
        for direction in ("to_operator", "to_adapter"):
            self.bytes.labels(direction=direction)
        for reason in ("operator_not_listening", "refused"):
            self.errors.labels(reason=reason)


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`:PORT` for every address); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class _Link:
    """One adapter connection spliced to the operator."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        operator: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        metrics: ForwardMetrics | None = None,
    ) -> None:
        self._client = client
        self._operator = operator
        self._metrics = metrics
        self._last_client = 0.0
        self._last_operator = 0.0
        self._loop = asyncio.get_running_loop()

    async def run(self) -> None:
        """Copy both ways until either side ends."""
        one = asyncio.ensure_future(self._to_operator())
        two = asyncio.ensure_future(self._to_client())
        try:
            await asyncio.wait({one, two}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (one, two):
                task.cancel()
            await asyncio.gather(one, two, return_exceptions=True)

    async def _to_operator(self) -> None:
        reader, _ = self._client
        _, writer = self._operator
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                self._last_client = self._loop.time()
                if self._metrics is not None:
                    self._metrics.bytes.labels(direction="to_operator").inc(len(data))
                writer.write(data)
                await writer.drain()

    async def _to_client(self) -> None:
        reader, _ = self._operator
        _, writer = self._client
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                self._last_operator = self._loop.time()
                if self._metrics is not None:
                    self._metrics.bytes.labels(direction="to_adapter").inc(len(data))
                writer.write(data)
                await writer.drain()

    async def drain(self, quiet_s: float, max_s: float) -> bool:
        """Close at the first idle moment: the operator spoke after the adapter's last bytes,
        `quiet_s` ago, and the adapter has been quiet three times that; False when there was
        none within `max_s` (closed anyway)."""
        deadline = self._loop.time() + max_s
        idle = False
        while self._loop.time() < deadline:
            now = self._loop.time()
            answered = self._last_operator >= self._last_client
            # The adapter quiet for longer: a request sent just before another's answer is
            # likely still being worked on, even though the operator spoke last.
            if (
                answered
                and now - self._last_operator >= quiet_s
                and now - self._last_client >= 3 * quiet_s
            ):
                idle = True
                break
            await asyncio.sleep(quiet_s / 4)
        await _close(self._client[1])
        await _close(self._operator[1])
        return idle


class Forwarder:
    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        dial_wait_s: float = 10.0,
        max_connections: int | None = None,
        on_refused: Callable[[], None] | None = None,
        metrics: ForwardMetrics | None = None,
    ) -> None:
        """`dial_wait_s`: how long a connection is held for an operator that is not
        listening (gRPC gives a connection attempt 5 s at least, then backs off).
        `max_connections`: held or spliced at once (None: no bound); `on_refused` is called
        for each connection refused beyond it. `metrics`: connections, bytes, errors."""
        self._listen = listen
        self._target = target
        self._dial_wait_s = dial_wait_s
        self._max_connections = max_connections
        self._on_refused = on_refused or (lambda: None)
        self._metrics = metrics
        if metrics is not None:
            metrics.open_connections.set_function(lambda: self.open_connections)
        self._refused_unlogged = 0
        self._next_refusal_log = 0.0
        self._connections: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._dialing = asyncio.Event()
        self._dialing.set()
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
        if self._max_connections is not None and len(self._connections) >= self._max_connections:
            if self._metrics is not None:
                self._metrics.errors.labels(reason="refused").inc()
            self._refuse(writer)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        if self._metrics is not None:
            self._metrics.connections.inc()
        try:
            upstream = await self._dial()
            if upstream is None:
                if self._metrics is not None:
                    self._metrics.errors.labels(reason="operator_not_listening").inc()
                logger.warning(
                    "the operator's gRPC port did not accept in time, closing a connection",
                    extra={"wait_s": self._dial_wait_s},
                )
                return
            link = _Link((reader, writer), upstream, self._metrics)
            self._links.add(link)
            try:
                await link.run()
            finally:
                self._links.discard(link)
                await _close(upstream[1])
        finally:
            await _close(writer)
            self._connections.discard(task)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self._on_refused()
        self._refused_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now < self._next_refusal_log:
            return
        logger.warning(
            "refusing gRPC connections: the forwarder holds its maximum",
            extra={
                "max_connections": self._max_connections,
                "peer": str(writer.get_extra_info("peername")),
                "refused": self._refused_unlogged,
            },
        )
        self._refused_unlogged = 0
        self._next_refusal_log = now + REFUSAL_LOG_INTERVAL_S

    async def drain(self, *, quiet_s: float = 0.02, max_s: float = 1.0) -> None:
        """Before the operator stops: close every connection while idle (see the module
        docstring); new connections wait for `resume` instead of reaching this operator."""
        self._dialing.clear()
        links = list(self._links)
        idle = await asyncio.gather(*(link.drain(quiet_s, max_s) for link in links))
        if not all(idle):
            logger.warning(
                "a gRPC connection was still busy when the operator had to stop",
                extra={"busy": idle.count(False), "max_s": max_s},
            )

    @property
    def open_connections(self) -> int:
        """Adapter connections accepted and not yet closed (held or spliced)."""
        return len(self._connections)

    def resume(self) -> None:
        """The next operator is started: connections may reach it (once it listens)."""
        self._dialing.set()

    async def _dial(self) -> Stream | None:
        """A new dial every DIAL_INTERVAL_S, without waiting for those still pending: one that
        gets no answer at all (an address that is gone: a pod that has just exited, a Service
        rule not yet updated) holds up nothing. The first connection made wins."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._dial_wait_s
        pending: set[asyncio.Task[Stream]] = set()
        dials, error = 0, ""
        next_dial = started
        try:
            while True:
                now = loop.time()
                if self._dialing.is_set() and len(pending) < DIALS_AT_ONCE and now >= next_dial:
                    dials += 1
                    pending.add(asyncio.ensure_future(self._dial_once()))
                    next_dial = now + DIAL_INTERVAL_S
                more = self._dialing.is_set() and len(pending) < DIALS_AT_ONCE
                wait_s = max(next_dial - loop.time(), 0.001) if more else DIAL_INTERVAL_S
                if not pending:
                    await asyncio.sleep(wait_s)
                    continue
                done, pending = await asyncio.wait(
                    pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                made = [t.result() for t in done if t.exception() is None]
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        error = _reason(exc)
                if made:
                    for _, extra in made[1:]:
                        extra.close()
                    if dials > 1:
                        logger.info(
                            "reached the operator's gRPC port",
                            extra={
                                "dials": dials,
                                "waited_s": round(loop.time() - started, 3),
                                "last_error": error,
                            },
                        )
                    return made[0]
                if loop.time() >= deadline:
                    return None
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    _, writer = await task
                    writer.close()  # made just as it was cancelled

    async def _dial_once(self) -> Stream:
        async with asyncio.timeout(DIAL_TIMEOUT_S):
            return await asyncio.open_connection(*self._target)


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {DIAL_TIMEOUT_S:g}s"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return repr(exc)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
