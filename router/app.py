"""Wiring: the router's resources, its root tasks, and the order they stop in.

Roots: the TLS listener, the health/metrics listener, the certificate reloader, and,
when a cluster is needed, the namespace watch and the requestheader ConfigMap poll.
SIGTERM makes /readyz fail, waits --shutdown-delay, stops accepting, and gives
in-flight requests --shutdown-grace-period to finish.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from router.backends import DEFAULT_CA, Backend, BackendResolver
from router.config import EXTENSION_AUTH_CONFIGMAP, RouterConfig
from router.explain import Explainer
from router.explain_http import add_explain_route
from router.forwarding import HeaderPolicy
from router.health_probes import HealthProbes, HealthStats
from router.listener import SecureListener
from router.metrics import RouterMetrics
from router.operator_access import OperatorAccess
from router.proxy import AuthState, ProxyHandler
from router.recent import RecentAnswers
from router.registration import REGISTRATION_LABEL, Registrations, RegistrationStore
from router.requestheader import HeaderNames, RequestHeaderAuth
from router.routing import RuleRouter, named_upstream_tls
from router.tenants import NamespaceView, TenantDirectory
from router.upstream_health import FastFailHealth, HealthSource, ProbeHealth
from router.upstreams import Upstreams
from tenancy_common import health, tls
from tenancy_common.lifecycle import run_roots, wait_stopped
from tenancy_common.namespace_cache import NamespaceCache, WatchMetrics, staleness_check

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

logger = logging.getLogger(__name__)


class RequestHeaderSource:
    """The requestheader CA, allowed names and header names, from flags or the ConfigMap.

    kube-apiserver publishes them in kube-system/extension-apiserver-authentication; extension
    API servers read them there when not configured, and so does the router.
    """

    def __init__(self, config: RouterConfig) -> None:
        self._config = config
        self.from_cluster = config.requestheader_client_ca_file is None
        self._ca_pem: bytes | None = None
        self.allowed_names = config.requestheader_allowed_names
        self.headers = config.header_names

    def ca_pem(self) -> bytes:
        if not self.from_cluster:
            assert self._config.requestheader_client_ca_file is not None
            return tls.file_source(self._config.requestheader_client_ca_file)()
        if self._ca_pem is None:
            raise tls.NotYetAvailableError("requestheader CA not read from the cluster yet")
        return self._ca_pem

    def update_from_configmap(self, data: dict[str, str]) -> bool:
        """Apply the ConfigMap's data; True when anything changed."""
        ca = data.get("requestheader-client-ca-file", "").encode()
        if not ca:
            raise ValueError(
                f"{'/'.join(EXTENSION_AUTH_CONFIGMAP)} has no requestheader-client-ca-file"
            )

        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            return tuple(json.loads(raw)) if raw else default

        flags = self._config.header_names
        headers = HeaderNames(
            username=names("requestheader-username-headers", flags.username),
            group=names("requestheader-group-headers", flags.group),
            extra_prefixes=names("requestheader-extra-headers-prefix", flags.extra_prefixes),
            uid=names("requestheader-uid-headers", flags.uid),
        )
        allowed = self._config.requestheader_allowed_names or frozenset(
            names("requestheader-allowed-names", ())
        )
        changed = (ca, headers, allowed) != (self._ca_pem, self.headers, self.allowed_names)
        self._ca_pem, self.headers, self.allowed_names = ca, headers, allowed
        return changed


class Router:
    """Owns every resource of one router process."""

    def __init__(self, config: RouterConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self.requestheader = RequestHeaderSource(config)
        self.serving = tls.Reloadable(
            "serving certificate",
            [
                tls.file_source(config.tls_cert_file),
                tls.file_source(config.tls_private_key_file),
                self.requestheader.ca_pem,
            ],
            lambda pem: (
                tls.server_context(pem[0], pem[1], pem[2]),
                tuple(tls.parse_certificates(pem[2])),
            ),
            on_error=self._reload_failed,
        )
        routing = config.routing
        self.resolver = BackendResolver(
            config.upstream_url_template,
            config.tenancy_file.tenants,
            config.default_upstream,
            routing.default.backend("_default") if routing.default else None,
        )
        self.upstream_tls = {
            ca_file: self._upstream_reloadable(ca_file)
            for ca_file in {DEFAULT_CA, *self.resolver.per_tenant_ca_files()}
        }
        self.upstream_tls.update(self._named_upstream_tls())
        self.upstreams = Upstreams(config.upstream, self._upstream_context)
        self.metrics.requests.in_flight = self.upstreams.in_flight
        self.metrics.upstream.timeouts = lambda: self.upstreams.timeouts
        self.metrics.upstream.fast_failed = lambda: self.upstreams.fast_failed
        self.metrics.upstream.transient_retries = lambda: self.upstreams.transient_retries
        self.metrics.upstream.pools = self.upstreams.pool_sizes
        self.health_probes = self._health_probes()
        self.cache = NamespaceCache()
        self.directory = TenantDirectory(
            config.tenancy,
            self.resolver,
            self._namespace_view(),
            self.metrics,
            synced=lambda: not config.tenancy.needs_cluster or self.cache.synced.is_set(),
        )
        self.registrations = (
            Registrations(
                routing.registration_namespaces,
                config.tenancy,
                self.registry,
                on_change=self._registrations_changed,
            )
            if routing.registration_namespaces
            else None
        )
        self.routing = RuleRouter(self.directory, routing, self.registrations)
        self.recent = RecentAnswers()
        self.health_sources: list[HealthSource] = [
            FastFailHealth(self.upstreams),
            ProbeHealth(self.health_probes, config.health_probes.interval_s > 0),
        ]
        """What the explain command reports of an upstream's health; probers add theirs."""
        self._api: ApiClient | None = None
        self._auth: AuthState | None = None
        self._auth_inputs: tuple[object, ...] = ()
        self.stopping = False
        self.secure_port: int | None = None
        self.health_port: int | None = None
        self.listening = asyncio.Event()

    def _upstream_reloadable(
        self, ca_file: str
    ) -> tls.Reloadable[tuple[ssl.SSLContext, bytes | None]]:
        config = self.config
        sources: list[tls.Source] = []
        if config.upstream_client_cert_file and config.upstream_client_key_file:
            sources += [
                tls.file_source(config.upstream_client_cert_file),
                tls.file_source(config.upstream_client_key_file),
            ]
        # A tenant's own caFile replaces; the template's trust is --upstream-ca-file plus the
        # extra CAs, which add to it and never replace the tenant-serving CA (issue 22).
        ca_paths = (
            [ca_file]
            if ca_file
            else [p for p in (config.upstream_ca_file, config.upstream_extra_ca_file) if p]
        )
        sources += [tls.file_source(path) for path in ca_paths]
        has_client = bool(config.upstream_client_cert_file)
        first_ca = len(sources) - len(ca_paths)

        def build(pem: Sequence[bytes]) -> tuple[ssl.SSLContext, bytes | None]:
            cert, key = (pem[0], pem[1]) if has_client else (None, None)
            ca = b"\n".join(pem[first_ca:]) if ca_paths else None
            return tls.client_context(cert, key, ca), cert

        name = f"upstream client TLS ({ca_file})" if ca_file else "upstream client TLS"
        return tls.Reloadable(name, sources, build, on_error=self._reload_failed)

    def _named_upstream_tls(
        self,
    ) -> dict[str, tls.Reloadable[tuple[ssl.SSLContext, bytes | None]]]:
        routing = self.config.routing
        named = [*routing.upstreams.values(), *([routing.default] if routing.default else [])]
        router_client = (
            self.config.upstream_client_cert_file,
            self.config.upstream_client_key_file,
        )
        return dict(named_upstream_tls(named, router_client, self._reload_failed))

    def _registrations_changed(self) -> None:
        self.routing.invalidate()  # self.routing is made after the registrations

    def _upstream_context(self, key: str) -> ssl.SSLContext:
        reloadable = self.upstream_tls.get(key)
        if reloadable is not None:
            return reloadable.value[0]
        assert self.registrations is not None, key
        client = self.upstream_tls[DEFAULT_CA]
        return self.registrations.context(key, client.value, client.inputs)

    def _health_probes(self) -> HealthProbes:
        """Active health of every backend requests went to, and the default upstream."""
        default = self.resolver.default

        def backends() -> list[Backend]:
            known = self.upstreams.known_backends()
            return known if default is None or default in known else [*known, default]

        headers = self.config.header_names
        probes = HealthProbes(
            self.config.health_probes,
            backends,
            self._upstream_context,
            self.upstreams,
            user_header=headers.username[0],
            group_header=headers.group[0],
        )
        self.registry.register(HealthStats(probes))
        return probes

    def _namespace_view(self) -> NamespaceView | None:
        return self.cache.snapshot if self.config.tenancy.needs_cluster else None

    def _reload_failed(self, name: str, _: Exception) -> None:
        self.metrics.cert_reload_errors.labels(name).inc()

    # -- requestheader state -------------------------------------------------------------

    def auth_state(self) -> AuthState:
        assert self._auth is not None, "serving certificate not loaded"
        return self._auth

    def _refresh_auth(self) -> None:
        if not self.serving.loaded:
            return
        source = self.requestheader
        inputs = (self.serving.generation, source.allowed_names, source.headers)
        if inputs == self._auth_inputs:
            return
        generation = (self._auth.generation + 1) if self._auth else 1
        auth = RequestHeaderAuth(self.serving.value[1], source.allowed_names, source.headers)
        self._auth = AuthState(auth, HeaderPolicy(source.headers), generation)
        self._auth_inputs = inputs

    def reload_certificates(self) -> None:
        """Poll every certificate input once; cheap when nothing changed."""
        self.serving.poll()
        for reloadable in self.upstream_tls.values():
            reloadable.poll()
        self._refresh_auth()
        self._export_expiry()

    def _export_expiry(self) -> None:
        if self.serving.loaded:
            self.metrics.cert_expiry.labels("serving").set(
                tls.not_after(self.serving.inputs[0]).timestamp()
            )
        default = self.upstream_tls[DEFAULT_CA]
        if default.loaded and default.value[1]:
            self.metrics.cert_expiry.labels("upstream-client").set(
                tls.not_after(default.value[1]).timestamp()
            )

    # -- readiness -------------------------------------------------------------------------

    def readiness_checks(self) -> dict[str, health.ReadinessCheck]:
        def certificates() -> str | None:
            missing = [r.name for r in self.upstream_tls.values() if not r.loaded]
            if not self.serving.loaded:
                missing.append(self.serving.name)
            return f"not loaded: {', '.join(missing)}" if missing else None

        def namespaces() -> str | None:
            if not self.config.tenancy.needs_cluster:
                return None
            if not self.cache.synced.is_set():
                return "namespace cache not synced"
            return None

        def shutdown() -> str | None:
            return "shutting down" if self.stopping else None

        checks: dict[str, health.ReadinessCheck] = {
            "certificates": certificates,
            "namespaces": namespaces,
            "shutdown": shutdown,
        }
        if self.registrations is not None:
            registrations = self.registrations

            def registered() -> str | None:
                return None if registrations.synced else "backend registrations not listed yet"

            checks["registrations"] = registered
        return checks

    def readiness_warnings(self) -> dict[str, health.ReadinessCheck]:
        """Shown in /readyz without failing it: an unready router makes the APIService
        unavailable for every tenant, worse than answering from a namespace list that may be
        stale (keda_tenancy_namespace_watch_staleness_seconds and the chart's alert say so)."""
        if not self.config.tenancy.needs_cluster:
            return {}
        return {
            "namespace-staleness": staleness_check(
                self.cache, self.config.max_namespace_staleness_s
            )
        }

    # -- running ---------------------------------------------------------------------------

    def _sni(self, tls_object: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext) -> None:
        # New handshakes get the newest context: new certificate and the current CA set.
        tls_object.context = self.serving.value[0]

    async def serve_secure(self, stop: asyncio.Event) -> None:
        await self._wait_for_certificates(stop)
        if stop.is_set():
            return
        handler = ProxyHandler(
            auth_state=self.auth_state,
            routing=self.routing,
            upstreams=self.upstreams,
            metrics=self.metrics,
            health=self.health_probes.health,
            recent=self.recent,
        )
        listener = SecureListener(handler)
        self.metrics.open_connections.set_function(lambda: len(listener.connections))
        listener_context = tls.server_context(*self.serving.inputs[:3])
        listener_context.sni_callback = self._sni
        try:
            self.secure_port = await listener.start(
                self.config.bind_address, self.config.secure_port, listener_context
            )
            self.listening.set()
            logger.info("serving", extra={"port": self.secure_port})
            await stop.wait()
            self.stopping = True
            if self.config.shutdown_delay_s:
                await asyncio.sleep(self.config.shutdown_delay_s)
            logger.info(
                "draining in-flight requests", extra={"connections": len(listener.connections)}
            )
        finally:
            await asyncio.shield(
                listener.drain(self.config.shutdown_grace_period_s, self.upstreams.abandon)
            )
            await asyncio.shield(self.upstreams.close())
            logger.info("secure listener stopped")

    async def reload_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.reload_certificates()
            await wait_stopped(stop, self.config.cert_reload_interval_s)

    async def serve_health(self, stop: asyncio.Event) -> None:
        app = health.build_health_app(
            self.registry, self.readiness_checks(), self.readiness_warnings()
        )
        add_explain_route(app, self.explainer())

        def started(port: int) -> None:
            self.health_port = port

        await health.serve_until(
            app, self.config.health_bind_address, self.config.health_port, stop, started=started
        )

    def explainer(self) -> Explainer:
        """The diagnosis path behind /debug/explain (router/explain.py)."""
        return Explainer(
            rule=self.config.tenancy,
            directory=self.directory,
            resolver=self.resolver,
            namespaces=self._namespace_view(),
            recent=self.recent,
            health_sources=self.health_sources,
            access=lambda: OperatorAccess(self._api, self.config.tenant_namespace_template),
        )

    async def _wait_for_certificates(self, stop: asyncio.Event) -> None:
        while not (self.serving.loaded and self._auth is not None):
            if stop.is_set():
                return
            self.reload_certificates()
            if self.serving.loaded and self._auth is not None:
                return
            # Only the requestheader CA from the cluster still to come: every start waits so.
            level = logging.INFO if self.serving.waiting else logging.WARNING
            logger.log(level, "waiting for certificates", extra={"error": self.serving.last_error})
            await wait_stopped(stop, 1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop`. Health is up at once; the secure listener opens once its
        certificates (and the requestheader CA, from the cluster if need be) are loaded."""
        api = None
        if self.config.needs_cluster:
            # Imported only here: kubernetes_asyncio's generated client is ~40 MB of RSS
            # that a router without a cluster source (static tenancy, CA from flags) never uses.
            from tenancy_common.kube import make_api_client  # noqa: PLC0415

            api = await make_api_client(self.config.kubeconfig)
        self._api = api
        try:
            roots: dict[str, Coroutine[Any, Any, None]] = {
                "health": self.serve_health(stop),
                "reload": self.reload_loop(stop),
                "secure": self.serve_secure(stop),
                "health-probes": self._probe_when_serving(stop),
            }
            if api is not None and self.requestheader.from_cluster:
                roots["requestheader-configmap"] = self._poll_configmap(api, stop)
            if api is not None and self.config.tenancy.needs_cluster:
                roots["namespaces"] = self._watch_namespaces(api, stop)
            if api is not None and self.registrations is not None:
                roots["registrations"] = self._watch_registrations(api, stop)
            await run_roots(roots, stop)
        finally:
            if api is not None:
                await api.close()

    async def _probe_when_serving(self, stop: asyncio.Event) -> None:
        # The upstream client certificates are loaded by then.
        while not self.listening.is_set():
            if await wait_stopped(stop, 0.5):
                return
        await self.health_probes.run(stop)

    async def _read_configmap(self, api: ApiClient) -> None:
        from kubernetes_asyncio.client import CoreV1Api  # noqa: PLC0415 - see run()

        namespace, name = EXTENSION_AUTH_CONFIGMAP
        configmap = await CoreV1Api(api).read_namespaced_config_map(name, namespace)
        if self.requestheader.update_from_configmap(dict(configmap.data or {})):
            logger.info("requestheader settings read from the cluster")
            self.reload_certificates()

    async def _poll_configmap(self, api: ApiClient, stop: asyncio.Event) -> None:
        interval_s = 1.0  # quickly until the first read succeeds, then at the reload pace
        while True:
            try:
                await self._read_configmap(api)
            except Exception as exc:  # keep the last good settings; retry next round
                logger.warning("cannot read requestheader ConfigMap", extra={"error": str(exc)})
            else:
                interval_s = max(self.config.cert_reload_interval_s, 10.0)
            if await wait_stopped(stop, interval_s):
                return

    async def _watch_namespaces(self, api: ApiClient, stop: asyncio.Event) -> None:
        from tenancy_common.namespace_watch import watch_namespaces  # noqa: PLC0415 - see run()

        await watch_namespaces(
            api,
            self.cache,
            stop=stop,
            on_change=self.routing.invalidate,
            metrics=WatchMetrics(self.registry),
        )

    async def _watch_registrations(self, api: ApiClient, stop: asyncio.Event) -> None:
        """One list+watch per declared namespace: the Role allows nothing wider."""
        from kubernetes_asyncio.client import CoreV1Api  # noqa: PLC0415 - see run()

        from tenancy_common.namespace_watch import watch_objects  # noqa: PLC0415 - see run()

        assert self.registrations is not None
        core = CoreV1Api(api)

        def watch(store: RegistrationStore) -> Coroutine[Any, Any, None]:
            return watch_objects(
                api,
                store,
                functools.partial(core.list_namespaced_config_map, store.namespace),
                stop=stop,
                what=f"backend registrations in {store.namespace}",
                label_selector=f"{REGISTRATION_LABEL}=true",
            )

        await asyncio.gather(*(watch(store) for store in self.registrations.stores.values()))
