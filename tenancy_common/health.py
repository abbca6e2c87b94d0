"""The plain-HTTP operations port: /healthz, /livez, /readyz and Prometheus /metrics.

Kept off the TLS port so probes and scrapes need no client certificate and never
touch the request path.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], str | Awaitable[str | None] | None]
"""Returns None when ready, else a short reason (or a coroutine of either: a check that asks
another process, such as KEDA's own probes)."""


async def _failures(checks: dict[str, ReadinessCheck]) -> dict[str, str]:
    failures = {}
    for name, check in checks.items():
        reason = check()
        if inspect.isawaitable(reason):
            reason = await reason
        if reason is not None:
            failures[name] = reason
    return failures


def _failed(failures: dict[str, str], probe: str) -> web.Response:
    body = "\n".join(f"[-]{name} failed: {reason}" for name, reason in failures.items())
    return web.Response(status=503, text=f"{body}\n{probe} check failed\n")


def build_health_app(
    registry: CollectorRegistry,
    checks: dict[str, ReadinessCheck],
    warnings: dict[str, ReadinessCheck] | None = None,
    liveness: dict[str, ReadinessCheck] | None = None,
) -> web.Application:
    """`warnings`: reported in /readyz's body like checks, without failing it (for a
    condition that must not take a serving pod out of its Service). `liveness`: what fails
    /healthz and /livez (by default nothing: the process answers, so it runs)."""
    notes = warnings or {}
    lively = liveness or {}

    async def alive(_: web.Request) -> web.Response:
        failures = await _failures(lively)
        return _failed(failures, "livez") if failures else web.Response(text="ok")

    async def ready(_: web.Request) -> web.Response:
        failures = await _failures(checks)
        if failures:
            return _failed(failures, "readyz")
        warned = [f"[!]{name}: {reason}" for name, reason in (await _failures(notes)).items()]
        return web.Response(text="\n".join([*warned, "ok"]))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", alive)
    app.router.add_get("/livez", alive)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_until(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    shutdown_timeout_s: float = 5.0,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve `app` until `stop` is set; `started` gets the bound port (useful with port 0)."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if started is not None:
            started(bound_port(runner))
        await stop.wait()
    finally:
        await asyncio.shield(runner.cleanup())


def bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("server is not listening")
