"""Deployment mode: patch the operator container's env and let Kubernetes roll it.

No PATCH is sent when the value already matches. An empty namespace set is never
written (KEDA reads an empty WATCH_NAMESPACE as *all namespaces*). Leaving the old value
is no safer: it may name a namespace that now belongs to another tenant. So the
Deployment is scaled to zero, its replicas remembered in an annotation and restored,
with the new value, in the same PATCH as soon as a namespace appears.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient, AppsV1Api

from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

REPLICAS_ANNOTATION = "keda-tenancy.io/replicas-before-empty"
FIELD_MANAGER = "keda-tenancy-reloader"


class DeploymentPatcher:
    def __init__(
        self, api: ApiClient, namespace: str, name: str, container: str, env_name: str
    ) -> None:
        self._apps = AppsV1Api(api)
        self._namespace = namespace
        self._name = name
        self._container = container
        self._env_name = env_name

    def describe(self) -> str:
        return f"deployment {self._namespace}/{self._name} container {self._container}"

    async def read(self) -> dict[str, Any]:
        return await read_json(
            self._apps.read_namespaced_deployment(
                self._name, self._namespace, _preload_content=False
            )
        )

    async def apply(self, value: str | None) -> bool:
        """Make the Deployment run with `value` (None: scaled to zero); True when patched."""
        deployment = await self.read()
        patch = self.patch_for(deployment, value)
        if patch is None:
            return False
        await read_json(
            self._apps.patch_namespaced_deployment(  # type: ignore[call-arg] # _content_type is read from **kwargs
                self._name,
                self._namespace,
                patch,
                _content_type="application/strategic-merge-patch+json",
                field_manager=FIELD_MANAGER,
                _preload_content=False,
            )
        )
        return True

    def patch_for(self, deployment: dict[str, Any], value: str | None) -> dict[str, Any] | None:
        return deployment_patch(
            deployment, container=self._container, env_name=self._env_name, value=value
        )


def deployment_patch(
    deployment: dict[str, Any], *, container: str, env_name: str, value: str | None
) -> dict[str, Any] | None:
    """The strategic merge patch that gets `deployment` to run with `value` (None: scaled
    to zero); None when it already does. LookupError when the container is missing."""
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    replicas = spec.get("replicas", 1)
    if value is None:
        if replicas == 0:
            return None
        return {
            "metadata": {"annotations": {REPLICAS_ANNOTATION: str(replicas)}},
            "spec": {"replicas": 0},
        }
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    found = next((c for c in containers if c.get("name") == container), None)
    if found is None:
        raise LookupError(
            f"deployment {metadata.get('namespace')}/{metadata.get('name')} "
            f"has no container {container!r}"
        )
    current = next((e for e in found.get("env") or [] if e.get("name") == env_name), None)
    patch: dict[str, Any] = {}
    if current is None or current.get("value") != value or current.get("valueFrom") is not None:
        env = [{"name": env_name, "value": value, "valueFrom": None}]
        patch["spec"] = {"template": {"spec": {"containers": [{"name": container, "env": env}]}}}
    if replicas == 0 and REPLICAS_ANNOTATION in annotations:
        # We scaled it to zero for an empty set: bring it back in the same PATCH.
        patch.setdefault("spec", {})["replicas"] = _replicas(annotations[REPLICAS_ANNOTATION])
        patch["metadata"] = {"annotations": {REPLICAS_ANNOTATION: None}}
    return patch or None


def _replicas(text: str) -> int:
    try:
        return max(1, int(text))
    except ValueError:
        return 1
