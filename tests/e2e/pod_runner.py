"""A stand-in for the kubelet, for one Deployment's pods on the process-level stack.

There is no kubelet here: kube-controller-manager's Deployment and ReplicaSet controllers create
real Pod objects, and this runs each one as a local process, the way a kubelet would as far as
the reloader and KEDA can tell: the container's command, args and env from the pod (fieldRefs filled in),
its own UTS namespace with the pod's name as hostname (so controller-runtime's leader identity
is `<pod>_<uuid>`, as in a cluster), status reported through pods/status (running, Ready once
the container's /readyz answers, terminated with finishedAt), SIGTERM when the pod is deleted
and the pod object removed once the process has exited. Only what differs on loopback is
rewritten (addresses and paths, via `localize`). It is an emulation, not a kubelet: no images,
volumes, probes beyond readiness, or restart backoff (an exited container is started again
after a second).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESTART_DELAY_S = 1.0
"""Before starting an exited container again (the kubelet backs off from 10 s)."""

Localize = Callable[[str, list[str]], tuple[list[str], dict[str, str], int]]
"""(pod name, the container's command and args) -> (argv to run, extra env, readiness port)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    ready_port: int
    started: str
    restarts: int = 0
    ready: bool = False
    terminating: bool = False
    exited_at: float | None = None


class PodRunner:
    def __init__(
        self,
        *,
        server: str,
        certs: Path,
        namespace: str,
        selector: str,
        container: str,
        localize: Localize,
        logs: Path,
    ) -> None:
        self._server = server
        self._namespace = namespace
        self._selector = selector
        self._container = container
        self._localize = localize
        self._logs = logs
        self._context = ssl.create_default_context(cafile=str(certs / "cluster-ca.crt"))
        self._context.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    # -- API ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._server + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self._context, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    def _pods(self) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"labelSelector": self._selector})
        listing = self._call("GET", f"/api/v1/namespaces/{self._namespace}/pods?{query}")
        return list(listing.get("items") or [])

    def _status(self, name: str, state: dict[str, Any], ready: bool, restarts: int) -> None:
        status = {
            "status": {
                "phase": "Running" if "running" in state else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False"},
                    {"type": "ContainersReady", "status": "True" if ready else "False"},
                ],
                "containerStatuses": [
                    {
                        "name": self._container,
                        "image": "keda",
                        "imageID": "",
                        "ready": ready,
                        "restartCount": restarts,
                        "started": "running" in state,
                        "state": state,
                    }
                ],
            }
        }
        with contextlib.suppress(urllib.error.HTTPError):
            self._call(
                "PATCH",
                f"/api/v1/namespaces/{self._namespace}/pods/{name}/status",
                status,
                "application/merge-patch+json",
            )

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> PodRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for running in self._running.values():
            _terminate(running.process)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self._pods()
                for pod in pods:
                    self._sync(pod)
                present = {pod["metadata"]["name"] for pod in pods}
                for name in [n for n in self._running if n not in present]:
                    _terminate(self._running.pop(name).process)  # force-deleted
            except (OSError, urllib.error.URLError, ValueError):
                pass  # the API server restarting: try again
            self._stop.wait(0.2)

    def _sync(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        running = self._running.get(name)
        if pod["metadata"].get("deletionTimestamp"):
            if running is not None and not running.terminating:
                running.terminating = True
                running.process.send_signal(signal.SIGTERM)
            if running is None or running.process.poll() is not None:
                code = running.process.returncode if running else 0
                state = {
                    "terminated": {"exitCode": code, "finishedAt": _now(), "reason": "Completed"}
                }
                self._status(name, state, False, running.restarts if running else 0)
                self._running.pop(name, None)
                with contextlib.suppress(urllib.error.HTTPError):
                    self._call(
                        "DELETE",
                        f"/api/v1/namespaces/{self._namespace}/pods/{name}",
                        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                        "application/json",
                    )
            return
        if running is not None and running.process.poll() is not None:
            if running.exited_at is None:
                running.exited_at = time.monotonic()
                state = {
                    "terminated": {"exitCode": running.process.returncode, "finishedAt": _now()}
                }
                self._status(name, state, False, running.restarts)
            elif time.monotonic() - running.exited_at >= RESTART_DELAY_S:  # restartPolicy Always
                self._running[name] = self._spawn(pod, running.restarts + 1)
            return
        if running is None:
            self._running[name] = self._spawn(pod, 0)
            return
        if not running.ready and _answers(running.ready_port):
            running.ready = True
            self._status(name, {"running": {"startedAt": running.started}}, True, running.restarts)

    def _spawn(self, pod: dict[str, Any], restarts: int) -> _Running:
        name = pod["metadata"]["name"]
        if not pod["spec"].get("nodeName"):
            # Bound to a node, a pod's deletion is graceful (kept until the kubelet, here
            # this runner, reports its containers stopped), as in a cluster.
            self._call(
                "POST",
                f"/api/v1/namespaces/{self._namespace}/pods/{name}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": "process-stack"},
                },
                "application/json",
            )
        spec = next(c for c in pod["spec"]["containers"] if c["name"] == self._container)
        argv, extra_env, ready_port = self._localize(
            name, [str(a) for a in [*(spec.get("command") or []), *(spec.get("args") or [])]]
        )
        env = {**os.environ, **extra_env}
        env.pop("WATCH_NAMESPACE", None)
        for entry in spec.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            elif path := (entry.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath"):
                env[entry["name"]] = {"metadata.name": name, "metadata.namespace": self._namespace}[
                    path
                ]
        log = (self._logs / f"pod-{name}.log").open("ab")
        process = subprocess.Popen(
            # The pod's own hostname, as in a cluster: KEDA's leader identity carries it.
            [
                "unshare",
                "--uts",
                "sh",
                "-c",
                'hostname "$0" && exec "$@"',
                name,
                *argv,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        started = _now()
        self._status(name, {"running": {"startedAt": started}}, False, restarts)
        return _Running(process, ready_port, started, restarts)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
