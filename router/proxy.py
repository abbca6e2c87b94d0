"""The request path: authenticate the aggregator, route by namespace, forward, log.

Every failure is a StatusError, turned into a Kubernetes Status at this one seam.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from router.forwarding import HeaderPolicy, response_headers
from router.local_answers import local_body
from router.metrics import RouterMetrics
from router.paths import LocalRoute, parse_target
from router.requestheader import RequestHeaderAuth
from router.status import StatusError, status_body
from router.tenants import TenantDirectory
from router.upstreams import Upstreams
from tenancy_common.client_verification import verify_result

access_log = logging.getLogger("router.access")

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class AuthState:
    """Requestheader settings in force; `generation` changes whenever any of them does."""

    auth: RequestHeaderAuth
    policy: HeaderPolicy
    generation: int


class ProxyHandler:
    def __init__(
        self,
        *,
        auth_state: Callable[[], AuthState],
        directory: TenantDirectory,
        upstreams: Upstreams,
        metrics: RouterMetrics,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._auth_state = auth_state
        self._directory = directory
        self._upstreams = upstreams
        self._metrics = metrics
        self._now = now
        # Per TLS connection: (auth generation, front-proxy CN or the refusal).
        self._verdicts: weakref.WeakKeyDictionary[ssl.SSLObject, tuple[int, str | StatusError]] = (
            weakref.WeakKeyDictionary()
        )

    def _authenticate(self, request: web.BaseRequest, state: AuthState) -> None:
        transport = request.transport
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        if not isinstance(tls, ssl.SSLObject):
            raise StatusError(401, "Unauthorized: TLS client certificate required")
        cached = self._verdicts.get(tls)
        if cached is None or cached[0] != state.generation:
            verdict: str | StatusError
            try:
                verdict = state.auth.verify_peer(
                    tls.getpeercert(binary_form=True), self._now(), verify_result(tls)
                )
            except StatusError as refusal:
                verdict = refusal
            cached = (state.generation, verdict)
            self._verdicts[tls] = cached
        if isinstance(cached[1], StatusError):
            raise cached[1]
        if not state.policy.username(request.raw_headers):
            raise StatusError(401, "Unauthorized: no user in the requestheader username headers")

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        state = self._auth_state()
        record = _Record()
        try:
            response = await self._handle(request, state, record)
        except StatusError as exc:
            response = web.Response(status=exc.code, body=exc.body(), content_type=_JSON)
        except Exception:
            access_log.exception("unexpected error", extra={"namespace": record.namespace})
            response = web.Response(
                status=500, body=status_body(500, "internal error"), content_type=_JSON
            )
        self._observe(request, state, record, response.status, time.perf_counter() - started)
        return response

    async def _handle(
        self, request: web.BaseRequest, state: AuthState, record: _Record
    ) -> web.Response:
        try:
            self._authenticate(request, state)
        except StatusError:
            self._metrics.auth_failures.inc()
            record.outcome = "unauthenticated"
            raise
        route = parse_target(request.raw_path)
        if request.method != "GET":
            raise StatusError(405, f"method {request.method} is not allowed: this API is read-only")
        if isinstance(route, LocalRoute):
            record.outcome = "local"
            return web.Response(body=local_body(route.kind), content_type=_JSON)
        record.namespace = route.namespace
        backend = self._directory.backend_for(route.namespace)
        record.tenant = backend.name
        headers = _decoded(state.policy.forwarded(request.raw_headers))
        gauge = self._metrics.in_flight.labels(backend.name)
        gauge.inc()
        try:
            # The raw target was validated above; it goes upstream byte-for-byte, query included.
            upstream = await self._upstreams.forward(backend, request.raw_path, headers)
        except StatusError as exc:
            self._metrics.upstream_errors.labels(backend.name, str(exc.code)).inc()
            record.outcome = "upstream_error"
            raise
        finally:
            gauge.dec()
        record.outcome = "forwarded"
        response = web.Response(status=upstream.status, body=upstream.body)
        response.headers.clear()  # drop aiohttp's default Content-Type; the upstream's is kept
        response.headers.extend(
            CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in response_headers(upstream.headers)
            )
        )
        return response

    def _observe(
        self,
        request: web.BaseRequest,
        state: AuthState,
        record: _Record,
        code: int,
        elapsed_s: float,
    ) -> None:
        self._metrics.requests.labels(record.tenant, str(code), record.outcome).inc()
        self._metrics.duration.labels(record.tenant).observe(elapsed_s)
        access_log.info(
            "%s %s %d",
            request.method,
            request.raw_path.partition("?")[0],
            code,
            extra={
                "tenant": record.tenant,
                "namespace": record.namespace,
                "user": state.policy.username(request.raw_headers).decode("utf-8", "replace"),
                "status": code,
                "outcome": record.outcome,
                "duration_ms": round(elapsed_s * 1000, 3),
                "audit_id": request.headers.get("Audit-Id", ""),
            },
        )


@dataclass(slots=True)
class _Record:
    """What the access log and metrics say about one request, filled in as it progresses."""

    tenant: str = ""
    namespace: str = ""
    outcome: str = "rejected"


def _decoded(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """aiohttp sends str headers as UTF-8; refuse anything that would not round-trip."""
    try:
        return [(name.decode("ascii"), value.decode("utf-8")) for name, value in headers]
    except UnicodeDecodeError as exc:
        raise StatusError(400, "header names must be ASCII and values UTF-8") from exc
