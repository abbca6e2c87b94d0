"""The Kubernetes client: --kubeconfig, else in-cluster, else KUBECONFIG / ~/.kube/config."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException


async def make_api_client(kubeconfig: str | None) -> ApiClient:
    configuration = Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


async def read_json(call: Awaitable[object]) -> dict[str, Any]:
    """Await a kubernetes_asyncio call made with `_preload_content=False` and return its
    JSON body; raises ApiException for any non-2xx answer (the client leaves that to us)."""
    response = cast(aiohttp.ClientResponse, await call)
    try:
        body = await response.read()
        if not 200 <= response.status < 300:
            # Enough for a whole Status (an RBAC refusal lists the rules): api_reason reads it.
            raise ApiException(
                status=response.status, reason=body[:8000].decode("utf-8", "replace")
            )
        return dict(json.loads(body))
    finally:
        response.release()


async def open_stream(call: Awaitable[object]) -> aiohttp.ClientResponse:
    """Await a kubernetes_asyncio watch made with `_preload_content=False`: the response, to
    read line by line and release; raises ApiException (and releases it) for any non-200."""
    response = cast(aiohttp.ClientResponse, await call)
    if response.status != 200:
        try:
            body = await response.read()
        finally:
            response.release()
        raise ApiException(status=response.status, reason=body[:300].decode("utf-8", "replace"))
    return response


def api_reason(exc: BaseException) -> str:
    """The API server's Status message when there is one, else the exception."""
    if isinstance(exc, ApiException):
        text = exc.reason or ""
        try:
            message = json.loads(text).get("message")
        except (ValueError, AttributeError):
            message = None
        return f"{exc.status}: {(message or text)[:600]}"
    return str(exc) or type(exc).__name__
