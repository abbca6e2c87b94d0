"""Keep the operator's RoleBindings on desired plus still-watched namespaces.

Level-triggered like the control loop: every pass reads the whole namespace cache and
what the operator runs with, then reconciles. A namespace that left the tenant keeps its
binding while the operator still watches it, but at most `unbind_timeout_s` (the honest
reloader needs far less: removal delay, max wait, grace period), so a compromised operator
that keeps publishing an old list cannot keep another tenant's namespace bound. When what
it watches cannot be read, nothing is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from reloader.clock import Clock, LoopClock
from reloader.control import first
from reloader.desired import Desired
from reloader.rolebindings import RoleBindingError, RoleBindingManager
from reloader.watched import WatchedSource, WatchedUnknownError
from tenancy_common.names import NamespaceName
from tenancy_common.namespace_cache import NamespaceCache

logger = logging.getLogger(__name__)


class BindingLoop:
    def __init__(
        self,
        *,
        manager: RoleBindingManager,
        cache: NamespaceCache,
        desired: Callable[[], Desired],
        watched: WatchedSource,
        interval_s: float,
        unbind_timeout_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._manager = manager
        self._cache = cache
        self._desired = desired
        self._watched = watched
        self._interval_s = interval_s
        self._unbind_timeout_s = unbind_timeout_s
        self._clock: Clock = clock or LoopClock()
        self._wake = asyncio.Event()
        self._left_at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.last_error: str | None = None
        self.passes = 0

    def wake(self) -> None:
        self._wake.set()

    def readiness(self) -> str | None:
        if self.passes == 0:
            return self.last_error or "RoleBindings not reconciled yet"
        if self.last_error is not None:
            return self.last_error
        if self.failed:
            return "; ".join(f"{ns}: {why}" for ns, why in sorted(self.failed.items()))
        return None

    async def run(self, stop: asyncio.Event) -> None:
        if not await first(self._cache.synced.wait(), stop):
            return
        while not stop.is_set():
            self._wake.clear()
            await self.reconcile_once()
            waiters = [
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._clock.sleep(self._interval_s)),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)

    async def reconcile_once(self) -> None:
        desired: set[str] = set(self._desired().names)
        try:
            watched: frozenset[str] | None = await self._watched.read()
            watch_error = None
        except WatchedUnknownError as exc:
            watched, watch_error = None, str(exc)
        # No binding can be made in a Terminating namespace; one that is there stays.
        terminating = {
            ns for ns in desired if (n := self._cache.get(NamespaceName(ns))) and n.terminating
        }
        try:
            if watched is None:
                keep = set(await self._manager.owned())
            else:
                keep = self._still_watched(desired, watched) | terminating
            result = await self._manager.reconcile(desired - terminating, keep)
        except RoleBindingError as exc:
            self.last_error = str(exc)
            logger.error("cannot reconcile the operator's RoleBindings", extra={"error": str(exc)})
            return
        if watch_error is not None and watch_error != self.last_error:
            logger.warning(
                "not removing any RoleBinding: what the operator watches is unknown",
                extra={"error": watch_error},
            )
        self.last_error = watch_error
        self.failed = result.failed
        self.passes += 1

    def _still_watched(self, desired: set[str], watched: frozenset[str]) -> set[str]:
        """Watched namespaces that left the desired set, until their unbind timeout."""
        now = self._clock.now()
        leaving = watched - desired
        self._left_at = {ns: self._left_at.get(ns, now) for ns in leaving}
        keep = set()
        for namespace, since in self._left_at.items():
            if now - since < self._unbind_timeout_s:
                keep.add(namespace)
            elif now - since - self._interval_s < self._unbind_timeout_s:
                logger.warning(
                    "the operator still reports watching a namespace it no longer should; "
                    "removing its RoleBinding anyway",
                    extra={"namespace": namespace, "unbind_timeout_s": self._unbind_timeout_s},
                )
        return keep
