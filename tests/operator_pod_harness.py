"""keda-tenancy-operator-pod running in-process against the fake API, with a real child
process (tests/fakes/operator_child.py) standing in for /keda."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from operator_pod.app import OperatorPod
from operator_pod.config import Config
from operator_pod.follow import FollowSettings
from operator_pod.prometheus import Registry
from tests.fakes.kube_api import FakeKubeAPI

NAMESPACE = "keda-alpha"
CONFIGMAP = "keda-operator-namespaces"
LEASE = "operator.keda.sh"
CHILD = [sys.executable, "-m", "tests.fakes.operator_child"]
FAST_FOLLOW = FollowSettings(
    watch_timeout_s=2, idle_slack_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2
)
HOSTNAME = socket.gethostname()


def process_args(kubeconfig: str, log: Path, *flags: str, child: Sequence[str] = ()) -> list[str]:
    return [
        "--mode=process",
        f"--kubeconfig={kubeconfig}",
        f"--namespaces-configmap={NAMESPACE}/{CONFIGMAP}",
        "--debounce=100ms",
        "--grace-period=2s",
        "--request-timeout=1s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
        *flags,
        "--",
        *CHILD,
        f"--log={log}",
        *child,
    ]


def publish(api: FakeKubeAPI, value: str | None) -> None:
    """What the platform controller writes (None: the ConfigMap without the key)."""
    data = {} if value is None else {"namespaces": value}
    api.put_configmap(
        NAMESPACE, CONFIGMAP, {"keda-tenancy.io/platform-controller": "namespaces"}, data
    )


@contextlib.asynccontextmanager
async def running_pod(
    argv: Sequence[str], environ: dict[str, str] | None = None, hostname: str = HOSTNAME
) -> AsyncIterator[OperatorPod]:
    config = Config.from_args(argv, {})
    pod = OperatorPod(
        config,
        Registry(),
        environ=environ or {},
        hostname=hostname,
        follow_settings=FAST_FOLLOW,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pod.run(stop))
    pod.task = task  # type: ignore[attr-defined]
    try:
        yield pod
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def kubeconfig_for(url: str, path: Path) -> str:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return str(path)
