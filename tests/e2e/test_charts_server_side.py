"""Every object the Helm charts render is accepted by the real kube-apiserver (server-side
dry run), for the router and two tenant releases installed the way the README does it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.charts import Helm, deep_merge, find_helm, render_installation, versions
from tests.deploy.test_chart_knobs import KNOBS
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

# CRDs of the optional objects, read from the projects' Go modules (no cloned repositories).
OPTIONAL_CRDS = {
    ("github.com/cert-manager/cert-manager", "CERT_MANAGER_VERSION"): [
        "deploy/crds/cert-manager.io_certificates.yaml",
        "deploy/crds/cert-manager.io_issuers.yaml",
        "deploy/crds/cert-manager.io_clusterissuers.yaml",
        "deploy/crds/cert-manager.io_certificaterequests.yaml",
    ],
    ("github.com/prometheus-operator/prometheus-operator", "PROMETHEUS_OPERATOR_VERSION"): [
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ],
    ("github.com/cilium/cilium", "CILIUM_VERSION"): [
        "pkg/k8s/apis/cilium.io/client/crds/v2/ciliumclusterwidenetworkpolicies.yaml",
        "pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml",
    ],
}


def module_dir(module: str, version: str) -> Path:
    done = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        timeout=600,
    )
    return Path(json.loads(done.stdout)["Dir"])


@pytest.fixture(scope="module")
def optional_crds(stack: Stack) -> None:
    pinned = versions()
    for (module, version_key), files in OPTIONAL_CRDS.items():
        root = module_dir(module, pinned[version_key])
        for name in files:
            stack.kubectl("apply", "--server-side", "-f", str(root / name))
    wait_for(
        lambda: all(
            stack.kubectl("get", kind, "-A", check=False).returncode == 0
            for kind in (
                "certificates.cert-manager.io",
                "servicemonitors.monitoring.coreos.com",
                "prometheusrules.monitoring.coreos.com",
                "podmonitors.monitoring.coreos.com",
                "ciliumclusterwidenetworkpolicies.cilium.io",
            )
        ),
        "optional CRDs established",
    )


VALUE_SETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "label-rule-process-mode": (
        {
            "networkPolicy": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "routing": {
                "upstreams": {
                    "datadog": {
                        "url": "https://datadog-cluster-agent-metrics-api.datadog.svc:8443",
                        "caSecret": "datadog-metrics-api-ca",
                        "clientCertSecret": "router-for-datadog",
                    }
                },
                "rules": [
                    {
                        "name": "not-keda",
                        "labelSelector": {"absent": ["scaledobject.keda.sh/name"]},
                        "upstream": "datadog",
                    }
                ],
                "registration": {"namespaces": ["platform-registrations"]},
            },
            "grafanaDashboard": {"enabled": True},
        },
        {
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "networkPolicy": {"monitoring": {"namespace": "monitoring"}},
        },
    ),
    "hnc-rule-deployment-mode": (
        {"tenancy": {"labelKeys": [], "hnc": {"rootLabel": "keda-tenancy.io/tenant-root"}}},
        {
            "tenancy": {"labelKeys": [], "hnc": {"rootLabel": "keda-tenancy.io/tenant-root"}},
            "reloader": {"mode": "deployment"},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
    ),
    "cert-manager-servicemonitor-cilium": (
        {
            "certificates": {"certManager": {"enabled": True}},
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
        {"networkPolicy": {"flavor": "cilium"}},
    ),
}


# The knobs of issue 23 (placement, probes, budgets, spread, volumes, env, token permission,
# host network, named egress), each a field the API server must accept as rendered.
VALUE_SETS["knobs-host-network-egress"] = (
    {"hostNetwork": True, "router": {"securePort": 10443, "healthPort": 10080}},
    deep_merge(
        KNOBS,
        {
            "rbac": {"serviceAccountTokens": {"enabled": True, "serviceAccountNames": ["vault"]}},
            "webhooks": {"hostNetwork": True, "port": 10444, "healthPort": 10081},
            "networkPolicy": {
                "cloudIdentity": "eks",
                "routerFrom": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
                "scalerEgress": [
                    {"name": "kafka", "to": [{"ipBlock": {"cidr": "10.9.0.0/24"}}], "ports": [9092]}
                ],
            },
        },
    ),
)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_charts_pass_server_side_validation(
    stack: Stack, optional_crds: None, value_set: str
) -> None:
    router_values, tenant_values = VALUE_SETS[value_set]
    helm = Helm(find_helm())
    try:
        installation = render_installation(
            helm, router_values=router_values, tenant_values=tenant_values
        )
    except Exception as exc:  # a values key the chart does not take is a test bug, say so
        raise AssertionError(f"rendering {value_set} failed: {exc}") from exc
    docs = [doc for doc in installation.all_docs() if doc]
    namespaces = sorted(
        {doc["metadata"]["namespace"] for doc in docs if doc["metadata"].get("namespace")}
    )
    stack.apply(
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces)
    )
    done = stack.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-validation",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(docs)
