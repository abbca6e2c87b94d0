"""Keeps the namespace cache (`namespace_cache`) current by list + watch, as client-go's
reflector does.

LIST (paged, without a resourceVersion: a consistent read of the newest state, never a
lagging watch cache's), then WATCH from the list's resourceVersion with bookmarks. What ends
a watch decides what comes next:

- a clean end (the server's timeoutSeconds) resumes from the last resourceVersion at once;
- `410 Gone` / `Expired` (an HTTP status or an ERROR event): our resourceVersion was compacted.
  Relist and *replace* the cache, so namespaces deleted meanwhile disappear;
- a too large resourceVersion (a 504 `Timeout` Status whose details.causes hold
  `ResourceVersionTooLarge`, "Too large resource version"): the server is behind us (an etcd
  restored from a snapshot, a lagging API server replica). Waiting for it to catch up would
  resume from a version that may not mean what it meant: relist and replace;
- `429 Too Many Requests`: back off and resume (relisting would only add load);
- any other error Status (an HTTP status or an ERROR event): back off and relist;
- dropped connections, refused dials and a stream silent past the inactivity timeout: back off
  and resume from the last resourceVersion, but relist once `resume_attempts` failures in a
  row have made no progress (client-go relists after any watch that ends at once with nothing).
  A watch that ends cleanly with nothing in it counts as such a failure.

A stream quiet for `verify_interval_s` is verified: kube-apiserver (1.35) keeps a watch from a
resourceVersion newer than its store open and silent (no ERROR, no bookmark), and would then
resume at a version that no longer means what it did. A LIST with `limit=1`, our
resourceVersion and `resourceVersionMatch=NotOlderThan` is answered "Too large resource version"
then: relist. Answered, it proves the server is at or past our version, and the open stream
would have brought anything newer: the cache is current.

Progress is an event, a bookmark or a verified quiet stream; it resets the backoff (jittered
exponential) and the failure count. Each relist is logged with its reason and counted by reason.

Staleness: the cache is confirmed current by each LIST, event, bookmark and verification
(bookmarks alone would not do: kube-apiserver sends them only while its namespace watch cache
advances, a namespace change or etcd's progress notification, every 10 minutes by default).
`keda_tenancy_namespace_watch_staleness_seconds` and `..._last_current_timestamp_seconds`
show how long ago that was, and `namespace_cache.staleness_check` turns it into a /readyz
check. Readiness only fails where no traffic depends on it: the router and a process-mode
reloader (whose pod is the operator's, behind the gRPC metrics Service) report staleness as a
/readyz warning and a metric, because a stale namespace list is better than an APIService that
is unavailable for every tenant or an adapter cut off from its operator; deployment- and
bindings-mode reloaders, in pods of their own, turn not-ready.

The stream is read here rather than through kubernetes_asyncio's `Watch`, which retries
a 410 once with the same stale resourceVersion and has no read timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

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
    resume_attempts: int = 3
    """Transport failures in a row (no progress in between) resumed from the same
    resourceVersion before relisting instead."""
    verify_interval_s: float = 60.0
    """A stream without an event or bookmark for this long is verified (see the module
    docstring): a LIST of one namespace a minute per quiet watch."""


class _RelistError(Exception):
    """The watch cannot go on from our resourceVersion: relist (`reason` names why)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _ThrottledError(Exception):
    """429: back off, then resume from the same resourceVersion."""


def _status_error(status: Mapping[str, Any], http_status: int | None = None) -> Exception:
    """The exception for an API Status (an error response's body or an ERROR event's object)."""
    code = status.get("code") or http_status
    message = str(status.get("message") or status.get("reason") or status)[:300]
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    cause_list = [c for c in causes or () if isinstance(c, Mapping)]
    if code == 410 or status.get("reason") in ("Expired", "Gone"):
        return _RelistError("expired", message)
    if any(c.get("reason") == "ResourceVersionTooLarge" for c in cause_list) or (
        # kube-apiserver 1.17.0-1.18.5 said it only in the cause's message (client-go checks both)
        code == 504 and any(c.get("message") == "Too large resource version" for c in cause_list)
    ):
        return _RelistError("too-large-resource-version", message)
    if code == 429:
        return _ThrottledError(message)
    return _RelistError("error", f"{code} {status.get('reason', '')}: {message}")


class WatchedStore(Protocol):
    """What a watch keeps current: `NamespaceCache`, or any store of other objects."""

    def replace(self, items: Iterable[Any]) -> bool: ...
    def apply(self, event_type: str, item: Any) -> bool: ...
    def confirm_current(self) -> None: ...
    def __len__(self) -> int: ...


async def watch_objects(
    api: ApiClient,
    store: WatchedStore,
    list_call: Callable[..., Awaitable[object]],
    *,
    stop: asyncio.Event,
    what: str,
    parse: Callable[[Mapping[str, Any]], Any] = dict,
    label_selector: str | None = None,
    on_change: Callable[[], None] | None = None,
    settings: WatchSettings = WatchSettings(),
) -> None:
    """Keep `store` equal to the objects `list_call` (a CoreV1Api list method, bound to its
    namespace) lists, with the same list/watch/relist rules as the namespace watch."""
    watcher = _Watcher(
        CoreV1Api(api),
        store,
        label_selector=label_selector,
        on_change=on_change or (lambda: None),
        settings=settings,
        metrics=None,
        list_call=list_call,
        parse=parse,
        what=what,
    )
    await _run_until_stopped(watcher, stop)


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
    await _run_until_stopped(watcher, stop)


async def _run_until_stopped(watcher: _Watcher, stop: asyncio.Event) -> None:
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
    if response.status == 200:
        return
    body = (await response.read())[:4000]
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        status = {"message": body[:300].decode("utf-8", "replace")}
    raise _status_error(status, response.status)


class _Watcher:
    def __init__(
        self,
        core: CoreV1Api,
        cache: WatchedStore,
        *,
        label_selector: str | None,
        on_change: Callable[[], None],
        settings: WatchSettings,
        metrics: WatchMetrics | None,
        list_call: Callable[..., Awaitable[object]] | None = None,
        parse: Callable[[Mapping[str, Any]], Any] = Namespace.from_object,
        what: str = "namespace",
    ) -> None:
        self._core = core
        self._list = list_call or core.list_namespace
        self._parse = parse
        self._what = what
        self._cache = cache
        self._selector = label_selector
        self._on_change = on_change
        self._settings = settings
        self._metrics = metrics
        self._progress = False
        """An event or bookmark arrived on the current stream, or it stayed open long enough."""
        self._verify_failure: Exception | None = None
        """Why verifying a quiet stream ended it."""
        self._progress_at = 0.0
        """Loop time of the last event or bookmark."""
        self._version: str | None = None
        """The last resourceVersion seen (a LIST's, an event's): where a watch resumes. Kept
        here, not returned, so that a stream that breaks still moves it on."""
        if metrics is not None:
            assert isinstance(cache, NamespaceCache)
            metrics.follow(cache)

    async def run(self, stop: asyncio.Event) -> None:
        relist_reason = "start"
        backoff_s = self._settings.backoff_initial_s
        failures = 0  # in a row, without progress in between
        while not stop.is_set():
            self._progress = False
            failure: Exception
            try:
                if self._version is None:
                    self._version = await self._relist(relist_reason)
                await self._watch(self._version)
                if self._progress:
                    self._reconnecting()  # the server ended the watch (timeoutSeconds): resume
                    failures, backoff_s = 0, self._settings.backoff_initial_s
                    continue
                failure = ValueError("the watch ended at once with nothing in it")
            except (_RelistError, _ThrottledError) as exc:
                failure = exc
            except (aiohttp.ClientError, ApiException, TimeoutError, ValueError, OSError) as exc:
                failure = exc
            if self._progress:  # the stream had worked: a new run of failures starts here
                failures, backoff_s = 0, self._settings.backoff_initial_s
            failures += 1
            delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto
            backoff_s = min(backoff_s * 2, self._settings.backoff_max_s)
            error = f"{type(failure).__name__}: {failure}"
            if self._version is None:
                logger.warning(
                    "%s list failed, retrying",
                    self._what,
                    extra={"error": error, "failures": failures, "retry_in_s": round(delay_s, 3)},
                )
                await wait_stopped(stop, delay_s)
                continue
            self._reconnecting()
            if isinstance(failure, _RelistError):
                relist_reason = failure.reason
                if relist_reason == "expired" and failures == 1:
                    delay_s = 0.0  # routine after a long disconnection: relist at once
            elif (
                not isinstance(failure, _ThrottledError)
                and failures >= self._settings.resume_attempts
            ):
                relist_reason = "failures"
            else:
                logger.warning(
                    "%s watch failed, resuming",
                    self._what,
                    extra={
                        "error": error,
                        "resource_version": self._version,
                        "failures": failures,
                        "retry_in_s": round(delay_s, 3),
                    },
                )
                await wait_stopped(stop, delay_s)
                continue
            logger.warning(
                "%s watch cannot resume, relisting",
                self._what,
                extra={
                    "reason": relist_reason,
                    "error": error,
                    "resource_version": self._version,
                    "failures": failures,
                    "relist_in_s": round(delay_s, 3),
                },
            )
            self._version = None
            await wait_stopped(stop, delay_s)

    async def _get_json(self, **params: Any) -> dict[str, Any]:
        response = cast(
            aiohttp.ClientResponse,
            await self._list(label_selector=self._selector or "", _preload_content=False, **params),
        )
        try:
            await _check_status(response)
            return dict(json.loads(await response.read()))
        finally:
            response.release()

    async def _relist(self, reason: str) -> str:
        items: list[Namespace] = []
        token = ""
        while True:
            # No resourceVersion: the newest state, read from etcd (what client-go falls back to
            # after an expired or too large one). A 410 here (continue token expired) is a
            # _RelistError: run() relists from scratch.
            page = await self._get_json(
                limit=self._settings.page_size, _continue=token, _request_timeout=60
            )
            items += [self._parse(obj) for obj in page.get("items") or ()]
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        if self._metrics is not None:
            self._metrics.relists.labels(reason).inc()
        changed = self._cache.replace(items)
        self._confirmed()
        self._changed(changed)
        logger.info("%s objects listed", self._what, extra={"count": len(items), "reason": reason})
        return str(meta.get("resourceVersion", ""))

    async def _watch(self, resource_version: str) -> None:
        """Follow one watch stream from `resource_version` until it ends."""
        settings = self._settings
        try:
            response = cast(
                aiohttp.ClientResponse,
                await self._list(
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
            raise _status_error({"code": exc.status, "message": exc.reason}) from exc
        verifying: asyncio.Task[None] | None = None
        self._verify_failure = None
        try:
            await _check_status(response)
            verifying = asyncio.create_task(self._verify_while_quiet(response))
            while True:
                try:
                    line = await response.content.readline()
                except aiohttp.ClientError:
                    if self._verify_failure is not None:
                        raise self._verify_failure from None
                    raise
                if not line:
                    if self._verify_failure is not None:
                        raise self._verify_failure
                    return  # the server ended the watch (timeoutSeconds)
                self._event(json.loads(line))
        finally:
            if verifying is not None:
                verifying.cancel()
                await asyncio.gather(verifying, return_exceptions=True)
            response.release()

    async def _verify_while_quiet(self, response: aiohttp.ClientResponse) -> None:
        """Verify a stream quiet for verify_interval_s (module docstring); a failure ends it."""
        loop = asyncio.get_running_loop()
        interval_s = self._settings.verify_interval_s
        heard = loop.time()  # the stream's start, then each event, bookmark or verification
        while True:
            heard = max(heard, self._progress_at)
            quiet_s = loop.time() - heard
            if quiet_s < interval_s:
                await asyncio.sleep(interval_s - quiet_s)
                continue
            try:
                await self._get_json(
                    limit=1,
                    resource_version=self._version,
                    resource_version_match="NotOlderThan",
                    _request_timeout=30,
                )
            except (
                _RelistError,
                _ThrottledError,
                aiohttp.ClientError,
                TimeoutError,
                OSError,
            ) as exc:
                self._verify_failure = exc
                response.close()
                return
            self._progress = True
            self._confirmed()
            heard = loop.time()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise _status_error(obj)
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise ValueError(f"unexpected watch event type {kind!r}")
        if kind != "BOOKMARK":
            self._changed(self._cache.apply(kind, self._parse(obj)))
        self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
        self._progress = True
        self._progress_at = asyncio.get_running_loop().time()
        self._confirmed()

    def _confirmed(self) -> None:
        self._cache.confirm_current()
        if self._metrics is not None:
            self._metrics.last_current.set_to_current_time()

    def _reconnecting(self) -> None:
        if self._metrics is not None:
            self._metrics.reconnects.inc()

    def _changed(self, changed: bool) -> None:
        if self._metrics is not None:
            self._metrics.namespaces.set(len(self._cache))
        if changed:
            self._on_change()
