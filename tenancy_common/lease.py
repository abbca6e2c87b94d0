"""Release a dead operator's leader-election Lease, so its successor does not wait it out.

KEDA's manager does not release its Lease when it stops (LeaderElectionReleaseOnCancel is
unset), so a restarted operator waits the whole lease duration (15 s) before it serves metrics,
and the metrics adapter holds every request meanwhile. Whoever knows that an operator has died
(the reloader, the operator pod's supervisor, the platform controller from the kubelet's report)
clears the Lease the way client-go releases one itself (no holder, a 1 s duration) only when
all of these hold, so a live leader's Lease is never taken:

- the holder is the dead process: controller-runtime's identity is `<hostname>_<uuid>`, and the
  hostname is the dead process's own (ours in process mode, the gone pod's in deployment mode);
- the Lease was last renewed before that process died (a later renewal is someone alive);
- the write carries the resourceVersion just read, so a renewal in between makes it fail (409).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 5.0


def holder_hostname(identity: str) -> str:
    """The hostname in a controller-runtime identity (`<hostname>_<uuid>`); "" when none.

    Hostnames cannot contain `_` and UUIDs do not, so the last `_` separates them."""
    host, sep, rest = identity.rpartition("_")
    return host if sep and rest else ""


def parse_micro_time(text: str | None) -> datetime | None:
    """A Lease's renewTime/acquireTime (RFC 3339 with microseconds); None when missing or bad."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def release_for(
    lease: dict[str, Any], *, hostname: str, died_at: datetime, now: datetime
) -> dict[str, Any] | None:
    """The Lease to write back to release it from the dead process on `hostname` (which died
    at `died_at`); None when it is not that process's to release."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not hostname or holder_hostname(holder) != hostname:
        return None
    renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
    if renewed is None or renewed >= died_at:
        return None  # renewed after that process died: whoever holds it is alive
    stamp = format_micro_time(now)
    released = dict(lease)
    released["spec"] = {
        **spec,
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
    }
    # The resourceVersion read stays in metadata: the API server refuses the write (409)
    # when the Lease changed since.
    return released


class LeaseReleaser:
    """Releases one Lease (`namespace`/`name`) from operators that have died."""

    def __init__(self, api: ApiClient, namespace: str, name: str) -> None:
        self._coordination = CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def describe(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    async def release(self, *, hostname: str, died_at: datetime) -> bool:
        """Release the Lease if the process on `hostname` that died at `died_at` still
        holds it; True when released. API errors are logged, never raised: the successor
        then just waits the Lease out, as without the reloader."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                return await self._release(hostname, died_at)
        except ApiException as exc:
            if exc.status == 409:
                logger.info(
                    "the lease was renewed meanwhile: its holder is alive", extra=self._log()
                )
            elif exc.status != 404:
                logger.warning(
                    "cannot release the dead operator's lease",
                    extra={**self._log(), "status": exc.status, "error": str(exc.reason)[:200]},
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning(
                "cannot release the dead operator's lease", extra={**self._log(), "error": str(exc)}
            )
        return False

    async def _release(self, hostname: str, died_at: datetime) -> bool:
        lease = await read_json(
            self._coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
        )
        released = release_for(lease, hostname=hostname, died_at=died_at, now=datetime.now(UTC))
        if released is None:
            return False
        holder = (lease.get("spec") or {}).get("holderIdentity")
        await read_json(
            self._coordination.replace_namespaced_lease(
                self.name,
                self.namespace,
                released,  # type: ignore[arg-type] # a dict is serialized as it is
                _preload_content=False,
            )
        )
        logger.info("released the dead operator's lease", extra={**self._log(), "holder": holder})
        return True

    def _log(self) -> dict[str, str]:
        return {"lease": self.describe()}
