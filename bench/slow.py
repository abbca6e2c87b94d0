"""Slow-backend cells and the RSS-under-abuse line of the router benchmark.

A tenant whose KEDA takes 50 ms or 1 s per answer (a slow scaler behind it): requests/s,
p99 and upstream connections for the router and NGINX at its best at c=16 and c=64, one
tenant. Then the router's RSS while clients without a certificate pipeline requests and
never read, and how long a valid request takes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.__main__ import Pki, Result

ROOT = Path(__file__).resolve().parents[1]
DELAYS_S = (0.05, 1.0)


def serve(port: int, delay_s: float, cert: str, key: str, client_ca: str, body: bytes) -> None:
    """The slow backend itself (run in its own process): mTLS, keep-alive, each answer
    after `delay_s`, any number at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(delay_s)
                writer.write(answer)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(
            handle, "127.0.0.1", port, ssl=context, backlog=4096, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


@contextlib.contextmanager
def slow_backend(pki: Pki, port: int, delay_s: float, body: str) -> Iterator[None]:
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            "1",
            sys.executable,
            "-c",
            "import sys; from bench.slow import serve; "
            "serve(int(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:6], sys.argv[6].encode())",
            str(port),
            str(delay_s),
            pki.path("backend.crt"),
            pki.path("backend.key"),
            pki.path("client-ca.crt"),
            body,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


def upstream_connections(backend_port: int) -> int:
    """Established TCP connections to the backend's port (the proxy's upstream pool)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == backend_port and fields[3] == "01":
            count += 1
    return count


def flood(port: int, context: ssl.SSLContext, stop: threading.Event) -> int:
    """Pipeline `GET /` without a certificate and never read, until the router stops
    reading or closes; then again on a new connection a second later (a handshake flood
    is a CPU matter, not what this measures)."""
    request = b"GET / HTTP/1.1\r\n\r\n" * 4096
    sent = 0
    while not stop.is_set():
        with contextlib.suppress(OSError, ssl.SSLError):
            raw = socket.create_connection(("127.0.0.1", port), timeout=2)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.settimeout(1)  # a send that blocks this long: the router stopped reading
                while not stop.is_set():
                    tls.sendall(request)
                    sent += len(request)
        stop.wait(1)
    return sent


def abuse_line(
    pki: Pki, router_pid: int, port: int, measure_once: object, seconds: float = 5.0
) -> str:
    """RSS before and during an unauthenticated never-reading flood, and the p99 of a
    valid caller at c=1 meanwhile."""
    from bench.__main__ import rss_mb  # noqa: PLC0415

    context = ssl.create_default_context(cafile=pki.path("serving-ca.crt"))
    before = rss_mb(router_pid)
    stop = threading.Event()
    totals: list[int] = []
    threads = [
        threading.Thread(target=lambda: totals.append(flood(port, context, stop))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        stop.wait(1.0)
        result: Result = measure_once()  # type: ignore[operator]
        peak = rss_mb(router_pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return (
        f"router RSS under abuse (4 clients without a certificate pipelining GET / and never "
        f"reading, {sum(totals) / 1e6:.0f} MB sent in all): {before:.0f} -> {peak:.0f} MB; a "
        f"valid caller meanwhile: {result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms, "
        f"{result.errors} errors"
    )
