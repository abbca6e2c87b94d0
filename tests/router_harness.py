"""A router running in-process on loopback, with real TLS everywhere around it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from router.app import Router
from router.config import RouterConfig
from tests.pki import NOW, CertificateAuthority, Issued

METRIC_PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}"


@dataclass
class Pki:
    """Every certificate a router test needs, written to `directory`."""

    directory: Path
    front_proxy_ca: CertificateAuthority
    serving_ca: CertificateAuthority
    backend_ca: CertificateAuthority
    router_client_ca: CertificateAuthority
    other_ca: CertificateAuthority

    @classmethod
    def create(cls, directory: Path) -> Pki:
        pki = cls(
            directory,
            CertificateAuthority("front-proxy-ca"),
            CertificateAuthority("router-serving-ca"),
            CertificateAuthority("tenant-backend-ca"),
            CertificateAuthority("router-client-ca"),
            CertificateAuthority("someone-else-ca"),
        )
        for name in ("front_proxy_ca", "serving_ca", "backend_ca", "router_client_ca", "other_ca"):
            getattr(pki, name).write(directory, name)
        pki.serving_ca.issue("router", dns=("localhost",), ips=("127.0.0.1",), server=True).write(
            directory, "serving"
        )
        pki.backend_ca.issue("backend", dns=("localhost",), ips=("127.0.0.1",), server=True).write(
            directory, "backend"
        )
        pki.router_client_ca.issue("keda-tenancy-router", client=True).write(
            directory, "router-client"
        )
        return pki

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def aggregator(self, **kwargs: object) -> Issued:
        """A front-proxy client certificate; kwargs change CN, CA, usage or validity."""
        ca = kwargs.pop("ca", self.front_proxy_ca)
        cn = str(kwargs.pop("cn", "front-proxy-client"))
        kwargs.setdefault("client", True)
        assert isinstance(ca, CertificateAuthority)
        return ca.issue(cn, **kwargs)  # type: ignore[arg-type]

    def client_context(self, cert: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("serving_ca.crt"))
        if cert is not None:
            name = f"client-{id(cert)}"
            cert_file, key_file = cert.write(self.directory, name)
            context.load_cert_chain(cert_file, key_file)
        return context


def router_args(pki: Pki, tenancy_file: str, *extra: str) -> list[str]:
    return [
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
        f"--tls-cert-file={pki.path('serving.crt')}",
        f"--tls-private-key-file={pki.path('serving.key')}",
        f"--requestheader-client-ca-file={pki.path('front_proxy_ca.crt')}",
        "--requestheader-allowed-names=front-proxy-client",
        f"--upstream-client-cert-file={pki.path('router-client.crt')}",
        f"--upstream-client-key-file={pki.path('router-client.key')}",
        f"--upstream-ca-file={pki.path('backend_ca.crt')}",
        f"--tenancy-file={tenancy_file}",
        "--cert-reload-interval=100ms",
        # Probes are a connection and requests of their own: tests that count what reaches a
        # backend turn them on themselves (tests/integration/test_router_health_probes.py).
        "--health-probe-interval=0s",
        *extra,
    ]


@contextlib.asynccontextmanager
async def running_router(argv: Sequence[str]) -> AsyncIterator[Router]:
    router = Router(RouterConfig.from_args(argv, {}), CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    waiter = asyncio.create_task(router.listening.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        stop.set()
        await task  # surfaces the startup error
        raise RuntimeError("router did not start listening")
    async with asyncio.timeout(10):  # ready: certificates loaded, namespace cache synced
        while any(check() for check in router.readiness_checks().values()):
            await asyncio.sleep(0.02)
    try:
        yield router
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def raw_request(
    port: int,
    context: ssl.SSLContext,
    target: str,
    headers: Sequence[tuple[str, str]] = (("X-Remote-User", "system:kube-controller-manager"),),
    method: str = "GET",
) -> RawResponse:
    """Send exactly this request line and these headers (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    if not raw:
        raise ConnectionResetError("connection closed without a response (TLS alert)")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(line.split(": ", 1)) for line in header_lines]
    response_headers = [(k, v) for k, v in parsed]  # type: ignore[misc]
    if any(k.lower() == "transfer-encoding" and "chunked" in v for k, v in response_headers):
        body = _dechunk(body)
    return RawResponse(int(status_line.split(" ")[1]), response_headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


__all__ = [
    "METRIC_PATH",
    "NOW",
    "Pki",
    "RawResponse",
    "raw_request",
    "router_args",
    "running_router",
]
