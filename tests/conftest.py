"""Fixtures shared by every test folder: certificates, fake tenant backends, leaked tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import Pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def backends(pki: Pki) -> AsyncIterator[dict[str, TenantBackend]]:
    """Two tenants' metrics servers, each with its own value, trusting the router's client CA."""
    started = {}
    for name, value in (("alpha", "7"), ("beta", "42")):
        backend = TenantBackend(
            name,
            pki.path("backend.crt"),
            pki.path("backend.key"),
            pki.path("router_client_ca.crt"),
            value=value,
        )
        await backend.start()
        started[name] = backend
    yield started
    for backend in started.values():
        await backend.stop()


@pytest.fixture
def tenancy_file(tmp_path: Path, backends: dict[str, TenantBackend]) -> Callable[..., str]:
    """Write a static tenancy file routing alpha-* and beta-* namespaces to the backends."""

    def write(**upstreams: str) -> str:
        urls = {name: backend.url for name, backend in backends.items()} | upstreams
        path = tmp_path / "tenancy.yaml"
        path.write_text(
            "tenants:\n"
            f"  alpha:\n    namespaces: [alpha-ns, alpha-dev]\n    upstream: {urls['alpha']}\n"
            f"  beta:\n    namespaces: [beta-ns]\n    upstream: {urls['beta']}\n"
        )
        return str(path)

    return write


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every test must leave no task of its own running: dangling tasks hide bugs."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    leaked = {
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    }
    assert not leaked, f"leaked tasks: {leaked}"


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
def kubeconfig(kube_api: FakeKubeAPI, tmp_path: Path) -> str:
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig")
