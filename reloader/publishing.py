"""Process mode: tell the binding manager which namespaces our operator runs with.

Wraps the process target: after every value put in force (the old operator stopped, the
new one started) it is published; when publishing fails it is retried by `run`, and the
manager meanwhile keeps the bindings of the last value it saw, a superset (the safe side).
At shutdown the pod's entry is removed: its operator watches nothing any more.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from reloader.targets import Target
from reloader.watched import PublishError, WatchedConfigMap
from tenancy_common.lifecycle import wait_stopped

logger = logging.getLogger(__name__)

_UNSET = object()


class PublishingTarget:
    def __init__(
        self,
        inner: Target,
        configmap: WatchedConfigMap,
        registry: CollectorRegistry,
        *,
        retry_s: float = 2.0,
    ) -> None:
        self._inner = inner
        self._configmap = configmap
        self._retry_s = retry_s
        self._pending: object = _UNSET
        self.published: str | None = None
        self.last_error: str | None = None
        self._errors = Counter(
            "keda_tenancy_reloader_watched_publish_errors",
            "Failed attempts to publish the namespaces the operator runs with.",
            registry=registry,
        )

    @property
    def running(self) -> bool | None:
        return self._inner.running

    def exited(self) -> Coroutine[Any, Any, int] | None:
        return self._inner.exited()

    async def apply(self, value: str) -> bool:
        # When this raises, the old operator may be stopped and no new one started: the value
        # published before (a superset) stays, the safe side.
        changed = await self._inner.apply(value)
        await self._publish(value if self._inner.running else "")
        return changed

    async def shutdown(self, sig: signal.Signals) -> int | None:
        code = await self._inner.shutdown(sig)
        await self._publish(None)
        return code

    async def _publish(self, value: str | None) -> None:
        self._pending = value
        try:
            await self._configmap.publish(value)
        except PublishError as exc:
            self._errors.inc()
            if self.last_error is None:
                logger.error("cannot publish the operator's namespaces", extra={"error": str(exc)})
            self.last_error = str(exc)
            return
        self._pending = _UNSET
        self.published = value
        if self.last_error is not None:
            logger.info("published the operator's namespaces again")
        self.last_error = None

    async def run(self, stop: asyncio.Event) -> None:
        """Retry a failed publish until it goes through (or we stop)."""
        while not await wait_stopped(stop, self._retry_s):
            pending = self._pending
            if pending is not _UNSET:
                assert pending is None or isinstance(pending, str)
                await self._publish(pending)
