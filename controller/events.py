"""Kubernetes Events on a tenant's grant: where its owner looks for what is wrong.

One Warning per distinct problem (a repeat of the same message under backoff is only
logged), and one Normal event when the tenant recovers; failing to post one is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.kube import api_reason, read_json
from tenancy_common.names import TenantName

logger = logging.getLogger(__name__)

COMPONENT = "keda-tenancy-controller"


class GrantEvents:
    def __init__(self, api: ApiClient) -> None:
        self._core = CoreV1Api(api)
        self._last: dict[TenantName, str] = {}

    async def failed(self, tenant: TenantName, grant: Mapping[str, Any], message: str) -> None:
        if self._last.get(tenant) == message:
            return
        self._last[tenant] = message
        await self._post(grant, "Warning", "ReconcileFailed", message)

    async def recovered(self, tenant: TenantName, grant: Mapping[str, Any] | None) -> None:
        if self._last.pop(tenant, None) is not None and grant is not None:
            await self._post(grant, "Normal", "Reconciled", "the tenant is served again")

    def forget(self, tenant: TenantName) -> None:
        self._last.pop(tenant, None)

    async def _post(self, grant: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = grant.get("metadata") or {}
        namespace = str(meta.get("namespace", ""))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'grant')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "name": meta.get("name", ""),
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await read_json(
                self._core.create_namespaced_event(
                    namespace,
                    event,  # type: ignore[arg-type] # a dict is sent as is
                    _preload_content=False,
                )
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "cannot post an Event on the grant",
                extra={"namespace": namespace, "error": api_reason(exc)},
            )
