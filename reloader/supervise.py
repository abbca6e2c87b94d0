"""`keda-tenancy-supervise --lease NS/NAME -- /keda ...`: deployment mode's operator entrypoint.

In deployment mode a namespace change rolls the operator's Deployment surge-first: the new pod
starts while the old one still leads. Run directly, the new KEDA would wait as a standby, and
after the old one had gone take the Lease only at its next retry (up to 2.2 retry periods
later), while the adapter holds the tenant's reads. Under this supervisor, the pod instead:

1. reports ready at once, so the Deployment stops the old pod, and waits for the Lease to be
   free (reloader.lease_gate: a watch, no polling);
2. starts KEDA (environment and arguments untouched), which leads at its first attempt, right
   after its caches have synced;
3. on SIGTERM stops KEDA (grace period, then SIGKILL) and, since KEDA does not release its
   Lease on exit, releases it the moment KEDA has exited (tenancy_common.lease: only if this pod's
   operator still holds it and has not renewed since), so the next pod's KEDA starts at once.

It exits with KEDA's exit status; a KEDA that exits on its own has its Lease released the same
way and the kubelet restarts the container. The namespace reloader still releases the Lease of
a pod that died without this (SIGKILL, a lost node).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from reloader import operator_health
from reloader.child import ChildProcess, ChildStartError, become_subreaper, reap_orphans
from reloader.lease_gate import LeaseGate
from reloader.operator_health import OperatorHealth, OperatorHealthSettings
from tenancy_common import health
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.kube import make_api_client
from tenancy_common.lease import LeaseReleaser
from tenancy_common.lifecycle import install_stop_signals, run_event_loop, wait_stopped
from tenancy_common.logs import configure_logging

ENV_PREFIX = "KEDA_TENANCY_SUPERVISE_"
PREFIX = "keda_tenancy_supervise_"
REAP_INTERVAL_S = 1.0
KILL_WAIT_S = 5.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    lease: tuple[str, str]
    command: tuple[str, ...]
    kubeconfig: str | None = None
    lease_wait_s: float = 30.0
    grace_period_s: float = 30.0
    health_bind_address: str = "0.0.0.0"  # noqa: S104 - a pod listens on all its addresses
    health_port: int = 8090
    log_level: str = "info"
    log_format: str = "json"
    operator_health: OperatorHealthSettings | None = None
    """Ask KEDA's own probes from /livez and /readyz (None: never)."""


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lease_wait = Gauge(
            PREFIX + "lease_wait_seconds",
            "How long the operator's start waited for the Lease to be free.",
            registry=registry,
        )
        self.lease_releases = Counter(
            PREFIX + "lease_releases",
            "Leases released after the operator exited (KEDA does not release its own).",
            registry=registry,
        )
        self.operator_up = Gauge(
            PREFIX + "operator_up", "1 while the operator process runs.", registry=registry
        )


class Supervisor:
    def __init__(
        self,
        config: SupervisorConfig,
        registry: CollectorRegistry | None = None,
        *,
        hostname: str | None = None,
        reap: bool = False,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = SupervisorMetrics(self.registry)
        self.child = ChildProcess(
            config.command, None, grace_period_s=config.grace_period_s, kill_wait_s=KILL_WAIT_S
        )
        self.hostname = hostname or socket.gethostname()
        self.stop_signal = signal.SIGTERM
        self.health_port: int | None = None
        self.phase = "starting"
        self._reap = reap
        self._started_at = datetime.now(UTC)
        self.operator_health = (
            OperatorHealth(
                config.operator_health,
                self.child.running_for_s,
                registry=self.registry,
                prefix=PREFIX,
            )
            if config.operator_health is not None
            else None
        )

    def readiness(self) -> str | None:
        """Ready while waiting for the Lease (the Deployment may stop the old pod: that is
        what frees it) and while the operator runs."""
        if self.phase in ("waiting", "running"):
            return None
        return f"operator {self.phase}"

    def waiting(self) -> str | None:
        return "waiting for the Lease to be free" if self.phase == "waiting" else None

    async def run(self, stop: asyncio.Event) -> int:
        """Wait for the Lease, run the operator until it exits or `stop`; its exit status."""
        done = asyncio.Event()
        serving = asyncio.ensure_future(self._serve_health(done))
        reaping = asyncio.ensure_future(self._reap_orphans(done)) if self._reap else None
        try:
            api = await make_api_client(self.config.kubeconfig)
        except Exception:
            logger.exception("cannot configure the Kubernetes client")
            done.set()
            await serving
            return 1
        try:
            return await self._supervise(api, stop)
        finally:
            done.set()
            await api.close()
            await serving
            if reaping is not None:
                await reaping

    async def _supervise(self, api: ApiClient, stop: asyncio.Event) -> int:
        namespace, name = self.config.lease
        releaser = LeaseReleaser(api, namespace, name)
        gate = LeaseGate(api, namespace, name, self.hostname)
        self.phase = "waiting"
        began = time.monotonic()
        outcome = await gate.wait(stop, self.config.lease_wait_s)
        waited_s = time.monotonic() - began
        self.metrics.lease_wait.set(waited_s)
        if outcome == "stopped":
            self.phase = "stopped"
            logger.info("stopped before the operator started")
            return 0
        if outcome == "own":  # an earlier run of this container: dead, since we run
            await self._release(releaser, self._started_at)
        logger.info(
            "starting the operator",
            extra={"lease": outcome, "waited_s": round(waited_s, 3)},
        )
        try:
            await self.child.start(None)
        except ChildStartError as exc:
            self.phase = "failed"
            logger.error("cannot start the operator", extra={"error": str(exc)})
            return exc.code
        self.phase = "running"
        self.metrics.operator_up.set(1)
        exited = asyncio.ensure_future(self.child.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if exited.done():
            code: int | None = exited.result()
            logger.warning("the operator exited", extra={"code": code})
        else:
            exited.cancel()
            code = await self.child.stop(self.stop_signal)
        self.phase = "exited"
        self.metrics.operator_up.set(0)
        if self.child.running:  # survived SIGKILL: its Lease is not ours to release
            return 1
        await self._release(releaser, datetime.now(UTC))
        return code if code is not None else 1

    async def _release(self, releaser: LeaseReleaser, died_at: datetime) -> None:
        if await releaser.release(hostname=self.hostname, died_at=died_at):
            self.metrics.lease_releases.inc()

    async def _serve_health(self, done: asyncio.Event) -> None:
        def started(port: int) -> None:
            self.health_port = port

        checks: dict[str, health.ReadinessCheck] = {"operator": self.readiness}
        liveness: dict[str, health.ReadinessCheck] = {}
        if self.operator_health is not None:
            # Asked only while KEDA runs (not while waiting for the Lease): see
            # reloader.operator_health.
            checks["operator-readyz"] = self.operator_health.readyz
            liveness["operator-healthz"] = self.operator_health.healthz
        app = health.build_health_app(
            self.registry, checks, {"lease": self.waiting}, liveness=liveness
        )
        try:
            await health.serve_until(
                app,
                self.config.health_bind_address,
                self.config.health_port,
                done,
                started=started,
            )
        except OSError:
            logger.exception("cannot serve /healthz /readyz /metrics")

    async def _reap_orphans(self, done: asyncio.Event) -> None:
        while not await wait_stopped(done, REAP_INTERVAL_S):
            for pid in reap_orphans(self.child.is_managed):
                logger.debug("reaped an orphaned process", extra={"pid": pid})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-supervise",
        usage="%(prog)s --lease NAMESPACE/NAME [flags] -- COMMAND [ARGS...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lease", default="", help="NAMESPACE/NAME of the Lease the operator elects with"
    )
    parser.add_argument("--kubeconfig", default="", help="default: in-cluster")
    parser.add_argument(
        "--lease-wait",
        default="30s",
        help="start the operator after this long even if the Lease is still held",
    )
    parser.add_argument(
        "--grace-period", default="30s", help="after SIGTERM, wait this long before SIGKILL"
    )
    parser.add_argument(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of /healthz /readyz /metrics",
    )
    parser.add_argument(
        "--health-port", type=int, default=8090, help="port of /healthz /readyz /metrics"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    operator_health.add_flags(parser)
    return parser


def parse_config(argv: Sequence[str], environ: dict[str, str]) -> SupervisorConfig:
    parser = build_parser()
    apply_env_defaults(parser, environ, ENV_PREFIX)
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    namespace, _, name = args.lease.partition("/")
    if not namespace or not name or "/" in name:
        parser.error("--lease NAMESPACE/NAME is required")
    if not command:
        parser.error("the operator command goes after '--'")
    try:
        lease_wait_s = parse_duration(args.lease_wait)
        grace_period_s = parse_duration(args.grace_period)
        probes = operator_health.settings_from(args, command)
    except ValueError as exc:
        parser.error(str(exc))
    return SupervisorConfig(
        lease=(namespace, name),
        command=tuple(command),
        kubeconfig=args.kubeconfig or None,
        lease_wait_s=lease_wait_s,
        grace_period_s=grace_period_s,
        health_bind_address=args.health_bind_address,
        health_port=args.health_port,
        log_level=args.log_level,
        log_format=args.log_format,
        operator_health=probes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv, dict(os.environ))
    configure_logging(config.log_level, config.log_format)
    status: list[int] = []

    async def run() -> None:
        stop = asyncio.Event()
        supervisor = Supervisor(config, reap=become_subreaper())

        def forward(sig: signal.Signals) -> None:
            supervisor.stop_signal = sig

        install_stop_signals(stop, forward)
        status.append(await supervisor.run(stop))

    run_event_loop(run())
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
