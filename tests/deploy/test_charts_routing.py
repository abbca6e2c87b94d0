"""The router chart's `routing:` values: the rules file it renders is the one the router reads,
every upstream's CA and client certificate come from their own Secrets, and the schema refuses
rules the router could not use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from tests.deploy.charts import ROUTER_RELEASE, Helm, HelmFailed, container, find
from tests.deploy.test_charts import flag, published_rule_text, render_router

ROUTING: dict[str, Any] = {
    "router": {"defaultUpstream": "https://keda-operator-metrics-apiserver.keda.svc:443"},
    "tenancy": {"tenants": {"team-a": {"namespaces": ["team-a"]}}},
    "routing": {
        "upstreams": {
            "datadog": {
                "url": "https://datadog-cluster-agent-metrics-api.datadog.svc:8443",
                "serverName": "datadog-cluster-agent-metrics-api.datadog.svc",
                "caSecret": "datadog-metrics-api-ca",
            },
            "team-a-prometheus": {
                "url": "https://prometheus-adapter.team-a.svc:443",
                "caSecret": "team-a-prometheus-ca",
                "caKey": "tls.crt",
                "clientCertSecret": "router-for-team-a-prometheus",
                "tenant": "team-a",
            },
        },
        "rules": [
            {
                "name": "team-a-prometheus",
                "tenant": "team-a",
                "metricName": "prometheus-.*",
                "upstream": "team-a-prometheus",
            },
            {
                "name": "not-keda",
                "labelSelector": {"absent": ["scaledobject.keda.sh/name"]},
                "upstream": "datadog",
            },
        ],
        "defaultUpstream": {
            "caSecret": "shared-keda-ca",
            "serverName": "keda-operator-metrics-apiserver.keda.svc",
        },
    },
}


def test_routing_values_render_the_rules_the_router_reads(helm: Helm, tmp_path: Path) -> None:
    docs = render_router(helm, ROUTING)
    deployment = find(docs, "Deployment", ROUTER_RELEASE)
    router = container(deployment)
    args = list(router["args"])
    mounts = {m["name"]: m["mountPath"] for m in router["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    # Each upstream's trust from its own Secret, mounted in its own directory.
    assert volumes["upstream-datadog-ca"]["secret"]["secretName"] == "datadog-metrics-api-ca"
    assert volumes["upstream-team-a-prometheus-client"]["secret"]["secretName"] == (
        "router-for-team-a-prometheus"
    )
    assert volumes["default-upstream-ca"]["secret"]["secretName"] == "shared-keda-ca"
    assert mounts["routing"] == "/etc/keda-tenancy/routing"
    # The rendered rules, read by the router's own parser and validated against the rule.
    text = find(docs, "ConfigMap", f"{ROUTER_RELEASE}-routing")["data"]["rules.yaml"]
    local = {
        "routing-rules-file": (tmp_path / "rules.yaml", text),
        "tenancy-rule-file": (tmp_path / "rule.yaml", published_rule_text(docs)),
        "tenancy-file": (
            tmp_path / "tenancy.yaml",
            find(docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy")["data"]["tenancy.yaml"],
        ),
    }
    for name, (path, content) in local.items():
        given = flag(args, name)
        assert given is not None, name
        path.write_text(content)
        args[args.index(f"--{name}={given}")] = f"--{name}={path}"
    config = RouterConfig.from_args(args, {})
    routing = config.routing
    assert [rule.name for rule in routing.rules] == ["team-a-prometheus", "not-keda"]
    datadog, prometheus = routing.upstreams["datadog"], routing.upstreams["team-a-prometheus"]
    assert datadog.ca_file == "/etc/keda-tenancy/upstreams/datadog/ca/ca.crt"
    assert datadog.client_cert_file is None  # the router's own client certificate
    assert prometheus.ca_file == "/etc/keda-tenancy/upstreams/team-a-prometheus/ca/tls.crt"
    assert prometheus.tenant == "team-a"
    assert routing.default is not None
    assert routing.default.ca_file == "/etc/keda-tenancy/default-upstream/ca/ca.crt"
    assert routing.default.server_name == "keda-operator-metrics-apiserver.keda.svc"
    files = [
        datadog.ca_file,
        prometheus.ca_file,
        prometheus.client_cert_file,
        routing.default.ca_file,
    ]
    for file in files:
        assert file is not None
        assert str(Path(file).parent) in mounts.values(), file
    # The template's CA stays the tenants' alone.
    assert config.upstream_ca_file == "/etc/keda-tenancy/upstream-ca/ca.crt"


def test_no_routing_values_render_nothing_new(helm: Helm) -> None:
    docs = render_router(helm, {})
    router = container(find(docs, "Deployment", ROUTER_RELEASE))
    assert not [a for a in router["args"] if "routing" in a or "default-upstream-" in a]
    assert not [d for d in docs if d["metadata"]["name"] == f"{ROUTER_RELEASE}-routing"]


@pytest.mark.parametrize(
    "routing",
    [
        {"rules": [{"name": "everything", "upstream": "datadog"}]},
        {"rules": [{"name": "x", "labelSelector": {}, "upstream": "datadog"}]},
        {"upstreams": {"dd": {"url": "http://plain.example"}}},
        {"upstreams": {"dd": {"url": "https://dd.example", "caFile": "/etc/ca.crt"}}},
    ],
)
def test_schema_refuses_rules_the_router_cannot_use(helm: Helm, routing: dict[str, Any]) -> None:
    with pytest.raises(HelmFailed):
        render_router(helm, {"routing": routing})


def test_registrations_are_read_with_a_role_in_each_declared_namespace_only(
    helm: Helm,
) -> None:
    declared = ["platform-registrations", "team-a"]
    docs = render_router(helm, {"routing": {"registration": {"namespaces": declared}}})
    args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
    assert flag(args, "registration-namespaces") == ",".join(declared)
    roles = [
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"].endswith("registration-reader")
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == declared
    for role in roles:
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}
        ]
    bindings = [
        d
        for d in docs
        if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("registration-reader")
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == declared
    # No cluster-wide ConfigMap access.
    for cluster_role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in cluster_role.get("rules") or []:
            assert "configmaps" not in rule.get("resources", []), cluster_role["metadata"]["name"]


def test_network_policy_opens_egress_to_rule_upstreams(helm: Helm) -> None:
    docs = render_router(helm, {**ROUTING, "networkPolicy": {"enabled": True}})
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    opened = {
        peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for policy in policies
        for rule in policy["spec"].get("egress") or []
        for peer in rule.get("to", [])
        if "namespaceSelector" in peer
    }
    assert {"datadog", "team-a", "keda"} <= opened
