"""The router over real mTLS on loopback: routing, identity, errors, isolation."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from router.app import Router
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import (
    METRIC_PATH,
    NOW,
    Pki,
    raw_request,
    router_args,
    running_router,
)

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with running_router(router_args(pki, tenancy_file(), "--upstream-timeout=1s")) as router:
        yield router


@pytest.fixture
def aggregator(pki: Pki) -> ssl.SSLContext:
    return pki.client_context(pki.aggregator())


def metric(ns: str, name: str = "s0-metric-api-value") -> str:
    return METRIC_PATH.format(ns=ns, metric=name)


async def test_each_namespace_reaches_its_own_tenant(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    for ns, tenant, value in (
        ("alpha-ns", "alpha", "7"),
        ("alpha-dev", "alpha", "7"),
        ("beta-ns", "beta", "42"),
    ):
        response = await raw_request(
            router.secure_port,
            aggregator,
            metric(ns) + "?labelSelector=scaledobject.keda.sh%2Fname%3Dapp",
            (USER,),
        )
        assert response.status == 200, response.body
        body = response.json()
        assert body["kind"] == "ExternalMetricValueList"
        assert body["items"][0]["value"] == value  # type: ignore[index]
        received = body["received"]
        assert received["tenant"] == tenant  # type: ignore[index]
        assert received["namespace"] == ns  # type: ignore[index]
        assert received["query"] == "labelSelector=scaledobject.keda.sh%2Fname%3Dapp"  # type: ignore[index]
    assert {r.path.split("/")[5] for r in backends["alpha"].received} == {"alpha-ns", "alpha-dev"}
    assert {r.path.split("/")[5] for r in backends["beta"].received} == {"beta-ns"}
    # The router presents its own client certificate upstream.
    assert {r.client_cn for b in backends.values() for r in b.received} == {"keda-tenancy-router"}


async def test_identity_headers_cross_byte_for_byte(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    sent = [
        ("X-Remote-User", "jane@example.com"),
        ("X-Remote-Uid", "uid-1234"),
        ("X-Remote-Group", "system:authenticated"),
        ("X-Remote-Group", "team-a, team-b"),  # a comma inside one group must stay one group
        ("X-Remote-Extra-Scopes", "view"),
        ("X-Remote-Extra-Scopes", "edit"),
        ("X-Remote-Extra-Acme.com%2Fproject", "p1"),
        ("Audit-Id", "2b4d7e0c-audit"),
        ("Accept", "application/json"),
        ("User-Agent", "kube-controller-manager/v1.35.0"),
        ("Authorization", "Bearer stolen"),
        ("Impersonate-User", "system:admin"),
        ("Impersonate-Group", "system:masters"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Cookie", "a=b"),
    ]
    response = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), sent)
    assert response.status == 200
    received = backends["alpha"].received[-1].raw_headers
    forwarded = [
        (k.decode(), v.decode())
        for k, v in received
        if k.lower() not in (b"host", b"content-length")
    ]
    assert forwarded == sent[:10]
    identity = response.json()["received"]
    assert identity["groups"] == ["system:authenticated", "team-a, team-b"]  # type: ignore[index]
    assert identity["extra"] == {"Scopes": ["view", "edit"], "Acme.com%2Fproject": ["p1"]}  # type: ignore[index]
    assert response.header("Audit-Id") is None or response.header("Audit-Id") == "2b4d7e0c-audit"


async def test_response_passes_through_compressed(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    backends["beta"].mode = "gzip"
    response = await raw_request(
        router.secure_port, aggregator, metric("beta-ns"), (USER, ("Accept-Encoding", "gzip"))
    )
    assert response.status == 200
    assert response.header("Content-Encoding") == "gzip"
    assert gzip.decompress(response.body).startswith(b'{"kind": "ExternalMetricValueList"')


async def test_upstream_status_passes_through_and_redirects_are_refused(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    backends["alpha"].mode = "status:403"
    response = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), (USER,))
    assert (response.status, response.json()["code"]) == (403, 403)
    backends["alpha"].mode = "redirect"
    response = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), (USER,))
    assert response.status == 502
    assert response.json()["kind"] == "Status"
    assert response.header("Location") is None


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns/../beta-ns/m", 400),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns/../../namespaces/beta-ns/m",
            400,
        ),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/beta-ns%2F..%2Falpha-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns%2Fbeta-ns/m", 400),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns/m%2F..%2F..%2Fbeta-ns%2Fm",
            400,
        ),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns/m%5Cx", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/alpha-ns\\beta-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces//beta-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/./beta-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1//namespaces/beta-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/%62eta-ns/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/Beta-NS/m", 400),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/beta-ns/m/extra", 404),
        ("/apis/external.metrics.k8s.io/v1beta1/namespaces/beta-ns", 404),
        ("/apis/custom.metrics.k8s.io/v1beta1/namespaces/beta-ns/m", 404),
        ("//apis/external.metrics.k8s.io/v1beta1/namespaces/beta-ns/m", 400),
    ],
)
async def test_odd_paths_are_refused_and_reach_nobody(
    router: Router,
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
    target: str,
    code: int,
) -> None:
    assert router.secure_port
    response = await raw_request(router.secure_port, aggregator, target, (USER,))
    assert response.status == code
    status = response.json()
    assert (status["kind"], status["code"]) == ("Status", code)
    assert not backends["alpha"].received
    assert not backends["beta"].received


async def test_unknown_namespace_is_404_and_non_get_is_405(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    response = await raw_request(router.secure_port, aggregator, metric("gamma-ns"), (USER,))
    assert response.status == 404
    assert response.json()["reason"] == "NotFound"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = await raw_request(
            router.secure_port, aggregator, metric("alpha-ns"), (USER,), method=method
        )
        assert response.status == 405
        assert response.json()["reason"] == "MethodNotAllowed"
    assert not backends["alpha"].received


async def test_dead_backend_is_503_and_fails_fast(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    await backends["beta"].stop()
    response = await raw_request(router.secure_port, aggregator, metric("beta-ns"), (USER,))
    assert response.status == 503
    assert response.json()["reason"] == "ServiceUnavailable"
    # While it is known down, the answer comes without another connection attempt.
    response = await raw_request(router.secure_port, aggregator, metric("beta-ns"), (USER,))
    assert response.status == 503
    assert "recent connection failures" in str(response.json()["message"])
    # The other tenant is unaffected.
    response = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), (USER,))
    assert response.status == 200


async def test_hung_backend_times_out_without_delaying_other_tenants(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    backends["beta"].mode = "hang"
    hung = [
        asyncio.create_task(raw_request(router.secure_port, aggregator, metric("beta-ns"), (USER,)))
        for _ in range(5)
    ]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    for _ in range(10):
        response = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), (USER,))
        assert response.status == 200
    alpha_s = time.monotonic() - started
    results = await asyncio.gather(*hung)
    assert {r.status for r in results} == {504}
    assert results[0].json()["reason"] == "Timeout"
    assert alpha_s < 0.9, "alpha waited for the hung tenant"  # beta's timeout is 1s


async def test_discovery_needs_no_tenant(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    for backend in backends.values():
        await backend.stop()
    response = await raw_request(
        router.secure_port, aggregator, "/apis/external.metrics.k8s.io/v1beta1", (USER,)
    )
    assert response.status == 200
    resources = response.json()
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert resources["resources"]
    response = await raw_request(router.secure_port, aggregator, "/apis", (USER,))
    assert (response.status, response.json()["kind"]) == (200, "APIGroupList")
    for path in ("/openapi/v2", "/openapi/v3", "/openapi/v3/apis/external.metrics.k8s.io/v1beta1"):
        response = await raw_request(router.secure_port, aggregator, path, (USER,))
        assert response.status == 404


@pytest.mark.parametrize(
    "client",
    [
        pytest.param(lambda pki: None, id="no-certificate"),
        pytest.param(lambda pki: pki.aggregator(cn="someone-else"), id="wrong-cn"),
        pytest.param(lambda pki: pki.aggregator(ca=pki.other_ca), id="wrong-ca"),
        pytest.param(
            lambda pki: pki.aggregator(
                not_before=NOW - datetime.timedelta(days=10),
                not_after=NOW - datetime.timedelta(days=1),
            ),
            id="expired",
        ),
        pytest.param(lambda pki: pki.aggregator(client=False, server=True), id="server-usage-only"),
    ],
)
async def test_untrusted_callers_are_refused_and_nothing_is_forwarded(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], client: Callable[[Pki], object]
) -> None:
    assert router.secure_port
    context = pki.client_context(client(pki))  # type: ignore[arg-type]
    for target in (metric("alpha-ns"), "/apis/external.metrics.k8s.io/v1beta1"):
        # Like kube-apiserver: a 401 Status, not a TLS alert, whatever is wrong with the certificate.
        response = await raw_request(router.secure_port, context, target, (USER,))
        assert response.status == 401
        assert response.json()["reason"] == "Unauthorized"
    assert not backends["alpha"].received


async def test_a_user_header_is_required(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    response = await raw_request(
        router.secure_port, aggregator, metric("alpha-ns"), (("X-Remote-Group", "g"),)
    )
    assert response.status == 401
    assert not backends["alpha"].received


async def test_default_upstream_is_opt_in(
    pki: Pki,
    tenancy_file: Callable[..., str],
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
) -> None:
    argv = router_args(pki, tenancy_file(), f"--default-upstream={backends['beta'].url}")
    async with running_router(argv) as router:
        assert router.secure_port
        response = await raw_request(router.secure_port, aggregator, metric("unowned-ns"), (USER,))
        assert response.status == 200
        assert response.json()["received"]["namespace"] == "unowned-ns"  # type: ignore[index]


async def test_per_tenant_ca_and_server_name(
    pki: Pki, tmp_path: Path, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    tenancy = tmp_path / "per-tenant.yaml"
    tenancy.write_text(
        "tenants:\n"
        f"  alpha:\n    namespaces: [alpha-ns]\n    upstream: {backends['alpha'].url}\n"
        f"    serverName: localhost\n    caFile: {pki.path('backend_ca.crt')}\n"
        f"  beta:\n    namespaces: [beta-ns]\n    upstream: {backends['beta'].url}\n"
        f"    caFile: {pki.path('other_ca.crt')}\n"
        f"  gamma:\n    namespaces: [gamma-ns]\n    upstream: {backends['alpha'].url}\n"
        "    serverName: not-the-backend.example\n"
    )
    async with running_router(router_args(pki, str(tenancy))) as router:
        assert router.secure_port
        ok = await raw_request(router.secure_port, aggregator, metric("alpha-ns"), (USER,))
        assert ok.status == 200
        # beta's server certificate does not chain to beta's CA; gamma's name does not match.
        for ns in ("beta-ns", "gamma-ns"):
            refused = await raw_request(router.secure_port, aggregator, metric(ns), (USER,))
            assert refused.status == 503, ns
    assert not backends["beta"].received
