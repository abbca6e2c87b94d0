"""Managed-cloud networking in the charts: the router (and the tenant webhooks) on the host
network with their ports kept consistent from container to Service to APIService/webhook
configuration, and operator egress rules that each name what they let out: the identity
endpoints of the cloud whose identity example is used, and scaler destinations only where
listed."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.charts import (
    REPO,
    ROUTER_RELEASE,
    Doc,
    Helm,
    HelmFailed,
    container,
    deep_merge,
    find,
)
from tests.deploy.test_charts import flag, render_router, render_tenant, tenant_values

EXAMPLES = REPO / "deploy" / "examples"


def test_router_on_the_host_network_keeps_its_ports_consistent(helm: Helm) -> None:
    default = find(render_router(helm, {}), "Deployment", ROUTER_RELEASE)["spec"]["template"]
    assert "hostNetwork" not in default["spec"]
    docs = render_router(
        helm,
        {"hostNetwork": True, "router": {"securePort": 10443, "healthPort": 10080}},
    )
    pod = find(docs, "Deployment", ROUTER_RELEASE)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    # Tenant Services are still resolved through cluster DNS.
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    router = container({"spec": {"template": {"spec": pod}}})
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports == {"https": 10443, "health": 10080}
    assert flag(router["args"], "secure-port") == "10443"
    assert flag(router["args"], "health-port") == "10080"
    service = find(docs, "Service", ROUTER_RELEASE)
    https = next(p for p in service["spec"]["ports"] if p["name"] == "https")
    assert https["targetPort"] == "https"  # the container's port, whatever its number
    apiservice = find(docs, "APIService", "v1beta1.external.metrics.k8s.io")
    assert apiservice["spec"]["service"]["port"] == https["port"]
    assert apiservice["spec"]["service"]["name"] == service["metadata"]["name"]


def test_tenant_webhooks_on_the_host_network_with_their_own_ports(
    helm: Helm, router_docs: list[Doc]
) -> None:
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs),
        {
            "webhooks": {
                "hostNetwork": True,
                "port": 10443,
                "healthPort": 10081,
                "metricsPort": 10082,
            }
        },
    )
    docs = render_tenant(helm, values)
    pod = find(docs, "Deployment", "keda-admission-webhooks")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    webhooks = pod["containers"][0]
    assert flag(webhooks["args"], "port") == "10443"
    assert flag(webhooks["args"], "health-probe-bind-address") == ":10081"
    assert flag(webhooks["args"], "metrics-bind-address") == ":10082"
    ports = {p["name"]: p["containerPort"] for p in webhooks["ports"]}
    assert ports == {"https": 10443, "probes": 10081, "metrics": 10082}
    assert webhooks["livenessProbe"]["httpGet"]["port"] == "probes"
    service = find(docs, "Service", "keda-admission-webhooks")
    (https,) = service["spec"]["ports"]
    assert https["targetPort"] == "https"
    config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    assert {w["clientConfig"]["service"]["port"] for w in config["webhooks"]} == {https["port"]}
    policy = find(docs, "NetworkPolicy", "keda-admission-webhooks")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 10443, "protocol": "TCP"}]
    # Default: the pod network, KEDA's ports.
    default = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    pod = find(default, "Deployment", "keda-admission-webhooks")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    assert flag(pod["containers"][0]["args"], "port") == "9443"
    clash = deep_merge(values, {"webhooks": {"metricsPort": 10081}})
    with pytest.raises(HelmFailed, match="must differ"):
        render_tenant(helm, clash)


def operator_egress(docs: list[Doc]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = find(docs, "NetworkPolicy", "keda-operator")["spec"]["egress"]
    return rules


def cidrs_and_ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {
        (peer["ipBlock"]["cidr"], port["port"])
        for rule in rules
        for peer in rule.get("to", [])
        if "ipBlock" in peer
        for port in rule.get("ports", [])
    }


def test_default_operator_egress_opens_no_identity_endpoint_and_no_scaler_port(
    helm: Helm, router_docs: list[Doc]
) -> None:
    rules = operator_egress(
        render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    )
    ports = {port["port"] for rule in rules for port in rule.get("ports", [])}
    assert ports == {443, 6443, 53}  # the API server and DNS; the tenant's namespaces: no ports
    assert cidrs_and_ports(rules) == set()  # no link-local identity endpoint, no public range


EXPECTED_IDENTITY = {
    "identity-gke-workload-identity": {
        ("169.254.169.254/32", 80),
        ("169.254.169.252/32", 988),
        ("0.0.0.0/0", 443),
    },
    "identity-aws-irsa": {
        ("169.254.170.23/32", 80),
        ("fd00:ec2::23/128", 80),
        ("169.254.169.254/32", 80),
        ("0.0.0.0/0", 443),
    },
    "identity-azure-workload-identity": {("0.0.0.0/0", 443)},
}


@pytest.mark.parametrize("example", sorted(EXPECTED_IDENTITY))
def test_each_identity_example_opens_its_clouds_identity_endpoints(
    helm: Helm, router_docs: list[Doc], example: str
) -> None:
    given = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    values = deep_merge(tenant_values("label-process", "tenant-a", router_docs), given)
    rules = operator_egress(render_tenant(helm, values))
    assert cidrs_and_ports(rules) == EXPECTED_IDENTITY[example]
    for rule in rules:
        for peer in rule.get("to", []):
            if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                # Public addresses only: not the cluster's, not link-local.
                assert set(peer["ipBlock"]["except"]) >= {
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "169.254.0.0/16",
                }
    # Only the operator runs scalers: the other components' egress is unchanged.
    adapter = find(render_tenant(helm, values), "NetworkPolicy", "keda-operator-metrics-apiserver")
    assert cidrs_and_ports(adapter["spec"]["egress"]) == set()


def test_scaler_destinations_are_named_rules_with_their_ports_only(
    helm: Helm, router_docs: list[Doc]
) -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    scalers = [
        {"name": "prometheus", "to": [monitoring], "ports": [9090]},
        {"name": "rabbitmq", "to": [{"ipBlock": {"cidr": "10.9.0.0/24"}}], "ports": [5672, 15672]},
    ]
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs),
        {"networkPolicy": {"scalerEgress": scalers}},
    )
    rules = operator_egress(render_tenant(helm, values))
    assert {"to": [monitoring], "ports": [{"port": 9090, "protocol": "TCP"}]} in rules
    assert cidrs_and_ports(rules) == {("10.9.0.0/24", 5672), ("10.9.0.0/24", 15672)}
    bad = deep_merge(values, {"networkPolicy": {"scalerEgress": [{"name": "x", "to": []}]}})
    with pytest.raises(HelmFailed, match="schema"):
        render_tenant(helm, bad)
    cilium = deep_merge(values, {"networkPolicy": {"flavor": "cilium"}})
    with pytest.raises(HelmFailed, match="operatorExtraEgress"):
        render_tenant(helm, cilium)


def test_metrics_server_admits_a_host_network_router_from_the_given_peers(
    helm: Helm, router_docs: list[Doc]
) -> None:
    nodes = {"ipBlock": {"cidr": "10.0.0.0/16"}}
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs),
        {"networkPolicy": {"routerFrom": [nodes]}},
    )
    policy = find(render_tenant(helm, values), "NetworkPolicy", "keda-operator-metrics-apiserver")
    (https, *_) = policy["spec"]["ingress"]
    assert nodes in https["from"]
    assert https["ports"] == [{"port": 6443, "protocol": "TCP"}]


def test_keda_webhooks_accept_their_rendered_port_flags(helm: Helm, router_docs: list[Doc]) -> None:
    binary = helm.path.parent / "keda-webhooks"
    if not binary.exists():
        pytest.skip(f"no {binary}: build it with tests/e2e/build/build.sh")
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs),
        {
            "webhooks": {
                "hostNetwork": True,
                "port": 10443,
                "healthPort": 10081,
                "metricsPort": 10082,
            }
        },
    )
    args = container(find(render_tenant(helm, values), "Deployment", "keda-admission-webhooks"))[
        "args"
    ]
    result = subprocess.run(
        [str(binary), *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]  # pflag: an unknown flag exits 2
