"""The request path: authenticate the aggregator, route by namespace, forward, log.

Every failure is a StatusError, turned into a Kubernetes Status at this one seam.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.forwarding import HeaderPolicy
from router.http1 import ProtocolError, RequestHead
from router.listener import ClientConnection
from router.local_answers import local_body
from router.metrics import RouterMetrics
from router.paths import LocalRoute, Route, parse_target
from router.recent import RecentAnswers, upstream_message
from router.requestheader import RequestHeaderAuth
from router.routing import RuleRouter
from router.status import StatusError
from router.upstreams import Outcome, Upstreams
from tenancy_common.client_verification import peer_intermediates, verify_result

access_log = logging.getLogger("router.access")

_JSON = b"Content-Type: application/json\r\n"
_RETRY = _JSON + b"Retry-After: 1\r\n"
_ROUTE_MEMO_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class AuthState:
    """Requestheader settings in force; `generation` changes whenever any of them does."""

    auth: RequestHeaderAuth
    policy: HeaderPolicy
    generation: int


class _Request:
    """One request in progress, and what the access log and metrics will say about it."""

    __slots__ = (
        "close",
        "connection",
        "head",
        "namespace",
        "outcome",
        "started",
        "state",
        "tenant",
    )

    def __init__(self, connection: ClientConnection, head: RequestHead, state: AuthState) -> None:
        self.connection = connection
        self.head = head
        self.state = state
        self.started = time.perf_counter()
        self.tenant = ""
        self.namespace = ""
        self.outcome = "rejected"
        self.close = False  # the connection itself is refused: close it after the answer


class ProxyHandler:
    def __init__(
        self,
        *,
        auth_state: Callable[[], AuthState],
        routing: RuleRouter,
        upstreams: Upstreams,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.time,
        health: Mapping[str, str] | None = None,
        recent: RecentAnswers | None = None,
    ) -> None:
        self._auth_state = auth_state
        self._routing = routing
        self._upstreams = upstreams
        self._metrics = metrics
        self._clock = clock
        self._routes: dict[bytes, Route] = {}
        self._health: Mapping[str, str] = {} if health is None else health
        """Backend -> its last health probe's result (router/health_probes.py), logged."""
        self._recent = recent

    # -- entry points (RequestHandler) -----------------------------------------------------

    def handle(self, connection: ClientConnection, head: RequestHead) -> None:
        request = _Request(connection, head, self._auth_state())
        try:
            self._route(request)
        except StatusError as exc:
            if self._recent is not None and request.namespace:
                self._recent.record(
                    request.tenant, request.namespace, exc.code, exc.message, answered=False
                )
            self._refuse(request, exc)
        except Exception:
            access_log.exception("unexpected error", extra={"namespace": request.namespace})
            self._refuse(request, StatusError(500, "internal error"))

    def malformed(self, connection: ClientConnection, error: ProtocolError) -> None:
        request = _Request(connection, RequestHead(b"-", b"-", b"", False), self._auth_state())
        self._refuse(request, StatusError(error.code, f"malformed request: {error}"))

    # -- the steps -------------------------------------------------------------------------

    def _authenticate(self, request: _Request) -> None:
        connection, state = request.connection, request.state
        now = self._clock()
        cached = connection.verdict
        if cached is None or cached[0] != state.generation or now > cached[2]:
            # Checked again once the certificate expires, as kube-apiserver checks every request.
            tls = connection.tls
            refusal: StatusError | None = None
            valid_until = math.inf
            if tls is None:
                refusal = StatusError(401, "Unauthorized: TLS client certificate required")
            else:
                try:
                    valid_until = state.auth.verify_peer(
                        tls.getpeercert(binary_form=True),
                        datetime.datetime.fromtimestamp(now, datetime.UTC),
                        verify_result(tls),
                        peer_intermediates(tls),
                    )
                except StatusError as error:
                    refusal = error
            cached = connection.verdict = (state.generation, refusal, valid_until)
        if cached[1] is not None:
            # No answer but this one: pipelined requests of a caller we do not trust are
            # never read, and it cannot hold the connection open to send more.
            request.close = True
            raise cached[1]
        if not state.policy.username(request.head.lines, request.head.low):
            raise StatusError(401, "Unauthorized: no user in the requestheader username headers")

    def _route(self, request: _Request) -> None:
        head = request.head
        try:
            self._authenticate(request)
        except StatusError:
            self._metrics.auth_failures.inc()
            request.outcome = "unauthenticated"
            raise
        route = self._routes.get(head.target)
        if route is None:
            # Pure function of the target, and HPAs ask for the same few targets again and
            # again: parse each once. Refused targets raise and are never kept.
            route = parse_target(head.target.decode("ascii"))
            if len(self._routes) >= _ROUTE_MEMO_LIMIT:
                self._routes.clear()
            self._routes[head.target] = route
        if head.method != b"GET":
            method = head.method.decode("ascii", "replace")
            raise StatusError(405, f"method {method} is not allowed: this API is read-only")
        if isinstance(route, LocalRoute):
            request.outcome = "local"
            body = local_body(route.kind)
            self._reply(request, 200, _JSON, body)
            return
        request.namespace = route.namespace
        backend = self._routing.backend_for(route)
        request.tenant = backend.name
        forwarded = request.state.policy.forwarded(head.lines, head.low)
        # The raw target was validated above; it goes upstream byte-for-byte, query included.
        self._upstreams.forward(backend, head.target, forwarded, self._answered, request)

    def _answered(self, request: _Request, outcome: Outcome) -> None:
        try:
            if self._recent is not None:
                self._remember(request, outcome)
            if isinstance(outcome, StatusError):
                self._metrics.upstream_errors.labels(request.tenant, str(outcome.code)).inc()
                request.outcome = "upstream_error"
                self._refuse(request, outcome)
                return
            request.outcome = "forwarded"
            self._reply(
                request,
                outcome.status,
                outcome.forward_lines,
                outcome.body,
                date=not outcome.has_date,
                framed=outcome.framed,
            )
        except Exception:
            access_log.exception("unexpected error", extra={"namespace": request.namespace})
            self._refuse(request, StatusError(500, "internal error"))

    def _remember(self, request: _Request, outcome: Outcome) -> None:
        assert self._recent is not None
        if isinstance(outcome, StatusError):
            self._recent.record(
                request.tenant, request.namespace, outcome.code, outcome.message, answered=False
            )
            return
        status = outcome.status
        message = upstream_message(status, outcome.body) if status >= 400 else ""
        self._recent.record(request.tenant, request.namespace, status, message, answered=True)

    def _refuse(self, request: _Request, error: StatusError) -> None:
        headers = _RETRY if error.code == 429 else _JSON
        # A request that broke the protocol leaves the connection in an unknown state.
        close = request.close or error.code in (400, 431)
        self._reply(request, error.code, headers, error.body(), close=close)

    def _reply(
        self,
        request: _Request,
        status: int,
        lines: bytes,
        body: bytes | bytearray,
        *,
        close: bool = False,
        date: bool = True,
        framed: bool = False,
    ) -> None:
        request.connection.respond(status, lines, body, close=close, date=date, framed=framed)
        self._observe(request, status)

    # -- metrics and the access log ---------------------------------------------------------

    def _observe(self, request: _Request, code: int) -> None:
        elapsed_s = time.perf_counter() - request.started
        self._metrics.requests.observe(request.tenant, code, request.outcome, elapsed_s)
        if not access_log.isEnabledFor(logging.INFO):
            return
        head = request.head
        access_log.info(
            "%s %s %d",
            head.method.decode("ascii", "replace"),
            head.target.partition(b"?")[0].decode("ascii", "replace"),
            code,
            extra={
                "tenant": request.tenant,
                "namespace": request.namespace,
                "user": request.state.policy.username(head.lines, head.low).decode(
                    "utf-8", "replace"
                ),
                "status": code,
                "outcome": request.outcome,
                "backend_health": self._health.get(request.tenant, ""),
                "duration_ms": round(elapsed_s * 1000, 3),
                "audit_id": head.header(b"audit-id").decode("ascii", "replace"),
            },
        )
