"""Certificates issued on a watch: keda-tenancy-certs follows the namespaces (list + watch,
`tenancy_common.namespace_watch`) and keeps a new tenant namespace's certificates when it
appears, instead of at the next full pass, so a new tenant's KEDA does not wait up to
--resync-interval for its Secrets. The full pass stays the backstop: it renews, heals deleted
Secrets and catches a grant made long after its namespace.

A namespace usually appears before its release grants us anything there (`kubectl create
namespace`, then `helm install`): one that is not granted yet is tried again 1 s, 2 s, 4 s, ...
after it appeared, up to a minute apart, then left to the full passes. Not granted is no
failure (no Event, no error metric); failures stay with their namespace, as in a full pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tenancy_common.namespace_cache import NamespaceCache

GRANT_RETRY_FIRST_S = 1.0
GRANT_RETRY_LAST_S = 64.0  # beyond this the full passes (each minute by default) do as well


@dataclass
class NewNamespaces:
    """Tenant namespaces that appear in the watched cache after the first full pass's list.

    Only the first pass's list is the baseline: a namespace that appears later is served here
    even when a pass listed it meanwhile (a few reads twice), so one that appeared just before
    a pass, before its grant, still gets its grant retries."""

    cache: NamespaceCache
    pattern: re.Pattern[str]
    own_namespace: str
    known: set[str] | None = None
    """Listed by the first full pass, or handled here since."""
    waiting_for_grant: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Namespace -> (loop time of its next try, the delay after that)."""

    def passed(self, listed: Iterable[str]) -> None:
        """A full pass listed (and so served) `listed`; the first one is the baseline."""
        if self.known is None:
            self.known = set(listed)

    def _current(self) -> set[str]:
        return {
            name
            for name, namespace in self.cache.snapshot().items()
            if not namespace.terminating
            and name != self.own_namespace
            and self.pattern.fullmatch(name) is not None
        }

    def take(self, now: float) -> tuple[list[str], list[str]]:
        """(namespaces to reconcile now: new ones and grant retries due, namespaces gone)."""
        if self.known is None or not self.cache.synced.is_set():
            return [], []
        current = self._current()
        added = sorted(current - self.known)
        gone = sorted(self.known - current)
        self.known = current
        for name in gone:
            self.waiting_for_grant.pop(name, None)
        due = sorted(n for n, (at, _) in self.waiting_for_grant.items() if at <= now)
        return [*added, *due], gone

    def not_granted(self, namespaces: Iterable[str], now: float) -> None:
        """Tried and found without a grant: try again later, each time twice as late."""
        for name in namespaces:
            _, delay = self.waiting_for_grant.get(name, (now, GRANT_RETRY_FIRST_S))
            if delay > GRANT_RETRY_LAST_S:
                self.waiting_for_grant.pop(name, None)  # the full passes take it from here
            else:
                self.waiting_for_grant[name] = (now + delay, delay * 2)

    def granted(self, namespaces: Iterable[str]) -> None:
        for name in namespaces:
            self.waiting_for_grant.pop(name, None)

    def next_try_in_s(self, now: float) -> float | None:
        if not self.waiting_for_grant:
            return None
        return max(0.0, min(at for at, _ in self.waiting_for_grant.values()) - now)


async def serve_new(
    new: NewNamespaces,
    now: float,
    reconcile: Callable[[Sequence[str]], Awaitable[list[str]]],
    forget: Callable[[str], None],
) -> None:
    """Reconcile what is new (returning the namespaces not granted yet), forget what is gone."""
    namespaces, gone = new.take(now)
    for name in gone:
        forget(name)
    if namespaces:
        not_granted = await reconcile(namespaces)
        new.granted(set(namespaces) - set(not_granted))
        new.not_granted(not_granted, now)


async def wait_for_any(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Until one of `events` is set or `timeout_s` has passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
