"""Deployment mode: watch the operator's pods and release the Lease of one proven dead.

Each operator pod's supervisor (reloader.supervise) releases its KEDA's Lease the moment KEDA
exits, and the next pod's starts KEDA once it is free. A pod that died without that (its
supervisor SIGKILLed or OOM-killed) would leave the Lease held for its whole duration; so when
the kubelet reports that an operator pod's operator container has terminated, the Lease it still
holds is released here (tenancy_common.lease checks that the holder is that pod and did not renew
after it died), and the next operator takes over at once.

Only the kubelet's report is proof: the container's current state `terminated`, or the pod's
phase `Succeeded`/`Failed`. A pod that leaves the API without it (force-deleted with grace 0;
its node lost) may still run its KEDA on the node, so its Lease is left to expire (KEDA's
lease duration). A graceful deletion reports the terminated container before the pod goes, so
its DELETED event carries the proof. All pods of the namespace are watched, not only those the
Deployment's selector picks: a relabelled pod leaves the selector (a DELETED event to a
selected watch) but runs on, and it is still followed here until it really stops.

A pod's hostname is its name (the chart sets no `hostname` and no `hostNetwork`); a holder
whose hostname is not a pod seen here is never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.metrics import ReloaderMetrics
from tenancy_common.kube import open_stream, read_json
from tenancy_common.lease import LeaseReleaser
from tenancy_common.lifecycle import wait_stopped
from tenancy_common.pod_status import died_at, runs_container

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
INACTIVITY_TIMEOUT_S = 330.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


class OperatorPodWatch:
    """Follows every pod of the operator's namespace, and releases the Lease of a pod whose
    operator container the kubelet reports terminated."""

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

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the namespace's pods until `stop`; errors reconnect with backoff."""
        stopping = asyncio.create_task(stop.wait())
        following = asyncio.create_task(self._follow(stop))
        try:
            await asyncio.wait({stopping, following}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, following):
                task.cancel()
            await asyncio.gather(stopping, following, return_exceptions=True)
        if following.done() and not following.cancelled() and following.exception() is not None:
            raise following.exception()  # type: ignore[misc]

    async def _follow(self, stop: asyncio.Event) -> None:
        backoff_s = BACKOFF_INITIAL_S
        while not stop.is_set():
            try:
                resource_version = await self._list()
                await self._watch(resource_version)
                backoff_s = BACKOFF_INITIAL_S
            except (aiohttp.ClientError, ApiException, TimeoutError, ValueError, OSError) as exc:
                delay_s = backoff_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter
                logger.warning(
                    "operator pod watch failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay_s},
                )
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                await wait_stopped(stop, delay_s)

    async def _list(self) -> str:
        # A pod that went while we were not watching left no proof here: its Lease expires.
        listing = await read_json(
            self._core.list_namespaced_pod(self._namespace, _preload_content=False)
        )
        for pod in listing.get("items") or []:
            await self._seen(pod, deleted=False)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, resource_version: str) -> None:
        response = await open_stream(
            self._core.list_namespaced_pod(
                self._namespace,
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
        if stopped is not None:
            if await self._releaser.release(hostname=name, died_at=stopped):
                self._metrics.lease_releases.inc()
        elif deleted and runs_container(pod, self._container):
            # Force-deleted (or its node lost): its KEDA may still run and lead on the node.
            self._metrics.unproven_deletions.inc()
            logger.info(
                "an operator pod was deleted without a report that its operator stopped: "
                "a Lease it holds is left to expire",
                extra={"pod": name, "lease": self._releaser.describe()},
            )
