"""The secure port: TLS connections from the aggregator, one request at a time each.

A connection reads a request head, hands it to the handler, and reads the next only
once the answer is written (pipelined requests wait in the buffer, in order). Memory per
connection is bounded both ways: reading stops while more than a head's worth of
requests waits or while the client does not read its answers (`pause_writing`).
Connections without a trusted client certificate are few (capped), short-lived and
closed after their one answer. Idle, half-sent, stalled and closing connections are
closed or aborted by a once-a-second sweep rather than a timer per request. Draining
stops accepting, closes idle connections at once and the busy ones after their answer,
and aborts whatever is left when the grace period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol, cast

from router.http1 import (
    MAX_HEAD_BYTES,
    ProtocolError,
    RequestHead,
    encode_head,
    encode_response,
)
from router.http1 import parse_request_head as parse_head
from tenancy_common.client_verification import verify_result

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 120.0
"""Longer than Go's 90 s idle timeout, so the aggregator closes kept-alive connections first."""
HEAD_TIMEOUT_S = 30.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
STALLED_TIMEOUT_S = 30.0
"""A client that reads none of its answers for this long is cut (a close would wait forever)."""
CLOSING_TIMEOUT_S = 5.0
"""A closed connection whose last answer cannot be flushed in this long is aborted."""
UNVERIFIED_TIMEOUT_S = 10.0
"""How long a connection without a trusted client certificate may stay open: it gets one
answer (401) and is closed, so nothing it sends is ever queued or answered again."""
LARGE_BODY_BYTES = 64 * 1024
"""Bodies above this are written after their head rather than copied into one buffer."""
UNVERIFIED_HEAD_BYTES = 16 * 1024
"""Largest request head read from a connection without a trusted client certificate: its
answer is a 401 whatever the head says, so a larger one only costs memory (431)."""
MAX_UNVERIFIED_CONNECTIONS = 256
"""Connections without a trusted client certificate open at once (about 25 KiB each);
beyond it new ones are closed at once. The aggregator always presents a certificate."""


class RequestHandler(Protocol):
    def handle(self, connection: ClientConnection, head: RequestHead) -> None:
        """Answer `head` through `connection.respond`, now or later, exactly once."""

    def malformed(self, connection: ClientConnection, error: ProtocolError) -> None:
        """Answer a request that could not be parsed (the connection closes after it)."""


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_busy",
        "_closing_since",
        "_in_next",
        "_keep_alive",
        "_listener",
        "_paused",
        "_since",
        "_stalled_since",
        "tls",
        "transport",
        "unverified",
        "verdict",
    )

    def __init__(self, listener: SecureListener) -> None:
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        self.tls: ssl.SSLObject | None = None
        self.verdict: tuple[int, Exception | None, float] | None = None
        """The handler's authentication verdict for this connection: the settings'
        generation it was made under, the refusal if any, and until when it holds."""
        self._buffer = b""
        self._busy = False
        self._in_next = False
        self._keep_alive = True
        self._paused = False  # reading paused: requests wait unread in the buffer
        self._since = time.monotonic()  # idle since, or head started at, for the sweep
        self._stalled_since = 0.0  # the client stopped reading its answers (0: it reads)
        self._closing_since = 0.0
        self.unverified = False
        """The handshake brought no client certificate that OpenSSL trusts."""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        tls = self.transport.get_extra_info("ssl_object")
        self.tls = tls if isinstance(tls, ssl.SSLObject) else None
        listener = self._listener
        listener.connections.add(self)
        if (
            self.tls is None
            or not self.tls.getpeercert(binary_form=True)
            or verify_result(self.tls)[0]
        ):
            self.unverified = True
            if len(listener.unverified) >= listener.max_unverified:
                self.transport.abort()
                return
            listener.unverified.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._buffer and not self._busy:
            self._since = time.monotonic()
        self._buffer = self._buffer + data if self._buffer else data
        if self._busy or self._stalled_since:
            if len(self._buffer) > MAX_HEAD_BYTES and not self._paused:
                self._paused = True  # a client racing ahead waits for its answers
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._next()

    def pause_writing(self) -> None:
        # The client does not read its answers: answer nothing more until it does.
        self._stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        self._stalled_since = 0.0
        self._proceed()

    def eof_received(self) -> bool | None:
        # The client is done sending; answer what is in flight, then close (return False).
        if not self._busy:
            self.close()
        self._keep_alive = False
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._buffer = b""
        self._listener.connections.discard(self)
        self._listener.unverified.discard(self)
        self._listener.changed()

    # -- requests --------------------------------------------------------------------------

    def _next(self) -> None:
        self._in_next = True
        try:
            while (
                not self._busy
                and not self._stalled_since
                and self._buffer
                and self.transport is not None
            ):
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > (
                        UNVERIFIED_HEAD_BYTES if self.unverified else MAX_HEAD_BYTES
                    ):
                        self._keep_alive = False
                        self._busy = True
                        self._listener.handler.malformed(
                            self, ProtocolError("request head too large", 431)
                        )
                    return
                head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
                self._busy = True
                try:
                    parsed = parse_head(head)
                except ProtocolError as exc:
                    self._keep_alive = False
                    self._listener.handler.malformed(self, exc)
                    return
                if not parsed.keep_alive:
                    self._keep_alive = False
                self._listener.handler.handle(self, parsed)
        finally:
            self._in_next = False

    def respond(
        self,
        status: int,
        lines: bytes,
        body: bytes | bytearray,
        *,
        close: bool = False,
        date: bool = True,
        framed: bool = False,
    ) -> None:
        """Write the answer to the current request; the next one is read after it."""
        transport = self.transport
        if transport is None:  # the client went away meanwhile
            return
        close = close or not self._keep_alive or self._listener.draining
        if len(body) > LARGE_BODY_BYTES:
            transport.write(
                encode_head(status, lines, len(body), close=close, date=date, framed=framed)
            )
            transport.write(body)
        else:
            transport.write(
                encode_response(status, lines, body, close=close, date=date, framed=framed)
            )
        self._busy = False
        if close:
            self._keep_alive = False
            self._buffer = b""
            if self.unverified:
                # No TLS goodbye: while it waits for the client's close_notify, TLS keeps
                # reading (and decrypting) whatever an untrusted client still sends. The
                # answer is in the kernel's hands already, unless the client reads nothing.
                transport.abort()
            else:
                self.close()
            self._listener.changed()
            return
        self._since = time.monotonic()
        if self._buffer or self._paused:  # the usual: nothing waits, so nothing to do
            self._proceed()

    def _proceed(self) -> None:
        """Read on and answer what waits, unless busy or the client is not reading."""
        transport = self.transport
        if transport is None or self._busy or self._stalled_since or self._closing_since:
            return
        if self._paused and len(self._buffer) <= MAX_HEAD_BYTES:
            self._paused = False
            transport.resume_reading()
        if self._buffer and not self._in_next:
            self._next()

    # -- the sweep and draining -------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close an idle or half-sent connection past its time; abort one that cannot
        flush (the client reads nothing), since a close would wait for it forever."""
        if self._closing_since:
            if now - self._closing_since > CLOSING_TIMEOUT_S:
                self.abort()
        elif self._stalled_since:
            if now - self._stalled_since > STALLED_TIMEOUT_S:
                self.abort()
        elif self.unverified:
            if now - self._since > UNVERIFIED_TIMEOUT_S:
                self.abort()  # no TLS goodbye for it either (see respond)
        elif not self._busy:
            limit = HEAD_TIMEOUT_S if self._buffer else IDLE_TIMEOUT_S
            if now - self._since > limit:
                self.close()

    @property
    def busy(self) -> bool:
        return self._busy

    def close(self) -> None:
        if self.transport is not None and not self._closing_since:
            self._closing_since = time.monotonic()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class SecureListener:
    """The TLS listening socket and every connection it accepted."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        self.connections: set[ClientConnection] = set()
        self.unverified: set[ClientConnection] = set()
        self.max_unverified = MAX_UNVERIFIED_CONNECTIONS
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._changed: asyncio.Event | None = None  # set up when draining starts

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            host,
            port,
            ssl=context,
            backlog=4096,
            reuse_address=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S,
        )
        self._sweeper = loop.call_later(1.0, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            connection.sweep(now)
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def changed(self) -> None:
        """A connection finished a request or closed: wakes `drain`."""
        if self._changed is not None:
            self._changed.set()

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        assert self._changed is not None
        while not done():
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _idle(self) -> bool:
        return not any(c.busy for c in self.connections)

    async def drain(self, grace_s: float, abandon: Callable[[], None] | None = None) -> None:
        """Stop accepting; let requests in flight finish for up to `grace_s`. Shortly
        before it ends, `abandon` answers whatever is still waiting (503), so every
        accepted request gets an answer; what is left at the end is cut."""
        self.draining = True
        self._changed = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        deadline = time.monotonic() + grace_s
        await self._until(self._idle, deadline - min(1.0, grace_s / 4))
        if abandon is not None and not self._idle():
            abandon()
        await self._until(self._idle, deadline)
        # Every answer is written and its connection closing: a moment for the TLS goodbyes.
        await self._until(lambda: not self.connections, min(deadline, time.monotonic() + 1.0))
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost
