"""A request -> its backend: routing rules first, then the namespace's tenant (or default).

Without rules or registrations this is the tenant directory's per-namespace lookup and
nothing else. Otherwise which rule (if any) takes a request is a pure function of the
namespace's owner, the metric name, the query and the registrations, so it is memoised per
(namespace, metric, query) and dropped whenever ownership or a registration changes: a routed
request costs one more dictionary lookup.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from yarl import URL

from router.backends import Backend
from router.paths import MetricRoute
from router.registration import Registrations
from router.status import StatusError
from router.tenants import TenantDirectory
from router.upstream_rules import RoutingRule, RoutingRules, UpstreamDefinition, rule_upstream
from tenancy_common import tls
from tenancy_common.names import TenantName
from tenancy_common.tenancy import Verdict

_MEMO_LIMIT = 100_000
_UNSEEN = Backend("", URL("https://unseen"))


class RuleRouter:
    def __init__(
        self,
        directory: TenantDirectory,
        rules: RoutingRules,
        registrations: Registrations | None = None,
    ) -> None:
        self._directory = directory
        self._rules = rules
        self._registrations = registrations
        self._backends: dict[str, Backend] = {
            name: definition.backend() for name, definition in rules.upstreams.items()
        }
        self._own: dict[TenantName | None, Sequence[RoutingRule]] = {}
        self._platform = rules.platform_rules()
        self._memo: dict[tuple[str, str, str], Backend | None] = {}
        # A platform upstream serves each tenant through a pool of that tenant's own (its own
        # in-flight limit and fast-fail state): one tenant's flood or hung metric there never
        # queues, refuses or fails fast another tenant's reads.
        self._platform_backends = {
            self._backends[name].name
            for name, definition in rules.upstreams.items()
            if definition.tenant is None
        }
        self._tenant_shares: dict[tuple[str, TenantName], Backend] = {}
        self._enabled = bool(rules.rules) or registrations is not None

    def invalidate(self) -> None:
        """Namespace ownership or a registration changed: decide everything again."""
        self._memo.clear()
        if self._registrations is not None:
            self._registrations.invalidate()
        self._directory.invalidate()

    def backend_for(self, route: MetricRoute) -> Backend:
        """The backend for this request, or StatusError(404) naming namespace and metric."""
        try:
            if self._enabled:
                key = (route.namespace, route.metric, route.query)
                backend = self._memo.get(key, _UNSEEN)
                if backend is _UNSEEN:
                    backend = self._memo[key] = self._evaluate(route)
                    if len(self._memo) > _MEMO_LIMIT:
                        self._memo.clear()  # callers' unknown names must not grow memory
                if backend is not None:
                    return backend
            return self._directory.backend_for(route.namespace)
        except StatusError as error:
            if error.code != 404:
                raise
            raise StatusError(404, f'{error.message}; metric "{route.metric}"') from None

    def _evaluate(self, route: MetricRoute) -> Backend | None:
        decision = self._directory.decide(route.namespace)
        tenant = decision.tenant
        if tenant is None and decision.verdict is not Verdict.UNMAPPED:
            return None  # claimed by several tenants (or an invalid name): fail closed
        own = self._own.get(tenant)
        if own is None:
            own = self._own[tenant] = self._rules.tenant_rules(tenant)
        if self._registrations is None:
            backend = rule_upstream((*own, *self._platform), route, self._backends)
            return self._share_of(backend, tenant)
        view = self._registrations.view(self._directory.decide)
        registered = view.rules.get(tenant, ()) if tenant is not None else ()
        backends = {**self._backends, **view.backends} if view.backends else self._backends
        backend = rule_upstream((*own, *registered, *self._platform), route, backends)
        if backend is None and tenant is not None:
            backend = view.defaults.get(tenant)
        return self._share_of(backend, tenant)

    def _share_of(self, backend: Backend | None, tenant: TenantName | None) -> Backend | None:
        """`tenant`'s own pool of a platform upstream (same origin and trust, its own name)."""
        if backend is None or tenant is None or backend.name not in self._platform_backends:
            return backend
        key = (backend.name, tenant)
        share = self._tenant_shares.get(key)
        if share is None:
            share = self._tenant_shares[key] = replace(backend, name=f"{backend.name}@{tenant}")
        return share


def named_upstream_tls(
    definitions: Sequence[UpstreamDefinition],
    router_client: tuple[str | None, str | None],
    on_error: Callable[[str, Exception], None],
) -> Mapping[str, tls.Reloadable[tuple[ssl.SSLContext, bytes | None]]]:
    """One client TLS context per named upstream: its own CA (or system roots), its own
    client certificate or else the router's, reloaded like every other certificate."""
    return {
        definition.trust_key: _reloadable(definition, router_client, on_error)
        for definition in definitions
    }


def _reloadable(
    definition: UpstreamDefinition,
    router_client: tuple[str | None, str | None],
    on_error: Callable[[str, Exception], None],
) -> tls.Reloadable[tuple[ssl.SSLContext, bytes | None]]:
    cert_file, key_file = (
        (definition.client_cert_file, definition.client_key_file)
        if definition.client_cert_file
        else router_client
    )
    sources: list[tls.Source] = []
    if cert_file and key_file:
        sources += [tls.file_source(cert_file), tls.file_source(key_file)]
    if definition.ca_file:
        sources.append(tls.file_source(definition.ca_file))
    has_client, has_ca = bool(cert_file and key_file), bool(definition.ca_file)

    def build(pem: Sequence[bytes]) -> tuple[ssl.SSLContext, bytes | None]:
        cert, key = (pem[0], pem[1]) if has_client else (None, None)
        return tls.client_context(cert, key, pem[-1] if has_ca else None), cert

    return tls.Reloadable(
        f"upstream {definition.name} client TLS", sources, build, on_error=on_error
    )
