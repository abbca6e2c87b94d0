"""Who led, and when: a Lease's history and the operator pods' logs, checked for two leaders.

Two KEDAs lead at once only if the Lease leaves a holder whose KEDA still runs: released
(holder "") or taken by another while the holder had renewed within the lease duration. So
each time the Lease leaves a holder, that holder's KEDA must have stopped already (its
supervisor's "operator stopped" or "the operator exited", or the end of its container's log),
or the Lease must have expired. And from the operators' own logs: each "successfully acquired
lease" comes after every earlier leader's KEDA has stopped.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tenancy_common.lease import holder_hostname, parse_micro_time

ACQUIRED = "successfully acquired lease"
STOPPED = ('"operator stopped"', '"the operator exited"')
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z (.*)$")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    renewed: datetime | None
    acquired: datetime | None
    duration_s: float


@dataclass
class Instance:
    """One run of an operator pod's container: its log lines (kubelet timestamps), and when
    the log was known to have ended (the container stopped), if it has."""

    pod: str
    lines: list[tuple[datetime, str]] = field(default_factory=list)
    finished_at: datetime | None = None

    def acquired(self) -> list[datetime]:
        return [at for at, text in self.lines if ACQUIRED in text]

    def stopped(self, since: datetime) -> datetime | None:
        """When this run's KEDA stopped, at or after `since`; None while it may run."""
        for at, text in self.lines:
            if at >= since and any(marker in text for marker in STOPPED):
                return at
        if self.finished_at is not None:
            last = max((at for at, _ in self.lines), default=self.finished_at)
            return max(last, since)
        return None


def parse_log(text: str) -> list[tuple[datetime, str]]:
    """`kubectl logs --timestamps` output as (time, line) pairs."""
    lines = []
    for raw in text.splitlines():
        if m := _STAMP.match(raw):
            fraction = (m[2] or "0")[:6].ljust(6, "0")
            at = datetime.fromisoformat(f"{m[1]}.{fraction}+00:00")
            lines.append((at, m[3]))
    return lines


def lease_violations(records: list[LeaseRecord], runs: list[Instance]) -> list[str]:
    """Each time the Lease left a holder whose KEDA had not stopped and whose renewal had not
    expired: a live leader's Lease released or taken."""
    found = []
    for before, after in itertools.pairwise(records):
        if not before.holder or after.holder == before.holder:
            continue
        left_at = after.renewed if not after.holder else after.acquired
        if left_at is None:
            found.append(f"{before.holder} -> {after.holder!r} at an unknown time")
            continue
        if before.renewed is not None and left_at >= before.renewed + timedelta(
            seconds=before.duration_s
        ):
            continue  # expired: its KEDA had stopped leading (renew deadline < lease duration)
        pod = holder_hostname(before.holder)
        since = before.acquired or before.renewed or left_at
        stops = [s for run in runs if run.pod == pod if (s := run.stopped(since)) is not None]
        if not stops or min(stops) > left_at:
            found.append(
                f"the Lease left {before.holder} for {after.holder!r} at {left_at:%H:%M:%S.%f} "
                f"while its KEDA ran (renewed {before.renewed:%H:%M:%S.%f})"
                if before.renewed
                else f"the Lease left {before.holder} while its KEDA ran"
            )
    return found


def overlapping_leaders(runs: list[Instance], records: list[LeaseRecord]) -> list[str]:
    """Pairs of runs where one's KEDA acquired the Lease while the other's, which had acquired
    it earlier, had neither stopped nor let its last renewal expire (client-go gives up leading
    within its renew deadline, shorter than the lease duration)."""
    found = []
    for run in runs:
        for acquired in run.acquired():
            for other in runs:
                if other is run:
                    continue
                for earlier in other.acquired():
                    if earlier >= acquired:
                        continue
                    stopped = other.stopped(earlier)
                    if stopped is not None and stopped <= acquired:
                        continue
                    if _expired_by(records, other.pod, earlier, acquired):
                        continue
                    found.append(
                        f"{run.pod} acquired at {acquired:%H:%M:%S.%f} while {other.pod}'s "
                        f"KEDA (acquired {earlier:%H:%M:%S.%f}) still ran"
                    )
    return found


def _expired_by(records: list[LeaseRecord], pod: str, since: datetime, moment: datetime) -> bool:
    """Whether `pod`'s last renewal between `since` and `moment` had expired by `moment`."""
    renewals = [
        (r.renewed, r.duration_s)
        for r in records
        if holder_hostname(r.holder) == pod
        and r.renewed is not None
        and since <= r.renewed <= moment
    ]
    if not renewals:
        return False
    renewed, duration_s = max(renewals)
    return moment >= renewed + timedelta(seconds=duration_s)


class LeaseTimeline:
    """`kubectl get lease -w`: every write of one Lease, as it happens."""

    TEMPLATE = (
        r"{.spec.holderIdentity}|{.spec.renewTime}|{.spec.acquireTime}|"
        r'{.spec.leaseDurationSeconds}{"\n"}'
    )

    def __init__(self, kubectl: list[str], namespace: str, name: str) -> None:
        self.records: list[LeaseRecord] = []
        self._process = subprocess.Popen(
            [
                *kubectl,
                "-n",
                namespace,
                "get",
                "lease",
                name,
                "-w",
                "-o",
                f"jsonpath={self.TEMPLATE}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        with self._process.stdout as stream:
            for line in stream:
                holder, renewed, acquired, duration = (line.rstrip("\n").split("|") + [""] * 4)[:4]
                self.records.append(
                    LeaseRecord(
                        holder,
                        parse_micro_time(renewed),
                        parse_micro_time(acquired),
                        float(duration or 0),
                    )
                )

    def holder_pod(self) -> str:
        return holder_hostname(self.records[-1].holder) if self.records else ""

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        self._thread.join(10)


class LogFollower:
    """`kubectl logs -f --timestamps` of a pod's current container run, kept even after the
    pod is deleted; the run has finished when the stream ends."""

    def __init__(self, kubectl: list[str], namespace: str, pod: str, container: str) -> None:
        self.run = Instance(pod)
        self._process = subprocess.Popen(
            [*kubectl, "-n", namespace, "logs", "-f", "--timestamps", pod, "-c", container],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        with self._process.stdout as stream:
            for line in stream:
                self.run.lines.extend(parse_log(line))
        if self._process.wait() == 0:
            self.run.finished_at = datetime.now(UTC)

    def close(self, wait_s: float) -> None:
        self._thread.join(wait_s)
        if self._thread.is_alive():
            self._process.terminate()
            self._thread.join(10)
        self._process.wait(10)


def merge_runs(runs: list[Instance]) -> list[Instance]:
    """One Instance per container run: the same run read twice (followed, then read again)
    starts with the same line; the longer read is kept, finished if either says so."""
    merged: dict[tuple[str, tuple[datetime, str] | None], Instance] = {}
    for run in runs:
        key = (run.pod, run.lines[0] if run.lines else None)
        kept = merged.get(key)
        if kept is None:
            merged[key] = run
            continue
        longer = run if len(run.lines) > len(kept.lines) else kept
        finished = [at for at in (run.finished_at, kept.finished_at) if at is not None]
        merged[key] = Instance(longer.pod, longer.lines, min(finished) if finished else None)
    return [run for key, run in merged.items() if key[1] is not None]


def kubectl_argv(bin_dir: Path, kubeconfig: Path) -> list[str]:
    return [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}"]
