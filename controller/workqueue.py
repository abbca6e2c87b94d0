"""A work queue keyed by tenant, as client-go's: coalescing, one worker per key at a time,
per-key exponential backoff.

A key added while queued is queued once; added while a worker holds it, it is queued again
when that worker is done (so an event during a reconcile is never lost, and a key never runs
twice at once). `retry` puts a failed key back after its own backoff (initial * 2^failures,
capped); `forget` resets it. Delayed adds are timers, not tasks: the queue holds no state
per key beyond a name, a count and a timer handle.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

K = TypeVar("K")


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()
        """Added while active: queued again once done."""
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._initial_s = backoff_initial_s
        self._max_s = backoff_max_s
        self._shut = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: K) -> None:
        if self._shut:
            return
        if key in self._active:
            self._again.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: K, delay_s: float) -> None:
        """Add `key` in `delay_s` (the earlier of two pending delays wins)."""
        if self._shut:
            return
        if delay_s <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        pending = self._timers.get(key)
        if pending is not None:
            if pending.when() <= when:
                return
            pending.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: K) -> float:
        """Add `key` again after its backoff; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay_s = min(self._initial_s * 2.0**failures, self._max_s)
        self.add_after(key, delay_s)
        return delay_s

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K | None:
        """The next key, held until `done`; None once shut down."""
        while not self._queue:
            if self._shut:
                return None
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: K) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def shut_down(self) -> None:
        self._shut = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queue.clear()
        self._queued.clear()
        self._ready.set()
