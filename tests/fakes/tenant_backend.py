"""A tenant's KEDA metrics server, as far as the router can tell.

Real mTLS and real requestheader authentication, like the custom-metrics-apiserver
library KEDA uses: the client certificate must chain to the configured CA (else the
handshake fails), its CN must be allowed (else 401), and a user header is required
(else 401). It answers an ExternalMetricValueList and echoes the identity it saw, and
records every request so tests can prove what did *not* arrive.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    client_cn: str
    connection: tuple[str, int] = ("", 0)  # the router's end of the TCP connection
    resumed: bool = False  # the TLS session was resumed, not negotiated afresh


@dataclass
class TenantBackend:
    name: str
    cert_pem_path: str
    key_pem_path: str
    client_ca_path: str
    allowed_names: tuple[str, ...] = ("keda-tenancy-router",)
    value: str = "7"
    mode: str = (
        "ok"  # ok | hang | hang:<metric> | gzip | chunked | close | redirect | status:<code>
    )
    delay_s: float = 0.0
    """How long every answer takes (a slow scaler behind KEDA)."""
    hold_until_received: int = 0
    """Hold every answer until this many requests have arrived (a burst that must be in
    flight at once: a request queued behind a held one would never be answered)."""
    pad_bytes: int = 0
    """Extra bytes in every answer's body (a tenant with very large answers)."""
    scripted: list[tuple[int, str, bytes, float]] = field(default_factory=list)
    """Answers to give first, one per request, in order: (status, Content-Type, body,
    seconds to wait before answering); then `mode` as usual."""
    received: list[Received] = field(default_factory=list)
    port: int = 0
    hang_released: asyncio.Event = field(default_factory=asyncio.Event)
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_pem_path, self.key_pem_path)
        context.load_verify_locations(self.client_ca_path)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.context())
        await site.start()
        self._site = site
        self.port = int(self._runner.addresses[0][1])

    def stop_listening(self) -> None:
        """New connections are refused; those already open keep being served (as when
        one of a tenant's replicas goes away behind its Service)."""
        assert self._site is not None
        assert self._site._server is not None
        self._site._server.close()  # closes the listening socket only

    async def stop(self) -> None:
        self.hang_released.set()
        self.all_arrived.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = tls.getpeercert(binary_form=True) if tls else None
        cn = ""
        if der:
            attrs = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
                NameOID.COMMON_NAME
            )
            cn = str(attrs[0].value) if attrs else ""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.received.append(
            Received(
                request.raw_path,
                list(request.raw_headers),
                cn,
                tuple(peer[:2]) if peer else ("", 0),
                bool(tls and tls.session_reused),
            )
        )
        if cn not in self.allowed_names:
            return _status(401, f"client certificate CN {cn!r} not allowed")
        identity = _identity(request.raw_headers)
        if not identity["user"]:
            return _status(401, "no X-Remote-User")
        if self.scripted:
            status, content_type, body, wait_s = self.scripted.pop(0)
            await asyncio.sleep(wait_s)
            return web.Response(status=status, body=body, headers={"Content-Type": content_type})
        if self.mode == "hang" or (
            self.mode.startswith("hang:") and request.path.endswith("/" + self.mode[5:])
        ):
            await self.hang_released.wait()
        if self.hold_until_received:
            if len(self.received) >= self.hold_until_received:
                self.all_arrived.set()
            await self.all_arrived.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "redirect":
            raise web.HTTPFound("https://example.invalid/elsewhere")
        if self.mode.startswith("status:"):
            return _status(int(self.mode.split(":")[1]), "as configured")
        namespace = request.match_info["tail"].split("/")[4] if request.path.count("/") >= 6 else ""
        body = json.dumps(
            {
                "kind": "ExternalMetricValueList",
                "apiVersion": "external.metrics.k8s.io/v1beta1",
                "metadata": {},
                "items": [
                    {
                        "metricName": request.path.rsplit("/", 1)[-1],
                        "metricLabels": {},
                        "timestamp": "2026-01-01T00:00:00Z",
                        "value": self.value,
                    }
                ],
                "received": {
                    **identity,
                    "tenant": self.name,
                    "namespace": namespace,
                    "query": request.raw_path.partition("?")[2],
                },
                **({"padding": "x" * self.pad_bytes} if self.pad_bytes else {}),
            }
        ).encode()
        if self.mode == "gzip":
            return web.Response(
                body=gzip.compress(body),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if self.mode == "chunked":  # streamed in pieces, as Go does for larger bodies
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 7):
                await response.write(body[start : start + 7])
            await response.write_eof()
            return response
        if self.mode == "close":  # answers, then closes the kept-alive connection
            return web.Response(
                body=body, content_type="application/json", headers={"Connection": "close"}
            )
        return web.Response(body=body, content_type="application/json")


def _identity(raw_headers: Any) -> dict[str, Any]:
    user, uid, groups, extras = "", "", [], {}
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode(), raw_value.decode()
        lower = name.lower()
        if lower == "x-remote-user" and not user:
            user = value
        elif lower == "x-remote-uid":
            uid = value
        elif lower == "x-remote-group":
            groups.append(value)
        elif lower.startswith("x-remote-extra-"):
            extras.setdefault(name[len("x-remote-extra-") :], []).append(value)
    return {"user": user, "uid": uid, "groups": groups, "extra": extras}


def _status(code: int, message: str) -> web.Response:
    return web.Response(
        status=code,
        content_type="application/json",
        text=json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": message,
                "code": code,
            }
        ),
    )


class ScriptedBackend:
    """A metrics server that answers with exactly the bytes a test scripts: broken or odd
    HTTP that a real server library would never send. Real mTLS, as TenantBackend.

    Each request (on any connection) takes the next script: chunks written one after the
    other, each flushed before the next; with no script left it answers a plain 200.
    """

    GOOD = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"good": "yes"}'

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.scripts: list[list[bytes | float]] = []
        self.connections = 0
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                for chunk in self.scripts.pop(0) if self.scripts else [self.GOOD]:
                    if isinstance(chunk, float):  # a pause between writes
                        await asyncio.sleep(chunk)
                        continue
                    writer.write(chunk)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
