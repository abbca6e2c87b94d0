"""The reloader: follow the tenant's namespaces and keep the operator on exactly that set.

Root tasks under the shared lifecycle: the namespace watch (shared list+watch cache), the
health listener, the control loop, and in process mode an orphan reaper. The control
loop ending (stop signal, or giving up on a crashing operator) ends the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from reloader.access import BindingGate, Gate, SelfAccessGate
from reloader.binding_loop import BindingLoop
from reloader.child import ChildProcess, become_subreaper, reap_orphans
from reloader.clock import Clock
from reloader.config import ReloaderConfig, watch_selector
from reloader.control import Controller
from reloader.deployment import DeploymentPatcher
from reloader.desired import Desired, desired_namespaces
from reloader.forward import Forwarder
from reloader.lease_gate import LeaseGate
from reloader.metrics import PREFIX as METRICS_PREFIX
from reloader.metrics import ReloaderMetrics
from reloader.operator_health import OperatorHealth
from reloader.operator_pods import OperatorPodWatch
from reloader.publishing import PublishingTarget
from reloader.rolebindings import BindingMetrics, BindingSpec, RoleBindingManager
from reloader.rule_source import PublishedRule
from reloader.targets import DeploymentTarget, ProcessTarget, Target
from reloader.uninstall import Uninstaller
from reloader.watched import DeploymentPods, WatchedConfigMap, WatchedSource
from tenancy_common import health
from tenancy_common.kube import make_api_client
from tenancy_common.lease import LeaseReleaser
from tenancy_common.lifecycle import install_stop_signals, run_roots, wait_stopped
from tenancy_common.namespace_cache import NamespaceCache, WatchMetrics, staleness_check
from tenancy_common.namespace_watch import WatchSettings, watch_namespaces

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0


class Reloader:
    def __init__(
        self,
        config: ReloaderConfig,
        registry: CollectorRegistry | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        watch_settings: WatchSettings | None = None,
        reap_orphans: bool | None = None,
    ) -> None:
        """`reap_orphans`: reap processes re-parented to us; by default only as PID 1
        (`serve` also makes the process a subreaper, embedding code should not)."""
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = ReloaderMetrics(self.registry)
        self._watch_metrics = WatchMetrics(self.registry)
        self._watch_settings = watch_settings or WatchSettings()
        self._clock = clock
        self._reap_orphans = os.getpid() == 1 if reap_orphans is None else reap_orphans
        self.cache = NamespaceCache()
        self.child = (
            ChildProcess(
                config.command,
                config.target_env,
                grace_period_s=config.grace_period_s,
                kill_wait_s=config.kill_wait_s,
                environ=environ,
            )
            if config.mode == "process"
            else None
        )
        self._environ = os.environ if environ is None else environ
        self.controller: Controller | None = None
        self.process_target: ProcessTarget | None = None
        self.gate: Gate | None = None
        self.binding_loop: BindingLoop | None = None
        self.publisher: PublishingTarget | None = None
        self.forwarder = (
            Forwarder(
                *config.forward_grpc,
                max_connections=config.forward_grpc_max_connections,
                on_refused=self.metrics.grpc_forward_refused.inc,
            )
            if config.forward_grpc is not None and self.child is not None
            else None
        )
        self.operator_health = (
            OperatorHealth(
                config.operator_health,
                self.child.running_for_s,
                registry=self.registry,
                prefix=METRICS_PREFIX,
            )
            if config.operator_health is not None and self.child is not None
            else None
        )
        if self.forwarder is not None:
            forwarder = self.forwarder
            self.metrics.grpc_forward_connections.set_function(lambda: forwarder.open_connections)
        self.health_port: int | None = None
        self._stop_signal = signal.SIGTERM

    # -- state, for probes and tests ---------------------------------------------------

    @property
    def applied(self) -> str | None:
        return self.controller.applied if self.controller is not None else None

    @property
    def last_error(self) -> str | None:
        return self.controller.last_error if self.controller is not None else None

    @property
    def stop_signal(self) -> signal.Signals:
        return self._stop_signal

    @stop_signal.setter
    def stop_signal(self, sig: signal.Signals) -> None:
        """The signal to forward to the operator at shutdown."""
        self._stop_signal = sig
        if self.controller is not None:
            self.controller.stop_signal = sig

    def readiness_checks(self) -> dict[str, health.ReadinessCheck]:
        def synced() -> str | None:
            return None if self.cache.synced.is_set() else "namespace list not synced"

        def operator() -> str | None:
            if self.controller is None:
                return "not started"
            if self.process_target is not None and self.process_target.waiting_for_lease:
                # Ready: a rolling update stops the old pod (whose operator holds the Lease)
                # only once this one is ready.
                return None
            return self.controller.readiness()

        def role_bindings() -> str | None:
            if self.binding_loop is None:
                return "not started"
            return self.binding_loop.readiness()

        checks: dict[str, health.ReadinessCheck] = {"namespaces": synced}
        if self.config.mode != "process":  # a pod of its own: not-ready turns nothing away
            checks["namespace-staleness"] = self._staleness_check()
        if self.config.mode != "bindings":
            checks["operator"] = operator
        if self.config.bindings is not None:
            checks["role-bindings"] = role_bindings
        if self.operator_health is not None:
            # KEDA's /readyz while it runs: outside restarts (not asked then), a KEDA that
            # does not answer cannot serve the adapter either.
            checks["operator-readyz"] = self.operator_health.readyz
        return checks

    def liveness_checks(self) -> dict[str, health.ReadinessCheck]:
        """A KEDA that runs but does not answer its own /healthz fails /livez, and the
        kubelet restarts the container (operator_health says why through us)."""
        if self.operator_health is None:
            return {}
        return {"operator-healthz": self.operator_health.healthz}

    def readiness_warnings(self) -> dict[str, health.ReadinessCheck]:
        """Shown in /readyz without failing it: the operator's pod must stay in its Service
        (the metrics server reaches it there) while one new namespace waits for access."""

        def lease() -> str | None:
            waiting = self.process_target is not None and self.process_target.waiting_for_lease
            return "waiting for the operator's Lease to be free" if waiting else None

        def access() -> str | None:
            waiting = self.gate.waiting if self.gate is not None else {}
            if not waiting:
                return None
            return "waiting for the operator's access: " + "; ".join(
                f"{ns}: {why}" for ns, why in sorted(waiting.items())
            )

        def published() -> str | None:
            return self.publisher.last_error if self.publisher is not None else None

        def role_bindings() -> str | None:
            return self.binding_loop.warning() if self.binding_loop is not None else None

        warnings: dict[str, health.ReadinessCheck] = {
            "lease": lease,
            "namespace-access": access,
            "watched-published": published,
            "role-bindings": role_bindings,
        }
        if self.config.mode == "process":
            # The operator's pod: not ready, it would leave the Service the adapter reaches
            # it through, and every ScaledObject's metrics fail, for a stale namespace list.
            warnings["namespace-staleness"] = self._staleness_check()
        return warnings

    def _staleness_check(self) -> health.ReadinessCheck:
        return staleness_check(self.cache, self.config.max_namespace_staleness_s)

    # -- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set or the operator is given up on; the exit status."""
        config = self.config
        try:
            api = await make_api_client(config.kubeconfig)
        except Exception:
            logger.exception("cannot configure the Kubernetes client")
            return 1
        if config.uninstall is not None:
            try:
                return await Uninstaller(api, config.uninstall).run(stop)
            finally:
                await api.close()
        failed = False
        rule_roots: dict[str, Coroutine[Any, Any, None]] = {}
        try:
            if config.rule_configmap is not None:
                loaded = await self._load_published_rule(api, stop)
                if loaded is None:
                    return 0
                config = self.config
                rule_roots["tenancy-rule"] = loaded
            if config.mode == "bindings":
                return await self._run_bindings(api, stop, rule_roots)
            self.binding_loop = self._binding_loop(api)
            self.controller = Controller(
                target=self._target(api, stop),
                cache=self.cache,
                rule=config.rule,
                tenant=config.tenant,
                target_env=config.target_env,
                schedule=config.schedule,
                crash=config.crash,
                metrics=self.metrics,
                clock=self._clock,
                resync_s=config.resync_period_s if config.mode == "deployment" else 0.0,
                gate=self.gate,
            )
            self.controller.stop_signal = self._stop_signal
            logger.info(
                "reloader starting",
                extra={
                    "mode": config.mode,
                    "tenant": config.tenant,
                    "label_selector": config.label_selector,
                    "target_env": config.target_env,
                },
            )
            roots: dict[str, Coroutine[Any, Any, None]] = {
                "health": self._serve_health(stop),
                "namespaces": self._watch(api, stop),
                "control": self._control(stop),
                **rule_roots,
            }
            if self.child is not None and self._reap_orphans:
                roots["reaper"] = self._reap(stop)
            if self.publisher is not None:
                roots["publish"] = self.publisher.run(stop)
            if self.binding_loop is not None:
                roots["bindings"] = self.binding_loop.run(stop)
            if self.forwarder is not None:
                roots["grpc-forward"] = self.forwarder.serve(stop)
            if self.child is None and config.release_lease is not None:
                roots["operator-pods"] = self._watch_operator_pods(api, stop)
            await run_roots(roots, stop)
        except Exception as exc:
            failed = True
            if not isinstance(exc, ExceptionGroup):  # a root's failure is logged by run_roots
                logger.exception("reloader failed")
        finally:
            for coro in rule_roots.values():
                coro.close()  # never awaited when something failed before the roots ran
            await self._leave_no_operator_behind()
            await api.close()
        exit_code = self.controller.exit_code if self.controller is not None else 0
        return exit_code or (1 if failed else 0)

    async def _leave_no_operator_behind(self) -> None:
        """The control loop stops the operator on its way out; if it was cancelled
        instead (another root failed), do it here."""
        if self.child is not None and self.child.running:
            logger.warning("stopping the operator after a failure")
            await self.child.stop(self._stop_signal)

    async def _load_published_rule(
        self, api: ApiClient, stop: asyncio.Event
    ) -> Coroutine[Any, Any, None] | None:
        """Load the router's published rule into the config (serving /healthz meanwhile, not
        ready); the root that ends the process when the rule changes, or None if stopped."""
        config = self.config
        assert config.rule_configmap is not None
        assert config.tenant is not None
        source = PublishedRule(api, *config.rule_configmap, config.tenant)
        loading_done = asyncio.Event()
        health_task = asyncio.create_task(self._serve_health(loading_done), name="health")
        try:
            loaded = await source.load(stop)
        finally:
            loading_done.set()
            await health_task
        if loaded is None:
            return None
        self.config = replace(
            config,
            rule=loaded.rule,
            label_selector=watch_selector(loaded.rule, config.tenant, config.schedule),
        )
        logger.info(
            "tenancy rule loaded",
            extra={"configmap": source.ref, "digest": loaded.digest[:12]},
        )
        return source.watch_for_change(loaded, stop, config.rule_check_interval_s)

    async def _run_bindings(
        self,
        api: ApiClient,
        stop: asyncio.Event,
        extra_roots: dict[str, Coroutine[Any, Any, None]],
    ) -> int:
        """Bindings mode: only the namespace watch and the RoleBinding loop (no operator)."""
        config = self.config
        assert config.watched_configmap is not None
        self.binding_loop = self._binding_loop(api)
        assert self.binding_loop is not None
        logger.info(
            "role binding manager starting",
            extra={"tenant": config.tenant, "label_selector": config.label_selector},
        )
        await run_roots(
            {
                "health": self._serve_health(stop),
                "namespaces": self._watch(api, stop),
                "bindings": self.binding_loop.run(stop),
                **extra_roots,
            },
            stop,
        )
        return 0

    def _desired(self) -> Desired:
        return desired_namespaces(
            self.cache.snapshot(), rule=self.config.rule, tenant=self.config.tenant
        )

    def _binding_loop(self, api: ApiClient) -> BindingLoop | None:
        """Deployment and bindings modes with --bind-*: the loop that keeps the operator's
        RoleBindings on desired + still-watched (and, deployment mode, the gate that binds
        a namespace before it is patched in)."""
        config = self.config
        settings = config.bindings
        if settings is None or config.tenant is None:
            return None
        metrics = BindingMetrics(self.registry)
        manager = RoleBindingManager(
            api,
            BindingSpec(
                tenant=config.tenant,
                cluster_role=settings.cluster_role,
                subject_namespace=settings.subject[0],
                subject_name=settings.subject[1],
                name=settings.name,
            ),
            metrics,
        )
        if config.mode == "deployment":
            assert config.target_deployment is not None
            assert config.container is not None
            watched: WatchedSource = DeploymentPods(
                api, *config.target_deployment, config.container, config.target_env
            )
            self.gate = BindingGate(manager, metrics, clock=self._clock)
        else:
            assert config.watched_configmap is not None
            watched = WatchedConfigMap(api, *config.watched_configmap, prune_dead_pods=True)
        return BindingLoop(
            manager=manager,
            cache=self.cache,
            desired=self._desired,
            watched=watched,
            interval_s=settings.interval_s,
            unbind_timeout_s=settings.unbind_timeout_s,
            clock=self._clock,
        )

    def _target(self, api: ApiClient, stop: asyncio.Event) -> Target:
        releaser = (
            LeaseReleaser(api, *self.config.release_lease) if self.config.release_lease else None
        )
        if self.child is not None:
            gate = (
                LeaseGate(api, *self.config.release_lease, socket.gethostname())
                if self.config.release_lease and self.config.lease_wait_s > 0
                else None
            )
            self.process_target = ProcessTarget(
                self.child,
                self.metrics,
                stop,
                releaser=releaser,
                forwarder=self.forwarder,
                lease_gate=gate,
                lease_wait_s=self.config.lease_wait_s,
            )
            target: Target = self.process_target
            if self.config.check_operator_access:
                self.gate = SelfAccessGate(api, BindingMetrics(self.registry), clock=self._clock)
            if self.config.watched_configmap is not None:
                key = self._environ.get("POD_NAME") or socket.gethostname()
                configmap = WatchedConfigMap(api, *self.config.watched_configmap, key=key)
                self.publisher = PublishingTarget(target, configmap, self.registry)
                target = self.publisher
            return target
        assert self.config.target_deployment is not None
        assert self.config.container is not None
        namespace, name = self.config.target_deployment
        return DeploymentTarget(
            DeploymentPatcher(
                api,
                namespace,
                name,
                self.config.container,
                self.config.target_env,
                replicas=self.config.replicas,
            )
        )

    async def _watch_operator_pods(self, api: ApiClient, stop: asyncio.Event) -> None:
        """Deployment mode: release the Lease of an operator pod whose operator the kubelet
        reports stopped (one whose supervisor could not release it)."""
        assert self.config.release_lease is not None
        assert self.config.target_deployment is not None
        assert self.config.container is not None
        watch = OperatorPodWatch(
            api,
            self.config.target_deployment[0],
            self.config.container,
            LeaseReleaser(api, *self.config.release_lease),
            self.metrics,
        )
        await watch.run(stop)

    async def _control(self, stop: asyncio.Event) -> None:
        assert self.controller is not None
        await self.controller.run(stop)

    async def _watch(self, api: ApiClient, stop: asyncio.Event) -> None:
        controller, loop = self.controller, self.binding_loop

        def changed() -> None:
            if controller is not None:
                controller.wake()
            if loop is not None:
                loop.wake()

        await watch_namespaces(
            api,
            self.cache,
            stop=stop,
            label_selector=self.config.label_selector,
            on_change=changed,
            settings=self._watch_settings,
            metrics=self._watch_metrics,
        )

    async def _serve_health(self, stop: asyncio.Event) -> None:
        def started(port: int) -> None:
            self.health_port = port

        app = health.build_health_app(
            self.registry,
            self.readiness_checks(),
            self.readiness_warnings(),
            liveness=self.liveness_checks(),
        )
        await health.serve_until(
            app, self.config.health_bind_address, self.config.health_port, stop, started=started
        )

    async def _reap(self, stop: asyncio.Event) -> None:
        """Reap orphans re-parented to us. Polling (not SIGCHLD) leaves SIGCHLD to the
        event loop's child watcher, whichever loop that is."""
        assert self.child is not None
        child = self.child
        while not await wait_stopped(stop, REAP_INTERVAL_S):
            for pid in reap_orphans(child.is_managed):
                logger.debug("reaped an orphaned process", extra={"pid": pid})


async def serve(config: ReloaderConfig) -> int:
    """The whole program: signals set the stop event (and are forwarded to the operator)."""
    stop = asyncio.Event()
    # As PID 1 orphans are ours anyway; otherwise (under a shell, tini, a debugger) ask to
    # be their subreaper so the operator's descendants never pile up as zombies.
    reloader = Reloader(config, reap_orphans=config.mode == "process" and become_subreaper())

    def forward(sig: signal.Signals) -> None:
        reloader.stop_signal = sig

    install_stop_signals(stop, forward)
    return await reloader.run(stop)
