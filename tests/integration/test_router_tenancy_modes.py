"""Routing decided from live Namespace objects (fake API server), for every tenancy mode."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from router.app import Router
from router.config import RouterConfig
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")


def overrides(tmp_path: Path, backends: dict[str, TenantBackend]) -> str:
    """Per-tenant upstreams only (no namespaces): the cluster decides ownership."""
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        "tenants:\n"
        + "".join(f"  {name}:\n    upstream: {b.url}\n" for name, b in backends.items())
    )
    return str(path)


def requestheader_from_cluster_args(
    pki: Pki, tmp_path: Path, backends: dict[str, TenantBackend], kubeconfig: str
) -> list[str]:
    """Router flags without the requestheader CA and names: they come from the cluster."""
    argv = router_args(
        pki,
        overrides(tmp_path, backends),
        f"--kubeconfig={kubeconfig}",
        "--tenant-label-key=keda-tenancy.io/tenant",
    )
    return [
        a
        for a in argv
        if not a.startswith(("--requestheader-client-ca-file", "--requestheader-allowed-names"))
    ]


def publish_extension_auth(
    kube_api: FakeKubeAPI, pki: Pki, allowed_names: list[str] | None = None
) -> None:
    """What kube-apiserver publishes in kube-system/extension-apiserver-authentication."""
    data = {"requestheader-client-ca-file": pki.front_proxy_ca.cert_pem.decode()}
    if allowed_names is not None:
        data |= {
            "requestheader-allowed-names": json.dumps(allowed_names),
            "requestheader-username-headers": '["X-Remote-User"]',
            "requestheader-group-headers": '["X-Remote-Group"]',
            "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
        }
    kube_api.configmaps[("kube-system", "extension-apiserver-authentication")] = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": data,
    }


async def tenant_of(port: int, context: ssl.SSLContext, namespace: str) -> str | int:
    response = await raw_request(
        port, context, METRIC_PATH.format(ns=namespace, metric="m"), (USER,)
    )
    if response.status != 200:
        return response.status
    return str(response.json()["received"]["tenant"])  # type: ignore[index]


async def eventually_tenant(
    port: int, context: ssl.SSLContext, namespace: str, expected: str | int
) -> None:
    async with asyncio.timeout(5):
        while await tenant_of(port, context, namespace) != expected:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("flags", "namespaces", "expected"),
    [
        pytest.param(
            ["--tenant-label-key=capsule.clastix.io/tenant"],
            {
                "web": {"capsule.clastix.io/tenant": "alpha"},
                "jobs": {"capsule.clastix.io/tenant": "beta"},
                "free": {},
            },
            {"web": "alpha", "jobs": "beta", "free": 404, "missing": 404},
            id="label",
        ),
        pytest.param(
            ["--hnc-root-label=keda-tenancy.io/tenant-root=true"],
            {
                "alpha": {
                    "alpha.tree.hnc.x-k8s.io/depth": "0",
                    "keda-tenancy.io/tenant-root": "true",
                },
                "alpha-dev": {
                    "alpha.tree.hnc.x-k8s.io/depth": "1",
                    "alpha-dev.tree.hnc.x-k8s.io/depth": "0",
                },
                "beta": {
                    "beta.tree.hnc.x-k8s.io/depth": "0",
                    "keda-tenancy.io/tenant-root": "true",
                },
                "orphan": {"orphan.tree.hnc.x-k8s.io/depth": "0"},
            },
            {"alpha": "alpha", "alpha-dev": "alpha", "beta": "beta", "orphan": 404},
            id="hnc",
        ),
        pytest.param(
            ["--namespace-name-pattern=(?P<tenant>[a-z0-9]+)--.+"],
            {"alpha--train": {}, "beta--serve": {}, "gamma": {}},
            {"alpha--train": "alpha", "beta--serve": "beta", "gamma": 404, "alpha--missing": 404},
            id="name-pattern",
        ),
    ],
)
async def test_routing_per_mode(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
    flags: list[str],
    namespaces: dict[str, dict[str, str]],
    expected: dict[str, str | int],
) -> None:
    for name, labels in namespaces.items():
        kube_api.relabel_new(name, labels)
    argv = router_args(pki, overrides(tmp_path, backends), f"--kubeconfig={kubeconfig}", *flags)
    context = pki.client_context(pki.aggregator())
    async with running_router(argv) as router:
        assert router.secure_port
        for namespace, tenant in expected.items():
            assert await tenant_of(router.secure_port, context, namespace) == tenant, namespace


async def test_ownership_follows_label_changes_and_conflicts_fail_closed(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
) -> None:
    kube_api.relabel_new("web", {"keda-tenancy.io/tenant": "alpha"})
    argv = router_args(
        pki,
        overrides(tmp_path, backends),
        f"--kubeconfig={kubeconfig}",
        "--tenant-label-key=keda-tenancy.io/tenant",
        "--tenant-label-key=capsule.clastix.io/tenant",
    )
    context = pki.client_context(pki.aggregator())
    async with running_router(argv) as router:
        port = router.secure_port
        assert port
        assert await tenant_of(port, context, "web") == "alpha"
        kube_api.relabel("web", {"keda-tenancy.io/tenant": "beta"})  # the namespace moves
        await eventually_tenant(port, context, "web", "beta")
        kube_api.relabel("web", {"capsule.clastix.io/tenant": "alpha"})  # now two tenants claim it
        await eventually_tenant(port, context, "web", 404)
        kube_api.delete("web")
        kube_api.create("late", **{"keda-tenancy.io/tenant": "alpha"})
        await eventually_tenant(port, context, "late", "alpha")
        assert await tenant_of(port, context, "web") == 404
    received_by_alpha = [r.path for r in backends["alpha"].received if "/web/" in r.path]
    assert len(received_by_alpha) == 1  # only before it moved


async def test_requestheader_ca_from_the_cluster(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
) -> None:
    kube_api.relabel_new("web", {"keda-tenancy.io/tenant": "alpha"})
    publish_extension_auth(kube_api, pki, allowed_names=["front-proxy-client"])
    argv = requestheader_from_cluster_args(pki, tmp_path, backends, kubeconfig)
    async with running_router(argv) as router:
        assert router.secure_port
        ok = pki.client_context(pki.aggregator())
        assert await tenant_of(router.secure_port, ok, "web") == "alpha"
        wrong_cn = pki.client_context(pki.aggregator(cn="not-the-aggregator"))
        assert await tenant_of(router.secure_port, wrong_cn, "web") == 401


async def test_waits_for_the_requestheader_configmap_with_health_up(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
) -> None:
    kube_api.relabel_new("web", {"keda-tenancy.io/tenant": "alpha"})
    argv = requestheader_from_cluster_args(pki, tmp_path, backends, kubeconfig)
    router = Router(RouterConfig.from_args(argv, {}), CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        async with asyncio.timeout(10):
            while router.health_port is None:
                await asyncio.sleep(0.02)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{router.health_port}/readyz") as response,
        ):
            assert response.status == 503  # alive, not ready: no requestheader CA yet
        assert not router.listening.is_set()
        publish_extension_auth(kube_api, pki)
        await asyncio.wait_for(router.listening.wait(), 10)
        assert router.secure_port
        assert (
            await tenant_of(router.secure_port, pki.client_context(pki.aggregator()), "web")
            == "alpha"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_stale_namespace_list_is_a_readyz_warning_not_a_failure(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
) -> None:
    """An API server failing every watch and LIST for --max-namespace-staleness shows in
    /readyz, which stays 200: an unready router fails the APIService for every tenant. The
    router keeps routing from what it has; the next successful relist clears the warning."""
    kube_api.relabel_new("web", {"keda-tenancy.io/tenant": "alpha"})
    argv = router_args(
        pki,
        overrides(tmp_path, backends),
        f"--kubeconfig={kubeconfig}",
        "--tenant-label-key=keda-tenancy.io/tenant",
        "--max-namespace-staleness=1s",
    )

    async def readyz(router: Router) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{router.health_port}/readyz") as response,
        ):
            return response.status, await response.text()

    async with running_router(argv) as router:
        assert router.secure_port
        assert await readyz(router) == (200, "ok")
        failing = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"}
        kube_api.watch_error = kube_api.list_error = failing
        kube_api.drop_watches()
        async with asyncio.timeout(10):
            while "[!]namespace-staleness" not in (answer := await readyz(router))[1]:
                assert answer[0] == 200
                await asyncio.sleep(0.05)
        assert answer[0] == 200
        assert "not confirmed current" in answer[1]
        context = pki.client_context(pki.aggregator())
        assert await tenant_of(router.secure_port, context, "web") == "alpha"
        stale = router.registry.get_sample_value("keda_tenancy_namespace_watch_staleness_seconds")
        assert stale is not None
        assert stale > 1
        kube_api.watch_error = kube_api.list_error = None
        async with asyncio.timeout(10):
            while await readyz(router) != (200, "ok"):
                await asyncio.sleep(0.05)
