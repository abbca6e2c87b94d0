"""A tenant's metric read at 10 Hz through kube-apiserver, as an HPA controller reads it.

One keep-alive HTTPS connection per reader (a kubectl per read would cost a process each and
cap the rate near 4 Hz); every read that is not the expected value is a failure, kept with its
time, so a scenario can say which of its steps the failures fell in and how long reads were out.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.e2e.cluster.cluster import API_PORT, Cluster
from tests.e2e.cluster.install import metric_path
from tests.e2e.cluster.network import NODE_IP


@dataclass
class Read:
    at: float  # time.monotonic() when the read started
    took_s: float
    ok: bool
    what: str  # the value, or why not


@dataclass
class Outage:
    start: float  # the first failed read's start
    end: float  # the next good read's end (or the last failure's, if none came)
    failures: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class MetricReader:
    """Reads `namespace`'s metric through kube-apiserver every 1/hz s until closed."""

    cluster: Cluster
    namespace: str
    expected: str
    hz: float = 10.0
    timeout_s: float = 10.0
    reads: list[Read] = field(default_factory=list)

    def __post_init__(self) -> None:
        pki = self.cluster.pki
        self._context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._path = metric_path(self.namespace)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.namespace)

    def __enter__(self) -> MetricReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        connection: http.client.HTTPSConnection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            if connection is None:
                connection = http.client.HTTPSConnection(
                    NODE_IP, API_PORT, context=self._context, timeout=self.timeout_s
                )
            try:
                connection.request("GET", self._path)
                response = connection.getresponse()
                body = response.read()
                ok, what = self._judge(response.status, body)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = None
                ok, what = False, f"{type(exc).__name__}: {exc}"[:200]
            took = time.monotonic() - started
            with self._lock:
                self.reads.append(Read(started, took, ok, what))
            self._stop.wait(max(0.0, 1 / self.hz - took))
        if connection is not None:
            connection.close()

    def _judge(self, status: int, body: bytes) -> tuple[bool, str]:
        try:
            document = json.loads(body)
        except ValueError:
            return False, f"{status}: {body[:200]!r}"
        if status != 200:
            return False, f"{status}: {str(document.get('message', ''))[:200]}"
        items = document.get("items") or []
        value = str(items[0]["value"]) if items else "no items"
        return value == self.expected, value

    # -- what a scenario asks -------------------------------------------------------------

    def snapshot(self, since: float = 0.0) -> list[Read]:
        with self._lock:
            return [r for r in self.reads if r.at >= since]

    def failures(self, since: float = 0.0) -> list[Read]:
        return [r for r in self.snapshot(since) if not r.ok]

    def longest_s(self, since: float = 0.0) -> float:
        return max((r.took_s for r in self.snapshot(since)), default=0.0)

    def outages(self, since: float = 0.0) -> list[Outage]:
        """Runs of failed reads, each from its first failure to the next good read."""
        found: list[Outage] = []
        current: Outage | None = None
        for read in self.snapshot(since):
            if not read.ok:
                if current is None:
                    current = Outage(read.at, read.at + read.took_s, 0)
                current.failures += 1
                current.end = read.at + read.took_s
            elif current is not None:
                current.end = read.at + read.took_s
                found.append(current)
                current = None
        if current is not None:
            found.append(current)
        return found

    def good_streak(self, since: float, count: int) -> bool:
        """Whether the last `count` reads since `since` all succeeded."""
        reads = self.snapshot(since)
        return len(reads) >= count and all(r.ok for r in reads[-count:])
