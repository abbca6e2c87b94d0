"""When each step of a procedure was first observed, polled through kube-apiserver at 5 Hz on
one keep-alive connection (a kubectl per poll would cost a process each): the breakdown of a
tenant's onboarding, from `helm install` to its first metric served."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.e2e.cluster.cluster import API_PORT, Cluster
from tests.e2e.cluster.network import NODE_IP

Get = Callable[[str], tuple[int, Any]]
Check = Callable[[Get], bool]


@dataclass
class Milestones:
    """Polls every check not yet reached; `reached[name]` is the seconds from `start()`. The
    checks share one connection: a slow answer (a metric read the router holds for its
    upstream timeout) delays the others' readings by as much, so the components' own log
    timestamps are the finer breakdown."""

    cluster: Cluster
    checks: dict[str, Check]
    interval_s: float = 0.2
    reached: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pki = self.cluster.pki
        self._context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._connection: http.client.HTTPSConnection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="milestones")
        self.started = 0.0
        self.started_wall = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def all_reached(self) -> bool:
        return set(self.reached) == set(self.checks)

    def since_start(self, timestamp: str) -> float:
        """An API timestamp (RFC 3339, seconds) as seconds after `start()`."""
        wall = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        return wall - self.started_wall

    def get(self, path: str) -> tuple[int, Any]:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                NODE_IP, API_PORT, context=self._context, timeout=10
            )
        try:
            self._connection.request("GET", path)
            response = self._connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            self._connection = None
            return 0, {"message": str(exc)}
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, {}

    def _run(self) -> None:
        while not self._stop.is_set() and not self.all_reached():
            for name, check in self.checks.items():
                if name not in self.reached and check(self.get):
                    self.reached[name] = time.monotonic() - self.started
            self._stop.wait(self.interval_s)
        if self._connection is not None:
            self._connection.close()


def exists(path: str) -> Check:
    return lambda get: get(path)[0] == 200


def deployment_ready(namespace: str, name: str) -> Check:
    def check(get: Get) -> bool:
        code, body = get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        if code != 200:
            return False
        wanted = body["spec"].get("replicas", 1)
        return bool(wanted and body.get("status", {}).get("readyReplicas", 0) >= wanted)

    return check


def pod_timeline(milestones: Milestones, namespace: str) -> list[str]:
    """Per pod: when it was scheduled, its containers started and it turned Ready (seconds after
    `start()`, from the API's second-resolution timestamps): where a pod's time went."""
    code, body = milestones.get(f"/api/v1/namespaces/{namespace}/pods")
    if code != 200:
        return [f"pods of {namespace}: {code}"]
    lines = []
    for pod in body["items"]:
        status = pod.get("status", {})
        conditions = {
            c["type"]: round(milestones.since_start(c["lastTransitionTime"]), 1)
            for c in status.get("conditions", [])
            if c.get("status") == "True" and c.get("lastTransitionTime")
        }
        started = {
            c["name"]: round(milestones.since_start(c["state"]["running"]["startedAt"]), 1)
            for c in status.get("containerStatuses", [])
            if "running" in c.get("state", {})
        }
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses", []))
        lines.append(
            f"{pod['metadata']['name']}: created "
            f"{milestones.since_start(pod['metadata']['creationTimestamp']):.1f}s, "
            f"scheduled {conditions.get('PodScheduled')}s, "
            f"initialized {conditions.get('Initialized')}s, containers started {started}, "
            f"ready {conditions.get('Ready')}s, restarts {restarts}"
        )
    return lines
