"""What the kubelet reports about a pod's container: the proof that it stopped.

Shared by whoever releases a dead operator's Lease (the reloader's deployment-mode pod watch,
the platform controller): only the kubelet's report is proof, never a pod's DELETED event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tenancy_common.lease import parse_micro_time

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def died_at(pod: dict[str, Any], container: str) -> datetime | None:
    """When the kubelet reports that the operator container of `pod` stopped; None without
    that proof (it runs, waits to start or restart, or nothing is reported).

    Only the current state counts: a container that was restarted in place runs again. A pod
    in phase Succeeded or Failed has stopped every container for good (the kubelet reports a
    terminal phase only once they have; the pod garbage collector sets Failed only on a node
    that is gone or declared out of service)."""
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
        if status.get("phase") in TERMINAL_PHASES:
            return datetime.now(UTC)  # no finish time: stopped by the time we read this
        return None
    return None


def runs_container(pod: dict[str, Any], container: str) -> bool:
    """Whether `pod` has the operator container (in its spec or its reported status)."""
    spec = (pod.get("spec") or {}).get("containers") or ()
    reported = (pod.get("status") or {}).get("containerStatuses") or ()
    return any(entry.get("name") == container for entry in (*spec, *reported))
