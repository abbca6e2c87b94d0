"""The platform layout's pre-delete hook (deploy/README.md, section 9): rendered only with
platformController.enabled, before the release's objects go, with flags the program accepts that
name the objects the chart and the platform controller really make, and RBAC limited to them."""

from __future__ import annotations

import os
from typing import Any

import pytest

from reloader.config import ReloaderConfig
from tenancy_common.platform_objects import binding_name
from tests.deploy.charts import (
    TENANT_CHART,
    Doc,
    Helm,
    HelmNotFound,
    container,
    find,
    find_helm,
    router_client_ca_pem,
    tenant_namespace,
)
from tests.deploy.test_uninstall_hook import hooks, matches

pytestmark = pytest.mark.timeout(1500)
HOOK = "keda-tenancy-uninstall"
NS = tenant_namespace("tenant-a")
PLATFORM = {"platformController": {"enabled": True}}


@pytest.fixture(scope="module")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"helm is required in CI: {exc}")
        pytest.skip(str(exc))


def matches_labels(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def render(helm: Helm, **values: Any) -> list[Doc]:
    return helm.template(
        TENANT_CHART,
        release="keda",
        namespace=NS,
        values={"tenant": "tenant-a", **PLATFORM, **values},
    )


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_the_platform_hook_runs_before_the_release_is_deleted(helm: Helm, mode: str) -> None:
    docs = render(helm, reloader={"mode": mode})
    hooked = hooks(docs)
    assert {(d["kind"], d["metadata"]["name"]) for d in hooked} == {
        ("ServiceAccount", HOOK),
        ("ClusterRole", "keda-tenancy-tenant-a-uninstall"),
        ("ClusterRoleBinding", "keda-tenancy-tenant-a-uninstall"),
        ("Role", HOOK),
        ("RoleBinding", HOOK),
        ("NetworkPolicy", HOOK),
        ("Job", HOOK),
    }
    # The release's default deny still holds while it runs: its Job's pod, and only that, may
    # reach the API server (and DNS).
    policy = find(hooked, "NetworkPolicy", HOOK)
    job_labels = find(hooked, "Job", HOOK)["spec"]["template"]["metadata"]["labels"]
    assert matches_labels(policy["spec"]["podSelector"]["matchLabels"], job_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert any(
        {"port": 443, "protocol": "TCP"} in rule.get("ports", [])
        or {"port": 6443, "protocol": "TCP"} in rule.get("ports", [])
        for rule in policy["spec"]["egress"]
    )
    for doc in docs:
        if doc["kind"] == "NetworkPolicy" and doc is not policy:
            selected = doc["spec"]["podSelector"].get("matchLabels")
            assert selected is None or not matches_labels(selected, job_labels), doc
    for doc in hooked:
        annotations = doc["metadata"]["annotations"]
        # Pre-delete: the grant, the controller's bindings and KEDA are still there.
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        weight = int(annotations["helm.sh/hook-weight"])
        if doc["kind"] == "Job":
            assert weight == 0
        elif doc["kind"].endswith("Binding"):
            assert weight == -9  # after what it binds, before the Job
        else:
            assert weight == -10
    job = find(hooked, "Job", HOOK)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == HOOK
    assert job["spec"]["backoffLimit"] == 0
    assert container(job)["command"] == ["keda-tenancy-reloader"]
    config = ReloaderConfig.from_args(container(job)["args"], {})
    settings = config.uninstall
    assert config.mode == "uninstall"
    assert settings is not None
    assert settings.platform
    assert settings.tenant == "tenant-a"
    # The bindings the controller makes for this tenant (controller/objects.py).
    assert settings.binding_name == binding_name("tenant-a")
    # The operator: its Deployment stopped, its pods (only its pods) waited for.
    assert settings.stop_deployment == (NS, "keda-operator")
    namespace, selector = settings.pods
    assert namespace == NS
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        is_operator = deployment["metadata"]["name"] == "keda-operator"
        assert matches(selector, labels) == is_operator, deployment["metadata"]["name"]
    assert not matches(selector, job["spec"]["template"]["metadata"]["labels"])
    # The Lease the grant names (the one KEDA elects with).
    grant = find(docs, "RoleBinding", "keda-tenancy-controller")
    assert settings.lease == (NS, grant["metadata"]["annotations"]["keda-tenancy.io/lease"])
    # The certificate controller's RoleBinding, then the Secrets its Role names.
    assert settings.revoke_rolebindings == ((NS, "keda-tenancy-certs"),)
    certs = find(docs, "Role", "keda-tenancy-certs")
    named = next(r["resourceNames"] for r in certs["rules"] if "resourceNames" in r)
    assert sorted(n for _, n in settings.secrets) == sorted(named)
    assert {ns for ns, _ in settings.secrets} == {NS}


def test_the_platform_hook_may_do_only_what_it_removes(helm: Helm) -> None:
    hooked = hooks(render(helm))
    cluster = find(hooked, "ClusterRole", "keda-tenancy-tenant-a-uninstall")["rules"]
    verbs = {r: sorted(rule["verbs"]) for rule in cluster for r in rule["resources"]}
    # The controller's bindings are read, never written.
    assert verbs == {
        "rolebindings": ["list"],
        "scaledobjects": ["list", "patch"],
        "scaledjobs": ["list", "patch"],
        "triggerauthentications": ["list", "patch"],
        "cloudeventsources": ["list", "patch"],
    }
    role = find(hooked, "Role", HOOK)["rules"]
    by_resource = {
        r: (sorted(rule["verbs"]), sorted(rule.get("resourceNames") or []))
        for rule in role
        for r in rule["resources"]
    }
    assert by_resource == {
        "deployments": (["delete"], ["keda-operator"]),
        "pods": (["list"], []),
        "leases": (["delete"], ["tenant-a.operator.keda-tenancy.io"]),
        "rolebindings": (["delete"], ["keda-tenancy-certs"]),
        "secrets": (
            ["delete", "get"],
            sorted(["keda-tenancy-internal-ca", "kedaorg-certs", "keda-metrics-apiserver-tls"]),
        ),
    }
    assert find(hooked, "RoleBinding", HOOK)["subjects"] == [
        {"kind": "ServiceAccount", "name": HOOK, "namespace": NS}
    ]
    # With cert-manager: no Secret and no certificate controller to touch.
    managed = hooks(
        render(
            helm,
            certificates={"certManager": {"enabled": True}},
            router={"clientCA": router_client_ca_pem()},
        )
    )
    config = ReloaderConfig.from_args(container(find(managed, "Job", HOOK))["args"], {})
    assert config.uninstall is not None
    assert config.uninstall.secrets == ()
    assert config.uninstall.revoke_rolebindings == ()
    resources = {r for rule in find(managed, "Role", HOOK)["rules"] for r in rule["resources"]}
    assert resources == {"deployments", "pods", "leases"}


def test_the_platform_hook_can_be_turned_off(helm: Helm) -> None:
    assert hooks(render(helm, uninstall={"hook": False})) == []


def test_the_per_tenant_layout_renders_only_its_own_hook(helm: Helm) -> None:
    docs = helm.template(TENANT_CHART, release="keda", namespace=NS, values={"tenant": "tenant-a"})
    assert {d["metadata"]["annotations"]["helm.sh/hook"] for d in hooks(docs)} == {"post-delete"}
