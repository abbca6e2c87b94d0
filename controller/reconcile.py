"""One tenant's reconcile: its bindings, its published namespace set, its Deployment.

Level-based: every pass reads the current state (the watched namespaces and RoleBindings, the
tenant's ConfigMap) and makes the world match it, whatever event put the tenant on the queue.

- No grant: every binding of the tenant goes (finalizer and all); nothing else is touched.
- JOIN: a binding in each Active namespace the rule gives the tenant, created BEFORE the
  namespace is published. A namespace where another tenant still holds a binding waits (it is
  on its way out of that tenant's set): two tenants' operators never hold one namespace.
- PUBLISH: the namespaces with a good binding (Terminating ones keep theirs, so KEDA can remove
  its finalizers there), sorted and comma-separated, in the ConfigMap's `data.namespaces`
  (merge patch, only when it differs). Deployment mode then applies WATCH_NAMESPACE and replicas.
- LEAVE: bindings in namespaces the tenant no longer owns are deleted at once AFTER the set
  without them was published (or failed to be: access is withdrawn whatever happens to the set).
- TERMINATING: the finalizer of a binding in a Terminating namespace goes once no KEDA object
  is left there; until then the tenant is looked at again every `terminating_recheck_s`.

A failure is raised after every step that could be done was done, as one ReconcileError.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException

from controller.objects import (
    OPERATOR_CONTAINER,
    OPERATOR_DEPLOYMENT,
    WATCH_ENV,
    Binding,
    Grant,
    GrantError,
    binding_body,
    parse_grant,
    published_value,
)
from controller.ownership import OwnershipIndex
from controller.rolebinding_store import RoleBindingStore
from tenancy_common.deployment_apply import apply_configuration
from tenancy_common.keda_objects import FINALIZER, keda_objects_left
from tenancy_common.kube import api_reason, read_json
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.platform_objects import NAMESPACES_CONFIGMAP, NAMESPACES_KEY, UPDATED_ANNOTATION

logger = logging.getLogger(__name__)

FIELD_MANAGER = "keda-tenancy-controller"
API_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)


class ReconcileError(Exception):
    """What went wrong for one tenant (its steps that could be done were done)."""


@dataclass
class Outcome:
    published: str | None = None
    """The namespace set now published (None: not published this pass)."""
    requeue_after_s: float | None = None
    waiting: dict[str, str] = field(default_factory=dict)
    """Namespace -> why it is not given to the tenant yet."""
    blocked_by: set[TenantName] = field(default_factory=set)
    """Tenants whose bindings keep a namespace from this one (to be looked at first)."""

    def requeue(self, after_s: float) -> None:
        if self.requeue_after_s is None or after_s < self.requeue_after_s:
            self.requeue_after_s = after_s


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    cluster_role_template: str = "keda-tenancy-{tenant}-operator"
    terminating_recheck_s: float = 2.0


class TenantReconciler:
    def __init__(
        self,
        api: ApiClient,
        *,
        store: RoleBindingStore,
        ownership: OwnershipIndex,
        settings: ReconcileSettings,
        tenant_namespace_pattern: re.Pattern[str],
    ) -> None:
        self._rbac = RbacAuthorizationV1Api(api)
        self._core = CoreV1Api(api)
        self._apps = AppsV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._store = store
        self._ownership = ownership
        self._settings = settings
        self._pattern = tenant_namespace_pattern
        self._creating: dict[NamespaceName, TenantName] = {}
        """Bindings being created now: held like existing ones while the call is out."""

    def holders(self, namespace: NamespaceName) -> set[TenantName]:
        holders = self._store.holders(namespace)
        creating = self._creating.get(namespace)
        if creating is not None:
            holders.add(creating)
        return holders

    async def reconcile(self, tenant: TenantName) -> Outcome:
        raw_grant = self._store.grant(tenant)
        if raw_grant is None:
            await self._withdraw(tenant)
            return Outcome()
        try:
            grant = parse_grant(
                raw_grant, tenant, cluster_role_template=self._settings.cluster_role_template
            )
        except GrantError as exc:
            raise ReconcileError(f"grant {GRANT_REF}: {exc}") from exc
        errors: list[str] = []
        outcome = Outcome()
        bound = await self._join(grant, outcome, errors)
        # Ownership may have moved while the bindings were made: publish what it says now.
        active, terminating = self._ownership.namespaces_of(tenant)
        publish = sorted(ns for ns in bound if ns in active or ns in terminating)
        value = ",".join(publish)
        try:
            if await self._publish(grant, value):
                logger.info(
                    "namespace set published",
                    extra={"tenant": tenant, "namespaces": len(publish)},
                )
            outcome.published = value
            if grant.mode == "deployment":
                await self._apply_deployment(grant, value or None)
        except (*API_ERRORS, LookupError, ValueError) as exc:
            errors.append(f"cannot publish the namespace set: {api_reason(exc)}")
        await self._leave(grant, active | terminating, errors)
        if await self._release_terminating(grant, terminating, errors):
            outcome.requeue(self._settings.terminating_recheck_s)
        if errors:
            raise ReconcileError("; ".join(errors))
        return outcome

    # -- steps -------------------------------------------------------------------------

    async def _join(self, grant: Grant, outcome: Outcome, errors: list[str]) -> set[NamespaceName]:
        """Bind every Active namespace of the tenant; the namespaces bound after it."""
        tenant = grant.tenant
        active, terminating = self._ownership.namespaces_of(tenant)
        have = self._store.bindings_of(tenant)
        bound: set[NamespaceName] = set()
        for namespace in terminating:
            existing = have.get(namespace)
            if existing is not None and existing.grants(grant):
                bound.add(namespace)  # kept while KEDA cleans up; none is made there
        for namespace in sorted(active):
            existing = have.get(namespace)
            if existing is not None and existing.deleting:
                try:
                    terminating_now = await self._terminating(namespace)
                except API_ERRORS as exc:
                    errors.append(f"cannot read namespace {namespace}: {api_reason(exc)}")
                    continue
                if terminating_now:
                    # The namespace controller deleted it before our namespace watch told us
                    # the namespace is going: it stays for KEDA (the next pass sees why).
                    if existing.grants(grant):
                        bound.add(namespace)
                    outcome.requeue(self._settings.terminating_recheck_s)
                    continue
                # Deleted by someone else, held by our finalizer: let it go, and make a new
                # one on the next pass.
                await self._remove(existing, errors)
                outcome.requeue(0.0)
                continue
            if existing is not None and existing.grants(grant):
                bound.add(namespace)
                continue
            if existing is not None:
                logger.warning(
                    "an operator RoleBinding does not match the grant, replacing it",
                    extra={"tenant": tenant, "namespace": namespace},
                )
                if not await self._remove(existing, errors):
                    continue
            others = self.holders(namespace) - {tenant}
            if others:
                outcome.waiting[namespace] = f"tenant {', '.join(sorted(others))} still holds it"
                outcome.blocked_by |= others
                continue
            if await self._create(grant, namespace, errors):
                bound.add(namespace)
            else:
                outcome.waiting[namespace] = "its binding cannot be created"
        return bound

    async def _terminating(self, namespace: NamespaceName) -> bool:
        """Whether `namespace` is being deleted (or gone), read from the API, not the cache."""
        try:
            live = await read_json(self._core.read_namespace(namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return bool((live.get("metadata") or {}).get("deletionTimestamp"))

    async def _create(self, grant: Grant, namespace: NamespaceName, errors: list[str]) -> bool:
        self._creating[namespace] = grant.tenant
        try:
            created = await read_json(
                self._rbac.create_namespaced_role_binding(
                    namespace,
                    binding_body(grant, namespace),  # type: ignore[arg-type] # sent as is
                    _preload_content=False,
                )
            )
        except API_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False  # the namespace went since the watch saw it
            reason = api_reason(exc)
            if isinstance(exc, ApiException) and exc.status == 409:
                reason = f"RoleBinding {grant.binding_name} exists there and is not ours"
            errors.append(f"cannot bind the operator in {namespace}: {reason}")
            return False
        finally:
            self._creating.pop(namespace, None)
        self._store.created(created)
        logger.info(
            "operator RoleBinding created", extra={"tenant": grant.tenant, "namespace": namespace}
        )
        return True

    async def _publish(self, grant: Grant, value: str) -> bool:
        """Write `value` into the tenant's ConfigMap unless it holds it; True when written."""
        configmap = await read_json(
            self._core.read_namespaced_config_map(
                NAMESPACES_CONFIGMAP, grant.namespace, _preload_content=False
            )
        )
        if published_value(configmap) == value:
            return False
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        patch = {
            "metadata": {"annotations": {UPDATED_ANNOTATION: stamp}},
            "data": {NAMESPACES_KEY: value},
        }
        await read_json(
            self._core.patch_namespaced_config_map(  # type: ignore[call-arg] # _content_type in **kwargs
                NAMESPACES_CONFIGMAP,
                grant.namespace,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        )
        return True

    async def _apply_deployment(self, grant: Grant, value: str | None) -> None:
        deployment = await read_json(
            self._apps.read_namespaced_deployment(
                OPERATOR_DEPLOYMENT, grant.namespace, _preload_content=False
            )
        )
        configuration = apply_configuration(
            deployment,
            container=OPERATOR_CONTAINER,
            env_name=WATCH_ENV,
            value=value,
            replicas=grant.replicas,
        )
        if configuration is None:
            return
        await read_json(
            self._apps.patch_namespaced_deployment(  # type: ignore[call-arg] # _content_type in **kwargs
                OPERATOR_DEPLOYMENT,
                grant.namespace,
                configuration,
                _content_type="application/apply-patch+yaml",  # JSON is YAML
                field_manager=FIELD_MANAGER,
                force=True,
                _preload_content=False,
            )
        )
        logger.info(
            "operator Deployment applied",
            extra={"tenant": grant.tenant, "replicas": configuration["spec"]["replicas"]},
        )

    async def _leave(self, grant: Grant, owned: set[NamespaceName], errors: list[str]) -> None:
        for namespace, binding in sorted(self._store.bindings_of(grant.tenant).items()):
            if namespace not in owned:
                await self._remove(binding, errors)

    async def _withdraw(self, tenant: TenantName) -> None:
        """The grant is gone: so goes every binding of the tenant."""
        errors: list[str] = []
        for _, binding in sorted(self._store.bindings_of(tenant).items()):
            await self._remove(binding, errors)
        if errors:
            raise ReconcileError("; ".join(errors))

    async def _release_terminating(
        self, grant: Grant, terminating: set[NamespaceName], errors: list[str]
    ) -> bool:
        """Drop our finalizer where KEDA is done; True while some binding still waits."""
        waiting = False
        have = self._store.bindings_of(grant.tenant)
        for namespace in sorted(terminating):
            binding = have.get(namespace)
            if binding is None or FINALIZER not in binding.finalizers:
                continue
            try:
                if await keda_objects_left(self._custom, namespace):
                    waiting = True
                    continue
                await self._strip_finalizer(binding)
            except API_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status in (404, 409):
                    waiting = True  # gone or changed since the watch saw it: look again
                    continue
                errors.append(f"cannot release the binding in {namespace}: {api_reason(exc)}")
        return waiting

    # -- removing one binding ----------------------------------------------------------

    async def _remove(self, binding: Binding, errors: list[str]) -> bool:
        """Delete one of our bindings now, finalizer included; True when it is gone."""
        try:
            current = await read_json(
                self._rbac.read_namespaced_role_binding(
                    binding.name, binding.namespace, _preload_content=False
                )
            )
            meta = current.get("metadata") or {}
            if meta.get("uid") != binding.uid:
                self._store.removed(binding.namespace, binding.name)
                return True  # replaced by someone: not the one we hold
            if FINALIZER in (meta.get("finalizers") or ()):
                await self._strip_finalizer(Binding.from_object(current))
            await read_json(
                self._rbac.delete_namespaced_role_binding(
                    binding.name,
                    binding.namespace,
                    body={"preconditions": {"uid": binding.uid}},  # type: ignore[arg-type]
                    _preload_content=False,
                )
            )
        except API_ERRORS as exc:
            if not (isinstance(exc, ApiException) and exc.status == 404):
                errors.append(
                    f"cannot remove the binding in {binding.namespace}: {api_reason(exc)}"
                )
                return False
        self._store.removed(binding.namespace, binding.name)
        logger.info(
            "operator RoleBinding removed",
            extra={"tenant": binding.tenant, "namespace": binding.namespace},
        )
        return True

    async def _strip_finalizer(self, binding: Binding) -> dict[str, Any]:
        rest = [f for f in binding.finalizers if f != FINALIZER]
        patch = {
            "metadata": {"finalizers": rest or None, "resourceVersion": binding.resource_version}
        }
        return await read_json(
            self._rbac.patch_namespaced_role_binding(  # type: ignore[call-arg] # _content_type in **kwargs
                binding.name,
                binding.namespace,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        )


GRANT_REF = "RoleBinding keda-tenancy-controller"
