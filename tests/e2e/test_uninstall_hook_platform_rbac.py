"""The platform layout's pre-delete uninstall hook against the real kube-apiserver, with its own
ServiceAccount's token and only the RBAC the chart renders for it: while the release still
exists it deletes the operator's Deployment, removes KEDA's finalizer where only this tenant's
platform binding is (not where another tenant's is), deletes the Lease, keda-tenancy-certs'
RoleBinding and Secrets, and touches none of the platform controller's bindings; once the
controller has let its bindings go, a namespace with a ScaledObject left deletes normally."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tenancy_common.keda_objects import FINALIZER
from tenancy_common.platform_objects import CONTROLLER_LABEL, TENANT_LABEL, binding_name
from tests.deploy.charts import Doc, Helm, find_helm, render_installation
from tests.e2e.stack import ROOT, Stack, wait_for

pytestmark = pytest.mark.e2e

TENANT = "leaving"
KEDA_NS = f"keda-{TENANT}"
APP_NS = "leaving-one"
SHARED_NS = "leaving-shared"
LEASE = f"{TENANT}.operator.keda-tenancy.io"
HOOK = "keda-tenancy-uninstall"
SECRETS = ("keda-tenancy-internal-ca", "kedaorg-certs", "keda-metrics-apiserver-tls")


def rendered() -> list[Doc]:
    return render_installation(
        Helm(find_helm()),
        tenants=(TENANT,),
        tenant_values={"platformController": {"enabled": True}},
    ).tenants[TENANT]


def exists(stack: Stack, *args: str) -> bool:
    return stack.kubectl("get", *args, check=False).returncode == 0


def get(stack: Stack, *args: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", *args, "-o", "json").stdout))


def platform_binding(namespace: str, tenant: str) -> Doc:
    """As the platform controller makes it (controller/objects.py, binding_body)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": binding_name(tenant),
            "namespace": namespace,
            "labels": {CONTROLLER_LABEL: "binding", TENANT_LABEL: tenant},
            "finalizers": [FINALIZER],
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"keda-tenancy-{tenant}-operator",
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "keda-operator", "namespace": f"keda-{tenant}"}
        ],
    }


def scaled_object(namespace: str) -> Doc:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "left", "namespace": namespace, "finalizers": ["finalizer.keda.sh"]},
        "spec": {
            "scaleTargetRef": {"name": "nothing"},
            "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "50"}}],
        },
    }


def test_the_platform_hook_stops_keda_and_releases_its_finalizers_with_its_own_rbac(
    stack: Stack,
) -> None:
    docs = rendered()
    hooked = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    job = next(d for d in hooked if d["kind"] == "Job")
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "keda-operator"
    )
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NS}})
    stack.tenant_namespace(TENANT, APP_NS)
    # SHARED_NS is on its way from this tenant to another ("next"): made as the admission policy
    # of the router release (when an earlier scenario installed it) admits it, each binding
    # while the namespace is its tenant's, the old one kept across the move.
    stack.tenant_namespace(TENANT, SHARED_NS)
    # The release's operator Deployment and the certificate controller's RoleBinding (the release
    # still exists: pre-delete), what the controller and KEDA made at run time.
    operator = {**operator, "metadata": {**operator["metadata"], "namespace": KEDA_NS}}
    stack.apply(
        operator,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "keda-tenancy-certs", "namespace": KEDA_NS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "keda-tenancy-certs",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "keda-tenancy-certs", "namespace": "x"}
            ],
        },
        platform_binding(APP_NS, TENANT),
        platform_binding(SHARED_NS, TENANT),
        scaled_object(APP_NS),
        scaled_object(SHARED_NS),
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": KEDA_NS},
            "spec": {"holderIdentity": "keda-operator-0_leaving"},
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
            for name in SECRETS
        ),
    )

    # The move: the other tenant's binding there too, its KEDA may still act there.
    stack.kubectl("label", "namespace", SHARED_NS, f"{TENANT_LABEL}=next", "--overwrite")
    stack.apply(platform_binding(SHARED_NS, "next"))

    # Helm's pre-delete phase: the hook's RBAC, then its Job's container, as its ServiceAccount.
    stack.apply(*(d for d in hooked if d["kind"] != "Job"))
    kubeconfig = stack.service_account_kubeconfig(KEDA_NS, HOOK)
    container = job["spec"]["template"]["spec"]["containers"][0]
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
    assert not exists(stack, "deployment", "keda-operator", "-n", KEDA_NS)
    assert not exists(stack, "lease", LEASE, "-n", KEDA_NS)
    assert not exists(stack, "rolebinding", "keda-tenancy-certs", "-n", KEDA_NS)
    assert get(stack, "secrets", "-n", KEDA_NS)["items"] == []
    # KEDA's finalizer: gone where only this tenant's binding is, kept where another's is.
    assert not get(stack, "scaledobject", "left", "-n", APP_NS)["metadata"].get("finalizers")
    kept = get(stack, "scaledobject", "left", "-n", SHARED_NS)["metadata"]["finalizers"]
    assert kept == ["finalizer.keda.sh"]
    # The controller's bindings are untouched (it deletes them once Helm deleted the grant).
    for namespace in (APP_NS, SHARED_NS):
        binding = get(stack, "rolebinding", binding_name(TENANT), "-n", namespace)["metadata"]
        assert binding["finalizers"] == [FINALIZER]
        assert "deletionTimestamp" not in binding

    # As the controller does when the grant is gone; the namespace, ScaledObject left in it,
    # then deletes normally.
    for namespace in (APP_NS, SHARED_NS):
        stack.kubectl(
            "patch", "rolebinding", binding_name(TENANT), "-n", namespace,
            "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
        )  # fmt: skip
        stack.kubectl("delete", "rolebinding", binding_name(TENANT), "-n", namespace)
    stack.kubectl("delete", "namespace", APP_NS, "--wait=false")
    wait_for(lambda: not exists(stack, "namespace", APP_NS), f"{APP_NS} gone", 60)
    for kind, name in (("scaledobject", "left"), ("rolebinding", binding_name("next"))):
        stack.kubectl(
            "patch", kind, name, "-n", SHARED_NS,
            "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
        )  # fmt: skip
    for namespace in (SHARED_NS, KEDA_NS):
        stack.kubectl("delete", "namespace", namespace, "--wait=false")
