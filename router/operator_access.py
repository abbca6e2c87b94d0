"""Whether a tenant's operator watches a namespace and holds access there, read from the
objects the tenant release keeps, for the explain command only (never for routing).

The names are the tenant chart's (deploy/charts/keda-tenancy-tenant, `rbac.scope=follow`):
the operator's ClusterRole `keda-tenancy-<tenant>-operator`, bound in each of the tenant's
namespaces by the RoleBinding `keda-tenancy-<tenant>-operator-managed` to the ServiceAccount
`keda-operator` of the tenant's KEDA namespace, and (process mode) the ConfigMap
`keda-operator-watched` there, which each operator pod's reloader publishes its namespaces to.
The router reads exactly these objects by name; each tenant release grants it `get` on them.

In the platform layout (tenant chart `platformController.enabled`) the platform controller
keeps the RoleBinding `keda-tenancy-operator-<tenant>` instead, and publishes the operator's
namespaces to the ConfigMap `keda-operator-namespaces` (tenancy_common/platform_objects.py).
The router asks for the objects of both layouts at once; a tenant release grants it the
names of its own layout only, so the other answers 403 or 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenancy_common.platform_objects import NAMESPACES_CONFIGMAP, NAMESPACES_KEY, binding_name

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

WATCHED_CONFIGMAP = "keda-operator-watched"
PUBLISHED_ANNOTATION = "keda-tenancy.io/watched-published"
"""reloader/watched.py's: set on every publish (without it nothing is known)."""
OPERATOR_SERVICE_ACCOUNT = "keda-operator"
FINALIZER = "keda-tenancy.io/operator-access"
_READ_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Fact:
    known: bool | None
    """True/False when read; None when it could not be read (`detail` says why)."""
    detail: str


@dataclass(frozen=True, slots=True)
class OperatorFacts:
    watched: Fact
    access: Fact


def operator_role(tenant: str) -> str:
    return f"keda-tenancy-{tenant}-operator"


def managed_binding(tenant: str) -> str:
    return f"{operator_role(tenant)}-managed"


class OperatorAccess:
    def __init__(self, api: ApiClient | None, tenant_namespace_template: str) -> None:
        self._api = api
        self._template = tenant_namespace_template

    def keda_namespace(self, tenant: str) -> str:
        return self._template.format(tenant=tenant)

    async def facts(self, tenant: str, namespace: str) -> OperatorFacts:
        if self._api is None:
            unknown = Fact(None, "the router has no cluster access (static tenancy, CA from flags)")
            return OperatorFacts(unknown, unknown)
        watched, access = await asyncio.gather(
            self._watched(tenant, namespace), self._access(tenant, namespace)
        )
        return OperatorFacts(watched, access)

    async def _get(self, call: Awaitable[object]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, object); 0 when the API server could not be asked."""
        # Imported here: kubernetes_asyncio is ~40 MB of RSS a router without a cluster never
        # uses (see app.run()).
        from kubernetes_asyncio.client.exceptions import ApiException  # noqa: PLC0415

        from tenancy_common.kube import read_json  # noqa: PLC0415

        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                obj = await read_json(call)
        except ApiException as exc:
            return int(exc.status or 0), {}
        except (TimeoutError, OSError) as exc:
            return 0, {"error": str(exc) or type(exc).__name__}
        return 200, obj

    async def _watched(self, tenant: str, namespace: str) -> Fact:
        keda = self.keda_namespace(tenant)
        where = f"configmap {keda}/{WATCHED_CONFIGMAP}"
        from kubernetes_asyncio.client import CoreV1Api  # noqa: PLC0415 - see app.run()

        assert self._api is not None
        core = CoreV1Api(self._api)
        (status, obj), (set_status, namespace_set) = await asyncio.gather(
            self._get(
                core.read_namespaced_config_map(WATCHED_CONFIGMAP, keda, _preload_content=False)
            ),
            self._get(
                core.read_namespaced_config_map(NAMESPACES_CONFIGMAP, keda, _preload_content=False)
            ),
        )
        if set_status == 200:
            return _published(namespace, f"configmap {keda}/{NAMESPACES_CONFIGMAP}", namespace_set)
        if status == 404:
            return Fact(
                None,
                f"no {where}: a deployment-mode tenant publishes none (see WATCH_NAMESPACE of "
                f"deploy/keda-operator in {keda})",
            )
        if status != 200:
            hint = (
                "a process-mode tenant release grants it; a deployment-mode one publishes none: "
                f"see WATCH_NAMESPACE of deploy/keda-operator in {keda}"
            )
            return Fact(None, _unreadable(where, status, obj, hint))
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if PUBLISHED_ANNOTATION not in annotations:
            return Fact(None, f"{where} was never published to: no operator has started")
        pods = sorted(
            pod
            for pod, value in (obj.get("data") or {}).items()
            if namespace in str(value or "").split(",")
        )
        if pods:
            return Fact(True, f"watched by operator pod {', '.join(pods)}")
        running = len(obj.get("data") or {})
        return Fact(False, f"not in the namespaces its {running} operator pod(s) run with")

    async def _access(self, tenant: str, namespace: str) -> Fact:
        name, platform = managed_binding(tenant), binding_name(tenant)
        from kubernetes_asyncio.client import RbacAuthorizationV1Api  # noqa: PLC0415

        assert self._api is not None
        rbac = RbacAuthorizationV1Api(self._api)
        (status, obj), (platform_status, platform_obj) = await asyncio.gather(
            self._get(rbac.read_namespaced_role_binding(name, namespace, _preload_content=False)),
            self._get(
                rbac.read_namespaced_role_binding(platform, namespace, _preload_content=False)
            ),
        )
        if platform_status == 200:
            return self._platform_binding(tenant, namespace, platform_obj)
        if status == 404 and platform_status == 404:
            return Fact(False, f"RoleBinding {name} (or {platform}) missing in {namespace}")
        if status == 403 and platform_status == 404:
            return Fact(False, f"RoleBinding {platform} missing in {namespace}")
        if status == 404:
            return Fact(False, f"RoleBinding {name} missing in {namespace}")
        if status != 200:
            hint = (
                "the tenant release grants it with rbac.scope=follow and router.serviceAccount; "
                "other scopes bind the operator otherwise"
            )
            return Fact(None, _unreadable(f"RoleBinding {namespace}/{name}", status, obj, hint))
        keda = self.keda_namespace(tenant)
        role = (obj.get("roleRef") or {}).get("name")
        subjects = [
            (s.get("kind"), s.get("namespace"), s.get("name")) for s in obj.get("subjects") or []
        ]
        wanted = ("ServiceAccount", keda, OPERATOR_SERVICE_ACCOUNT)
        if role != operator_role(tenant) or subjects != [wanted]:
            return Fact(
                False,
                f"RoleBinding {name} in {namespace} does not grant ClusterRole "
                f"{operator_role(tenant)} to {keda}/{OPERATOR_SERVICE_ACCOUNT} (someone "
                "else's object holds the name; the binding manager reports it)",
            )
        metadata = obj.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            return Fact(
                True,
                f"RoleBinding {name} is being deleted, held by its finalizer {FINALIZER} "
                "until KEDA's objects in the namespace are gone",
            )
        return Fact(True, f"RoleBinding {name} grants {operator_role(tenant)}")

    def _platform_binding(self, tenant: str, namespace: str, obj: dict[str, Any]) -> Fact:
        """The platform controller's binding: the tenant's operator role to a ServiceAccount of
        its KEDA namespace (the grant names which one)."""
        name, keda = binding_name(tenant), self.keda_namespace(tenant)
        role = (obj.get("roleRef") or {}).get("name")
        subjects = [
            (s.get("kind"), s.get("namespace"), s.get("name")) for s in obj.get("subjects") or []
        ]
        if (
            role != operator_role(tenant)
            or len(subjects) != 1
            or subjects[0][:2] != ("ServiceAccount", keda)
        ):
            return Fact(
                False,
                f"RoleBinding {name} in {namespace} does not grant ClusterRole "
                f"{operator_role(tenant)} to a ServiceAccount of {keda} (not the platform "
                "controller's: it deletes and remakes it)",
            )
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return Fact(
                True,
                f"RoleBinding {name} is being deleted, held by its finalizer {FINALIZER} "
                "until KEDA's objects in the namespace are gone",
            )
        return Fact(True, f"RoleBinding {name} (platform controller) grants {role}")


def _published(namespace: str, where: str, obj: dict[str, Any]) -> Fact:
    """The platform layout's namespace set: `""` is decided empty, no key not decided yet."""
    value = (obj.get("data") or {}).get(NAMESPACES_KEY)
    if value is None:
        return Fact(
            None,
            f"{where} was never published to: the platform controller has not "
            "served this tenant yet (is its grant there?)",
        )
    if namespace in str(value).split(","):
        return Fact(True, f"published to its operator in {where}")
    return Fact(False, f"not in the namespaces published to its operator in {where}")


def _unreadable(what: str, status: int, obj: dict[str, Any], hint: str) -> str:
    if status == 403:
        return f"the router may not read {what} ({hint})"
    if status == 0:
        return f"cannot read {what}: {obj.get('error', 'no answer')}"
    return f"cannot read {what}: HTTP {status}"
