"""Keeps the namespace cache (`namespace_cache`) current by list + watch.

LIST (paged), then WATCH from the list's resourceVersion with bookmarks. A `410 Gone`
(an HTTP 410 or an ERROR event carrying one) means our resourceVersion was compacted:
relist and *replace* the cache, so namespaces deleted meanwhile disappear. Dropped
connections, server timeouts and a stream silent past the inactivity timeout reconnect
from the last resourceVersion with jittered exponential backoff.

The stream is read here rather than through kubernetes_asyncio's `Watch`, which retries
a 410 once with the same stale resourceVersion and has no read timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.lifecycle import wait_stopped
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache, WatchMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    server_timeout_s: int = 300
    """timeoutSeconds asked of the API server for one watch request."""
    inactivity_timeout_s: float = 150.0
    """No event and no bookmark for this long: the stream is dead (bookmarks come about every minute)."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    page_size: int = 500


class _GoneError(Exception):
    """Our resourceVersion is too old: relist."""


async def watch_namespaces(
    api: ApiClient,
    cache: NamespaceCache,
    *,
    stop: asyncio.Event,
    label_selector: str | None = None,
    on_change: Callable[[], None] | None = None,
    settings: WatchSettings = WatchSettings(),
    metrics: WatchMetrics | None = None,
) -> None:
    """Keep `cache` equal to the selected namespaces until `stop` is set."""
    watcher = _Watcher(
        CoreV1Api(api),
        cache,
        label_selector=label_selector,
        on_change=on_change or (lambda: None),
        settings=settings,
        metrics=metrics,
    )
    stopping = asyncio.create_task(stop.wait())
    running = asyncio.create_task(watcher.run(stop))
    try:
        await asyncio.wait({stopping, running}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, running):
            task.cancel()
        await asyncio.gather(stopping, running, return_exceptions=True)
        if running.done() and not running.cancelled() and running.exception() is not None:
            raise running.exception()  # type: ignore[misc]


async def _check_status(response: aiohttp.ClientResponse) -> None:
    """kubernetes_asyncio leaves status checks to us when content is not preloaded."""
    if response.status == 410:
        raise _GoneError
    if response.status != 200:
        body = (await response.read())[:500].decode("utf-8", "replace")
        raise ApiException(status=response.status, reason=body)


class _Watcher:
    def __init__(
        self,
        core: CoreV1Api,
        cache: NamespaceCache,
        *,
        label_selector: str | None,
        on_change: Callable[[], None],
        settings: WatchSettings,
        metrics: WatchMetrics | None,
    ) -> None:
        self._core = core
        self._cache = cache
        self._selector = label_selector
        self._on_change = on_change
        self._settings = settings
        self._metrics = metrics

    async def run(self, stop: asyncio.Event) -> None:
        resource_version: str | None = None
        backoff_s = self._settings.backoff_initial_s
        while not stop.is_set():
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                resource_version = await self._watch(resource_version)
                backoff_s = self._settings.backoff_initial_s
                self._reconnecting()  # the stream ended (server timeout, dropped): resume
            except _GoneError:
                logger.info(
                    "resourceVersion expired, relisting",
                    extra={"resource_version": resource_version},
                )
                resource_version = None
            except (aiohttp.ClientError, ApiException, TimeoutError, ValueError, OSError) as exc:
                self._reconnecting()
                delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto
                logger.warning(
                    "namespace watch failed, retrying",
                    extra={
                        "error": f"{type(exc).__name__}: {exc}",
                        "retry_in_s": round(delay_s, 3),
                    },
                )
                backoff_s = min(backoff_s * 2, self._settings.backoff_max_s)
                await wait_stopped(stop, delay_s)

    async def _get_json(self, **params: Any) -> dict[str, Any]:
        response = cast(
            aiohttp.ClientResponse,
            await self._core.list_namespace(
                label_selector=self._selector or "", _preload_content=False, **params
            ),
        )
        try:
            await _check_status(response)
            return dict(json.loads(await response.read()))
        finally:
            response.release()

    async def _relist(self) -> str:
        items: list[Namespace] = []
        token = ""
        while True:
            # A 410 here (continue token expired) surfaces as _GoneError: run() relists from scratch.
            page = await self._get_json(
                limit=self._settings.page_size, _continue=token, _request_timeout=60
            )
            items += [Namespace.from_object(obj) for obj in page.get("items") or ()]
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        if self._metrics is not None:
            self._metrics.relists.inc()
        changed = self._cache.replace(items)
        self._changed(changed)
        logger.info("namespaces listed", extra={"namespaces": len(items)})
        return str(meta.get("resourceVersion", ""))

    async def _watch(self, resource_version: str) -> str:
        """Follow one watch stream; returns the last resourceVersion when it ends cleanly."""
        settings = self._settings
        try:
            response = cast(
                aiohttp.ClientResponse,
                await self._core.list_namespace(
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=settings.server_timeout_s,
                    label_selector=self._selector or "",
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=30, sock_read=settings.inactivity_timeout_s
                    ),
                ),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise _GoneError from exc
            raise
        try:
            await _check_status(response)
            while True:
                line = await response.content.readline()
                if not line:
                    return resource_version  # the server ended the watch (timeoutSeconds)
                resource_version = self._event(json.loads(line), resource_version)
        finally:
            response.release()

    def _event(self, event: Mapping[str, Any], resource_version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _GoneError
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        new_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
        if kind == "BOOKMARK":
            return new_version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unexpected watch event type {kind!r}")
        self._changed(self._cache.apply(kind, Namespace.from_object(obj)))
        return new_version

    def _reconnecting(self) -> None:
        if self._metrics is not None:
            self._metrics.reconnects.inc()

    def _changed(self, changed: bool) -> None:
        if self._metrics is not None:
            self._metrics.namespaces.set(len(self._cache))
        if changed:
            self._on_change()
