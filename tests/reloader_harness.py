"""A reloader running in-process against the fake API, with a real child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from tenancy_common.namespace_watch import WatchSettings

FAST_WATCH = WatchSettings(
    server_timeout_s=30, inactivity_timeout_s=0.8, backoff_initial_s=0.05, backoff_max_s=0.2
)
CHILD = [sys.executable, "-m", "tests.fakes.operator_child"]


class ChildLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [e for e in lines if kind is None or e["event"] == kind]

    def starts(self) -> list[str | None]:
        return [e["watch_namespace"] for e in self.events("start")]


def reloader_args(kubeconfig: str, log: Path, *flags: str, child: Sequence[str] = ()) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--tenant=alpha",
        "--tenant-label-key=keda-tenancy.io/tenant",
        "--debounce=150ms",
        "--max-wait=2s",
        "--min-restart-interval=0s",
        "--grace-period=2s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
        *flags,
        "--",
        *CHILD,
        f"--log={log}",
        *child,
    ]


@contextlib.asynccontextmanager
async def running_reloader(
    argv: Sequence[str], environ: dict[str, str] | None = None
) -> AsyncIterator[Reloader]:
    config = ReloaderConfig.from_args(argv, {})
    reloader = Reloader(config, CollectorRegistry(), environ=environ, watch_settings=FAST_WATCH)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    reloader.task = task  # type: ignore[attr-defined]
    try:
        yield reloader
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def eventually(check: Callable[[], object], timeout_s: float = 8.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def label(tenant: str) -> dict[str, str]:
    return {"keda-tenancy.io/tenant": tenant}
