"""Deployment mode: patch the operator container's env and let Kubernetes roll it.

No PATCH is sent when the value already matches. An empty namespace set is never
written (KEDA reads an empty WATCH_NAMESPACE as *all namespaces*): the Deployment is
scaled to zero instead, remembering its replicas in an annotation to restore later.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient, AppsV1Api

from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

REPLICAS_ANNOTATION = "keda-tenancy.io/replicas-before-empty"


class DeploymentPatcher:
    def __init__(
        self, api: ApiClient, namespace: str, name: str, container: str, env_name: str
    ) -> None:
        self._apps = AppsV1Api(api)
        self._namespace = namespace
        self._name = name
        self._container = container
        self._env_name = env_name

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
                _preload_content=False,
            )
        )
        return True

    def patch_for(self, deployment: dict[str, Any], value: str | None) -> dict[str, Any] | None:
        """The strategic merge patch that gets from `deployment` to `value`, None if none is needed."""
        spec = deployment.get("spec") or {}
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        replicas = spec.get("replicas", 1)
        if value is None:
            if replicas == 0:
                return None
            return {
                "metadata": {"annotations": {REPLICAS_ANNOTATION: str(replicas)}},
                "spec": {"replicas": 0},
            }
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        container = next((c for c in containers if c.get("name") == self._container), None)
        if container is None:
            raise LookupError(
                f"deployment {self._namespace}/{self._name} has no container {self._container!r}"
            )
        current = next(
            (e for e in container.get("env") or [] if e.get("name") == self._env_name), None
        )
        patch: dict[str, Any] = {}
        if current is None or current.get("value") != value or "valueFrom" in current:
            env = [{"name": self._env_name, "value": value, "valueFrom": None}]
            patch["spec"] = {
                "template": {"spec": {"containers": [{"name": self._container, "env": env}]}}
            }
        if replicas == 0 and REPLICAS_ANNOTATION in annotations:
            patch.setdefault("spec", {})["replicas"] = int(annotations[REPLICAS_ANNOTATION])
            patch["metadata"] = {"annotations": {REPLICAS_ANNOTATION: None}}
        return patch or None
