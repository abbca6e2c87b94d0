"""The tenant chart's uninstall hook against the real kube-apiserver, with its own
ServiceAccount's token and only the RBAC the chart renders for it: after the release's objects
are gone (the operator's ClusterRole too, so it holds no `bind`), it releases the tenant's
RoleBinding and its finalizer, KEDA's finalizer, the Lease and keda-tenancy-certs' Secrets,
and a namespace deleted then is gone, where before it stayed Terminating."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from reloader.rolebindings import OWNER_LABEL
from tenancy_common.keda_objects import FINALIZER
from tests.deploy.charts import Doc, Helm, find_helm, render_installation
from tests.e2e.stack import ROOT, Stack, wait_for

pytestmark = pytest.mark.e2e

TENANT = "gone"
KEDA_NS = f"keda-{TENANT}"
APP_NS = "gone-one"
ROLE = f"keda-tenancy-{TENANT}-operator"
MANAGED = f"{ROLE}-managed"
LEASE = f"{TENANT}.operator.keda-tenancy.io"
HOOK = "keda-tenancy-uninstall"


def hook_docs() -> list[Doc]:
    docs = render_installation(Helm(find_helm()), tenants=(TENANT,)).tenants[TENANT]
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def exists(stack: Stack, *args: str) -> bool:
    return stack.kubectl("get", *args, check=False).returncode == 0


def get(stack: Stack, *args: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", *args, "-o", "json").stdout))


def test_the_hook_releases_what_the_release_left_with_its_own_rbac(stack: Stack) -> None:
    docs = hook_docs()
    job = next(d for d in docs if d["kind"] == "Job")
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NS}})
    stack.tenant_namespace(TENANT, APP_NS)
    # What the release's components made at run time; the release's own objects are gone
    # (no ClusterRole keda-tenancy-gone-operator: the finalizer goes without `bind`).
    stack.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": MANAGED,
                "namespace": APP_NS,
                "labels": {OWNER_LABEL: TENANT},
                "finalizers": [FINALIZER],
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "keda-operator", "namespace": KEDA_NS}],
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "left", "namespace": APP_NS, "finalizers": ["finalizer.keda.sh"]},
            "spec": {
                "scaleTargetRef": {"name": "nothing"},
                "triggers": [
                    {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "50"}}
                ],
            },
        },
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": KEDA_NS},
            "spec": {"holderIdentity": "keda-operator-0_gone"},
        },
        *(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": name,
                    "namespace": KEDA_NS,
                    "labels": {"app.kubernetes.io/managed-by": "keda-tenancy-certs"},
                },
                "data": {"tls.crt": "", "tls.key": ""},
            }
            for name in ("keda-tenancy-internal-ca", "kedaorg-certs", "keda-metrics-apiserver-tls")
        ),
    )
    # As on main: without the manager, a deleted namespace stays Terminating on our finalizer.
    stack.kubectl("delete", "namespace", APP_NS, "--wait=false")
    wait_for(
        lambda: get(stack, "namespace", APP_NS).get("status", {}).get("phase") == "Terminating",
        f"{APP_NS} Terminating",
        30,
    )
    assert exists(stack, "rolebinding", MANAGED, "-n", APP_NS)

    # Helm's post-delete phase: the hook's RBAC, then its Job's container, as its ServiceAccount.
    stack.apply(*(d for d in docs if d["kind"] != "Job"))
    kubeconfig = stack.service_account_kubeconfig(KEDA_NS, HOOK)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["keda-tenancy-reloader"]
    args = [*container["args"], f"--kubeconfig={kubeconfig}", "--uninstall-timeout=60s"]
    done = subprocess.run(
        [sys.executable, "-m", "reloader", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "forbidden" not in done.stderr.lower(), done.stderr[-3000:]
    assert not exists(stack, "lease", LEASE, "-n", KEDA_NS)
    assert (
        json.loads(stack.kubectl("get", "secrets", "-n", KEDA_NS, "-o", "json").stdout)["items"]
        == []
    )
    wait_for(lambda: not exists(stack, "namespace", APP_NS), f"{APP_NS} gone", 60)
    stack.kubectl("delete", "namespace", KEDA_NS, "--wait=false")
