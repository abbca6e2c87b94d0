"""Keep the operator's RoleBindings on desired plus still-watched namespaces.

Level-triggered like the control loop: every pass reads the whole namespace cache and
what the operator runs with, then reconciles. A namespace that left the tenant keeps its
binding while the operator still watches it (an honest reloader stops the old operator
`--debounce` after the change), so that KEDA is not refused before its restart. But what
the operator watches is written by the operator's own pod (process mode), which is less
trusted than this component: whatever it says (a stale list, a namespace claimed forever,
garbage, nothing), a binding outlives its namespace's leaving by at most
`unbind_timeout_s`, counted from the pass that first saw it leave.
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


LEAVING_POLL_S = 1.0
"""While a namespace that left keeps its binding, re-read what the operator watches this
often: its binding goes within about this long of the operator's restart."""


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
        """Namespaces with a binding of ours that left the desired set -> when a pass first
        saw that; the unbind timeout counts from there."""
        self._kept: set[str] = set()
        """Those of them kept bound by the last pass (until their timeout)."""
        self._unbind_failed = False
        """The last pass could not delete one of them: retry soon, not at the interval."""
        self.failed: dict[str, str] = {}
        self.last_error: str | None = None
        """The last pass could not reconcile at all (the API refused)."""
        self.watch_error: str | None = None
        """What the operator watches is unknown (never published, or unreadable)."""
        self.passes = 0

    def wake(self) -> None:
        self._wake.set()

    def readiness(self) -> str | None:
        """Fails only while the manager cannot reconcile at all (not yet, or the API refuses
        its list): an unready manager blocks the release's rollouts (`helm upgrade --wait`)."""
        if self.passes == 0:
            return self.last_error or "RoleBindings not reconciled yet"
        return self.last_error

    def warning(self) -> str | None:
        """What one namespace or the operator's pod did, shown in /readyz without failing it:
        a namespace whose binding cannot be made, or a watched set the operator's identity can
        strip. Neither may block the release's rollouts, and the manager acts on both safely
        (the namespace waits; a leaving one keeps its binding until the unbind timeout)."""
        notes = [self.watch_error] if self.watch_error else []
        notes += [f"{ns}: {why}" for ns, why in sorted(self.failed.items())]
        return "; ".join(notes) or None

    def next_pass_in(self) -> float:
        """Seconds until the next pass is due without an event: the interval, or sooner while a
        namespace that left is still bound (poll what the operator watches; its deadline)."""
        due = [self._interval_s]
        if self._kept or self._unbind_failed:
            due.append(LEAVING_POLL_S)
        if self._kept:
            deadline = min(self._left_at[ns] for ns in self._kept) + self._unbind_timeout_s
            due.append(deadline - self._clock.now())
        return max(0.0, min(due))

    async def run(self, stop: asyncio.Event) -> None:
        if not await first(self._cache.synced.wait(), stop):
            return
        while not stop.is_set():
            self._wake.clear()
            await self.reconcile_once()
            waiters = [
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._clock.sleep(self.next_pass_in())),
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
        now = self._clock.now()
        leaving: dict[str, float] = {}

        def keep(namespace: str) -> bool:
            """Asked for each binding of ours outside the desired set."""
            if namespace in terminating:
                return True
            since = leaving[namespace] = self._left_at.get(namespace, now)
            if watched is not None and namespace not in watched:
                return False  # the operator runs without it: nothing to wait for
            if now - since < self._unbind_timeout_s:
                return True
            logger.warning(
                "removing the RoleBinding of a namespace that left the tenant although the "
                "operator may still watch it: the unbind timeout is over",
                extra={
                    "namespace": namespace,
                    "unbind_timeout_s": self._unbind_timeout_s,
                    "watched_unknown": watched is None,
                },
            )
            return False

        try:
            result = await self._manager.reconcile(desired - terminating, keep)
        except RoleBindingError as exc:
            self.last_error = str(exc)
            logger.error("cannot reconcile the operator's RoleBindings", extra={"error": str(exc)})
            return
        # Only namespaces that are still bound and still outside the set keep their time.
        self._left_at = leaving
        self._kept = set(leaving) & result.bound
        self._unbind_failed = any(ns in result.failed for ns in leaving)
        if watch_error is not None and watch_error != self.watch_error:
            logger.warning(
                "what the operator watches is unknown: a namespace that left keeps its "
                "RoleBinding only until the unbind timeout",
                extra={"error": watch_error, "unbind_timeout_s": self._unbind_timeout_s},
            )
        self.last_error = None
        self.watch_error = watch_error
        self.failed = result.failed
        self.passes += 1
