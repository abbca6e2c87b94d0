"""kube-apiserver's audit log, read back for the footprint benchmark: who calls the API how
often at rest, who writes Leases, who holds watches open, and when a change happened.

The policy logs every request at Metadata level without the RequestReceived stage, so a
request is one ResponseComplete event and a watch is a ResponseStarted event when it opens
and a ResponseComplete event when it ends. Times are the events' stageTimestamp (the API
server's clock, the same machine's as the benchmark's).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Creates that store nothing (reviews answered and forgotten): not writes.
REVIEWS = frozenset(
    {
        "tokenreviews",
        "subjectaccessreviews",
        "localsubjectaccessreviews",
        "selfsubjectaccessreviews",
        "selfsubjectrulesreviews",
        "selfsubjectreviews",
    }
)
# User agents of KEDA's own binaries (operator, metrics server, webhooks); the rest of a
# tenant's callers are keda-tenancy's.
KEDA_AGENTS = frozenset({"keda", "keda-adapter", "keda-admission-webhooks"})


@dataclass(frozen=True)
class Event:
    audit_id: str
    stage: str
    verb: str
    user: str
    agent: str
    """The user agent's product (what comes before the first '/')."""
    resource: str
    namespace: str
    name: str
    at: float
    """stageTimestamp, seconds since the epoch."""

    @classmethod
    def parse(cls, line: str) -> Event | None:
        try:
            raw: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            return None  # a line the API server is still writing
        ref = raw.get("objectRef") or {}
        return cls(
            audit_id=raw.get("auditID", ""),
            stage=raw.get("stage", ""),
            verb=raw.get("verb", ""),
            user=(raw.get("user") or {}).get("username", ""),
            agent=(raw.get("userAgent") or "").split("/", 1)[0].split(" ", 1)[0],
            resource=ref.get("resource", ""),
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            at=timestamp(raw.get("stageTimestamp", "")),
        )

    @property
    def is_watch_start(self) -> bool:
        return self.verb == "watch" and self.stage == "ResponseStarted"

    @property
    def is_watch_end(self) -> bool:
        return self.verb == "watch" and self.stage == "ResponseComplete"

    @property
    def is_request(self) -> bool:
        """One per request: a watch counts when it opens, anything else when it completes."""
        return self.is_watch_start or (self.verb != "watch" and self.stage == "ResponseComplete")


def timestamp(text: str) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text).timestamp()


def service_account_namespace(user: str) -> str | None:
    """The namespace of a ServiceAccount user (system:serviceaccount:<namespace>:<name>)."""
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return parts[2]
    return None


@dataclass
class AuditLog:
    """Follows the log file; `events` holds every complete line read so far."""

    path: Path
    events: list[Event] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    def read(self) -> list[Event]:
        if not self.path.exists():
            return self.events
        with self.path.open(encoding="utf-8", errors="replace") as log:
            log.seek(self._offset)
            chunk = log.read()
            self._offset = log.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        self.events.extend(e for line in lines if line and (e := Event.parse(line)))
        return self.events

    def first(self, matches: Callable[[Event], bool], after: float = 0.0) -> Event | None:
        return next((e for e in self.read() if e.at >= after and matches(e)), None)


@dataclass
class Usage:
    """One caller's use of the API over a window."""

    requests: int = 0
    writes: int = 0
    lease_writes: int = 0
    open_watches: int = 0
    by_call: dict[str, int] = field(default_factory=dict)
    """Requests by "verb resource"."""

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.writes += other.writes
        self.lease_writes += other.lease_writes
        self.open_watches += other.open_watches
        for call, count in other.by_call.items():
            self.by_call[call] = self.by_call.get(call, 0) + count


def usage_by_caller(events: Iterable[Event], start: float, end: float) -> dict[str, Usage]:
    """Requests, writes and Lease writes in [start, end), and watches open at `end`, by
    caller ("user [agent]")."""
    usage: dict[str, Usage] = {}
    open_watches: dict[str, str] = {}
    for event in events:
        if event.at >= end:
            continue
        caller = f"{event.user} [{event.agent}]"
        if event.is_watch_start:
            open_watches[event.audit_id] = caller
        elif event.is_watch_end:
            open_watches.pop(event.audit_id, None)
        if event.at < start or not event.is_request:
            continue
        row = usage.setdefault(caller, Usage())
        row.requests += 1
        call = f"{event.verb} {event.resource}"
        row.by_call[call] = row.by_call.get(call, 0) + 1
        if event.verb in WRITE_VERBS and event.resource not in REVIEWS:
            row.writes += 1
            if event.resource == "leases":
                row.lease_writes += 1
    for caller in open_watches.values():
        usage.setdefault(caller, Usage()).open_watches += 1
    return usage


def open_watches_in(
    events: Iterable[Event], namespace: str, callers: Callable[[str], bool]
) -> dict[str, Event]:
    """Watches open now in `namespace` by users `callers` accepts, by audit ID."""
    opened: dict[str, Event] = {}
    for event in events:
        if event.namespace != namespace or not callers(event.user):
            continue
        if event.is_watch_start:
            opened[event.audit_id] = event
        elif event.is_watch_end:
            opened.pop(event.audit_id, None)
    return opened


def watch_ends(events: Iterable[Event], audit_ids: set[str]) -> Iterator[Event]:
    return (e for e in events if e.is_watch_end and e.audit_id in audit_ids)
