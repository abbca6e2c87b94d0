"""`--mode=uninstall`: what a tenant release leaves at run time, removed once its pods are gone.

The tenant chart runs this as a post-delete hook Job (deploy/README.md, Uninstall). Helm has
deleted the release's objects by then; what its components made at run time stays:

- the operator's RoleBindings in the tenant's namespaces, each held by our finalizer, which only
  the (now deleted) RoleBinding manager removes: a namespace deleted later would stay Terminating;
- KEDA's finalizer `finalizer.keda.sh` on the ScaledObjects (and other KEDA objects) left in those
  namespaces: only a running KEDA removes it, and with none left the namespace would hang too;
- the operator's leader-election Lease and the certificate Secrets the router release's
  certificate controller wrote in the release namespace.

Nothing is touched while a pod of the release still exists (proof that no manager re-creates a
binding and no KEDA still holds its finalizers): the pods' deletion by Helm is waited for. KEDA's
finalizer is removed only where our binding was (where this tenant's KEDA could have put it) and
no other tenant's binding is (where no other KEDA still may act on it). A Secret is deleted only
when the certificate controller made it (its label). Then a pass that finds nothing left ends it.

The platform layout (`platform`: the tenant chart's pre-delete hook) differs in three ways. The
bindings are the platform controller's (labels keda-tenancy.io/platform-controller=binding and
keda-tenancy.io/tenant): they only say where the tenant's namespaces are and are never touched
(the controller deletes them once Helm has deleted the grant). The operator is stopped first by
deleting its Deployment (`stop_deployment`; Helm would delete it next anyway): the controller
server-side-applies replicas in deployment mode and would scale a scaled-down operator up again,
but it only applies to a Deployment it has read, and its partial apply cannot create one. And the
certificate controller's RoleBinding is deleted before its Secrets (`revoke_rolebindings`): the
release still exists, so its full pass would otherwise write them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.rolebindings import OWNER_LABEL
from tenancy_common.keda_objects import FINALIZER, KEDA_KINDS
from tenancy_common.kube import read_json
from tenancy_common.lifecycle import wait_stopped
from tenancy_common.platform_objects import (
    BINDING_LABEL_VALUE,
    CONTROLLER_LABEL,
    TENANT_LABEL,
    binding_name,
)

logger = logging.getLogger(__name__)

KEDA_FINALIZER = "finalizer.keda.sh"
"""What KEDA puts on its objects (controllers/keda/*_finalizer.go), removed by KEDA only."""
CERTS_MANAGED_BY = ("app.kubernetes.io/managed-by", "keda-tenancy-certs")
"""The label the router release's certificate controller puts on every Secret it writes."""
_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class UninstallSettings:
    tenant: str
    binding_name: str
    """Name of the tenant's managed RoleBindings (with our label: ours to remove)."""
    pods: tuple[str, str]
    """(namespace, label selector): the release's pods; nothing is done while one exists."""
    lease: tuple[str, str] | None
    """(namespace, name) of the operator's leader-election Lease."""
    secrets: tuple[tuple[str, str], ...]
    """(namespace, name) of the certificate controller's Secrets of this release."""
    timeout_s: float
    poll_s: float = 1.0
    platform: bool = False
    """The platform layout: the bindings are the controller's, found by its labels, not touched."""
    stop_deployment: tuple[str, str] | None = None
    """(namespace, name) of the operator's Deployment, deleted before the pods are waited for."""
    revoke_rolebindings: tuple[tuple[str, str], ...] = ()
    """(namespace, name) of RoleBindings deleted before the Secrets (their writer's access)."""


@dataclass
class Left:
    """What one pass found still there (and tried to remove)."""

    bindings: list[str]
    keda_objects: list[str]
    other: list[str]
    errors: list[str]
    changed: int = 0
    """Writes that succeeded in this pass (another pass follows at once)."""
    keda_pending: set[str] = field(default_factory=set)
    """Namespaces where KEDA's finalizer could not be removed yet (retried next pass)."""

    def __bool__(self) -> bool:
        return bool(self.bindings or self.keda_objects or self.other or self.errors)

    def describe(self) -> str:
        parts = [
            f"{what}: {', '.join(items)}"
            for what, items in (
                ("RoleBindings", self.bindings),
                ("KEDA objects with finalizer.keda.sh", self.keda_objects),
                ("other", self.other),
                ("errors", self.errors),
            )
            if items
        ]
        return "; ".join(parts) or "nothing"


class Uninstaller:
    def __init__(
        self,
        api: ApiClient,
        settings: UninstallSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rbac = RbacAuthorizationV1Api(api)
        self._core = CoreV1Api(api)
        self._custom = CustomObjectsApi(api)
        self._coordination = CoordinationV1Api(api)
        self._apps = AppsV1Api(api)
        self._settings = settings
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> int:
        """0 once a pass after the pods are gone finds nothing left; 1 at the timeout."""
        settings = self._settings
        deadline = self._clock() + settings.timeout_s
        last = "not started"
        stopped = settings.stop_deployment is None
        while not stop.is_set():
            problem: str | None = None
            if not stopped:
                problem = await self._stop_deployment()
                stopped = problem is None
            pods = [problem] if problem else await self._pods_left()
            if pods:
                last = f"pods of the release still exist: {', '.join(pods)}"
                logger.info("waiting for the release's pods to be gone", extra={"pods": pods})
            else:
                left = await self.release_once()
                if not left:
                    logger.info("nothing of the tenant is left", extra={"tenant": settings.tenant})
                    return 0
                last = left.describe()
                if left.changed and not left.errors:
                    continue  # progress (a delete leaves a finalizer to remove next): go on
            if self._clock() >= deadline:
                break
            if await wait_stopped(stop, settings.poll_s):
                break
        logger.error(
            "uninstall cleanup incomplete: see deploy/README.md, Uninstall, for the manual steps",
            extra={"tenant": settings.tenant, "left": last},
        )
        return 1

    async def _stop_deployment(self) -> str | None:
        """Delete the operator's Deployment (its pods go with it); None once it is gone."""
        assert self._settings.stop_deployment is not None
        namespace, name = self._settings.stop_deployment
        try:
            await read_json(
                self._apps.delete_namespaced_deployment(
                    name,
                    namespace,
                    body={"propagationPolicy": "Background"},  # type: ignore[arg-type] # sent as is
                    _preload_content=False,
                )
            )
        except _ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return None
            return f"(cannot delete Deployment {namespace}/{name}: {_reason(exc)})"
        logger.info("operator Deployment deleted", extra={"namespace": namespace, "object": name})
        return None

    async def _pods_left(self) -> list[str]:
        namespace, selector = self._settings.pods
        try:
            listed = await read_json(
                self._core.list_namespaced_pod(
                    namespace, label_selector=selector, _preload_content=False
                )
            )
        except _ERRORS as exc:
            return [f"(cannot list pods: {_reason(exc)})"]
        return sorted(item["metadata"]["name"] for item in listed.get("items") or [])

    async def release_once(self) -> Left:
        """One pass: each step's failure is recorded and the others still run."""
        left = Left([], [], [], [])
        try:
            ours, others = await self._bindings()
        except _ERRORS as exc:
            left.errors.append(f"cannot list RoleBindings: {_reason(exc)}")
            ours, others = {}, set()
        for namespace in sorted(set(ours) - others):
            await self._release_keda(namespace, left)
        # The platform layout's bindings are the controller's: it deletes them when Helm has
        # deleted the grant.
        for namespace, binding in sorted({} if self._settings.platform else ours.items()):
            left.bindings.append(namespace)
            if namespace in left.keda_pending:
                continue  # the binding is how that namespace is found again: keep it for now
            await self._release_binding(namespace, binding, left)
        if self._settings.lease is not None:
            await self._delete_lease(*self._settings.lease, left)
        for namespace, name in self._settings.revoke_rolebindings:
            await self._revoke(namespace, name, left)
        for namespace, name in self._settings.secrets:
            await self._delete_secret(namespace, name, left)
        return left

    async def _bindings(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Our bindings by namespace, and the namespaces where another tenant's binding is
        (of either layout: a cluster may run both while tenants move)."""
        tenant = self._settings.tenant
        ours: dict[str, dict[str, Any]] = {}
        others: set[str] = set()
        for item in await self._list_bindings(OWNER_LABEL):
            metadata = item["metadata"]
            if metadata["labels"].get(OWNER_LABEL) != tenant:
                others.add(metadata["namespace"])
            elif not self._settings.platform and metadata["name"] == self._settings.binding_name:
                ours[metadata["namespace"]] = item
        for item in await self._list_bindings(f"{CONTROLLER_LABEL}={BINDING_LABEL_VALUE}"):
            metadata = item["metadata"]
            if metadata["labels"].get(TENANT_LABEL) != tenant:
                others.add(metadata["namespace"])
            elif self._settings.platform and metadata["name"] == binding_name(tenant):
                ours[metadata["namespace"]] = item
        return ours, others

    async def _list_bindings(self, selector: str) -> list[dict[str, Any]]:
        listed = await read_json(
            self._rbac.list_role_binding_for_all_namespaces(
                label_selector=selector, _preload_content=False
            )
        )
        return list(listed.get("items") or [])

    async def _release_keda(self, namespace: str, left: Left) -> None:
        for group, version, plural in KEDA_KINDS:
            try:
                listed = await read_json(
                    self._custom.list_namespaced_custom_object(
                        group, version, namespace, plural, _preload_content=False
                    )
                )
            except _ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    continue  # that CRD is not installed
                left.keda_pending.add(namespace)
                left.errors.append(f"cannot list {plural} in {namespace}: {_reason(exc)}")
                continue
            for item in listed.get("items") or []:
                metadata = item["metadata"]
                finalizers = list(metadata.get("finalizers") or [])
                if KEDA_FINALIZER not in finalizers:
                    continue
                what = f"{plural}/{namespace}/{metadata['name']}"
                left.keda_objects.append(what)
                rest = [f for f in finalizers if f != KEDA_FINALIZER]
                patch = {
                    "metadata": {
                        "finalizers": rest or None,
                        "resourceVersion": metadata.get("resourceVersion"),
                    }
                }
                try:
                    await read_json(
                        self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg] # _content_type is read from **kwargs
                            group,
                            version,
                            namespace,
                            plural,
                            metadata["name"],
                            patch,
                            _content_type="application/merge-patch+json",
                            _preload_content=False,
                        )
                    )
                except _ERRORS as exc:
                    if isinstance(exc, ApiException) and exc.status == 404:
                        continue  # gone
                    left.keda_pending.add(namespace)
                    if not (isinstance(exc, ApiException) and exc.status == 409):
                        left.errors.append(f"cannot release {what}: {_reason(exc)}")
                    continue  # a 409: changed since listed, the next pass sees it anew
                left.changed += 1
                logger.info("KEDA's finalizer removed", extra={"object": what})

    async def _release_binding(self, namespace: str, binding: dict[str, Any], left: Left) -> None:
        metadata = binding["metadata"]
        name = metadata["name"]
        try:
            if not metadata.get("deletionTimestamp"):
                body = {"preconditions": {"uid": metadata["uid"]}}
                await read_json(
                    self._rbac.delete_namespaced_role_binding(
                        name,
                        namespace,
                        body=body,  # type: ignore[arg-type] # a dict is sent as is
                        _preload_content=False,
                    )
                )
                left.changed += 1
                return  # its finalizer holds it: removed at the next pass, from what is listed
            finalizers = list(metadata.get("finalizers") or [])
            if FINALIZER not in finalizers:
                return  # someone else's finalizer holds it: theirs to remove
            rest = [f for f in finalizers if f != FINALIZER]
            patch = {
                "metadata": {
                    "finalizers": rest or None,
                    "resourceVersion": metadata.get("resourceVersion"),
                }
            }
            await read_json(
                self._rbac.patch_namespaced_role_binding(  # type: ignore[call-arg] # _content_type is read from **kwargs
                    name,
                    namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                )
            )
        except _ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status in (404, 409):
                return
            left.errors.append(f"cannot release RoleBinding {namespace}/{name}: {_reason(exc)}")
            return
        left.changed += 1
        logger.info("operator RoleBinding released", extra={"namespace": namespace})

    async def _delete_lease(self, namespace: str, name: str, left: Left) -> None:
        try:
            await read_json(
                self._coordination.delete_namespaced_lease(name, namespace, _preload_content=False)
            )
        except _ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return
            left.errors.append(f"cannot delete Lease {namespace}/{name}: {_reason(exc)}")
            return
        left.other.append(f"lease/{namespace}/{name}")
        left.changed += 1
        logger.info("operator Lease deleted", extra={"namespace": namespace, "lease": name})

    async def _revoke(self, namespace: str, name: str, left: Left) -> None:
        try:
            await read_json(
                self._rbac.delete_namespaced_role_binding(name, namespace, _preload_content=False)
            )
        except _ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return
            left.errors.append(f"cannot delete RoleBinding {namespace}/{name}: {_reason(exc)}")
            return
        left.other.append(f"rolebinding/{namespace}/{name}")
        left.changed += 1
        logger.info("RoleBinding deleted", extra={"namespace": namespace, "object": name})

    async def _delete_secret(self, namespace: str, name: str, left: Left) -> None:
        try:
            secret = await read_json(
                self._core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
            labels = (secret.get("metadata") or {}).get("labels") or {}
            if labels.get(CERTS_MANAGED_BY[0]) != CERTS_MANAGED_BY[1]:
                logger.info(
                    "Secret not made by keda-tenancy-certs: left alone",
                    extra={"namespace": namespace, "secret": name},
                )
                return
            body = {"preconditions": {"uid": secret["metadata"]["uid"]}}
            await read_json(
                self._core.delete_namespaced_secret(
                    name,
                    namespace,
                    body=body,  # type: ignore[arg-type] # a dict is sent as is
                    _preload_content=False,
                )
            )
        except _ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status in (404, 409):
                return
            left.errors.append(f"cannot delete Secret {namespace}/{name}: {_reason(exc)}")
            return
        left.other.append(f"secret/{namespace}/{name}")
        left.changed += 1
        logger.info("certificate Secret deleted", extra={"namespace": namespace, "secret": name})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status}: {exc.reason}"
    return str(exc) or type(exc).__name__


def parse_refs(flag: str, text: str) -> tuple[tuple[str, str], ...]:
    """'NS/NAME,NS/NAME' -> ((ns, name), ...); ValueError names the flag."""
    refs: list[tuple[str, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        namespace, _, name = part.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"{flag} wants NAMESPACE/NAME[,...], not {text!r}")
        refs.append((namespace, name))
    return tuple(refs)
