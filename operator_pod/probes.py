"""The operations port: /healthz, /livez, /readyz and Prometheus /metrics, on asyncio streams.

A server this small (one request per connection, a deadline on reading it) keeps probes and
scrapes off any HTTP framework: aiohttp alone would cost this process a third of its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

from operator_pod.prometheus import CONTENT_TYPE, Registry

logger = logging.getLogger(__name__)

Check = Callable[[], str | Awaitable[str | None] | None]
"""None when fine, else a short reason (or a coroutine of either: a check that asks KEDA)."""

READ_TIMEOUT_S = 5.0
MAX_REQUEST_LINES = 100


class ProbeServer:
    def __init__(
        self,
        registry: Registry,
        *,
        readiness: dict[str, Check],
        warnings: dict[str, Check] | None = None,
        liveness: dict[str, Check] | None = None,
    ) -> None:
        """`warnings`: reported in /readyz's body without failing it (a condition that must
        not take the operator's pod out of its Service). `liveness`: what fails /livez and
        /healthz (by default nothing: the process answers, so it runs)."""
        self._registry = registry
        self._readiness = readiness
        self._warnings = warnings or {}
        self._liveness = liveness or {}
        self.port: int | None = None

    async def serve(self, host: str, port: int, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._handle, host or None, port)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request_line = await reader.readline()
                for _ in range(MAX_REQUEST_LINES):
                    if (await reader.readline()).strip() == b"":
                        break
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            status, content_type, body = await self.answer(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass
        except Exception:
            logger.exception("probe handler failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        """(status, content type, body) for one request."""
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"method not allowed\n"
        if path in ("/healthz", "/livez"):
            failures = await _failures(self._liveness)
            return _verdict(failures, "livez") if failures else ("200 OK", text, b"ok\n")
        if path == "/readyz":
            failures = await _failures(self._readiness)
            if failures:
                return _verdict(failures, "readyz")
            warned = [
                f"[!]{name}: {why}" for name, why in (await _failures(self._warnings)).items()
            ]
            return "200 OK", text, ("\n".join([*warned, "ok"]) + "\n").encode()
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, self._registry.expose()
        return "404 Not Found", text, b"not found\n"


async def _failures(checks: dict[str, Check]) -> dict[str, str]:
    failures = {}
    for name, check in checks.items():
        reason = check()
        if inspect.isawaitable(reason):
            reason = await reason
        if reason is not None:
            failures[name] = reason
    return failures


def _verdict(failures: dict[str, str], probe: str) -> tuple[str, str, bytes]:
    body = "\n".join(f"[-]{name} failed: {reason}" for name, reason in failures.items())
    return (
        "503 Service Unavailable",
        "text/plain; charset=utf-8",
        f"{body}\n{probe} check failed\n".encode(),
    )
