"""What the control loop acts on: the operator as our child process, or its Deployment.

The errors the loop branches on are made here: ApplyError (try again after a backoff)
and, from the child, ChildStartError (counts as a crash).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.child import ChildProcess
from reloader.deployment import DeploymentPatcher
from reloader.forward import Forwarder
from reloader.lease_gate import LeaseGate
from reloader.metrics import ReloaderMetrics
from tenancy_common.lease import LeaseReleaser


class ApplyError(Exception):
    """The new value could not be put in force; the loop retries with backoff."""


class Target(Protocol):
    @property
    def running(self) -> bool | None:
        """Whether the operator runs; None when that is not ours to see (deployment mode)."""
        ...

    def exited(self) -> Coroutine[Any, Any, int] | None:
        """Completes with the exit status when the operator exits on its own; None when
        there is no exit left to report."""
        ...

    async def apply(self, value: str) -> bool:
        """Put `value` in force ("" = keep the operator stopped); False when nothing had to change."""
        ...

    async def shutdown(self, sig: signal.Signals) -> int | None:
        """Stop for good, forwarding `sig`; the operator's exit status, if it had one."""
        ...


class ProcessTarget:
    """The operator as our child: restarted with the new environment on every change.

    With a `releaser`, the Lease a dead child still holds is released before the next one
    starts and when we shut down (that child's identity carries our hostname; see
    tenancy_common.lease). With a `lease_gate`, the first child starts only once no other pod's
    operator holds the Lease (a rolling update's old pod: reloader.lease_gate), so it leads at
    its first attempt instead of waiting as a standby; `waiting_for_lease` says so meanwhile."""

    def __init__(
        self,
        child: ChildProcess,
        metrics: ReloaderMetrics,
        stop: asyncio.Event,
        *,
        releaser: LeaseReleaser | None = None,
        hostname: str | None = None,
        forwarder: Forwarder | None = None,
        lease_gate: LeaseGate | None = None,
        lease_wait_s: float = 30.0,
    ) -> None:
        self.child = child
        self._metrics = metrics
        self._stop = stop
        self._exit_seen = True
        self._releaser = releaser
        self._forwarder = forwarder
        self._hostname = hostname or socket.gethostname()
        self._lease_gate = lease_gate
        self._lease_wait_s = lease_wait_s
        self.waiting_for_lease = False
        # Any operator of an earlier run of this container died before we started.
        self._died_at: datetime | None = datetime.now(UTC)

    @property
    def running(self) -> bool:
        return self.child.running

    def exited(self) -> Coroutine[Any, Any, int] | None:
        if self._exit_seen or self.child.pid is None:
            return None
        return self._exited()

    async def _exited(self) -> int:
        code = await self.child.wait()
        self._ended(code)
        return code

    async def apply(self, value: str) -> bool:
        acted = False
        if self.child.running:
            if self._forwarder is not None:
                await self._forwarder.drain()  # close the adapter's connections while idle
            code = await self.child.stop()
            if code is None:  # it survived SIGKILL
                raise ApplyError("the operator survived SIGKILL; not starting a second one")
            self._ended(code)
            acted = True
        # A stop signal that came in while the old one was stopping: don't start anew.
        if value and not self._stop.is_set() and await self._lease_free():
            await self._release_lease()
            await self.child.start(value)
            if self._forwarder is not None:
                self._forwarder.resume()
            self._exit_seen = False
            self._metrics.child_up.set(1)
            acted = True
        return acted

    async def shutdown(self, sig: signal.Signals) -> int | None:
        """The operator's status if it was running (or had just exited unnoticed); None
        when we had stopped it ourselves or already handled its exit."""
        unseen = not self._exit_seen
        code = await self.child.stop(sig)
        self._ended(code)
        if not self.child.running:
            await self._release_lease()  # KEDA does not: the next pod's need not wait it out
        return code if unseen else None

    async def _lease_free(self) -> bool:
        """Before the first start only: wait for the Lease to be free; False when stopped."""
        gate, self._lease_gate = self._lease_gate, None
        if gate is None:
            return True
        self.waiting_for_lease = True
        try:
            return await gate.wait(self._stop, self._lease_wait_s) != "stopped"
        finally:
            self.waiting_for_lease = False

    async def _release_lease(self) -> None:
        releaser, died_at = self._releaser, self._died_at
        if (
            releaser is not None
            and died_at is not None
            and await releaser.release(hostname=self._hostname, died_at=died_at)
        ):
            self._metrics.lease_releases.inc()
        self._died_at = None

    def _ended(self, code: int | None) -> None:
        if not self.child.running and code is not None:
            self._died_at = datetime.now(UTC)
        self._metrics.child_up.set(1 if self.child.running else 0)
        if not self._exit_seen and code is not None:
            self._metrics.child_exits.labels(str(code)).inc()
        self._exit_seen = True


class DeploymentTarget:
    """The operator's Deployment: its container env patched, Kubernetes rolls it."""

    def __init__(self, patcher: DeploymentPatcher) -> None:
        self._patcher = patcher

    @property
    def running(self) -> None:
        return None

    def exited(self) -> None:
        return None

    async def apply(self, value: str) -> bool:
        try:
            return await self._patcher.apply(value or None)
        except (ApiException, aiohttp.ClientError, TimeoutError, LookupError, ValueError) as exc:
            raise ApplyError(f"cannot update {self._patcher.describe()}: {exc}") from exc

    async def shutdown(self, sig: signal.Signals) -> None:
        return None
