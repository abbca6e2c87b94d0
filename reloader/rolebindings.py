"""RoleBindings that give the tenant's operator its ClusterRole in each of its namespaces.

Only bindings that carry our ownership label (value: the tenant) *and* our name are ever
deleted; anything else in a namespace is left alone. A binding is created for every
desired namespace and deleted only once the namespace is neither desired nor still
watched by a running operator (`keep`), so the operator never loses access to a namespace
it still watches. Deletes carry the uid we listed as a precondition: an object someone
replaced in between is not ours to remove.

The component running this holds `create`/`delete`/`list`/`patch` on RoleBindings and
`bind` on exactly the tenant operator's ClusterRole, so Kubernetes' escalation check stops it
from granting anything else; it is never the operator's own ServiceAccount.

Each binding carries a finalizer. When a namespace is deleted, the namespace controller
deletes its RoleBindings in no particular order with its ScaledObjects, whose KEDA finalizers
KEDA can only remove while it may still update them there; without ours the namespace could
stay Terminating for good. So ours is removed only once no KEDA object is left in a
Terminating namespace (at once when the namespace is not terminating: our own delete).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge

from tenancy_common.keda_objects import FINALIZER, keda_objects_block
from tenancy_common.kube import api_reason, read_json

logger = logging.getLogger(__name__)

OWNER_LABEL = "keda-tenancy.io/role-binding-of"
"""Value: the tenant. Marks the RoleBindings this manager created (and may delete)."""
RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """What one managed RoleBinding says: the tenant's ClusterRole to its operator."""

    tenant: str
    cluster_role: str
    subject_namespace: str
    subject_name: str
    name: str

    @property
    def selector(self) -> str:
        return f"{OWNER_LABEL}={self.tenant}"

    def body(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "labels": {
                    OWNER_LABEL: self.tenant,
                    "app.kubernetes.io/managed-by": "keda-tenancy-reloader",
                },
                "finalizers": [FINALIZER],
            },
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": self.cluster_role},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": self.subject_name,
                    "namespace": self.subject_namespace,
                }
            ],
        }

    def owns(self, binding: dict[str, Any]) -> bool:
        metadata = binding.get("metadata") or {}
        labels = metadata.get("labels") or {}
        return bool(metadata.get("name") == self.name and labels.get(OWNER_LABEL) == self.tenant)

    def grants(self, binding: dict[str, Any]) -> bool:
        """True when `binding` binds exactly our role to exactly our subject."""
        wanted = self.body("")
        return bool(
            binding.get("roleRef") == wanted["roleRef"]
            and [_subject(s) for s in binding.get("subjects") or []] == wanted["subjects"]
        )


def _subject(subject: dict[str, Any]) -> dict[str, Any]:
    return {k: subject.get(k) for k in ("kind", "name", "namespace")}


class BindingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "keda_tenancy_reloader_"
        self.bindings = Gauge(
            prefix + "role_bindings",
            "RoleBindings this component manages for the operator (after the last reconcile).",
            registry=registry,
        )
        self.errors = Counter(
            prefix + "role_binding_errors",
            "Failed RoleBinding operations, by operation (list, create, delete, release).",
            ["operation"],
            registry=registry,
        )
        self.waiting = Gauge(
            prefix + "namespaces_waiting_for_access",
            "Desired namespaces kept out of WATCH_NAMESPACE because the operator cannot read "
            "them yet (no RoleBinding, or it could not be created).",
            registry=registry,
        )


@dataclass
class ReconcileResult:
    bound: set[str] = field(default_factory=set)
    """Namespaces with a good binding after this pass."""
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Namespace -> why its binding could not be created (or removed)."""


class RoleBindingError(Exception):
    """The RoleBindings could not even be listed; nothing was changed."""


class RoleBindingManager:
    def __init__(self, api: ApiClient, spec: BindingSpec, metrics: BindingMetrics) -> None:
        self._rbac = RbacAuthorizationV1Api(api)
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self.spec = spec
        self._metrics = metrics
        # The binding loop and, in deployment mode, the gate before each patch both create
        # bindings; one at a time, so neither takes the other's new binding for a stranger's.
        self._lock = asyncio.Lock()

    async def owned(self) -> dict[str, dict[str, Any]]:
        """Our bindings by namespace (label and name both ours)."""
        try:
            listed = await read_json(
                self._rbac.list_role_binding_for_all_namespaces(
                    label_selector=self.spec.selector, _preload_content=False
                )
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.errors.labels("list").inc()
            raise RoleBindingError(f"cannot list RoleBindings: {api_reason(exc)}") from exc
        return {
            item["metadata"]["namespace"]: item
            for item in listed.get("items") or []
            if self.spec.owns(item)
        }

    async def reconcile(
        self, desired: Iterable[str], keep: Iterable[str] | Callable[[str], bool] = ()
    ) -> ReconcileResult:
        """Bind every desired namespace; unbind ours that are neither desired nor kept (`keep`:
        the namespaces, or asked for each good binding of ours outside `desired`)."""
        keeps = keep if callable(keep) else set(keep).__contains__
        async with self._lock:
            return await self._reconcile(set(desired), keeps)

    async def _reconcile(self, desired: set[str], keeps: Callable[[str], bool]) -> ReconcileResult:
        wanted = desired
        owned = await self.owned()
        result = ReconcileResult()
        for namespace, binding in sorted(owned.items()):
            if _deleting(binding):
                # Still in force until its finalizer goes; not made anew while it exists.
                result.bound.discard(namespace)
                wanted.discard(namespace)
                await self._release(namespace, binding, result)
                continue
            good = self.spec.grants(binding)
            if good and (namespace in wanted or keeps(namespace)):
                result.bound.add(namespace)
                continue
            if not good:  # edited behind our back: what it grants is not what we bind
                logger.warning(
                    "a managed RoleBinding was changed, replacing it",
                    extra={"namespace": namespace, "binding": self.spec.name},
                )
            if await self._delete(namespace, binding, result):
                result.deleted.append(namespace)
                await self._release_after_delete(namespace, result)
        for namespace in sorted(wanted - result.bound):
            if await self._create(namespace, result):
                result.created.append(namespace)
                result.bound.add(namespace)
        self._metrics.bindings.set(len(result.bound))
        if result.created or result.deleted:
            logger.info(
                "operator RoleBindings updated",
                extra={
                    "bound_in": result.created,
                    "unbound_from": result.deleted,
                    "bindings": len(result.bound),
                },
            )
        return result

    async def ensure(self, namespaces: Iterable[str]) -> ReconcileResult:
        """Create the missing bindings of `namespaces`, deleting nothing."""
        async with self._lock:
            return await self._ensure(namespaces)

    async def _ensure(self, namespaces: Iterable[str]) -> ReconcileResult:
        owned = await self.owned()
        result = ReconcileResult()
        for namespace in sorted(set(namespaces)):
            binding = owned.get(namespace)
            if binding is not None and _deleting(binding):
                result.failed[namespace] = "its RoleBinding is being deleted"
            elif binding is not None and self.spec.grants(binding):
                result.bound.add(namespace)
            elif binding is not None:
                result.failed[namespace] = "a RoleBinding of ours there was changed"
            elif await self._create(namespace, result):
                result.created.append(namespace)
                result.bound.add(namespace)
        if result.created:
            logger.info("operator RoleBindings created", extra={"bound_in": result.created})
        return result

    async def _create(self, namespace: str, result: ReconcileResult) -> bool:
        try:
            await read_json(
                self._rbac.create_namespaced_role_binding(
                    namespace,
                    self.spec.body(namespace),  # type: ignore[arg-type] # a dict is sent as is
                    _preload_content=False,
                )
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            reason = api_reason(exc)
            if isinstance(exc, ApiException) and exc.status == 404:
                # The namespace went away since our cache saw it: nothing to bind, no error.
                logger.debug("namespace gone before its binding", extra={"namespace": namespace})
                return False
            if isinstance(exc, ApiException) and exc.status == 409:
                reason = (
                    f"RoleBinding {self.spec.name} exists there and is not ours (no "
                    f"{self.spec.selector} label): left alone"
                )
            self._metrics.errors.labels("create").inc()
            result.failed[namespace] = f"cannot create RoleBinding: {reason}"
            logger.error(
                "cannot bind the operator in a namespace",
                extra={"namespace": namespace, "error": reason},
            )
            return False
        return True

    async def _delete(
        self, namespace: str, binding: dict[str, Any], result: ReconcileResult
    ) -> bool:
        uid = (binding.get("metadata") or {}).get("uid")
        body = {"preconditions": {"uid": uid}} if uid else {}
        try:
            await read_json(
                self._rbac.delete_namespaced_role_binding(
                    self.spec.name,
                    namespace,
                    body=body,  # type: ignore[arg-type] # a dict is sent as is
                    _preload_content=False,
                )
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return True  # gone already (the namespace was deleted, say)
            self._metrics.errors.labels("delete").inc()
            result.failed[namespace] = f"cannot delete RoleBinding: {api_reason(exc)}"
            logger.error(
                "cannot remove an operator RoleBinding",
                extra={"namespace": namespace, "error": api_reason(exc)},
            )
            return False
        return True

    async def _release_after_delete(self, namespace: str, result: ReconcileResult) -> None:
        """Our own delete leaves the binding pending on our finalizer: release it now."""
        owned = await self.owned()
        binding = owned.get(namespace)
        if binding is not None and _deleting(binding):
            await self._release(namespace, binding, result)

    async def _release(
        self, namespace: str, binding: dict[str, Any], result: ReconcileResult
    ) -> None:
        """Remove our finalizer from a binding being deleted, once KEDA is done there."""
        metadata = binding.get("metadata") or {}
        finalizers = list(metadata.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        try:
            if not await self._keda_done(namespace):
                return
            rest = [f for f in finalizers if f != FINALIZER]
            patch = {
                "metadata": {
                    "finalizers": rest or None,
                    "resourceVersion": metadata.get("resourceVersion"),
                }
            }
            await read_json(
                self._rbac.patch_namespaced_role_binding(  # type: ignore[call-arg] # _content_type is read from **kwargs
                    self.spec.name,
                    namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, ApiException) and exc.status in (404, 409):
                return  # gone, or changed since we listed: the next pass sees it anew
            self._metrics.errors.labels("release").inc()
            result.failed[namespace] = f"cannot release RoleBinding: {api_reason(exc)}"
            return
        logger.info("operator RoleBinding released", extra={"namespace": namespace})

    async def _keda_done(self, namespace: str) -> bool:
        """True unless the namespace is Terminating with KEDA objects still in it."""
        return not await keda_objects_block(self._core, self._custom, namespace)


def _deleting(binding: dict[str, Any]) -> bool:
    return bool((binding.get("metadata") or {}).get("deletionTimestamp"))
