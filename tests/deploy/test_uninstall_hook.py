"""The tenant chart's post-delete hook (deploy/README.md, Uninstall): the reloader in uninstall
mode, with flags it accepts, its own RBAC that exists only while it runs, and no grant beyond
what it removes."""

from __future__ import annotations

import os
from typing import Any

import pytest

from reloader.config import ReloaderConfig
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

pytestmark = pytest.mark.timeout(1500)
HOOK = "keda-tenancy-uninstall"


@pytest.fixture(scope="module")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"helm is required in CI: {exc}")
        pytest.skip(str(exc))


def render(helm: Helm, **values: Any) -> list[Doc]:
    return helm.template(
        TENANT_CHART,
        release="keda",
        namespace=tenant_namespace("tenant-a"),
        values={"tenant": "tenant-a", **values},
    )


def hooks(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_the_hook_runs_after_the_release_is_gone_and_cleans_up_after_itself(
    helm: Helm, mode: str
) -> None:
    docs = render(helm, reloader={"mode": mode})
    hooked = hooks(docs)
    assert {(d["kind"], d["metadata"]["name"]) for d in hooked} == {
        ("ServiceAccount", HOOK),
        ("ClusterRole", "keda-tenancy-tenant-a-uninstall"),
        ("ClusterRoleBinding", "keda-tenancy-tenant-a-uninstall"),
        ("Role", HOOK),
        ("RoleBinding", HOOK),
        ("Job", HOOK),
    }
    for doc in hooked:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        # Gone when it succeeded; a failed Job stays for `kubectl logs` (its RBAC goes anyway).
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        # Its RBAC exists before the Job starts.
        weight = int(annotations["helm.sh/hook-weight"])
        assert weight < 0 if doc["kind"] != "Job" else weight == 0
    job = find(hooked, "Job", HOOK)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == HOOK
    assert job["spec"]["backoffLimit"] == 0
    args = container(job)["args"]
    config = ReloaderConfig.from_args(args, {})
    assert config.mode == "uninstall"
    settings = config.uninstall
    assert settings is not None
    # The same bindings the manager makes (its label value and name) ...
    manager = find(
        docs,
        "Deployment",
        "keda-rolebinding-manager" if mode == "process" else "keda-namespace-reloader",
    )
    managed = ReloaderConfig.from_args(container(manager)["args"], {})
    assert managed.bindings is not None
    assert settings.tenant == managed.tenant == "tenant-a"
    assert settings.binding_name == managed.bindings.name
    # ... the Lease KEDA elects with (the one the reloader releases) ...
    operator = container(find(docs, "Deployment", "keda-operator"), "keda-operator")
    if mode == "process":
        assert settings.lease == ReloaderConfig.from_args(operator["args"], {}).release_lease
    else:
        assert settings.lease == managed.release_lease
    assert settings.lease == ("keda-tenant-a", "tenant-a.operator.keda-tenancy.io")
    # ... the certificate Secrets the router's keda-tenancy-certs keeps here ...
    grant = find(docs, "Role", "keda-tenancy-certs")
    named = next(r["resourceNames"] for r in grant["rules"] if "resourceNames" in r)
    assert sorted(n for _, n in settings.secrets) == sorted(named)
    assert {ns for ns, _ in settings.secrets} == {"keda-tenant-a"}
    # ... once no pod of the release is left, itself excepted.
    namespace, selector = settings.pods
    assert namespace == "keda-tenant-a"
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(selector, labels), deployment["metadata"]["name"]
    assert not matches(selector, job["spec"]["template"]["metadata"]["labels"])


def test_the_hook_may_do_only_what_it_removes(helm: Helm) -> None:
    hooked = hooks(render(helm))
    cluster = find(hooked, "ClusterRole", "keda-tenancy-tenant-a-uninstall")["rules"]
    verbs = {r: sorted(rule["verbs"]) for rule in cluster for r in rule["resources"]}
    assert verbs == {
        "rolebindings": ["delete", "list", "patch"],
        "scaledobjects": ["list", "patch"],
        "scaledjobs": ["list", "patch"],
        "triggerauthentications": ["list", "patch"],
        "cloudeventsources": ["list", "patch"],
    }
    role = find(hooked, "Role", HOOK)["rules"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in role
    for rule in role:
        if rule["resources"] != ["pods"]:
            assert rule["resourceNames"], rule  # the Lease and Secrets by name only
    # With cert-manager the Secrets are cert-manager's: not named, not deleted.
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
    assert not [r for r in find(managed, "Role", HOOK)["rules"] if "secrets" in r["resources"]]


def test_the_hook_can_be_turned_off(helm: Helm) -> None:
    assert hooks(render(helm, uninstall={"hook": False})) == []


def matches(selector: str, labels: dict[str, str]) -> bool:
    """The equality-based selectors the chart renders: k=v and k!=v."""
    for part in selector.split(","):
        if "!=" in part:
            key, value = part.split("!=")
            if labels.get(key) == value:
                return False
        else:
            key, value = part.split("=")
            if labels.get(key) != value:
                return False
    return True
