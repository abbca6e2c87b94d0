"""--upstream-extra-ca-file (the chart's router.upstream.caBundle) adds CAs to the
tenant-serving one (--upstream-ca-file); it never replaces it (issue 22, item 5)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from tests.fakes.tenant_backend import TenantBackend
from tests.pki import CertificateAuthority
from tests.router_harness import Pki, router_args, running_router

from .test_router_rules import served_by


@pytest.fixture
async def tenants(pki: Pki, tmp_path: Path) -> AsyncIterator[dict[str, TenantBackend]]:
    """served: the tenantServing CA's certificate (every tenant chart install); own-pki: a
    certificate of the extra CA; stranger: of a CA neither flag names."""
    stranger_ca = CertificateAuthority("stranger-ca")
    started = {}
    for name, ca in (
        ("served", pki.backend_ca),
        ("own-pki", pki.other_ca),
        ("stranger", stranger_ca),
    ):
        issued = ca.issue(name, dns=(f"{name}.tenants.svc",), ips=("127.0.0.1",), server=True)
        cert, key = issued.write(tmp_path, name)
        backend = TenantBackend(name, cert, key, pki.path("router_client_ca.crt"))
        await backend.start()
        started[name] = backend
    yield started
    for backend in started.values():
        await backend.stop()


def tenancy(tmp_path: Path, tenants: dict[str, TenantBackend]) -> str:
    path = tmp_path / "tenancy.yaml"
    path.write_text(
        "tenants:\n" + "".join(f"  {name}:\n    namespaces: [{name}-ns]\n" for name in tenants)
    )
    return str(path)


async def test_extra_cas_add_to_the_tenant_serving_ca(
    pki: Pki,
    tmp_path: Path,
    tenants: dict[str, TenantBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = socket.getaddrinfo
    ports = {f"{name}.tenants.svc": backend.port for name, backend in tenants.items()}

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ports:  # the template's Service names, each to its backend
            return real("127.0.0.1", ports[host], *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    argv = router_args(
        pki,
        tenancy(tmp_path, tenants),
        "--upstream-url-template=https://{tenant}.tenants.svc:443",
        f"--upstream-extra-ca-file={pki.path('other_ca.crt')}",
    )
    context = pki.client_context(pki.aggregator())
    async with running_router(argv) as router:
        assert router.secure_port
        port = router.secure_port
        # The tenantServing CA still verifies (before: the bundle replaced it, 503).
        assert await served_by(port, context, "served-ns", "s0-x", "") == "served"
        assert await served_by(port, context, "own-pki-ns", "s0-x", "") == "own-pki"
        refused = await served_by(port, context, "stranger-ns", "s0-x", "")
        assert refused.startswith("503: "), refused
    assert not tenants["stranger"].received


def test_extra_cas_alone_are_refused(pki: Pki, tmp_path: Path) -> None:
    """Without --upstream-ca-file the extra CAs would stand in for it: refused at start."""
    argv = [
        a
        for a in router_args(
            pki, str(tmp_path / "t.yaml"), f"--upstream-extra-ca-file={pki.path('other_ca.crt')}"
        )
        if not a.startswith("--upstream-ca-file=")
    ]
    with pytest.raises(SystemExit):
        RouterConfig.from_args(argv, {})
