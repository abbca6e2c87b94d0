"""Deployment mode: start KEDA only once its Lease is free (or expired), so it leads at its first
attempt instead of waiting as a standby (the idea of reloader/lease_gate.py).

A KEDA started while another pod's KEDA holds the Lease asks again only every retry period,
plus client-go's jitter: up to 2.2 retry periods after the Lease is released. Started once
nobody holds it, it takes it right after its caches have synced. This only decides *when* KEDA
starts: KEDA still elects itself, so starting early (the wait ran out, the Lease could not be
read) makes it a standby, never a second leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from operator_pod.follow import FollowMetrics, FollowSettings, ObjectFollower
from operator_pod.kube import KubeClient, Obj
from operator_pod.lease import holder_hostname, lease_path

logger = logging.getLogger(__name__)

Verdict = Literal["free", "own", "held"]
Outcome = Literal["free", "own", "expired", "timeout", "stopped"]


def verdict(lease: Obj | None, hostname: str) -> Verdict:
    """`free`: no Lease or no holder; `own`: held by a KEDA on our hostname (an earlier run of
    this container, dead since we run); `held`: someone else holds it."""
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
    if not holder:
        return "free"
    if hostname and holder_hostname(holder) == hostname:
        return "own"
    return "held"


class LeaseGate:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        hostname: str,
        *,
        settings: FollowSettings | None = None,
        metrics: FollowMetrics | None = None,
    ) -> None:
        self._hostname = hostname
        self.follower = ObjectFollower(
            client,
            lease_path(namespace),
            name,
            self._observe,
            settings=settings,
            metrics=metrics,
            label=f"lease {namespace}/{name}",
        )
        self._verdict: Verdict | None = None
        self._holder = ""
        self._renewed = ""
        self._duration_s = 0.0
        self._changed_at = 0.0
        self._seen = asyncio.Event()

    def _observe(self, lease: Obj | None) -> None:
        self._verdict = verdict(lease, self._hostname)
        spec = (lease or {}).get("spec") or {}
        holder, renewed = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
        if (holder, renewed) != (self._holder, self._renewed):
            if holder and holder != self._holder and self._verdict == "held":
                logger.info(
                    "waiting for KEDA's Lease",
                    extra={"lease": self.follower.label, "holder": holder},
                )
            # Expiry as client-go judges it: from when we saw the Lease change, not from its
            # renewTime (clocks differ).
            self._holder, self._renewed = holder, renewed
            self._changed_at = time.monotonic()
        try:
            self._duration_s = float(spec.get("leaseDurationSeconds") or 0)
        except (TypeError, ValueError):
            self._duration_s = 0.0
        self._seen.set()

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> Outcome:
        """Until the Lease is free or ours, its holder has not renewed it for its whole
        duration (`expired`), `timeout_s` passed, or `stop` is set."""
        done = asyncio.Event()
        following = asyncio.ensure_future(self.follower.run(done))
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if stop.is_set():
                    return "stopped"
                if self._verdict in ("free", "own"):
                    assert self._verdict is not None
                    return self._verdict
                now = time.monotonic()
                if now >= deadline:
                    return "timeout"
                until = deadline
                if self._verdict == "held" and self._duration_s > 0:
                    expiry = self._changed_at + self._duration_s
                    if now >= expiry:
                        return "expired"
                    until = min(until, expiry)
                self._seen.clear()
                await _first(stop, self._seen, until - now)
        finally:
            done.set()
            await following


async def _first(stop: asyncio.Event, seen: asyncio.Event, timeout_s: float) -> None:
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(seen.wait())}
    try:
        await asyncio.wait(
            waiters, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
