"""Namespace -> tenant -> backend, from the tenancy rule and the namespace cache.

Decisions, and the backend of each routed namespace, are memoised per namespace and
dropped on every cache change, so a routed request costs one dictionary lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from router.backends import Backend, BackendResolver
from router.metrics import RouterMetrics
from router.status import StatusError
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import Decision, TenancyRule, Verdict

logger = logging.getLogger(__name__)

_MEMO_LIMIT = 100_000

NamespaceView = Callable[[], Mapping[NamespaceName, Namespace]]


class TenantDirectory:
    def __init__(
        self,
        rule: TenancyRule,
        resolver: BackendResolver,
        namespaces: NamespaceView | None,
        metrics: RouterMetrics,
        synced: Callable[[], bool] = lambda: True,
    ) -> None:
        """`namespaces` is None when only a static file decides (no cluster)."""
        self._rule = rule
        self._resolver = resolver
        self._namespaces = namespaces
        self._metrics = metrics
        self._memo: dict[NamespaceName, Decision] = {}
        self._backends: dict[NamespaceName, Backend] = {}  # routed namespaces only
        self._synced = synced

    def invalidate(self) -> None:
        self._memo.clear()
        self._backends.clear()

    def decide(self, name: NamespaceName) -> Decision:
        decision = self._memo.get(name)
        if decision is None:
            if not self._synced():
                # An empty cache would answer "no such tenant" for everything: say "not yet".
                raise StatusError(503, "the router has not synced the namespace list yet")
            if self._namespaces is None:
                decision = self._rule.decide(Namespace(name), {})
            else:
                everything = self._namespaces()
                namespace = everything.get(name)
                decision = (
                    Decision(Verdict.UNMAPPED)
                    if namespace is None
                    else self._rule.decide(namespace, everything)
                )
            if decision.verdict in (Verdict.CONFLICT, Verdict.INVALID_TENANT):
                logger.warning(
                    "namespace owned by no tenant: %s",
                    decision.verdict.value,
                    extra={"namespace": name, "candidates": sorted(decision.candidates)},
                )
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()  # unknown names from callers must not grow memory forever
            self._memo[name] = decision
        return decision

    def backend_for(self, name: NamespaceName) -> Backend:
        """The backend for a namespace, or StatusError(404); conflicts never fall through."""
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        decision = self.decide(name)
        if decision.tenant is not None:
            backend = self._resolver.for_tenant(decision.tenant)
            if len(self._backends) >= _MEMO_LIMIT:
                self._backends.clear()
            self._backends[name] = backend
            return backend
        self._metrics.unroutable.labels(decision.verdict.value).inc()
        if decision.verdict is Verdict.UNMAPPED:
            if self._resolver.default is not None:
                return self._resolver.default
            raise StatusError(404, f'namespace "{name}" is not served by any tenant')
        # Claimed by several tenants (or by an invalid name): fail closed.
        raise StatusError(
            404, f'namespace "{name}" is not served by any tenant ({decision.verdict.value})'
        )
