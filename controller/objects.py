"""The objects the controller reads and writes, as pure values: grants, bindings, the set.

A tenant registers with a GRANT, a RoleBinding `keda-tenancy-controller` labelled
`keda-tenancy.io/platform-controller: grant` in its KEDA namespace; the tenant's name comes from
that namespace's name (the tenant namespace pattern), never from the object's content. Its
annotations say how to serve the tenant. In every namespace the rule gives the tenant, the
controller keeps a BINDING `keda-tenancy-operator-<tenant>` of the tenant's operator ClusterRole
to its operator ServiceAccount.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenancy_common.keda_objects import FINALIZER
from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.platform_objects import (
    BINDING_LABEL_VALUE,
    BINDING_PREFIX,
    CONTROLLER_LABEL,
    NAMESPACES_KEY,
    TENANT_LABEL,
)

GRANT_NAME = "keda-tenancy-controller"
MODE_ANNOTATION = "keda-tenancy.io/mode"
SERVICE_ACCOUNT_ANNOTATION = "keda-tenancy.io/operator-service-account"
CLUSTER_ROLE_ANNOTATION = "keda-tenancy.io/operator-clusterrole"
LEASE_ANNOTATION = "keda-tenancy.io/lease"
REPLICAS_ANNOTATION = "keda-tenancy.io/replicas"
"""Deployment mode: the operator's replicas while it has a namespace (default 1)."""
RBAC_GROUP = "rbac.authorization.k8s.io"
MODES = ("process", "deployment")
OPERATOR_DEPLOYMENT = "keda-operator"
OPERATOR_CONTAINER = "keda-operator"
WATCH_ENV = "WATCH_NAMESPACE"


class GrantError(ValueError):
    """A grant the controller cannot serve (a bad annotation): reported on the grant."""


@dataclass(frozen=True, slots=True)
class Grant:
    tenant: TenantName
    namespace: NamespaceName
    """The tenant's KEDA namespace (where the grant, the ConfigMap, Lease and Deployment are)."""
    uid: str
    mode: str
    service_account: str
    cluster_role: str
    lease: str | None
    replicas: int

    @property
    def binding_name(self) -> str:
        return BINDING_PREFIX + self.tenant


def tenant_of_namespace(pattern: re.Pattern[str], namespace: str) -> TenantName | None:
    """The tenant whose KEDA namespace `namespace` is, by the pattern; None when none."""
    match = pattern.fullmatch(namespace)
    if match is None:
        return None
    tenant = match.group("tenant")
    return TenantName(tenant) if tenant and is_dns1123_label(tenant) else None


def parse_grant(obj: Mapping[str, Any], tenant: TenantName, *, cluster_role_template: str) -> Grant:
    """The grant's settings; GrantError says what is wrong with them."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    mode = annotations.get(MODE_ANNOTATION, "")
    if mode not in MODES:
        raise GrantError(f"annotation {MODE_ANNOTATION} is {mode!r}, not one of {list(MODES)}")
    account = annotations.get(SERVICE_ACCOUNT_ANNOTATION, "")
    if not _dns1123_subdomain(account):
        raise GrantError(f"annotation {SERVICE_ACCOUNT_ANNOTATION} is {account!r}, not a name")
    role = annotations.get(CLUSTER_ROLE_ANNOTATION, "")
    expected = cluster_role_template.format(tenant=tenant) if cluster_role_template else None
    if not role or (expected is not None and role != expected):
        # Any other role would be another tenant's or a stranger's, which bind may allow.
        raise GrantError(
            f"annotation {CLUSTER_ROLE_ANNOTATION} is {role!r}"
            + (f", not {expected!r}" if expected is not None else "")
        )
    lease = annotations.get(LEASE_ANNOTATION) or None
    if lease is not None and not _dns1123_subdomain(lease):
        raise GrantError(f"annotation {LEASE_ANNOTATION} is {lease!r}, not a name")
    raw_replicas = annotations.get(REPLICAS_ANNOTATION, "1")
    if not raw_replicas.isdigit() or int(raw_replicas) < 1:
        raise GrantError(f"annotation {REPLICAS_ANNOTATION} is {raw_replicas!r}, not >= 1")
    return Grant(
        tenant=tenant,
        namespace=NamespaceName(str(meta.get("namespace", ""))),
        uid=str(meta.get("uid", "")),
        mode=mode,
        service_account=account,
        cluster_role=role,
        lease=lease,
        replicas=int(raw_replicas),
    )


_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _dns1123_subdomain(value: str) -> bool:
    return _SUBDOMAIN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Binding:
    """The slice of one of our bindings the controller decides from."""

    namespace: NamespaceName
    name: str
    tenant: TenantName
    uid: str
    resource_version: str
    cluster_role: str
    subjects: tuple[tuple[str, str, str], ...]
    finalizers: tuple[str, ...]
    deleting: bool

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Binding:
        meta = obj.get("metadata") or {}
        return cls(
            namespace=NamespaceName(str(meta.get("namespace", ""))),
            name=str(meta.get("name", "")),
            tenant=TenantName(str((meta.get("labels") or {}).get(TENANT_LABEL, ""))),
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            cluster_role=str((obj.get("roleRef") or {}).get("name", "")),
            subjects=tuple(
                (str(s.get("kind", "")), str(s.get("name", "")), str(s.get("namespace", "")))
                for s in obj.get("subjects") or ()
            ),
            finalizers=tuple(meta.get("finalizers") or ()),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def grants(self, grant: Grant) -> bool:
        """True when this binding binds exactly what `grant` asks for, under our name."""
        return (
            self.name == grant.binding_name
            and self.cluster_role == grant.cluster_role
            and self.subjects == (("ServiceAccount", grant.service_account, grant.namespace),)
        )


def binding_body(grant: Grant, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": grant.binding_name,
            "namespace": namespace,
            "labels": {
                CONTROLLER_LABEL: BINDING_LABEL_VALUE,
                TENANT_LABEL: grant.tenant,
                "app.kubernetes.io/managed-by": "keda-tenancy-controller",
            },
            "finalizers": [FINALIZER],
        },
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": grant.cluster_role},
        "subjects": [
            {"kind": "ServiceAccount", "name": grant.service_account, "namespace": grant.namespace}
        ],
    }


def published_value(configmap: Mapping[str, Any]) -> str | None:
    """The namespace set a ConfigMap holds; None: not decided yet (no key)."""
    data = configmap.get("data") or {}
    value = data.get(NAMESPACES_KEY)
    return value if isinstance(value, str) else None
