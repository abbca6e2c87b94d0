"""Wait until the operator's Lease is free, then let KEDA start: it leads at its first attempt.

A KEDA operator started while another pod's operator holds the Lease waits as a standby and
asks again only every retry period, plus client-go's jitter of up to 1.2 times it: after the
Lease is released, up to 2.2 retry periods pass before it leads, and the metrics adapter holds
the tenant's reads meanwhile. Started once nobody holds the Lease, it takes it at its first
attempt, right after its caches have synced. So a rolling update's new pod watches the Lease
(one watch, no polling) and starts KEDA the moment the old pod's operator has let go.

This only decides *when* KEDA starts: KEDA still elects itself. Starting early (the wait ran
out, the Lease expired or could not be read) makes it a standby, never a second leader.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.kube import open_stream, read_json
from tenancy_common.lease import holder_hostname

logger = logging.getLogger(__name__)

Verdict = Literal["free", "own", "held"]
Outcome = Literal["free", "own", "expired", "timeout", "stopped"]

BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0


def verdict(lease: dict[str, Any] | None, hostname: str) -> Verdict:
    """`free`: no Lease or no holder; `own`: held by an operator on our hostname (an earlier
    run of this container, dead since we are running); `held`: someone else holds it."""
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
    if not holder:
        return "free"
    if hostname and holder_hostname(holder) == hostname:
        return "own"
    return "held"


class LeaseGate:
    """Waits for one Lease (`namespace`/`name`) to be free of other holders."""

    def __init__(self, api: ApiClient, namespace: str, name: str, hostname: str) -> None:
        self._coordination = CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self._hostname = hostname
        self._holder = ""
        self._renewed = ""
        self._duration_s = 0.0
        self._changed_at = 0.0
        self._deadline = 0.0
        self._timer: asyncio.Timeout | None = None

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> Outcome:
        """Until the Lease is free or ours (`free`, `own`), its holder has not renewed it
        for its whole duration (`expired`, as client-go judges it: from when we saw it
        change), `timeout_s` has passed (`timeout`), or `stop` is set (`stopped`)."""
        waiting = asyncio.ensure_future(self._follow(timeout_s))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        return "stopped"

    async def _follow(self, timeout_s: float) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + timeout_s
        self._changed_at = loop.time()
        backoff_s = BACKOFF_INITIAL_S
        while True:
            try:
                async with asyncio.timeout_at(self._until()) as self._timer:
                    lease, resource_version = await self._list()
                    if (found := self._judge(lease)) is not None:
                        return found
                    backoff_s = BACKOFF_INITIAL_S
                    found = await self._watch(resource_version)
                    if found is not None:
                        return found
            except TimeoutError:
                if loop.time() >= deadline:
                    return "timeout"
                if self._expired():
                    return "expired"
            except (aiohttp.ClientError, ApiException, ValueError, OSError) as exc:
                delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
                logger.warning(
                    "cannot follow the operator's lease, retrying",
                    extra={**self._log(), "error": f"{type(exc).__name__}: {exc}"[:300]},
                )
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                await asyncio.sleep(min(delay_s, max(0.0, deadline - loop.time())))
                if loop.time() >= deadline:
                    return "timeout"

    def _until(self) -> float:
        """The earlier of the deadline and the holder's expiry (none before a holder was
        seen)."""
        if not self._holder or self._duration_s <= 0:
            return self._deadline
        return min(self._deadline, self._changed_at + self._duration_s)

    def _expired(self) -> bool:
        loop = asyncio.get_running_loop()
        return bool(self._holder) and loop.time() >= self._changed_at + self._duration_s > 0

    def _judge(self, lease: dict[str, Any] | None) -> Outcome | None:
        found = verdict(lease, self._hostname)
        if found != "held":
            return found
        spec = (lease or {}).get("spec") or {}
        holder, renewed = str(spec.get("holderIdentity")), str(spec.get("renewTime") or "")
        if (holder, renewed) != (self._holder, self._renewed):
            if holder != self._holder:
                logger.info(
                    "waiting for the operator's lease", extra={**self._log(), "holder": holder}
                )
            self._holder, self._renewed = holder, renewed
            self._changed_at = asyncio.get_running_loop().time()
        self._duration_s = float(spec.get("leaseDurationSeconds") or 0)
        if self._timer is not None:
            self._timer.reschedule(self._until())  # a renewal moves the expiry on
        return None

    async def _list(self) -> tuple[dict[str, Any] | None, str]:
        listing = await read_json(
            self._coordination.list_namespaced_lease(
                self.namespace, field_selector=f"metadata.name={self.name}", _preload_content=False
            )
        )
        items = listing.get("items") or []
        version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return (items[0] if items else None), version

    async def _watch(self, resource_version: str) -> Outcome | None:
        """Follow the Lease from `resource_version`; an outcome, or None to list again (the
        watch ended, or the version is too old)."""
        loop = asyncio.get_running_loop()
        response = await open_stream(
            self._coordination.list_namespaced_lease(
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=resource_version,
                timeout_seconds=max(1, int(self._deadline - loop.time()) + 1),
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            )
        )
        try:
            while line := await response.content.readline():
                event = json.loads(line)
                kind = event.get("type")
                if kind == "ERROR":
                    return None  # 410 Gone and the like: list again
                if kind == "BOOKMARK":
                    continue
                lease = None if kind == "DELETED" else (event.get("object") or {})
                if (found := self._judge(lease)) is not None:
                    return found
            return None
        finally:
            response.release()

    def _log(self) -> dict[str, str]:
        return {"lease": f"{self.namespace}/{self.name}"}
