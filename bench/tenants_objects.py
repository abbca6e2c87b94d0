"""The objects of `bench.tenants`: what N tenant releases in the platform layout put in the API,
built from ONE rendering of the tenant chart (helm for 1,000 releases is too slow) with the
tenant's name substituted, so they are what the chart renders, not a copy of it.

Pure functions (no API calls); tests/unit/test_bench_tenants.py checks them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TENANT_LABEL = "keda-tenancy.io/tenant"
PLATFORM_LABEL = "keda-tenancy.io/platform-controller"
NAMESPACES_CONFIGMAP = "keda-operator-namespaces"
PLACEHOLDER = "zqtenantzq"
"""The tenant name the chart is rendered for once; replaced by each tenant's name. It appears
in no other string of the chart."""

# What a tenant release creates that the controller reads, is bounded by, or caches: its RBAC
# (the grant, the bind ClusterRole, the operator's ClusterRole/Role, the other components'
# ServiceAccounts and roles) and the data-less namespace set. Left out: Deployments, Services,
# NetworkPolicies (nothing runs them here), the admission webhook configuration (it would call
# a webhook that does not exist) and the admission policy (not in the controller's path).
KINDS = frozenset(
    {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap"}
)

# kind -> (API path prefix, resource, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Pod": ("/api/v1", "pods", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
}


def collection_path(kind: str, namespace: str = "") -> str:
    """The URL path objects of `kind` are created at (POST)."""
    prefix, resource, namespaced = RESOURCES[kind]
    if namespaced:
        if not namespace:
            raise ValueError(f"a {kind} needs a namespace")
        return f"{prefix}/namespaces/{namespace}/{resource}"
    return f"{prefix}/{resource}"


def object_path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['kind'], meta.get('namespace', ''))}/{meta['name']}"


def tenant_name(index: int) -> str:
    return f"t{index:04d}"


def keda_namespace(tenant: str) -> str:
    return f"keda-{tenant}"


def app_namespaces(tenant: str, count: int) -> list[str]:
    return [f"{tenant}-ns{i:02d}" for i in range(count)]


def binding_name(tenant: str) -> str:
    """The RoleBinding the controller keeps in each of the tenant's namespaces (CONTRACT-21 3)."""
    return f"keda-tenancy-operator-{tenant}"


def namespace(name: str, tenant: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if tenant is not None:
        meta["labels"] = {TENANT_LABEL: tenant}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def label_patch(tenant: str | None) -> dict[str, Any]:
    """Merge patch of a Namespace: into `tenant`, or out of every tenant (None)."""
    return {"metadata": {"labels": {TENANT_LABEL: tenant}}}


def template_objects(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """From a rendered tenant release (for PLACEHOLDER): the objects every tenant gets, and an
    operator Pod from its keda-operator Deployment's template (the controller watches those;
    with no kubelet it stays Pending)."""
    picked: list[dict[str, Any]] = []
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        if "helm.sh/hook" in annotations:
            continue  # exists only while `helm uninstall` runs
        if doc["kind"] in KINDS:
            picked.append(copy.deepcopy(dict(doc)))
        elif doc["kind"] == "Deployment" and doc["metadata"]["name"] == "keda-operator":
            picked.append(operator_pod(doc))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in picked}
    missing = {("RoleBinding", "keda-tenancy-controller"), ("ConfigMap", NAMESPACES_CONFIGMAP)}
    if not missing <= kinds:
        raise ValueError(
            f"the tenant chart rendered no {sorted(missing - kinds)}: "
            "is platformController.enabled set?"
        )
    return picked


def operator_pod(deployment: Mapping[str, Any]) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "keda-operator-0",
            "namespace": deployment["metadata"]["namespace"],
            "labels": dict(template["metadata"].get("labels") or {}),
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def lease(namespace_: str, name: str) -> dict[str, Any]:
    """The operator's leader-election Lease (KEDA creates it; nobody holds it here)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace_},
        "spec": {"leaseDurationSeconds": 60},
    }


def for_tenant(template: Sequence[Mapping[str, Any]], tenant: str) -> list[dict[str, Any]]:
    """The template's objects with PLACEHOLDER replaced by `tenant` (names, namespaces, labels,
    annotations, subjects), plus the tenant's Lease (named as the grant's annotation says)."""
    text = json.dumps(list(template)).replace(PLACEHOLDER, tenant)
    objects: list[dict[str, Any]] = json.loads(text)
    grant = next(
        o
        for o in objects
        if o["kind"] == "RoleBinding" and PLATFORM_LABEL in o["metadata"]["labels"]
    )
    objects.append(
        lease(keda_namespace(tenant), grant["metadata"]["annotations"]["keda-tenancy.io/lease"])
    )
    return objects


def creation_order(objects: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Waves that can each be created in parallel: Namespaces, then ServiceAccounts (a Pod's
    admission needs its account), then everything else, the grant RoleBindings last (the
    controller then finds each tenant's Role and bind ClusterRole already there)."""
    waves: list[list[dict[str, Any]]] = [[], [], [], []]
    for obj in objects:
        if obj["kind"] == "Namespace":
            waves[0].append(obj)
        elif obj["kind"] == "ServiceAccount":
            waves[1].append(obj)
        elif obj["kind"] == "RoleBinding" and PLATFORM_LABEL in (
            obj["metadata"].get("labels") or {}
        ):
            waves[3].append(obj)
        else:
            waves[2].append(obj)
    return [w for w in waves if w]


def namespaces_in(configmap: Mapping[str, Any]) -> frozenset[str] | None:
    """The published namespace set (None: not decided yet)."""
    data = configmap.get("data") or {}
    if "namespaces" not in data:
        return None
    return frozenset(n for n in str(data["namespaces"]).split(",") if n)
