"""Backends that register themselves through labelled ConfigMaps in declared namespaces,
watched through the fake API server (list, watch, 410 relist)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.app import Router
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
TENANT = "keda-tenancy.io/tenant"
LABELS = {"keda-tenancy.io/backend-registration": "true"}


@pytest.fixture
async def servers(pki: Pki) -> AsyncIterator[dict[str, TenantBackend]]:
    started = {}
    for name in ("alpha", "beta", "alpha-prometheus", "beta-registered", "elsewhere"):
        backend = TenantBackend(
            name, pki.path("backend.crt"), pki.path("backend.key"), pki.path("router_client_ca.crt")
        )
        await backend.start()
        started[name] = backend
    yield started
    for backend in started.values():
        await backend.stop()


@pytest.fixture
def cluster_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service names (`<svc>.<ns>.svc`) resolve to loopback, as cluster DNS would to a
    Service's address."""
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".svc"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


def registration(pki: Pki, **data: str) -> dict[str, str]:
    return {"serverName": "localhost", "ca.crt": pki.backend_ca.cert_pem.decode(), **data}


async def served_by(router: Router, pki: Pki, ns: str, metric: str) -> str:
    assert router.secure_port
    response = await raw_request(
        router.secure_port,
        pki.client_context(pki.aggregator()),
        METRIC_PATH.format(ns=ns, metric=metric),
        (USER,),
    )
    if response.status != 200:
        return str(response.status)
    return str(response.json()["received"]["tenant"])  # type: ignore[index]


async def eventually(router: Router, pki: Pki, ns: str, metric: str, expected: str) -> None:
    async with asyncio.timeout(10):
        while await served_by(router, pki, ns, metric) != expected:
            await asyncio.sleep(0.05)


def ignored(router: Router, reason: str) -> float:
    value = router.registry.get_sample_value(
        "keda_tenancy_router_registrations_ignored_total", {"reason": reason}
    )
    return value or 0.0


async def test_registered_backends_serve_only_their_tenant(
    pki: Pki,
    tmp_path: Path,
    servers: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
    cluster_dns: None,
) -> None:
    for ns, tenant in (("alpha-ns", "alpha"), ("alpha-adapters", "alpha"), ("beta-ns", "beta")):
        kube_api.relabel_new(ns, {TENANT: tenant})
    kube_api.create("platform-registrations")
    kube_api.create("undeclared")
    prometheus_port = servers["alpha-prometheus"].port
    # Accepted: alpha's adapter, a Service in one of alpha's namespaces, for its metrics.
    kube_api.put_configmap(
        "alpha-ns",
        "prometheus",
        LABELS,
        registration(
            pki,
            name="prometheus",
            address=f"https://prometheus-adapter.alpha-adapters.svc:{prometheus_port}",
            metricName="prometheus-.*",
        ),
    )
    # Accepted: the platform registers beta's backend (any address; tenant named).
    kube_api.put_configmap(
        "platform-registrations",
        "beta",
        LABELS,
        registration(
            pki, name="beta", address=servers["beta-registered"].url, tenant="beta", default="true"
        ),
    )
    # Ignored and counted: beta's namespace registering for alpha, and an address that is
    # no Service of beta's (alpha's adapter, reached through its Service name).
    kube_api.put_configmap(
        "beta-ns",
        "steal",
        LABELS,
        registration(
            pki, name="steal", address=servers["elsewhere"].url, tenant="alpha", default="true"
        ),
    )
    kube_api.put_configmap(
        "beta-ns",
        "outside",
        LABELS,
        registration(
            pki,
            name="outside",
            address=f"https://prometheus-adapter.alpha-adapters.svc:{prometheus_port}",
            metricName="s0-.*",
        ),
    )
    # Never seen: a namespace the platform did not declare.
    kube_api.put_configmap(
        "undeclared",
        "alpha",
        LABELS,
        registration(
            pki, name="x", address=servers["elsewhere"].url, tenant="alpha", default="true"
        ),
    )
    argv = router_args(
        pki,
        str(tmp_path / "overrides.yaml"),
        f"--kubeconfig={kubeconfig}",
        f"--tenant-label-key={TENANT}",
        "--registration-namespaces=alpha-ns,beta-ns,platform-registrations",
    )
    (tmp_path / "overrides.yaml").write_text(
        "tenants:\n"
        f"  alpha:\n    upstream: {servers['alpha'].url}\n"
        f"  beta:\n    upstream: {servers['beta'].url}\n"
    )
    async with running_router(argv) as router:
        assert await served_by(router, pki, "alpha-ns", "prometheus-http") == "alpha-prometheus"
        assert await served_by(router, pki, "alpha-ns", "s0-queue") == "alpha"
        assert await served_by(router, pki, "beta-ns", "s0-queue") == "beta-registered"
        assert await served_by(router, pki, "beta-ns", "prometheus-http") == "beta-registered"
        assert ignored(router, "foreign-tenant") == 1
        assert ignored(router, "address-outside-tenant") == 1
        assert ignored(router, "invalid") == 0
        # A change arrives by watch; a broken one is ignored and counted, once per version.
        kube_api.put_configmap(
            "alpha-ns", "broken", LABELS, registration(pki, name="Bad Name", address="x")
        )
        await eventually(router, pki, "alpha-ns", "s0-other", "alpha")
        async with asyncio.timeout(10):
            while ignored(router, "invalid") != 1:
                await served_by(router, pki, "alpha-ns", "s0-again")
                await asyncio.sleep(0.05)
        # The platform's registration goes while the watches are away and history is
        # compacted: the watch resumes into 410 Gone, relists, and sees it is gone.
        lists = kube_api.requests["list configmaps"]
        kube_api.silence_watches()
        kube_api.delete_configmap("platform-registrations", "beta")
        kube_api.compact()
        kube_api.drop_watches()
        kube_api.silence_watches(False)
        await eventually(router, pki, "beta-ns", "s0-queue", "beta")
        assert kube_api.requests["list configmaps"] > lists  # relisted, not resumed
    assert not servers["elsewhere"].received
    assert {r.path.split("/")[5] for r in servers["alpha-prometheus"].received} == {"alpha-ns"}


async def test_registrations_make_the_router_wait_until_listed(
    pki: Pki, tmp_path: Path, kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    (tmp_path / "t.yaml").write_text("tenants: {}\n")
    argv = router_args(
        pki,
        str(tmp_path / "t.yaml"),
        f"--kubeconfig={kubeconfig}",
        f"--tenant-label-key={TENANT}",
        "--registration-namespaces=platform-registrations",
    )
    async with running_router(argv) as router:
        assert router.readiness_checks()["registrations"]() is None
