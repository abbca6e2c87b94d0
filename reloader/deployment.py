"""Deployment mode: server-side apply the operator's WATCH_NAMESPACE and replicas; Kubernetes
rolls the Deployment.

The reloader owns exactly two fields of the Deployment, through server-side apply with its
own field manager (`keda-tenancy-reloader`): the operator container's WATCH_NAMESPACE and
`spec.replicas`. The chart leaves both out, so neither Helm nor a GitOps controller applying
the chart's output ever resets them, and the reloader never fights them.

Nothing is sent when the live Deployment already matches. An empty namespace set is never
written (KEDA reads an empty WATCH_NAMESPACE as *all namespaces*), and leaving only the old
value is no safer: it may name a namespace that now belongs to another tenant. So the
Deployment is scaled to zero (the old value kept, unused) and given its replicas back, with
the new value, in the same apply as soon as a namespace appears.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient, AppsV1Api

from tenancy_common.deployment_apply import apply_configuration
from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

FIELD_MANAGER = "keda-tenancy-reloader"


class DeploymentPatcher:
    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        container: str,
        env_name: str,
        *,
        replicas: int = 1,
    ) -> None:
        self._apps = AppsV1Api(api)
        self._namespace = namespace
        self._name = name
        self._container = container
        self._env_name = env_name
        self._replicas = replicas

    def describe(self) -> str:
        return f"deployment {self._namespace}/{self._name} container {self._container}"

    async def read(self) -> dict[str, Any]:
        return await read_json(
            self._apps.read_namespaced_deployment(
                self._name, self._namespace, _preload_content=False
            )
        )

    async def apply(self, value: str | None) -> bool:
        """Make the Deployment run with `value` (None: scaled to zero); True when applied."""
        deployment = await self.read()
        configuration = self.configuration_for(deployment, value)
        if configuration is None:
            return False
        await read_json(
            self._apps.patch_namespaced_deployment(  # type: ignore[call-arg] # _content_type is read from **kwargs
                self._name,
                self._namespace,
                configuration,
                _content_type="application/apply-patch+yaml",  # JSON is YAML
                field_manager=FIELD_MANAGER,
                force=True,  # take the two fields over from whoever set them before (Helm)
                _preload_content=False,
            )
        )
        return True

    def configuration_for(
        self, deployment: dict[str, Any], value: str | None
    ) -> dict[str, Any] | None:
        return apply_configuration(
            deployment,
            container=self._container,
            env_name=self._env_name,
            value=value,
            replicas=self._replicas,
        )
