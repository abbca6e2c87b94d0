"""Every object the Helm charts render is accepted by the real kube-apiserver (server-side
dry run), for the router and two tenant releases installed the way the README does it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.charts import Helm, find_helm, render_installation
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

# Value sets whose objects need no CRDs beyond Kubernetes' own and KEDA's (installed by the
# stack); cert-manager, ServiceMonitor and Cilium objects need their projects' CRDs.
VALUE_SETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "label-rule-process-mode": ({}, {}),
    "hnc-rule-deployment-mode": (
        {"tenancy": {"labelKeys": [], "hnc": {"rootLabel": "keda-tenancy.io/tenant-root"}}},
        {
            "tenancy": {"labelKeys": [], "hnc": {"rootLabel": "keda-tenancy.io/tenant-root"}},
            "reloader": {"mode": "deployment"},
        },
    ),
}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_charts_pass_server_side_validation(stack: Stack, value_set: str) -> None:
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
