"""Deployment mode: KEDA's environment comes from the Deployment (the platform controller applies
WATCH_NAMESPACE and replicas); this process only decides when KEDA starts and what follows its
exit (the idea of reloader/supervise.py).

A namespace change rolls the Deployment surge-first: the new pod starts while the old one's KEDA
still leads. Here the new pod reports ready at once (so the Deployment stops the old pod: that
is what frees the Lease), waits for the Lease to be free or expired (lease_gate), then starts
KEDA, which leads at its first attempt. On SIGTERM it stops KEDA (grace period, then SIGKILL)
and releases the Lease the moment KEDA has exited, so the next pod's KEDA starts at once. It
exits with KEDA's exit status; a KEDA that exits on its own has its Lease released the same way
and the kubelet restarts the container.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime

from operator_pod.child import ChildProcess, ChildStartError
from operator_pod.lease import LeaseReleaser
from operator_pod.lease_gate import LeaseGate
from operator_pod.metrics import Metrics

logger = logging.getLogger(__name__)


class DeploymentMode:
    def __init__(
        self,
        child: ChildProcess,
        metrics: Metrics,
        *,
        gate: LeaseGate,
        releaser: LeaseReleaser,
        lease_wait_s: float,
    ) -> None:
        self.child = child
        self._metrics = metrics
        self._gate = gate
        self._releaser = releaser
        self._lease_wait_s = lease_wait_s
        self.phase = "starting"
        self.stop_signal = signal.SIGTERM
        self._started_at = datetime.now(UTC)

    def readiness(self) -> str | None:
        """Ready while waiting for the Lease (the Deployment may then stop the old pod, which
        frees it) and while KEDA runs."""
        return None if self.phase in ("waiting", "running") else f"KEDA {self.phase}"

    def waiting(self) -> str | None:
        return "waiting for KEDA's Lease to be free" if self.phase == "waiting" else None

    async def run(self, stop: asyncio.Event) -> int:
        """Wait for the Lease, run KEDA until it exits or `stop`; its exit status."""
        self.phase = "waiting"
        began = time.monotonic()
        outcome = await self._gate.wait(stop, self._lease_wait_s)
        waited_s = time.monotonic() - began
        self._metrics.lease_wait.set(waited_s)
        if outcome == "stopped":
            self.phase = "stopped"
            logger.info("stopped before KEDA started")
            return 0
        if outcome == "own":  # an earlier run of this container: dead, since we run
            await self._release(self._started_at)
        logger.info("starting KEDA", extra={"lease": outcome, "waited_s": round(waited_s, 3)})
        try:
            await self.child.start(None)
        except ChildStartError as exc:
            self.phase = "failed"
            logger.error("cannot start KEDA", extra={"error": str(exc)})
            return exc.code
        self.phase = "running"
        self._metrics.operator_up.set(1)
        self._metrics.operator_starts.labels("lease").inc()
        exited = asyncio.ensure_future(self.child.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if exited.done():
            code: int | None = exited.result()
            logger.warning("KEDA exited", extra={"code": code})
            self._metrics.operator_exits.labels(str(code)).inc()
        else:
            exited.cancel()
            code = await self.child.stop(self.stop_signal)
        await asyncio.gather(exited, stopping, return_exceptions=True)
        self.phase = "exited"
        self._metrics.operator_up.set(0)
        if self.child.running:  # survived SIGKILL: its Lease is not ours to release
            return 1
        await self._release(datetime.now(UTC))
        return code if code is not None else 1

    async def _release(self, died_at: datetime) -> None:
        if await self._releaser.release(died_at):
            self._metrics.lease_releases.inc()
