"""Which namespaces a running operator actually watches, as the binding manager learns it.

Process mode: each in-pod reloader publishes the value its operator runs with under its
pod's name in one ConfigMap of its own namespace (it may only `patch` that one object), and
removes its key when it stops; the manager reads the union of the values. A pod that died
without removing its key leaves it behind: with `prune_dead_pods` the manager ignores and
removes entries whose pod no longer exists (a key is written by a running pod, so its Pod
object exists first); the manager's unbind timeout bounds anything else, such as an operator
that writes entries for other pods' names.
Deployment mode: the union of WATCH_NAMESPACE over every pod of the operator's Deployment
(terminating ones too) and its template, so a binding outlives the rollout's old pods.
A value that cannot be read is `WatchedUnknownError`: the manager then keeps the bindings of
namespaces that left, but only until its unbind timeout (the operator's pod may write this
ConfigMap, so nothing in it may extend that bound).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.desired import split
from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

PUBLISHED_ANNOTATION = "keda-tenancy.io/watched-published"
"""Set on every publish: a ConfigMap without it has never been written, so nothing is known."""
PUBLISH_TIMEOUT_S = 10.0
_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)


class WatchedUnknownError(Exception):
    """What the operator watches could not be read."""


class WatchedSource(Protocol):
    async def read(self) -> frozenset[str]:
        """The namespaces a running operator may still watch; WatchedUnknownError if unreadable."""
        ...


class PublishError(Exception):
    pass


class WatchedConfigMap:
    """The one ConfigMap the in-pod reloader writes and the binding manager reads."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        key: str = "",
        *,
        prune_dead_pods: bool = False,
    ) -> None:
        """`key`: this pod's entry (its name); only needed to publish. `prune_dead_pods`: the
        manager's side, which may list pods and patch this ConfigMap."""
        self._core = CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.key = key
        self._prune = prune_dead_pods

    async def publish(self, value: str | None) -> None:
        """Say this pod's operator runs with `value` (None: no operator here any more)."""
        patch = {
            "metadata": {"annotations": {PUBLISHED_ANNOTATION: "true"}},
            "data": {self.key: value},
        }
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._patch(patch)
        except _ERRORS as exc:
            raise PublishError(
                f"cannot publish the watched namespaces to configmap "
                f"{self.namespace}/{self.name}: {exc}"
            ) from exc

    async def _patch(self, patch: dict[str, Any]) -> None:
        await read_json(
            self._core.patch_namespaced_config_map(  # type: ignore[call-arg] # _content_type is read from **kwargs
                self.name,
                self.namespace,
                patch,
                _content_type="application/merge-patch+json",
                field_manager="keda-tenancy-reloader",
                _preload_content=False,
            )
        )

    async def read(self) -> frozenset[str]:
        try:
            obj = await read_json(
                self._core.read_namespaced_config_map(
                    self.name, self.namespace, _preload_content=False
                )
            )
        except _ERRORS as exc:
            raise WatchedUnknownError(
                f"cannot read configmap {self.namespace}/{self.name}: {exc}"
            ) from exc
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if PUBLISHED_ANNOTATION not in annotations:
            # Never published (a new install, or an operator from before this feature): one
            # may run with a list we do not know: a leaving namespace keeps its binding for
            # the unbind timeout, no longer (the operator may remove the annotation itself).
            raise WatchedUnknownError(
                f"configmap {self.namespace}/{self.name} has not been published to yet"
            )
        data = dict(obj.get("data") or {})
        if self._prune and data:
            dead = await self._dead_entries(data)
            for key in dead:
                del data[key]
        watched: set[str] = set()
        for value in data.values():
            watched |= split(str(value))
        return frozenset(watched)

    async def _dead_entries(self, data: dict[str, str]) -> list[str]:
        """Keys whose pod is gone, removed from the ConfigMap (best effort)."""
        try:
            pods = await read_json(
                self._core.list_namespaced_pod(self.namespace, _preload_content=False)
            )
        except _ERRORS as exc:
            raise WatchedUnknownError(
                f"cannot list pods in {self.namespace} to check watched entries: {exc}"
            ) from exc
        alive = {(p.get("metadata") or {}).get("name") for p in pods.get("items") or []}
        dead = sorted(key for key in data if key not in alive)
        if dead:
            logger.info("removing watched entries of pods that are gone", extra={"pods": dead})
            try:
                await self._patch({"data": dict.fromkeys(dead)})
            except _ERRORS as exc:
                logger.warning("cannot remove stale watched entries", extra={"error": str(exc)})
        return dead


class DeploymentPods:
    """Deployment mode: what the operator Deployment's pods and template watch."""

    def __init__(
        self, api: ApiClient, namespace: str, name: str, container: str, env_name: str
    ) -> None:
        self._apps = AppsV1Api(api)
        self._core = CoreV1Api(api)
        self._namespace = namespace
        self._name = name
        self._container = container
        self._env_name = env_name

    async def read(self) -> frozenset[str]:
        try:
            deployment = await read_json(
                self._apps.read_namespaced_deployment(
                    self._name, self._namespace, _preload_content=False
                )
            )
            labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
            if not labels:
                raise WatchedUnknownError(
                    f"deployment {self._namespace}/{self._name} has no matchLabels"
                )
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            pods = await read_json(
                self._core.list_namespaced_pod(
                    self._namespace, label_selector=selector, _preload_content=False
                )
            )
        except _ERRORS as exc:
            raise WatchedUnknownError(
                f"cannot read deployment {self._namespace}/{self._name} and its pods: {exc}"
            ) from exc
        watched: set[str] = set()
        template = (deployment.get("spec") or {}).get("template") or {}
        for spec in [template.get("spec") or {}] + [
            p.get("spec") or {} for p in pods.get("items") or []
        ]:
            watched |= self._value(spec)
        return frozenset(watched)

    def _value(self, pod_spec: dict[str, Any]) -> frozenset[str]:
        for container in pod_spec.get("containers") or []:
            if container.get("name") != self._container:
                continue
            for env in container.get("env") or []:
                if env.get("name") == self._env_name:
                    return split(env.get("value"))
        return frozenset()
