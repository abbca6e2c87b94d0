"""The operator-access finalizer on an operator's RoleBindings, and when it may go.

When a namespace is deleted, the namespace controller deletes its RoleBindings in no
particular order with its ScaledObjects, whose KEDA finalizers KEDA can only remove while it
may still update them there; without our finalizer on the operator's binding the namespace
could stay Terminating for good. So it is removed only once no KEDA object is left in a
Terminating namespace (at once when the namespace is not terminating). The reloader's
RoleBinding manager and the platform controller both hold bindings by it.
"""

from __future__ import annotations

from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.kube import read_json

FINALIZER = "keda-tenancy.io/operator-access"
"""Holds a binding in a Terminating namespace until KEDA has removed its own finalizers."""
KEDA_KINDS = (
    # (group, version, plural): what KEDA puts finalizers on, and must update to remove them.
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("keda.sh", "v1alpha1", "scaledjobs"),
    ("keda.sh", "v1alpha1", "triggerauthentications"),
    ("eventing.keda.sh", "v1alpha1", "cloudeventsources"),
)


async def keda_objects_left(custom: CustomObjectsApi, namespace: str) -> bool:
    """True while any KEDA object is left in `namespace` (a kind whose CRD is not installed
    has none); raises ApiException and transport errors for the caller to retry."""
    for group, version, plural in KEDA_KINDS:
        try:
            listed = await read_json(
                custom.list_namespaced_custom_object(
                    group, version, namespace, plural, limit=1, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                continue  # that CRD is not installed
            raise
        if listed.get("items"):
            return True
    return False


async def keda_objects_block(core: CoreV1Api, custom: CustomObjectsApi, namespace: str) -> bool:
    """True when `namespace` is Terminating with KEDA objects still in it (the finalizer must
    stay); False when it is gone, not terminating, or holds none."""
    try:
        ns = await read_json(core.read_namespace(namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    if not (ns.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return await keda_objects_left(custom, namespace)
