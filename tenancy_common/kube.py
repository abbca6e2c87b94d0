"""The Kubernetes client: --kubeconfig, else in-cluster, else KUBECONFIG / ~/.kube/config."""

from __future__ import annotations

import os

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration


async def make_api_client(kubeconfig: str | None) -> ApiClient:
    configuration = Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)
