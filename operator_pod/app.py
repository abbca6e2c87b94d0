"""Wiring: the mode's control loop is the main root; the probe server, the ConfigMap follower,
the gRPC forwarder and the orphan reaper run beside it until it has stopped KEDA. Any of them
failing (a port that cannot be bound) stops the control loop, which stops KEDA first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from operator_pod.child import ChildProcess, become_subreaper, reap_orphans
from operator_pod.config import Config
from operator_pod.deployment_mode import DeploymentMode
from operator_pod.follow import FollowMetrics, FollowSettings, ObjectFollower
from operator_pod.forward import Forwarder, ForwardMetrics
from operator_pod.kube import (
    ConfigError,
    KubeClient,
    in_cluster_config,
    kubeconfig_config,
)
from operator_pod.lease import LeaseReleaser
from operator_pod.lease_gate import LeaseGate
from operator_pod.metrics import PREFIX, Metrics
from operator_pod.operator_health import OperatorHealth
from operator_pod.probes import Check, ProbeServer
from operator_pod.process_mode import ProcessMode, RestartPolicy
from operator_pod.prometheus import Registry

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0


class OperatorPod:
    def __init__(
        self,
        config: Config,
        registry: Registry | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        hostname: str | None = None,
        follow_settings: FollowSettings | None = None,
        reap: bool = False,
    ) -> None:
        """`hostname`: the pod's (KEDA's Lease identity starts with it); `reap`: reap orphans
        re-parented to us (as PID 1 or subreaper)."""
        self.config = config
        self.registry = registry or Registry()
        self.metrics = Metrics(self.registry)
        self._environ = dict(os.environ if environ is None else environ)
        self.hostname = hostname or socket.gethostname()
        self._follow_settings = follow_settings or FollowSettings(
            watch_timeout_s=config.watch_timeout_s
        )
        self._follow_metrics = FollowMetrics(self.registry, PREFIX)
        self._reap = reap
        process = config.mode == "process"
        self.child = ChildProcess(
            config.command,
            config.target_env if process else None,
            grace_period_s=config.grace_period_s,
            kill_wait_s=config.kill_wait_s,
            environ=self._environ,
        )
        self.forwarder = (
            Forwarder(
                *config.forward_grpc,
                max_connections=config.forward_grpc_max_connections,
                metrics=ForwardMetrics(self.registry, PREFIX),
            )
            if config.forward_grpc is not None
            else None
        )
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
        self.process: ProcessMode | None = None
        self.deployment: DeploymentMode | None = None
        self.follower: ObjectFollower | None = None
        self.probes: ProbeServer | None = None
        self._stop_signal = signal.SIGTERM

    @property
    def stop_signal(self) -> signal.Signals:
        return self._stop_signal

    @stop_signal.setter
    def stop_signal(self, sig: signal.Signals) -> None:
        """The signal to forward to KEDA when stopping (the one we received)."""
        self._stop_signal = sig
        for mode in (self.process, self.deployment):
            if mode is not None:
                mode.stop_signal = sig

    async def run(self, stop: asyncio.Event) -> int:
        """Until `stop` (or the control loop ends); the exit status."""
        config = self.config
        try:
            cluster = (
                kubeconfig_config(config.kubeconfig)
                if config.kubeconfig
                else in_cluster_config(self._environ)
            )
        except ConfigError as exc:
            logger.error("cannot configure the Kubernetes client", extra={"error": str(exc)})
            return 1
        client = KubeClient(cluster, request_timeout_s=config.request_timeout_s)
        done = asyncio.Event()
        roots: dict[str, Coroutine[Any, Any, None]] = {}
        if config.mode == "process":
            main = self._process(client, roots, done)
        else:
            main = self._deployment(client)
        self.probes = self._probe_server()
        roots["probes"] = self.probes.serve(config.health_bind_address, config.health_port, done)
        if self.forwarder is not None:
            roots["grpc-forward"] = self.forwarder.serve(done)
        if self._reap:
            roots["reaper"] = self._reap_orphans(done)
        return await _run_roots(main(stop), roots, stop, done)

    def _process(
        self,
        client: KubeClient,
        roots: dict[str, Coroutine[Any, Any, None]],
        done: asyncio.Event,
    ) -> Callable[[asyncio.Event], Coroutine[Any, Any, int]]:
        config = self.config
        assert config.namespaces_configmap is not None
        namespace, name = config.namespaces_configmap
        releaser = LeaseReleaser(client, *config.lease, self.hostname) if config.lease else None
        self.process = ProcessMode(
            self.child,
            self.metrics,
            env_name=config.target_env,
            policy=RestartPolicy(
                debounce_s=config.debounce_s,
                max_wait_s=config.max_wait_s,
                max_restarts=config.max_restarts,
                backoff_initial_s=config.backoff_initial_s,
                backoff_max_s=config.backoff_max_s,
                healthy_after_s=config.healthy_after_s,
            ),
            releaser=releaser,
            forwarder=self.forwarder,
        )
        self.process.stop_signal = self._stop_signal
        self.follower = ObjectFollower(
            client,
            f"/api/v1/namespaces/{namespace}/configmaps",
            name,
            self.process.offer,
            settings=self._follow_settings,
            metrics=self._follow_metrics,
            label=f"configmap {namespace}/{name}",
        )
        roots["namespaces"] = self.follower.run(done)
        return self.process.run

    def _deployment(
        self, client: KubeClient
    ) -> Callable[[asyncio.Event], Coroutine[Any, Any, int]]:
        config = self.config
        assert config.lease is not None
        self.deployment = DeploymentMode(
            self.child,
            self.metrics,
            gate=LeaseGate(
                client,
                *config.lease,
                self.hostname,
                settings=self._follow_settings,
                metrics=self._follow_metrics,
            ),
            releaser=LeaseReleaser(client, *config.lease, self.hostname),
            lease_wait_s=config.lease_wait_s,
        )
        self.deployment.stop_signal = self._stop_signal
        return self.deployment.run

    def _probe_server(self) -> ProbeServer:
        readiness: dict[str, Check] = {}
        warnings: dict[str, Check] = {}
        liveness: dict[str, Check] = {}
        if self.process is not None:
            readiness["operator"] = self.process.readiness
            warnings["namespace-set"] = self._namespace_set_warning
        if self.deployment is not None:
            readiness["operator"] = self.deployment.readiness
            warnings["lease"] = self.deployment.waiting
        if self.operator_health is not None:
            # Asked only while KEDA runs, past its start grace (operator_health).
            readiness["operator-readyz"] = self.operator_health.readyz
            liveness["operator-healthz"] = self.operator_health.healthz
        return ProbeServer(self.registry, readiness=readiness, warnings=warnings, liveness=liveness)

    def _namespace_set_warning(self) -> str | None:
        """Shown in /readyz without failing it: the pod must stay in the Service the adapter
        reaches KEDA through while KEDA runs on the last set it was given."""
        assert self.process is not None
        if self.follower is not None and self.follower.error is not None:
            return (
                f"cannot follow the namespace set, KEDA keeps the last one: {self.follower.error}"
            )
        if self.process.refused is not None:
            return f"the namespace set was refused, KEDA keeps the last one: {self.process.refused}"
        return None

    async def _reap_orphans(self, done: asyncio.Event) -> None:
        """Polling (not SIGCHLD) leaves SIGCHLD to asyncio's child watcher."""
        while True:
            try:
                await asyncio.wait_for(done.wait(), REAP_INTERVAL_S)
            except TimeoutError:
                for pid in reap_orphans(self.child.is_managed):
                    logger.debug("reaped an orphaned process", extra={"pid": pid})
            else:
                return


async def _run_roots(
    main: Coroutine[Any, Any, int],
    roots: dict[str, Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    done: asyncio.Event,
) -> int:
    """Run `main` until it returns; the other roots until then (they follow `done`). A root
    that ends early sets `stop`, so `main` stops KEDA; the exit status is then at least 1."""
    failed: list[str] = []

    async def guarded(name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            logger.exception("%s failed, stopping", name, extra={"task": name})
        if not done.is_set():
            failed.append(name)
            stop.set()

    tasks = [asyncio.ensure_future(guarded(name, coro)) for name, coro in roots.items()]
    try:
        code = await main
    finally:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return code or (1 if failed else 0)


async def serve(config: Config) -> int:
    """The whole program: SIGTERM/SIGINT set the stop event and are forwarded to KEDA."""
    stop = asyncio.Event()
    # As PID 1 orphans are ours anyway; otherwise (under a shell, a debugger) ask to be their
    # subreaper, so KEDA's descendants never pile up as zombies.
    pod = OperatorPod(config, reap=become_subreaper())
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        logger.info("received %s, stopping", sig.name, extra={"signal": sig.name})
        pod.stop_signal = sig
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return await pod.run(stop)
