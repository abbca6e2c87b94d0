"""Issue 22, item 2: offboard and uninstall a tenant, then the router, as deploy/README.md
(Uninstall) says, on the kubelet-backed cluster. It sorts after the scenarios that use the
suite's install; only test_upgrade.py runs after it, and installs the previous release itself."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.deploy.charts import ROUTER_NAMESPACE, ROUTER_RELEASE
from tests.e2e.cluster.install import (
    APPS,
    TENANT_LABEL,
    VALUES,
    Installed,
    metric_path,
    tenant_namespace,
)
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.cluster.test_cluster import hpa_failure_events, settled
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

OWNER_LABEL = "keda-tenancy.io/role-binding-of"
FINALIZER = "keda-tenancy.io/operator-access"
KEDA_FINALIZER = "finalizer.keda.sh"
CLUSTER_KINDS = (
    "clusterroles",
    "clusterrolebindings",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "apiservices",
)
NAMESPACED_KINDS = (
    "secrets,configmaps,leases.coordination.k8s.io,serviceaccounts,roles,rolebindings,jobs,"
    "pods,deployments,services,networkpolicies,events"
)
ALWAYS_THERE = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
"""What kube-controller-manager puts in every namespace."""
NAMESPACE_GONE_BOUND_S = 60


def items(installed: Installed, *args: str) -> list[dict[str, Any]]:
    done = installed.cluster.kubectl("get", *args, "-o", "json")
    return list(json.loads(done.stdout)["items"])


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("labels") or {}


def names_identity_of(obj: dict[str, Any], namespace: str) -> bool:
    return any(s.get("namespace") == namespace for s in obj.get("subjects") or [])


def leftovers(installed: Installed, tenant: str, namespaces: list[str]) -> list[str]:
    """Every object of the tenant still in the cluster, by kind: RoleBindings anywhere that are
    its (label, finalizer, an identity of its KEDA namespace), its cluster-scoped objects, what
    is in its KEDA namespace (beyond what every namespace has), and in its namespaces KEDA's
    finalizer or an object labelled as the tenant's or keda-tenancy-certs'."""
    keda_ns = tenant_namespace(tenant)
    found = []
    for binding in items(installed, "rolebindings", "-A"):
        metadata = binding["metadata"]
        if (
            labels(binding).get(OWNER_LABEL) == tenant
            or labels(binding).get("keda-tenancy.io/tenant") == tenant
            or (
                FINALIZER in (metadata.get("finalizers") or [])
                and metadata["namespace"] in namespaces
            )
            or names_identity_of(binding, keda_ns)
        ):
            found.append(f"RoleBinding {metadata['namespace']}/{metadata['name']}")
    for kind in CLUSTER_KINDS:
        for obj in items(installed, kind):
            name = obj["metadata"]["name"]
            if (
                f"keda-tenancy-{tenant}-" in name
                or labels(obj).get("keda-tenancy.io/tenant") == tenant
                or names_identity_of(obj, keda_ns)
            ):
                found.append(f"{obj['kind']} {name}")
    for obj in items(installed, NAMESPACED_KINDS, "-n", keda_ns):
        if (obj["kind"], obj["metadata"]["name"]) not in ALWAYS_THERE and obj["kind"] != "Event":
            found.append(f"{obj['kind']} {keda_ns}/{obj['metadata']['name']}")
    for namespace in namespaces:
        for obj in items(
            installed, "secrets,configmaps,leases.coordination.k8s.io", "-n", namespace
        ):
            if labels(obj).get("keda-tenancy.io/tenant") == tenant or labels(obj).get(
                "app.kubernetes.io/managed-by", ""
            ).startswith("keda-tenancy"):
                found.append(f"{obj['kind']} {namespace}/{obj['metadata']['name']}")
        for obj in items(installed, "scaledobjects.keda.sh", "-n", namespace):
            if KEDA_FINALIZER in (obj["metadata"].get("finalizers") or []):
                found.append(
                    f"ScaledObject {namespace}/{obj['metadata']['name']} ({KEDA_FINALIZER})"
                )
    return found


LEFTOVERS_BOUND_S = 30


def nothing_left(
    installed: Installed, tenant: str, namespaces: list[str]
) -> tuple[list[str], float]:
    """(what is still there after LEFTOVERS_BOUND_S, or [] at once when nothing is; the time)."""
    started = time.monotonic()
    left = leftovers(installed, tenant, namespaces)
    while left and time.monotonic() - started < LEFTOVERS_BOUND_S:
        time.sleep(0.5)
        left = leftovers(installed, tenant, namespaces)
    return left, time.monotonic() - started


def gone(installed: Installed, namespace: str) -> bool:
    return installed.cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0


def delete_namespaces(installed: Installed, *namespaces: str) -> dict[str, float]:
    """Delete them all at once; how long each took to be gone."""
    started = time.monotonic()
    installed.cluster.kubectl("delete", "namespace", *namespaces, "--wait=false")
    took: dict[str, float] = {}

    def all_gone() -> bool:
        for namespace in namespaces:
            if namespace not in took and gone(installed, namespace):
                took[namespace] = time.monotonic() - started
        return len(took) == len(namespaces)

    wait_for(all_gone, f"{', '.join(namespaces)} deleted", NAMESPACE_GONE_BOUND_S, 0.5)
    return took


def code_for(installed: Installed, namespace: str) -> int:
    return installed.get_raw(metric_path(namespace))[0]


def test_offboard_and_uninstall_a_tenant_while_the_other_is_read(installed: Installed) -> None:
    """alpha is uninstalled (a namespace with its ScaledObject left, one without) while beta's
    metric is read at 10 Hz through kube-apiserver and its HPA scales: no failed read of beta;
    nothing of alpha left once `helm uninstall` returns; its namespaces then delete normally and
    the router answers 404 for them."""
    cluster = installed.cluster
    alpha, beta = APPS["alpha"], APPS["beta"]
    bare = "alpha-bare"  # no ScaledObject in it
    installed.tenant_namespace("alpha", bare)
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "rolebinding", "keda-tenancy-alpha-operator-managed", "-n", bare, check=False
            ).returncode
            == 0
        ),
        "alpha's binding in alpha-bare",
        120,
        1,
    )
    settled(installed, alpha, str(VALUES["alpha"]))
    settled(installed, beta, str(VALUES["beta"]))
    alpha_replicas = installed.replicas(alpha)
    beta_events = hpa_failure_events(installed, beta)
    with MetricReader(cluster, beta, str(VALUES["beta"])) as reader:
        started = time.monotonic()
        cluster.helm("uninstall", "keda", "-n", tenant_namespace("alpha"), "--wait", "--timeout=5m")
        uninstall_s = time.monotonic() - started
        # Helm deletes the hook's Job when it succeeded; its pod goes after it (background).
        left, clean_s = nothing_left(installed, "alpha", [alpha, bare])
        # Still labelled alpha's, with no KEDA of alpha's behind it: unavailable, not unknown.
        labelled_code = code_for(installed, alpha)
        # Offboarded: the label goes, and the router answers 404 as soon as its watch sees it.
        relabelled = time.monotonic()
        cluster.kubectl("label", "namespace", bare, f"{TENANT_LABEL}-")
        wait_for(lambda: code_for(installed, bare) == 404, "404 for alpha-bare", 30, 0.1)
        not_found_s = time.monotonic() - relabelled
        took = delete_namespaces(installed, alpha, bare, tenant_namespace("alpha"))
        deleted_code = code_for(installed, alpha)
        time.sleep(2)
        beta_replicas = installed.replicas(beta)
    read_s = time.monotonic() - started
    # What KEDA had scaled keeps its replicas (its HPA went with the ScaledObject, at deletion).
    print(
        f"\n[cluster] alpha uninstalled in {uninstall_s:.1f}s (helm uninstall --wait, hook "
        f"included), nothing of it left {clean_s:.1f}s later; alpha-apps answered {labelled_code} while still labelled, 404 "
        f"{not_found_s:.2f}s after its label went, {deleted_code} once deleted; namespaces "
        f"gone after {', '.join(f'{n} {s:.1f}s' for n, s in took.items())} (bound "
        f"{NAMESPACE_GONE_BOUND_S}s); alpha's app had (HPA, ready) {alpha_replicas}; beta: "
        f"{len(reader.reads)} reads in {read_s:.0f}s ({len(reader.reads) / read_s:.1f}/s), "
        f"longest {reader.longest_s() * 1000:.0f} ms, {len(reader.failures())} failed, "
        f"HPA {beta_replicas}"
    )
    assert left == [], f"left behind by helm uninstall: {left}"
    assert labelled_code == 503
    assert deleted_code == 404
    assert len(reader.reads) > 50
    assert not reader.failures(), f"beta's failed reads: {reader.failures()[:5]}"
    assert hpa_failure_events(installed, beta) == beta_events
    assert beta_replicas[0] is not None
    assert beta_replicas[0] == beta_replicas[1]


ROUTER_REMAINS = {
    # The CAs and leaves keda-tenancy-certs made at run time, and the trust ConfigMap: kept so
    # that a re-installed router (and tenants' certificates) chain to the same CAs.
    ("Secret", f"{ROUTER_RELEASE}-apiservice-ca"),
    ("Secret", f"{ROUTER_RELEASE}-upstream-client-ca"),
    ("Secret", f"{ROUTER_RELEASE}-tenant-serving-ca"),
    ("Secret", f"{ROUTER_RELEASE}-serving-tls"),
    ("Secret", f"{ROUTER_RELEASE}-upstream-client-tls"),
    ("ConfigMap", f"{ROUTER_RELEASE}-trust"),
}


def test_uninstall_the_last_tenant_then_the_router(installed: Installed) -> None:
    """After every tenant, the router release; what stays is listed in deploy/README.md."""
    cluster = installed.cluster
    started = time.monotonic()
    cluster.helm("uninstall", "keda", "-n", tenant_namespace("beta"), "--wait", "--timeout=5m")
    beta_s = time.monotonic() - started
    left, _ = nothing_left(installed, "beta", [APPS["beta"], "beta"])
    assert left == []
    started = time.monotonic()
    cluster.helm("uninstall", ROUTER_RELEASE, "-n", ROUTER_NAMESPACE, "--wait", "--timeout=5m")
    router_s = time.monotonic() - started

    def remaining() -> set[tuple[str, str]]:
        return {
            (obj["kind"], obj["metadata"]["name"])
            for obj in items(installed, NAMESPACED_KINDS, "-n", ROUTER_NAMESPACE)
            if obj["kind"] != "Event"
        } - ALWAYS_THERE

    # `--wait` waits for the Deployments; their pods stop after them.
    wait_for(lambda: not any(kind == "Pod" for kind, _ in remaining()), "router pods gone", 60, 0.5)
    remains = remaining()
    cluster_wide = [
        f"{obj['kind']} {obj['metadata']['name']}"
        for kind in CLUSTER_KINDS
        for obj in items(installed, kind)
        # (keda-tenancy:kube-router is this test cluster's own network plugin.)
        if obj["metadata"]["name"].startswith("keda-tenancy-")
        or labels(obj).get("app.kubernetes.io/part-of") == "keda-tenancy"
        or obj["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    ]
    took = delete_namespaces(installed, ROUTER_NAMESPACE, tenant_namespace("beta"))
    print(
        f"\n[cluster] beta uninstalled in {beta_s:.1f}s, the router in {router_s:.1f}s; left in "
        f"{ROUTER_NAMESPACE}: {sorted(remains)}; cluster-wide: {cluster_wide}; namespaces gone "
        f"after {', '.join(f'{n} {s:.1f}s' for n, s in took.items())}"
    )
    assert cluster_wide == []
    assert remains == ROUTER_REMAINS
