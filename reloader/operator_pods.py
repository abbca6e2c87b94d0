"""Deployment mode: watch the operator's pods and release the Lease of one that has died.

Each operator pod's supervisor (reloader.supervise) releases its KEDA's Lease the moment KEDA
exits, and the next pod's starts KEDA once it is free. A pod that died without that (its
supervisor SIGKILLed, its node lost) would leave the Lease held for its whole duration; so when
an operator pod's container has terminated, or the pod is gone, the Lease it still holds is
released here (reloader.lease checks that the holder is that pod and did not renew after it
died), and the next operator takes over at once.

A pod's hostname is its name (the chart sets no `hostname` and no `hostNetwork`); a holder
whose hostname is not a pod seen here is never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.lease import LeaseReleaser, parse_micro_time
from reloader.metrics import ReloaderMetrics
from tenancy_common.kube import open_stream, read_json
from tenancy_common.lifecycle import wait_stopped

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
INACTIVITY_TIMEOUT_S = 330.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


def selector_of(match_labels: Mapping[str, str]) -> str:
    """A Deployment's spec.selector.matchLabels as a label selector string."""
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))


def died_at(pod: dict[str, Any], container: str) -> datetime | None:
    """When the operator container of `pod` stopped; None while it runs (or has not started).

    Only the current state counts: a container that was restarted in place runs again."""
    status = pod.get("status") or {}
    for entry in status.get("containerStatuses") or ():
        if entry.get("name") != container:
            continue
        terminated = (entry.get("state") or {}).get("terminated")
        if terminated is not None:
            finished = parse_micro_time(terminated.get("finishedAt"))
            if finished is None:
                return datetime.now(UTC)
            # The kubelet reports whole seconds: the container died within the second after.
            return finished + timedelta(seconds=1) if finished.microsecond == 0 else finished
    return None


class OperatorPodWatch:
    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        container: str,
        releaser: LeaseReleaser,
        metrics: ReloaderMetrics,
    ) -> None:
        self._core = CoreV1Api(api)
        self._namespace = namespace
        self._container = container
        self._releaser = releaser
        self._metrics = metrics
        self._known: set[str] = set()

    async def run(self, selector: str, stop: asyncio.Event) -> None:
        """Follow the pods `selector` picks until `stop`; errors reconnect with backoff."""
        stopping = asyncio.create_task(stop.wait())
        following = asyncio.create_task(self._follow(selector, stop))
        try:
            await asyncio.wait({stopping, following}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, following):
                task.cancel()
            await asyncio.gather(stopping, following, return_exceptions=True)
        if following.done() and not following.cancelled() and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]

    async def _follow(self, selector: str, stop: asyncio.Event) -> None:
        backoff_s = BACKOFF_INITIAL_S
        while not stop.is_set():
            try:
                resource_version = await self._list(selector)
                await self._watch(selector, resource_version)
                backoff_s = BACKOFF_INITIAL_S
            except (aiohttp.ClientError, ApiException, TimeoutError, ValueError, OSError) as exc:
                delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
                logger.warning(
                    "operator pod watch failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay_s},
                )
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                await wait_stopped(stop, delay_s)

    async def _list(self, selector: str) -> str:
        listing = await read_json(
            self._core.list_namespaced_pod(
                self._namespace, label_selector=selector, _preload_content=False
            )
        )
        pods = listing.get("items") or []
        names = {pod["metadata"]["name"] for pod in pods}
        for gone in sorted(self._known - names):  # deleted while we were not watching
            await self._dead(gone, datetime.now(UTC))
        self._known = names
        for pod in pods:
            await self._seen(pod, deleted=False)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, selector: str, resource_version: str) -> None:
        response = await open_stream(
            self._core.list_namespaced_pod(
                self._namespace,
                label_selector=selector,
                watch=True,
                resource_version=resource_version,
                timeout_seconds=WATCH_TIMEOUT_S,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=30, sock_read=INACTIVITY_TIMEOUT_S
                ),
            )
        )
        try:
            while line := await response.content.readline():
                event = json.loads(line)
                pod = event.get("object") or {}
                if event.get("type") == "ERROR" or pod.get("kind") != "Pod":
                    return  # 410 and the like: relist
                await self._seen(pod, deleted=event.get("type") == "DELETED")
        finally:
            response.release()

    async def _seen(self, pod: dict[str, Any], *, deleted: bool) -> None:
        name = str(pod["metadata"]["name"])
        stopped = died_at(pod, self._container)
        if deleted:
            self._known.discard(name)
            await self._dead(name, stopped or datetime.now(UTC))
            return
        self._known.add(name)
        if stopped is not None:
            await self._dead(name, stopped)

    async def _dead(self, pod: str, when: datetime) -> None:
        if await self._releaser.release(hostname=pod, died_at=when):
            self._metrics.lease_releases.inc()
