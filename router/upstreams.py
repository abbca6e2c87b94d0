"""Connection pools to the tenants' metrics servers, one per backend, kept apart.

Each backend gets its own bounded keep-alive pool, its own concurrency limit and its
own short memory of being down, so a tenant whose KEDA hangs or dies costs the other
tenants nothing. Pools are rebuilt (and the old ones closed once idle) when the
upstream client certificate or a CA changes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from router.backends import Backend
from router.status import StatusError

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_connections: int = 32
    """Keep-alive pool size per backend."""
    max_concurrent: int = 64
    """Requests in flight per backend before new ones get 429."""
    keepalive_s: float = 60.0
    down_cooldown_s: float = 1.0
    """After a failed connect, fail fast for this long (doubling up to the max)."""
    down_cooldown_max_s: float = 15.0
    max_response_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: Headers
    body: bytes


class _Pool:
    """One backend's session, concurrency limit and down-state."""

    def __init__(
        self, backend: Backend, context: ssl.SSLContext, settings: UpstreamSettings
    ) -> None:
        self.backend = backend
        self.context = context
        self.session = aiohttp.ClientSession(
            base_url=backend.origin,
            connector=aiohttp.TCPConnector(
                ssl=context,
                limit=settings.max_connections,
                keepalive_timeout=settings.keepalive_s,
                enable_cleanup_closed=False,
            ),
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout_s, sock_connect=settings.connect_timeout_s
            ),
            auto_decompress=False,  # Content-Encoding passes through untouched
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.max_concurrent = settings.max_concurrent
        self.down_until = 0.0
        self.cooldown_s = 0.0


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
        self._retiring: set[asyncio.Task[None]] = set()

    def _pool(self, backend: Backend) -> _Pool:
        context = self._contexts(backend.ca_file)
        pool = self._pools.get(backend.name)
        if pool is not None and pool.backend == backend and pool.context is context:
            return pool
        if pool is not None:
            self._retire(pool)
        pool = self._pools[backend.name] = _Pool(backend, context, self._settings)
        return pool

    def _retire(self, pool: _Pool) -> None:
        task = asyncio.get_running_loop().create_task(self._close_when_idle(pool))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, pool: _Pool) -> None:
        try:
            await asyncio.wait_for(pool.idle.wait(), self._settings.timeout_s)
        finally:
            await pool.session.close()

    def backend_down(self, backend: Backend) -> bool:
        pool = self._pools.get(backend.name)
        return pool is not None and self._clock() < pool.down_until

    async def forward(
        self, backend: Backend, target: str, headers: Sequence[tuple[str, str]]
    ) -> UpstreamResponse:
        """GET `target` (path and query, already validated) from `backend`."""
        pool = self._pool(backend)
        if self._clock() < pool.down_until:
            raise StatusError(
                503,
                f"the metrics server of {backend.name} is unavailable (recent connection failures)",
            )
        if pool.inflight >= pool.max_concurrent:
            raise StatusError(429, f"too many requests in flight to {backend.name}")
        pool.inflight += 1
        pool.idle.clear()
        try:
            # A kept-alive connection the server just closed fails at once; GET is safe to retry.
            for attempt in (1, 2):
                try:
                    return await self._get(pool, target, headers)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
            raise AssertionError("unreachable")
        except StatusError:
            raise
        except aiohttp.ClientConnectorError as exc:
            self._mark_down(pool)
            raise StatusError(
                503, f"the metrics server of {backend.name} is unreachable: {exc.os_error}"
            ) from exc
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerFingerprintMismatch) as exc:
            self._mark_down(pool)
            raise StatusError(
                503, f"the metrics server of {backend.name} is unreachable: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:
            raise StatusError(
                504, f"the metrics server of {backend.name} did not answer in time"
            ) from exc
        except aiohttp.ClientError as exc:
            raise StatusError(
                503, f"the metrics server of {backend.name} failed: {type(exc).__name__}"
            ) from exc
        finally:
            pool.inflight -= 1
            if not pool.inflight:
                pool.idle.set()

    async def _get(
        self, pool: _Pool, target: str, headers: Sequence[tuple[str, str]]
    ) -> UpstreamResponse:
        async with pool.session.get(
            URL(target, encoded=True),  # exactly the bytes the caller sent, no requoting
            headers=list(headers),
            allow_redirects=False,
            server_hostname=pool.backend.server_name,
        ) as response:
            pool.down_until, pool.cooldown_s = 0.0, 0.0  # it answered: not down
            if 300 <= response.status < 400:
                # As kube-apiserver's aggregator does: a backend may not send callers elsewhere.
                raise StatusError(
                    502,
                    f"the metrics server of {pool.backend.name} attempted to redirect, which is not permitted",
                )
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > self._settings.max_response_bytes:
                    raise StatusError(
                        502, f"the metrics server of {pool.backend.name} sent too large a response"
                    )
                chunks.append(chunk)
            body = b"".join(chunks)
            return UpstreamResponse(response.status, list(response.raw_headers), body)

    def _mark_down(self, pool: _Pool) -> None:
        pool.cooldown_s = min(
            max(pool.cooldown_s * 2, self._settings.down_cooldown_s),
            self._settings.down_cooldown_max_s,
        )
        pool.down_until = self._clock() + pool.cooldown_s
        logger.warning(
            "metrics server unreachable, failing fast",
            extra={"tenant": pool.backend.name, "cooldown_s": pool.cooldown_s},
        )

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.session.close()
        self._pools.clear()
        for task in list(self._retiring):
            await task
