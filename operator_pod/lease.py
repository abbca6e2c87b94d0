"""Release KEDA's leader-election Lease once KEDA has exited, so its successor need not wait it out.

KEDA does not release its Lease when it stops (LeaderElectionReleaseOnCancel is unset), so the
next KEDA (restarted here with a new namespace set, or a rolling update's new pod) would wait
the whole lease duration before it serves metrics. This process knows when its KEDA exited, and
then clears the Lease the way client-go releases one (no holder, a 1 s duration), only when:

- the holder is this pod's KEDA: controller-runtime's identity is `<hostname>_<uuid>`, and the
  hostname is ours (the pod's name);
- the Lease was last renewed before KEDA exited (a later renewal is someone alive);
- the update carries the resourceVersion just read, so a renewal in between fails it (409).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from operator_pod.kube import ApiError, KubeClient, TransportError

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 5.0


def lease_path(namespace: str, name: str = "") -> str:
    collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{collection}/{name}" if name else collection


def holder_hostname(identity: str) -> str:
    """The hostname in a controller-runtime identity (`<hostname>_<uuid>`); "" when none.

    Hostnames cannot contain `_` and UUIDs do not, so the last `_` separates them."""
    host, sep, rest = identity.rpartition("_")
    return host if sep and rest else ""


def parse_micro_time(text: object) -> datetime | None:
    """A Lease's renewTime/acquireTime (RFC 3339 with microseconds); None when missing or bad."""
    if not text or not isinstance(text, str):
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
    """The Lease to write back to release it from the KEDA on `hostname` that exited at
    `died_at`; None when it is not that KEDA's to release."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not hostname or holder_hostname(holder) != hostname:
        return None
    renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
    if renewed is None or renewed >= died_at:
        return None  # renewed after that KEDA exited: whoever holds it is alive
    stamp = format_micro_time(now)
    released = dict(lease)
    released["spec"] = {
        **spec,
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
    }
    # metadata keeps the resourceVersion read: the API server refuses the update (409) when
    # the Lease changed since.
    return released


class LeaseReleaser:
    def __init__(self, client: KubeClient, namespace: str, name: str, hostname: str) -> None:
        self._client = client
        self.namespace = namespace
        self.name = name
        self.hostname = hostname

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def release(self, died_at: datetime) -> bool:
        """Release the Lease if our KEDA, which exited at `died_at`, still holds it; True when
        released. Errors are logged, never raised: the successor then waits it out."""
        log = {"lease": self.describe()}
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                path = lease_path(self.namespace, self.name)
                lease = await self._client.get(path)
                released = release_for(
                    lease, hostname=self.hostname, died_at=died_at, now=datetime.now(UTC)
                )
                if released is None:
                    return False
                await self._client.put(path, released)
        except ApiError as exc:
            if exc.status == 409:
                logger.info("the Lease was renewed meanwhile: its holder is alive", extra=log)
            elif exc.status != 404:
                logger.warning("cannot release KEDA's Lease", extra={**log, "error": str(exc)})
            return False
        except (TransportError, TimeoutError) as exc:
            logger.warning("cannot release KEDA's Lease", extra={**log, "error": str(exc)})
            return False
        holder = (lease.get("spec") or {}).get("holderIdentity")
        logger.info("released KEDA's Lease", extra={**log, "holder": holder})
        return True
