"""Routing rules and named upstreams over real mTLS: every rule kind, their order, each
upstream's own trust, and the configurations refused at start."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
KEDA_SELECTOR = "labelSelector=scaledobject.keda.sh%2Fname%3D{so}"


@pytest.fixture
async def servers(pki: Pki) -> AsyncIterator[dict[str, TenantBackend]]:
    """Tenants' KEDAs (serving certificates of the tenants' CA), a tenant's own adapter, and
    platform adapters whose serving certificates another CA signed (the platform's)."""
    platform_cert, platform_key = pki.other_ca.issue(
        "platform-adapter", dns=("localhost",), ips=("127.0.0.1",), server=True
    ).write(pki.directory, "platform-adapter")
    started = {}
    for name, cert, key in (
        ("alpha", pki.path("backend.crt"), pki.path("backend.key")),
        ("beta", pki.path("backend.crt"), pki.path("backend.key")),
        ("alpha-prometheus", pki.path("backend.crt"), pki.path("backend.key")),
        ("datadog", platform_cert, platform_key),
        ("shard-b", platform_cert, platform_key),
        ("shared-keda", platform_cert, platform_key),
        ("impostor", platform_cert, platform_key),
    ):
        backend = TenantBackend(name, cert, key, pki.path("router_client_ca.crt"))
        await backend.start()
        started[name] = backend
    yield started
    for backend in started.values():
        await backend.stop()


def tenancy(tmp_path: Path, servers: dict[str, TenantBackend]) -> str:
    path = tmp_path / "tenancy.yaml"
    path.write_text(
        "tenants:\n"
        f"  alpha:\n    namespaces: [alpha-ns]\n    upstream: {servers['alpha'].url}\n"
        f"  beta:\n    namespaces: [beta-ns]\n    upstream: {servers['beta'].url}\n"
        # gamma's server presents a certificate of the platform adapters' CA
        f"  gamma:\n    namespaces: [gamma-ns]\n    upstream: {servers['impostor'].url}\n"
    )
    return str(path)


def rules_file(tmp_path: Path, pki: Pki, servers: dict[str, TenantBackend], text: str) -> str:
    path = tmp_path / "rules.yaml"
    platform_ca = pki.path("other_ca.crt")
    path.write_text(
        "upstreams:\n"
        f"  datadog:\n    url: {servers['datadog'].url}\n    caFile: {platform_ca}\n"
        "    serverName: localhost\n"
        f"  shard-b:\n    url: {servers['shard-b'].url}\n    caFile: {platform_ca}\n"
        f"  alpha-prometheus:\n    url: {servers['alpha-prometheus'].url}\n"
        f"    caFile: {pki.path('backend_ca.crt')}\n    tenant: alpha\n" + text
    )
    return str(path)


RULES = """\
rules:
  - name: alpha-prometheus
    tenant: alpha
    metricName: "prometheus-.*"
    upstream: alpha-prometheus
  - name: shard-b
    labelSelector:
      values: {scaledobject.keda.sh/name: "shard-b-.*"}
    upstream: shard-b
  - name: datadog-by-name
    metricName: "datadog\\\\.[a-z._]+|prometheus-platform"
    upstream: datadog
  - name: not-keda
    labelSelector:
      absent: [scaledobject.keda.sh/name]
    upstream: datadog
"""


async def served_by(port: int, context: ssl.SSLContext, ns: str, metric: str, query: str) -> str:
    target = METRIC_PATH.format(ns=ns, metric=metric) + (f"?{query}" if query else "")
    response = await raw_request(port, context, target, (USER,))
    if response.status != 200:
        return f"{response.status}: {response.json()['message']}"
    return str(response.json()["received"]["tenant"])  # type: ignore[index]


async def test_every_rule_kind_in_its_documented_order(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend]
) -> None:
    argv = router_args(
        pki,
        tenancy(tmp_path, servers),
        f"--routing-rules-file={rules_file(tmp_path, pki, servers, RULES)}",
    )
    keda = KEDA_SELECTOR.format(so="web")
    async with running_router(argv) as router:
        assert router.secure_port
        context = pki.client_context(pki.aggregator())
        cases = [
            # the tenant's own rule first, in its namespaces only
            ("alpha-ns", "prometheus-http", keda, "alpha-prometheus"),
            ("beta-ns", "prometheus-http", keda, "beta"),
            # a platform rule by metric name (fullmatch: a prefix is not enough)
            ("beta-ns", "datadog.nginx.net.request_per_s", keda, "datadog"),
            ("beta-ns", "datadog.x-1", keda, "beta"),
            # alpha's own rule comes before the platform rule naming the same metric
            ("alpha-ns", "prometheus-platform", keda, "alpha-prometheus"),
            ("beta-ns", "prometheus-platform", keda, "datadog"),
            # by labelSelector: no ScaledObject named, another adapter's metric
            ("beta-ns", "s0-rabbitmq", "", "datadog"),
            ("beta-ns", "s0-rabbitmq", "labelSelector=app%3Dweb", "datadog"),
            ("alpha-ns", "s0-rabbitmq", keda, "alpha"),
            # KEDA label sharding by the ScaledObject's name, platform-wide
            ("alpha-ns", "s0-rabbitmq", KEDA_SELECTOR.format(so="shard-b-web"), "shard-b"),
            (
                "beta-ns",
                "s0-rabbitmq",
                "labelSelector=scaledobject.keda.sh%2Fname+in+%28shard-b-1%29",
                "shard-b",
            ),
            # platform rules also take namespaces no tenant owns ...
            ("kube-system", "s0-cpu", "", "datadog"),
        ]
        for ns, metric, query, expected in cases:
            got = await served_by(router.secure_port, context, ns, metric, query)
            assert got == expected, (ns, metric, query)
        # ... and what no rule and no tenant takes is a 404 naming namespace and metric.
        got = await served_by(router.secure_port, context, "kube-system", "s0-cpu", keda)
        assert got.startswith("404: ")
        assert '"kube-system"' in got
        assert '"s0-cpu"' in got
        malformed = await served_by(
            router.secure_port, context, "alpha-ns", "s0-x", "labelSelector=a+in+%28b"
        )
        assert malformed.startswith("400: invalid labelSelector")
    assert not servers["impostor"].received


async def test_no_rules_404_names_the_namespace_and_the_metric(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend]
) -> None:
    async with running_router(router_args(pki, tenancy(tmp_path, servers))) as router:
        assert router.secure_port
        context = pki.client_context(pki.aggregator())
        got = await served_by(router.secure_port, context, "nobodys", "s0-queue", "")
        assert got == '404: namespace "nobodys" is not served by any tenant; metric "s0-queue"'


async def test_each_upstream_trusts_its_own_ca_only(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend]
) -> None:
    """The default upstream's and the platform adapters' CA verify them, never a tenant
    routed by the template (whose --upstream-ca-file does not verify them either)."""
    argv = router_args(
        pki,
        tenancy(tmp_path, servers),
        f"--routing-rules-file={rules_file(tmp_path, pki, servers, RULES)}",
        f"--default-upstream={servers['shared-keda'].url}",
        f"--default-upstream-ca-file={pki.path('other_ca.crt')}",
        "--default-upstream-server-name=localhost",
    )
    keda = KEDA_SELECTOR.format(so="web")
    async with running_router(argv) as router:
        assert router.secure_port
        context = pki.client_context(pki.aggregator())
        port = router.secure_port
        assert await served_by(port, context, "unowned", "s0-x", keda) == "shared-keda"
        assert await served_by(port, context, "beta-ns", "s0-x", "") == "datadog"
        assert await served_by(port, context, "alpha-ns", "s0-x", keda) == "alpha"
        # gamma's server has a certificate of the default upstream's CA: refused.
        refused = await served_by(port, context, "gamma-ns", "s0-x", keda)
        assert refused.startswith("503: "), refused
    assert not servers["impostor"].received
    assert {r.client_cn for r in servers["shared-keda"].received} == {"keda-tenancy-router"}


async def test_a_tenant_hanging_a_platform_upstream_never_queues_another_tenant(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend]
) -> None:
    """alpha's HPAs fill the in-flight limit towards the shared adapter with a metric that
    hangs there; beta's reads through the same platform rule are still answered at once
    (each tenant has its own pool, limit and fast-fail state towards a platform upstream)."""
    servers["datadog"].mode = "hang:datadog.hung"
    argv = router_args(
        pki,
        tenancy(tmp_path, servers),
        f"--routing-rules-file={rules_file(tmp_path, pki, servers, RULES)}",
        "--upstream-max-concurrent=2",
        "--upstream-timeout=30s",
    )
    keda = KEDA_SELECTOR.format(so="web")
    async with running_router(argv) as router:
        port = router.secure_port
        assert port
        context = pki.client_context(pki.aggregator())
        hung = [
            asyncio.create_task(served_by(port, context, "alpha-ns", "datadog.hung", keda))
            for _ in range(2)
        ]
        while len(servers["datadog"].received) < 2:
            await asyncio.sleep(0.01)
        # alpha is at its limit: its next read there is refused, beta's is served.
        refused = await served_by(port, context, "alpha-ns", "datadog.ok", keda)
        assert refused.startswith("429: "), refused
        assert await served_by(port, context, "beta-ns", "datadog.ok", keda) == "datadog"
        servers["datadog"].hang_released.set()
        assert await asyncio.gather(*hung) == ["datadog", "datadog"]


async def test_named_upstream_presents_its_own_client_certificate(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend]
) -> None:
    cert, key = pki.router_client_ca.issue("router-for-datadog", client=True).write(
        pki.directory, "router-for-datadog"
    )
    servers["datadog"].allowed_names = ("router-for-datadog",)
    text = RULES.replace(
        "  - name: not-keda",
        "  - name: not-keda-first\n    metricName: s1-.*\n    upstream: datadog\n  - name: not-keda",
    )
    path = rules_file(tmp_path, pki, servers, text)
    own = (
        Path(path)
        .read_text()
        .replace(
            "    serverName: localhost\n",
            f"    serverName: localhost\n    clientCertFile: {cert}\n    clientKeyFile: {key}\n",
            1,
        )
    )
    Path(path).write_text(own)
    argv = router_args(pki, tenancy(tmp_path, servers), f"--routing-rules-file={path}")
    async with running_router(argv) as router:
        assert router.secure_port
        context = pki.client_context(pki.aggregator())
        assert await served_by(router.secure_port, context, "beta-ns", "s1-x", "") == "datadog"
        # tenants still get the router's usual client certificate
        assert (
            await served_by(
                router.secure_port,
                context,
                "beta-ns",
                "s0-x",
                "labelSelector=scaledobject.keda.sh%2Fname%3Dweb",
            )
            == "beta"
        )
    assert {r.client_cn for r in servers["datadog"].received} == {"router-for-datadog"}
    assert {r.client_cn for r in servers["beta"].received} == {"keda-tenancy-router"}


BAD_RULES = {
    "bad-regex": (
        "rules:\n  - {name: broken, metricName: 'a(', upstream: datadog}\n",
        "rule broken: metricName: invalid regular expression",
    ),
    "empty-selector": (
        "rules:\n  - {name: empty, labelSelector: {}, upstream: datadog}\n",
        "rule empty: labelSelector is empty",
    ),
    "no-condition": (
        "rules:\n  - {name: everything, upstream: datadog}\n",
        "rule everything: has neither metricName nor labelSelector",
    ),
    "present-and-absent": (
        "rules:\n  - {name: never, labelSelector: {present: [a], absent: [a]}, "
        "upstream: datadog}\n",
        "rule never: can never match: labels ['a'] both required and absent",
    ),
    "unknown-tenant": (
        "rules:\n  - {name: typo, tenant: alhpa, metricName: x, upstream: datadog}\n",
        "rule typo: unknown tenant",
    ),
    "unknown-upstream": (
        "rules:\n  - {name: nowhere, metricName: x, upstream: datadgo}\n",
        "rule nowhere: unknown upstream 'datadgo'",
    ),
    "shadowed": (
        "rules:\n  - {name: wide, labelSelector: {absent: [k]}, upstream: datadog}\n"
        "  - {name: narrow, metricName: 'dd-.*', labelSelector: {absent: [k, j]}, "
        "upstream: shard-b}\n",
        "rule narrow can never match: rule wide before it",
    ),
    "shadowed-same-pattern": (
        "rules:\n  - {name: first, tenant: beta, metricName: 'dd-.*', upstream: datadog}\n"
        "  - {name: second, tenant: beta, metricName: 'dd-.*', "
        "labelSelector: {present: [k]}, upstream: shard-b}\n",
        "rule second can never match: rule first before it",
    ),
    "another-tenants-upstream": (
        "rules:\n  - {name: steal, tenant: beta, metricName: x, upstream: alpha-prometheus}\n",
        "rule steal of tenant beta names upstream alpha-prometheus of tenant alpha",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
async def test_rules_that_cannot_work_are_refused_at_start(
    case: str,
    pki: Pki,
    tmp_path: Path,
    servers: dict[str, TenantBackend],
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, message = BAD_RULES[case]
    argv = router_args(
        pki,
        tenancy(tmp_path, servers),
        f"--routing-rules-file={rules_file(tmp_path, pki, servers, text)}",
    )
    with pytest.raises(SystemExit):
        RouterConfig.from_args(argv, {})
    assert message in capsys.readouterr().err


def test_rules_file_from_the_environment(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        '{"upstreams": {"dd": {"url": "https://dd.example:8443"}},'
        ' "rules": [{"name": "dd", "metricName": "dd-.*", "upstream": "dd"}]}'
    )
    tenancy_path = tmp_path / "t.yaml"
    tenancy_path.write_text("tenants:\n  alpha:\n    namespaces: [alpha-ns]\n")
    config = RouterConfig.from_args(
        router_args(pki, str(tenancy_path)),
        {"KEDA_TENANCY_ROUTER_ROUTING_RULES_FILE": str(path)},
    )
    assert [rule.name for rule in config.routing.rules] == ["dd"]
    assert config.routing.upstreams["dd"].ca_file is None  # system roots, not the template's


async def test_template_tenant_never_trusts_the_default_upstreams_ca(
    pki: Pki, tmp_path: Path, servers: dict[str, TenantBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gamma is routed by the URL template to a server whose certificate (right name) the
    default upstream's CA signed: refused. Before, the default upstream's CA could only be
    given as --upstream-ca-file, which made exactly that server acceptable (the contrast)."""
    impostor = servers["impostor"]
    cert, key = pki.other_ca.issue(
        "gamma", dns=("gamma.tenants.svc",), ips=("127.0.0.1",), server=True
    ).write(pki.directory, "gamma-impostor")
    await impostor.stop()
    impostor.cert_pem_path, impostor.key_pem_path = cert, key
    await impostor.start()
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "gamma.tenants.svc" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    path = tmp_path / "template.yaml"
    path.write_text("tenants:\n  gamma:\n    namespaces: [gamma-ns]\n")
    template = f"--upstream-url-template=https://{{tenant}}.tenants.svc:{impostor.port}"
    default = [
        f"--default-upstream={servers['shared-keda'].url}",
        "--default-upstream-server-name=localhost",
    ]
    context = pki.client_context(pki.aggregator())
    own_ca = [*default, f"--default-upstream-ca-file={pki.path('other_ca.crt')}"]
    async with running_router(router_args(pki, str(path), template, *own_ca)) as router:
        assert router.secure_port
        assert await served_by(router.secure_port, context, "free", "s0-x", "") == "shared-keda"
        refused = await served_by(router.secure_port, context, "gamma-ns", "s0-x", "")
        assert refused.startswith("503: "), refused
    assert not impostor.received
    shared = [
        a
        if not a.startswith("--upstream-ca-file=")
        else f"--upstream-ca-file={pki.path('other_ca.crt')}"
        for a in router_args(pki, str(path), template, *default)
    ]
    async with running_router(shared) as router:
        assert router.secure_port
        assert await served_by(router.secure_port, context, "gamma-ns", "s0-x", "") == "impostor"
