"""Connection pools to the tenants' metrics servers, one per backend, kept apart.

Each backend gets its own bounded keep-alive pool, its own concurrency limit and its
own short memory of being down, so a tenant whose KEDA hangs or dies costs the other
tenants nothing. Pools are rebuilt (and the old ones closed once idle) when the
upstream client certificate or a CA changes.

A pool grows to demand: a request that waited `dial_delay_s` for a busy connection, or
finds more waiters than busy connections, gets a dial of its own, and dials go on as
each completes. One failed dial fails nothing while other connections serve the
tenant; a tenant is "down" only when it cannot be reached at all or answers nothing for
a whole `timeout_s`. Then its requests fail fast (503) for a short, growing cooldown,
after which one request at a time probes it. A tenant that answered recently and now
refuses every connection is not down yet: its metrics server is being rolled, and the
Service sends new connections to the pod that is going until kube-proxy drops it. Its
requests wait while it is dialled again for up to REFUSED_GRACE_S.

The hot path is callbacks on asyncio protocols, not coroutines: a request on a kept-alive
connection costs two writes and two reads, with no task, stream or future in between.
Only opening a connection runs as a task.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from router.backends import Backend
from router.http1 import ProtocolError, ResponseReader
from router.status import StatusError
from router.transient import transient_reason
from tenancy_common.tls import ResumingClientContext

logger = logging.getLogger(__name__)

_DIALS_AT_ONCE = 4
"""New connections being opened at once per backend (more follow as each completes): a
burst on a cold pool must not turn into a handshake per request at once (each costs the
router far more CPU than a forwarded request)."""
_REDIAL_DELAY_S = 0.1
_REDIAL_DELAY_MAX_S = 2.0
"""After a failed dial while other connections serve the tenant, or within
REFUSED_GRACE_S: wait before the next."""
REFUSED_GRACE_S = 2.0
"""How long failed dials to a tenant that answered within --upstream-keepalive are taken
for a rollout (the terminating metrics server's endpoint still in kube-proxy's rules: 1 s
or less on the cluster) rather than a dead tenant. Its requests wait meanwhile; a dead
tenant costs each caller this once, then fails fast. The health probes use the same grace
for refused connections (router/health_probes.py)."""
_SLOTS_PER_S = 10
"""Timeouts fire within 100 ms of --upstream-timeout."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    timeout_s: float = 5.0
    """Whole-request deadline, well below the HPA controller's 15 s sync period (see README)."""
    connect_timeout_s: float = 3.0
    max_connections: int = 64
    """Keep-alive pool size per backend; requests beyond it wait for a free connection."""
    max_concurrent: int = 64
    """Requests in flight per backend before new ones get 429."""
    keepalive_s: float = 60.0
    dial_delay_s: float = 0.010
    """How long a request waits for a busy connection of its backend to come free before
    a new one is opened: a metrics request takes milliseconds, a TLS handshake costs the
    router more CPU than dozens of forwarded requests."""
    down_cooldown_s: float = 1.0
    """Once a tenant is down (unreachable, or nothing answered in a whole `timeout_s`),
    fail fast for this long, doubling up to the max while probes keep failing."""
    down_cooldown_max_s: float = 5.0
    max_response_bytes: int = 1024 * 1024
    """Largest answer passed on (502 past it): an ExternalMetricValueList item is about
    200 bytes, so this is thousands of items."""
    buffered_answers_per_tenant: int = 8
    """Answers of `max_response_bytes` one tenant may have in the router's memory at once,
    summed over its requests in flight (502 for the one that goes past it)."""


@dataclass(frozen=True, slots=True)
class FastFailState:
    """One backend's pool as the request path sees it, for the explain command."""

    down: bool
    """Marked down, and no probe has found it back since."""
    failing_fast: bool
    """Within its cooldown: its requests get 503 without trying."""
    reason: str
    """Why it was last marked down ("" if never)."""
    retry_in_s: float
    probing: bool
    last_answer_age_s: float | None
    """Seconds since it last answered anything (None: never)."""
    connections: int
    in_flight: int


UpstreamResponse = ResponseReader
"""What a backend answered: its complete response's reader, handed on as it is (status,
`forward_lines`, body), not copied into another object on the hot path."""
Outcome = UpstreamResponse | StatusError
Done = Callable[[Any, Outcome], None]
"""Called with the caller's context and the outcome (a bound method and its argument, not a
closure made per request)."""


class _Exchange:
    """One request on its way to a backend; `done(context, outcome)` is called exactly once."""

    __slots__ = (
        "attempt",
        "bucket",
        "connection",
        "context",
        "done",
        "finished",
        "pool",
        "probe",
        "request",
        "started",
        "waiting_since",
    )

    def __init__(
        self, pool: _Pool, request: bytes, done: Done, context: object, started: float
    ) -> None:
        self.pool = pool
        self.request = request
        self.done = done
        self.context = context
        self.started = started
        self.probe = False  # let through to find out whether a down tenant is back
        self.attempt = 1
        self.connection: _Connection | None = None
        self.bucket: set[_Exchange] | None = None  # its slot in Upstreams' deadline wheel
        self.finished = False
        self.waiting_since = 0.0  # when it began to wait for a connection


class _Connection(asyncio.Protocol):
    """One kept-alive TLS connection to a backend, carrying one exchange at a time."""

    __slots__ = ("counted", "exchange", "fresh", "idle_since", "pool", "reader", "transport")

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.reader: ResponseReader | None = None
        self.idle_since = 0.0
        self.fresh = True
        self.counted = 0  # bytes of the answer being read, counted in pool.buffered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, exchange: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        exchange.connection = self
        self.reader = ResponseReader(self.pool.max_response_bytes)
        self.transport.write(exchange.request)

    def data_received(self, data: bytes) -> None:
        exchange, reader = self.exchange, self.reader
        if exchange is None or reader is None:
            self.abort()  # bytes nobody asked for: this connection is out of step
            return
        try:
            complete = reader.feed(data)
        except ProtocolError as exc:
            self.abort()
            self.pool.owner.fail(exchange, 502, f"sent an invalid response: {exc}")
            return
        if complete and not self.counted:  # the usual: whole in its first read, handed on
            self._complete(exchange, reader)
            return
        size = len(reader.body)
        if size != self.counted:
            pool = self.pool
            pool.buffered += size - self.counted
            self.counted = size
            if pool.buffered > pool.max_buffered:
                # The tenant's answers in flight are too large together: this one goes.
                self.abort()
                pool.owner.fail(exchange, 502, "sent answers too large together")
                return
        if complete:
            self._complete(exchange, reader)

    def _uncount(self) -> None:
        if self.counted:
            self.pool.buffered -= self.counted
            self.counted = 0

    def eof_received(self) -> bool | None:
        exchange, reader = self.exchange, self.reader
        if exchange is not None and reader is not None and reader.eof():
            self._complete(exchange, reader)
        return None

    def _complete(self, exchange: _Exchange, reader: ResponseReader) -> None:
        self.exchange = self.reader = None
        if self.counted:
            self._uncount()  # handed on: from here it is bounded by the client connection
        if self.fresh:
            self.fresh = False
            self.pool.keep_session(self.transport)
        reusable = reader.keep_alive and not reader.leftover and not exchange.finished
        owner = self.pool.owner
        owner.answered(exchange, reader)
        if reusable:
            owner.release(self)
        else:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._uncount()
        exchange, reader = self.exchange, self.reader
        self.exchange = self.reader = None
        self.pool.owner.lost(self, exchange, reader is not None and reader.started)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """One backend's connections, waiters, concurrency limit and down-state."""

    def __init__(
        self,
        owner: Upstreams,
        backend: Backend,
        context: ssl.SSLContext,
        settings: UpstreamSettings,
    ) -> None:
        self.owner = owner
        self.backend = backend
        self.context = context
        self.host = backend.origin.raw_host or ""
        self.port = backend.origin.port or 443
        self.server_name = backend.server_name or self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == 443 else f":{self.port}"
        self.host_header = f"{host}{port}\r\n".encode("ascii")
        self.max_response_bytes = settings.max_response_bytes
        self.max_buffered = settings.max_response_bytes * settings.buffered_answers_per_tenant
        self.buffered = 0  # bytes of answers being read, all connections together
        self.max_connections = settings.max_connections
        self.max_concurrent = settings.max_concurrent
        self.idle: list[_Connection] = []
        self.waiters: collections.deque[_Exchange] = collections.deque()
        self.opened = 0  # connected or connecting
        self.dialing = 0
        self.dial_timer: asyncio.TimerHandle | None = None
        self.redial_at = 0.0  # no dial before this (a dial failed while others serve)
        self.redial_delay_s = 0.0
        self.unreachable_since = 0.0  # non-zero: every dial since then failed, none open
        self.inflight = 0
        self.answered_at = 0.0  # when the backend last answered anything
        self.down_until = 0.0  # non-zero: down; fail fast until then, then probe
        self.down_reason = ""
        self.cooldown_s = 0.0
        self.probing = False
        self.retired = False

    def keep_session(self, transport: asyncio.Transport | None) -> None:
        """Let the next connection to this server resume this one's TLS session."""
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(self.context, ResumingClientContext) and isinstance(tls, ssl.SSLObject):
            self.context.keep_session(self.server_name, tls)


class Upstreams:
    """Forwards one request to one backend; owns every upstream pool."""

    def __init__(
        self,
        settings: UpstreamSettings,
        contexts: Callable[[str], ssl.SSLContext],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._contexts = contexts  # CA key -> current client context (rebuilt on reload)
        self._clock = clock
        self._pools: dict[str, _Pool] = {}
        self._retiring: set[_Pool] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadlines: dict[int, set[_Exchange]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self.timeouts: dict[str, int] = {}
        """Requests answered 504 per tenant (kept across pool rebuilds)."""
        self.fast_failed: dict[str, int] = {}
        """Requests answered 503 at once per tenant, because it was down."""
        self.transient_retries: dict[tuple[str, str], int] = {}
        """Requests sent again per tenant after its adapter answered gRPC Unavailable."""

    # -- the request path --------------------------------------------------------------------

    def forward(
        self, backend: Backend, target: bytes, headers: bytes, done: Done, context: object
    ) -> None:
        """GET `target` from `backend` with `headers` (complete lines); then `done(context,
        outcome)`."""
        pool = self._pool(backend)
        now = self._clock()
        probe = False
        if pool.down_until:
            if now < pool.down_until or pool.probing:
                self._fast_fail(pool, done, context)
                return
            probe = True  # the cooldown is over: this one finds out
        if pool.inflight >= pool.max_concurrent:
            done(context, StatusError(429, f"too many requests in flight to {backend.name}"))
            return
        pool.probing = probe or pool.probing
        pool.inflight += 1
        request = b"GET " + target + b" HTTP/1.1\r\nHost: " + pool.host_header + headers + b"\r\n"
        exchange = _Exchange(pool, request, done, context, now)
        exchange.probe = probe
        self._add_deadline(exchange, now)
        self._dispatch(exchange, now)

    def _fast_fail(self, pool: _Pool, done: Done, context: object) -> None:
        name = pool.backend.name
        self.fast_failed[name] = self.fast_failed.get(name, 0) + 1
        done(
            context,
            StatusError(
                503,
                f"the metrics server of {name} is unavailable ({pool.down_reason}); failing fast",
            ),
        )

    def _dispatch(self, exchange: _Exchange, now: float) -> None:
        pool = exchange.pool
        idle = pool.idle
        if idle:
            oldest_allowed = now - self._settings.keepalive_s
            while idle:
                connection = idle.pop()  # most recently used: the least likely to be stale
                if connection.idle_since >= oldest_allowed and connection.transport is not None:
                    connection.send(exchange)
                    return
                connection.abort()
        # Wait for whichever comes first: a connection freed by another request, or a new
        # one (as Go's transport does). A new one nobody needs any more is kept idle.
        waiters = pool.waiters
        waiters.append(exchange)
        exchange.waiting_since = now
        if pool.dial_timer is None or len(waiters) > pool.opened - len(pool.idle):
            # Otherwise every waiter has a busy or opening connection ahead of it, and the
            # timer armed for the longest-waiting young one looks again (see _grow).
            self._grow(pool)

    def _on_dial_timer(self, pool: _Pool) -> None:
        pool.dial_timer = None
        self._grow(pool)

    def _grow(self, pool: _Pool) -> None:
        """Dial for every waiter no busy connection is likely to serve soon.

        A waiter beyond the number of busy connections would queue for rounds: it gets a
        dial at once. Otherwise a busy connection will likely be free within a request's
        time, which is cheaper than a handshake, so a waiter gets a dial only once it has
        waited `dial_delay_s`: a steady stream of short waits (two callers in step on one
        tenant) needs no new connection, a slow tenant gets a connection per waiter.
        """
        if self._first_waiter(pool) is None:
            return
        waiters = pool.waiters
        now = self._clock()
        delay_s = self._settings.dial_delay_s
        waited = 0  # waiters (oldest first) that waited dial_delay_s: their turn is late
        young: _Exchange | None = None  # the first waiter that has not, yet
        for exchange in waiters:
            if exchange.waiting_since + delay_s > now:
                young = exchange
                break
            if not exchange.finished:
                waited += 1
        busy = pool.opened - pool.dialing - len(pool.idle)
        needed = max(len(waiters) - busy, waited) - pool.dialing
        if needed > 0 and now < pool.redial_at:
            self._arm_dial_timer(pool, pool.redial_at - now)
            return
        while needed > 0 and pool.opened < pool.max_connections and pool.dialing < _DIALS_AT_ONCE:
            self._dial(pool)
            needed -= 1
        if young is not None:
            self._arm_dial_timer(pool, young.waiting_since + delay_s - now)

    def _arm_dial_timer(self, pool: _Pool, delay_s: float) -> None:
        if pool.dial_timer is None:
            pool.dial_timer = asyncio.get_running_loop().call_later(
                max(delay_s, 0.001), self._on_dial_timer, pool
            )

    @staticmethod
    def _first_waiter(pool: _Pool) -> _Exchange | None:
        """The longest-waiting exchange still unanswered (timed-out ones are dropped here)."""
        waiters = pool.waiters
        while waiters and waiters[0].finished:
            waiters.popleft()
        return waiters[0] if waiters else None

    def _dial(self, pool: _Pool) -> None:
        pool.opened += 1
        pool.dialing += 1
        task = asyncio.get_running_loop().create_task(self._connect(pool))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, pool: _Pool) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(pool),
                    pool.host,
                    pool.port,
                    ssl=pool.context,
                    server_hostname=pool.server_name,
                    ssl_handshake_timeout=self._settings.connect_timeout_s,
                )
        except asyncio.CancelledError:
            pool.opened -= 1
            pool.dialing -= 1
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            pool.opened -= 1
            pool.dialing -= 1
            reason = (
                "timed out"
                if isinstance(exc, TimeoutError)
                else (exc.strerror or type(exc).__name__)
            )
            self._dial_failed(pool, reason)
            return
        pool.dialing -= 1
        pool.redial_at = pool.redial_delay_s = pool.unreachable_since = 0.0
        self.release(connection)
        self._grow(pool)

    def _dial_failed(self, pool: _Pool, reason: str) -> None:
        now = self._clock()
        if pool.opened:
            # Other connections serve the tenant (one replica gone, say) or are being
            # opened: the waiters wait for them; dial again after a short pause.
            self._redial_later(pool, now)
            logger.info(
                "cannot open another connection to a metrics server",
                extra={"tenant": pool.backend.name, "error": reason},
            )
            return
        if not pool.unreachable_since:
            pool.unreachable_since = now
        if (
            not pool.down_until
            and pool.answered_at
            and now - pool.answered_at < self._settings.keepalive_s
            and now - pool.unreachable_since < REFUSED_GRACE_S
        ):
            # It answered a moment ago: a rollout, most likely, not a death. A refused dial
            # costs next to nothing: try every 100 ms, not on a growing backoff.
            pool.redial_at = now + _REDIAL_DELAY_S
            self._grow(pool)
            logger.info(
                "cannot reach a metrics server that answered recently: dialling again",
                extra={"tenant": pool.backend.name, "error": reason},
            )
            return
        # Nothing reaches the tenant: it is down.
        pool.unreachable_since = 0.0
        self._mark_down(pool, "recent connection failures")
        message = f"the metrics server of {pool.backend.name} is unreachable: {reason}"
        while pool.waiters:  # they would fail fast had they arrived now
            self.fail(pool.waiters.popleft(), 503, message, prefixed=True)

    def _redial_later(self, pool: _Pool, now: float) -> None:
        pool.redial_delay_s = min(
            max(pool.redial_delay_s * 2, _REDIAL_DELAY_S), _REDIAL_DELAY_MAX_S
        )
        pool.redial_at = now + pool.redial_delay_s
        self._grow(pool)

    def release(self, connection: _Connection) -> None:
        """A connection finished an exchange cleanly: reuse it or keep it idle."""
        pool = connection.pool
        while pool.waiters:
            exchange = pool.waiters.popleft()
            if not exchange.finished:
                connection.send(exchange)
                return
        if pool.retired:
            connection.abort()
            return
        connection.idle_since = self._clock()
        pool.idle.append(connection)
        if self._sweeper is None:
            self._schedule_sweep()

    def lost(self, connection: _Connection, exchange: _Exchange | None, answered: bool) -> None:
        pool = connection.pool
        pool.opened -= 1
        if connection in pool.idle:
            pool.idle.remove(connection)
        if exchange is not None and not exchange.finished:
            if not answered and not connection.fresh and exchange.attempt == 1:
                # A kept-alive connection the server had just closed: GET is safe to retry.
                self._resend(exchange)
            else:
                self.fail(exchange, 502, "closed the connection before answering")
        self._grow(pool)

    def answered(self, exchange: _Exchange, response: UpstreamResponse) -> None:
        exchange.pool.answered_at = self._clock()
        if response.redirect:
            # As kube-apiserver's aggregator does: a backend may not send callers elsewhere.
            self.fail(exchange, 502, "attempted to redirect, which is not permitted")
            return
        if response.status == 500 and self._retry_transient(exchange, response):
            return
        self._finish(exchange, response)

    def _retry_transient(self, exchange: _Exchange, response: UpstreamResponse) -> bool:
        """Send a GET again, once, when the tenant's KEDA adapter answered with one of its
        transient errors (router/transient.py: the operator's gRPC went away under the
        request; a scalers cache replaced while it was read). Same tenant, same deadline; at
        most two attempts."""
        if exchange.attempt != 1 or exchange.finished:
            return False
        reason = transient_reason(response.body)
        if reason is None:
            return False
        key = (exchange.pool.backend.name, reason)
        self.transient_retries[key] = self.transient_retries.get(key, 0) + 1
        logger.info(
            "retrying a request the tenant's KEDA answered with a transient error",
            extra={"tenant": key[0], "reason": reason},
        )
        self._resend(exchange)
        return True

    def _resend(self, exchange: _Exchange) -> None:
        """The second and last attempt of a GET, on the same tenant within its deadline."""
        exchange.attempt = 2
        exchange.connection = None
        self._dispatch(exchange, self._clock())

    def fail(self, exchange: _Exchange, code: int, message: str, *, prefixed: bool = False) -> None:
        text = (
            message if prefixed else f"the metrics server of {exchange.pool.backend.name} {message}"
        )
        self._finish(exchange, StatusError(code, text))

    # -- timeouts: a wheel of 100 ms slots swept by one timer, not a timer per request ------

    def _add_deadline(self, exchange: _Exchange, now: float) -> None:
        slot = int((now + self._settings.timeout_s) * _SLOTS_PER_S) + 1
        bucket = self._deadlines.get(slot)
        if bucket is None:
            bucket = self._deadlines[slot] = set()
        bucket.add(exchange)
        exchange.bucket = bucket
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(1 / _SLOTS_PER_S, self._reap)

    def _reap(self) -> None:
        now_slot = int(self._clock() * _SLOTS_PER_S)
        for slot in [slot for slot in self._deadlines if slot <= now_slot]:
            for exchange in list(self._deadlines.pop(slot)):
                self._expire(exchange)
        self._reaper = (
            asyncio.get_running_loop().call_later(1 / _SLOTS_PER_S, self._reap)
            if self._deadlines
            else None
        )

    def _expire(self, exchange: _Exchange) -> None:
        self._detach(exchange)
        pool = exchange.pool
        name = pool.backend.name
        self.timeouts[name] = self.timeouts.get(name, 0) + 1
        self.fail(exchange, 504, "did not answer in time")
        if pool.answered_at < exchange.started and not exchange.probe:
            # Nothing at all came back while this request waited: the tenant is hung, and
            # each caller held for the whole deadline is an HPA worker every tenant needs.
            self._mark_down(pool, "not answering in time")
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.finished:
                    self.fast_failed[name] = self.fast_failed.get(name, 0) + 1
                    self.fail(waiter, 503, f"is unavailable ({pool.down_reason}); failing fast")

    def _finish_aborted(self, exchange: _Exchange) -> None:
        self._detach(exchange)
        self.fail(exchange, 503, "is not reachable: the router is stopping")

    @staticmethod
    def _detach(exchange: _Exchange) -> None:
        connection = exchange.connection
        if connection is not None and connection.exchange is exchange:
            connection.exchange = connection.reader = None
            connection.abort()

    def _finish(self, exchange: _Exchange, outcome: Outcome) -> None:
        if exchange.finished:
            return
        exchange.finished = True
        if exchange.bucket is not None:
            exchange.bucket.discard(exchange)
            exchange.bucket = None
        pool = exchange.pool
        pool.inflight -= 1
        if pool.retired and not pool.inflight:
            self._close_pool(pool)
        if exchange.probe:
            pool.probing = False
            if isinstance(outcome, UpstreamResponse) or outcome.code == 502:
                # It answered (even badly): reachable again.
                pool.down_until = pool.cooldown_s = 0.0
            elif outcome.code == 504:
                self._mark_down(pool, "not answering in time")
        exchange.done(exchange.context, outcome)

    # -- pools -------------------------------------------------------------------------------

    def _pool(self, backend: Backend) -> _Pool:
        context = self._contexts(backend.ca_file)
        pool = self._pools.get(backend.name)
        if (
            pool is not None
            and pool.context is context
            and (pool.backend is backend or pool.backend == backend)
        ):
            return pool
        if pool is not None:
            self._retire(pool)
        pool = self._pools[backend.name] = _Pool(self, backend, context, self._settings)
        return pool

    def _retire(self, pool: _Pool) -> None:
        """New certificates or a new address: no new requests; close once idle."""
        pool.retired = True
        if pool.inflight:
            self._retiring.add(pool)
        else:
            self._close_pool(pool)

    def _close_pool(self, pool: _Pool) -> None:
        self._retiring.discard(pool)
        if pool.dial_timer is not None:
            pool.dial_timer.cancel()
            pool.dial_timer = None
        for connection in pool.idle:
            connection.abort()
        pool.idle.clear()

    def fast_fail_state(self, name: str) -> FastFailState | None:
        """What the request path knows of one backend (None: no request went there yet)."""
        pool = self._pools.get(name)
        if pool is None:
            return None
        now = self._clock()
        return FastFailState(
            down=bool(pool.down_until),
            failing_fast=now < pool.down_until,
            reason=pool.down_reason,
            retry_in_s=max(pool.down_until - now, 0.0),
            probing=pool.probing,
            last_answer_age_s=now - pool.answered_at if pool.answered_at else None,
            connections=pool.opened - pool.dialing,
            in_flight=pool.inflight,
        )

    def backend_down(self, backend: Backend) -> bool:
        pool = self._pools.get(backend.name)
        return pool is not None and self._clock() < pool.down_until

    def _mark_down(self, pool: _Pool, reason: str) -> None:
        if self._clock() < pool.down_until:
            return  # already down: concurrent failures are one failure
        pool.cooldown_s = min(
            max(pool.cooldown_s * 2, self._settings.down_cooldown_s),
            self._settings.down_cooldown_max_s,
        )
        pool.down_until = self._clock() + pool.cooldown_s
        pool.down_reason = reason
        logger.warning(
            "metrics server down, failing fast",
            extra={"tenant": pool.backend.name, "reason": reason, "cooldown_s": pool.cooldown_s},
        )

    # -- active health (router/health_probes.py): off the request path ----------------------

    def hold_down(self, backend: Backend, reason: str, since: float) -> None:
        """A health probe sent at `since` found `backend` unhealthy: fail its requests fast
        until `release_down`, with no request sent to find out. Not when a request was
        answered meanwhile (the probe's own connection failed, the others serve)."""
        pool = self._pool(backend)
        if pool.answered_at >= since:
            return
        if pool.down_until != math.inf:
            pool.down_until = math.inf
            pool.down_reason = reason
            logger.warning(
                "metrics server down, failing fast",
                extra={"tenant": backend.name, "reason": reason},
            )

    def release_down(self, backend: Backend) -> None:
        """A health probe was answered: whatever made `backend` down is over."""
        pool = self._pools.get(backend.name)
        if pool is not None and pool.down_until:
            pool.down_until = pool.cooldown_s = 0.0

    def known_backends(self) -> list[Backend]:
        """Every backend a request went to since start (one pool each)."""
        return [pool.backend for pool in self._pools.values()]

    def _schedule_sweep(self) -> None:
        interval = max(self._settings.keepalive_s / 2, 0.05)
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than --upstream-keepalive."""
        self._sweeper = None
        oldest_allowed = self._clock() - self._settings.keepalive_s
        remaining = False
        for pool in self._pools.values():
            for connection in [c for c in pool.idle if c.idle_since < oldest_allowed]:
                pool.idle.remove(connection)
                connection.abort()
            remaining = remaining or bool(pool.idle)
        if remaining:
            self._schedule_sweep()

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per backend, for the metrics."""
        counts: dict[str, int] = {}
        for pool in [*self._pools.values(), *self._retiring]:
            counts[pool.backend.name] = counts.get(pool.backend.name, 0) + pool.inflight
        return counts

    def idle_connections(self) -> int:
        return sum(len(pool.idle) for pool in self._pools.values())

    def pool_sizes(self) -> dict[str, tuple[int, int]]:
        """(open connections, requests waiting for one) per backend, for the metrics."""
        sizes: dict[str, tuple[int, int]] = {}
        for pool in [*self._pools.values(), *self._retiring]:
            connections, queued = sizes.get(pool.backend.name, (0, 0))
            waiting = sum(not exchange.finished for exchange in pool.waiters)
            sizes[pool.backend.name] = (connections + pool.opened - pool.dialing, queued + waiting)
        return sizes

    def abandon(self) -> None:
        """Answer every request still in flight or queued with 503: the router stops."""
        for slot in list(self._deadlines):
            for exchange in list(self._deadlines.pop(slot)):
                self._finish_aborted(exchange)

    async def close(self) -> None:
        """Abort every connection; called after the listener has drained."""
        for timer in (self._sweeper, self._reaper):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._reaper = None
        for task in list(self._connecting):
            task.cancel()
        self.abandon()  # still in flight after the drain: cut
        for pool in [*self._pools.values(), *self._retiring]:
            pool.retired = True
            while pool.waiters:
                self.fail(pool.waiters.popleft(), 503, "is not reachable: the router is stopping")
            self._close_pool(pool)
        self._pools.clear()
        await asyncio.sleep(0)  # let aborted transports report connection_lost
