"""Follow one named object by list + watch (`fieldSelector=metadata.name=...`), as client-go's
reflector does for a one-object informer; RBAC with resourceNames allows exactly this.

LIST (no resourceVersion: a quorum read of the newest state), then WATCH from the list's
resourceVersion with bookmarks. A watch the server ends (its timeoutSeconds) resumes from the
last resourceVersion; one that brought nothing at all (no event, no bookmark) is followed by a
LIST instead, since kube-apiserver keeps a watch from a resourceVersion it has not reached (an
etcd restored from a snapshot) open and silent. `410 Gone` relists at once; any other error
(a Status, a refused or reset connection, a read past its deadline) backs off with jitter and
relists. The last state learned stays in force meanwhile: an unreachable API server changes
nothing, it only shows in `error` (and a readiness warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from operator_pod.kube import ApiError, KubeClient, Obj, TransportError
from operator_pod.prometheus import Counter, Gauge, Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FollowSettings:
    watch_timeout_s: int = 300
    """timeoutSeconds of one watch request (the server ends it then; up to 1.2 times, jittered,
    so that many pods restarted together do not watch in step)."""
    idle_slack_s: float = 30.0
    """A watch silent for its timeoutSeconds plus this long is taken as dead."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class FollowMetrics:
    def __init__(self, registry: Registry, prefix: str) -> None:
        self.relists = Counter(
            prefix + "follow_relists",
            "LISTs of a followed object, by why (start, gone, error, silent).",
            ["object", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            prefix + "follow_errors",
            "Failed LISTs and watches of a followed object.",
            ["object"],
            registry=registry,
        )
        self.current = Gauge(
            prefix + "follow_last_current_timestamp_seconds",
            "When the followed object was last confirmed current (LIST, event, bookmark).",
            ["object"],
            registry=registry,
        )


class ObjectFollower:
    """Calls `on_state(obj)` with the object (None: it does not exist) after every LIST and
    every event; `synced` is set after the first LIST."""

    def __init__(
        self,
        client: KubeClient,
        collection: str,
        name: str,
        on_state: Callable[[Obj | None], None],
        *,
        settings: FollowSettings | None = None,
        metrics: FollowMetrics | None = None,
        label: str = "",
    ) -> None:
        """`collection`: the API path of the object's collection, e.g.
        `/api/v1/namespaces/NS/configmaps`."""
        self._client = client
        self._collection = collection
        self._name = name
        self._on_state = on_state
        self._settings = settings or FollowSettings()
        self._metrics = metrics
        self.label = label or f"{collection}/{name}"
        self.synced = asyncio.Event()
        self.error: str | None = None
        """Why the last LIST or watch failed; None once one succeeded again."""
        self.current_at: float | None = None
        """time.monotonic() of the last confirmation (LIST, event, bookmark)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop`; a hung request is cancelled with it."""
        following = asyncio.ensure_future(self._follow())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (following, stopping):
                task.cancel()
            await asyncio.gather(following, stopping, return_exceptions=True)
        if following.done() and not following.cancelled() and following.exception():
            raise following.exception()  # type: ignore[misc]

    async def _follow(self) -> None:
        settings = self._settings
        version: str | None = None
        reason = "start"
        backoff_s = settings.backoff_initial_s
        selector = {"fieldSelector": f"metadata.name={self._name}"}
        while True:
            try:
                if version is None:
                    self._count_relist(reason)
                    listing = await self._client.get(self._collection, selector)
                    items = listing.get("items") or []
                    version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                    self._progress()
                    self._on_state(items[0] if items else None)
                    self.synced.set()
                timeout_s = int(settings.watch_timeout_s * random.uniform(1.0, 1.2))  # noqa: S311
                query = {
                    **selector,
                    "allowWatchBookmarks": "true",
                    "resourceVersion": version,
                    "timeoutSeconds": str(max(1, timeout_s)),
                }
                seen = False
                events = self._client.watch(
                    self._collection, query, idle_timeout_s=timeout_s + settings.idle_slack_s
                )
                async with contextlib.aclosing(events):
                    async for event in events:
                        kind = event.get("type")
                        obj = event.get("object") or {}
                        if kind == "ERROR":
                            raise ApiError.from_status(int(obj.get("code") or 500), obj)
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        seen = True
                        self._progress()
                        backoff_s = settings.backoff_initial_s
                        if kind == "DELETED":
                            self._on_state(None)
                        elif kind in ("ADDED", "MODIFIED"):
                            self._on_state(obj)
                if not seen:
                    # Nothing at all: list again, after a pause (a proxy that cuts every
                    # watch at once must not make this a busy loop).
                    version, reason = None, "silent"
                    backoff_s = await self._pause(backoff_s)
            except ApiError as exc:
                version = None
                if exc.gone:
                    reason = "gone"
                    logger.info("resource version too old, listing again", extra=self._log())
                    continue
                reason = "error"
                backoff_s = await self._failed(exc, backoff_s)
            except TransportError as exc:
                version, reason = None, "error"
                backoff_s = await self._failed(exc, backoff_s)

    async def _failed(self, exc: Exception, backoff_s: float) -> float:
        self.error = str(exc)[:300]
        if self._metrics is not None:
            self._metrics.errors.labels(self.label).inc()
        delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto
        logger.warning(
            "cannot follow %s, retrying",
            self.label,
            extra={**self._log(), "error": self.error, "retry_in_s": round(delay_s, 3)},
        )
        await asyncio.sleep(delay_s)
        return min(backoff_s * 2, self._settings.backoff_max_s)

    async def _pause(self, backoff_s: float) -> float:
        await asyncio.sleep(backoff_s * random.uniform(0.5, 1.5))  # noqa: S311
        return min(backoff_s * 2, self._settings.backoff_max_s)

    def _progress(self) -> None:
        self.error = None
        self.current_at = time.monotonic()
        if self._metrics is not None:
            self._metrics.current.labels(self.label).set_to_current_time()

    def _count_relist(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.relists.labels(self.label, reason).inc()

    def _log(self) -> dict[str, str]:
        return {"object": self.label}
