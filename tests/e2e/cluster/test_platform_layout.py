"""Issue 21's platform layout on the kubelet-backed node: the router release with its platform
controller (controller.enabled) and one more tenant, gamma, installed with
platformController.enabled (process mode, webhooks off), beside alpha and beta in the old layout.

A namespace labelled for gamma (which owns gamma-base already) is served through the APIService (the time from the label to the
first served read is printed), and once unlabelled loses gamma's binding and is answered 404 by
the router; gamma's pods are exactly KEDA's operator and metrics server, and each container's RSS
read on the node is printed (bench/footprint_node.py). Everything is removed afterwards and the
router release is rolled back to controller.enabled=false, so later scenarios see the install
they expect."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.footprint_node import containers_of, measure
from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE, TENANT_CHART
from tests.e2e.cluster import rbac_matrix
from tests.e2e.cluster.explain import explain
from tests.e2e.cluster.install import TENANT_LABEL, Installed, tenant_namespace
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

TENANT = rbac_matrix.PLATFORM_TENANT
APPS = rbac_matrix.PLATFORM_APPS
KEDA_NS = tenant_namespace(TENANT)
BASE = f"{TENANT}-base"  # gamma's first namespace: an operator with none is kept stopped, unready
VALUE = 11
BINDING = f"keda-tenancy-operator-{TENANT}"
CONTROLLER_SELECTOR = "app.kubernetes.io/component=controller"


def install_router(installed: Installed, controller: bool) -> None:
    installed.cluster.helm(
        "upgrade", ROUTER_RELEASE, str(ROUTER_CHART), "-n", ROUTER_NAMESPACE,
        *installed.router_args(), "--set", f"controller.enabled={str(controller).lower()}",
        "--wait", "--timeout=5m",
    )  # fmt: skip


@pytest.fixture
def platform(installed: Installed) -> Iterator[Installed]:
    cluster = installed.cluster
    install_router(installed, controller=True)
    try:
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": BASE, "labels": {TENANT_LABEL: TENANT}},
            }
        )
        cluster.kubectl("create", "namespace", KEDA_NS)
        try:
            cluster.helm(
                "install", "keda", str(TENANT_CHART), "-n", KEDA_NS, *installed.tenant_args(TENANT),
                "--set", "platformController.enabled=true", "--set", "webhooks.enabled=false",
                "--wait", "--timeout=5m",
            )  # fmt: skip
        except RuntimeError:
            for args in (
                ("-n", KEDA_NS, "get", "pods,events", "-o", "wide"),
                ("-n", KEDA_NS, "logs", "deploy/keda-operator", "--tail=40"),
                ("-n", ROUTER_NAMESPACE, "logs", "deploy/keda-tenancy-controller", "--tail=40"),
            ):
                print(cluster.kubectl(*args, check=False).stdout)
            raise
        yield installed
    finally:
        # KEDA no longer watches gamma-apps once it left: its finalizer goes by hand. Each step
        # runs whatever the one before did, so the router is always rolled back.
        steps: list[Callable[[], object]] = [
            lambda: cluster.kubectl(
                "-n", APPS, "patch", "scaledobject", "app", "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            ),
            lambda: cluster.kubectl(
                "delete", "namespace", APPS, BASE, "--wait=true", "--timeout=180s",
                "--ignore-not-found", timeout_s=200,
            ),
            lambda: cluster.helm("uninstall", "keda", "-n", KEDA_NS, "--wait", "--timeout=3m"),
            lambda: cluster.kubectl(
                "delete", "namespace", KEDA_NS, "--wait=true", "--timeout=180s",
                "--ignore-not-found", timeout_s=200,
            ),
        ]  # fmt: skip
        for step in steps:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                step()
        install_router(installed, controller=False)


def get_json(installed: Installed, *args: str) -> dict[str, Any] | None:
    done = installed.cluster.kubectl(*args, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def pods(installed: Installed, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["-n", namespace, "get", "pods", *(["-l", selector] if selector else [])]
    found = get_json(installed, *args)
    return found["items"] if found else []


def access_reviews(installed: Installed, checks: list[rbac_matrix.Check]) -> list[str]:
    """Each check asked of kube-apiserver (SubjectAccessReview); the rows answered otherwise."""
    reviews = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": c.subject,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{c.subject.split(':')[2]}",
                        "system:authenticated",
                    ],
                    "resourceAttributes": {
                        "verb": c.verb,
                        "group": c.resource.split("/")[0].partition(".")[2],
                        "resource": c.resource.split("/")[0].partition(".")[0],
                        "name": c.resource.partition("/")[2],
                        "subresource": c.subresource,
                        "namespace": c.namespace,
                    },
                },
            }
            for c in checks
        ],
    }
    out = installed.cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(reviews))
    text, answers, at = out.stdout, [], 0
    while text[at:].strip():
        answer, end = json.JSONDecoder().raw_decode(text[at:].lstrip())
        answers.append(answer)
        at = len(text) - len(text[at:].lstrip()) + end
    return [
        f"{c.row}: {'allowed' if a['status'].get('allowed') else 'denied'}"
        for c, a in zip(checks, answers, strict=True)
        if bool(a["status"].get("allowed")) != c.allowed
    ]


def print_rss(installed: Installed, namespace: str, selector: str = "") -> None:
    """Each running container's RSS, read on the node (its cgroup's processes)."""
    for ref in containers_of(pods(installed, namespace, selector)):
        use = measure(ref)
        processes = ", ".join(f"{p.name} {p.rss_kib / 1024:.1f}" for p in use.processes)
        print(
            f"[platform] RSS {namespace}/{use.pod}/{use.container}: "
            f"{use.rss_kib / 1024:.1f} MiB ({processes}); requests {use.cpu_request_m}m/"
            f"{use.memory_request_mib:.0f}Mi"
        )


def test_platform_layout_serves_a_labelled_namespace_and_drops_an_unlabelled_one(
    platform: Installed,
) -> None:
    installed = platform
    cluster = installed.cluster

    # gamma's pods are exactly KEDA's operator and metrics server, one container each.
    gamma_pods = pods(installed, KEDA_NS)
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in gamma_pods) == [
        "metrics-apiserver",
        "operator",
    ]
    for pod in gamma_pods:
        assert len(pod["spec"]["containers"]) == 1, pod["metadata"]["name"]
    operator = next(p for p in gamma_pods if "operator" in p["metadata"]["labels"].values())
    assert operator["spec"]["containers"][0]["command"] == ["keda-tenancy-operator-pod"]
    assert pods(installed, ROUTER_NAMESPACE, CONTROLLER_SELECTOR)

    # The controller's rights and the platform tenant's operator's, both ways.
    wrong = access_reviews(installed, rbac_matrix.platform_checks())
    assert not wrong, "\n".join(wrong)

    # The app first, in a namespace no tenant owns yet: the label is the only change timed.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APPS}})
    installed.scaled_app(APPS, VALUE)
    cluster.kubectl("-n", APPS, "rollout", "status", "deploy/app-metric", "--timeout=180s",
                    timeout_s=200)  # fmt: skip
    assert installed.get_raw(f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{APPS}/x")[0] == 404

    with MetricReader(cluster, APPS, str(VALUE)) as reader:
        labelled = time.monotonic()
        cluster.kubectl("label", "namespace", APPS, f"{TENANT_LABEL}={TENANT}")
        binding = wait_for(
            lambda: get_json(installed, "-n", APPS, "get", "rolebinding", BINDING),
            f"{BINDING} in {APPS}",
            60,
            0.1,
        )
        bound_s = time.monotonic() - labelled
        wait_for(lambda: [r for r in reader.snapshot(labelled) if r.ok], f"{APPS} served", 180, 0.2)
        first = next(r for r in reader.snapshot(labelled) if r.ok)
        served_s = first.at + first.took_s - labelled
    assert binding["metadata"]["labels"]["keda-tenancy.io/platform-controller"] == "binding"
    assert binding["roleRef"]["name"] == f"keda-tenancy-{TENANT}-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "keda-operator", "namespace": KEDA_NS}
    ]
    published = get_json(installed, "-n", KEDA_NS, "get", "configmap", "keda-operator-namespaces")
    assert published
    assert published["data"]["namespaces"] == ",".join(sorted([APPS, BASE]))
    print(
        f"\n[platform] label -> binding {bound_s:.2f}s, label -> first served read "
        f"{served_s:.2f}s (issue 21: under 2 s; the old layout about 4.5 s)"
    )
    print_rss(installed, KEDA_NS)
    print_rss(installed, ROUTER_NAMESPACE, CONTROLLER_SELECTOR)

    # explain reads the controller's binding and published set (granted by gamma's release).
    # The new set restarts gamma's process-mode KEDA, and while it restarts its metrics server
    # answers nothing, which explain rightly calls "tenant down": wait for that to pass.
    def explained_ok() -> dict[str, str] | None:
        verdicts = explain(installed, APPS)
        return verdicts if all(v.endswith("— ok") for v in verdicts.values()) else None

    for verdict in wait_for(explained_ok, f"explain: {APPS} ok", 120, 2).values():
        assert verdict.startswith(f"tenant {TENANT} owns {APPS} by label"), verdict
        assert verdict.endswith("its operator watches it — ok"), verdict

    # Unlabelled: the binding goes and the router answers 404 (a security bound: under 2 s).
    unlabelled = time.monotonic()
    cluster.kubectl("label", "namespace", APPS, f"{TENANT_LABEL}-")
    wait_for(
        lambda: get_json(installed, "-n", APPS, "get", "rolebinding", BINDING) is None,
        f"{BINDING} gone from {APPS}",
        60,
        0.1,
    )
    unbound_s = time.monotonic() - unlabelled
    wait_for(lambda: installed.get_raw(
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{APPS}/s0-metric-api-value")[0] == 404,
        f"the router's 404 for {APPS}", 60, 0.1)  # fmt: skip
    not_found_s = time.monotonic() - unlabelled
    published = get_json(installed, "-n", KEDA_NS, "get", "configmap", "keda-operator-namespaces")
    assert published
    assert published["data"]["namespaces"] == BASE
    print(
        f"[platform] unlabel -> binding gone {unbound_s:.2f}s, unlabel -> router 404 "
        f"{not_found_s:.2f}s (issue 21: under 2 s; the old layout 12-13 s)"
    )


# Cluster-scoped kinds a tenant release renders objects of (its name in each object's name).
CLUSTER_KINDS = (
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "validatingwebhookconfigurations.admissionregistration.k8s.io",
    "mutatingwebhookconfigurations.admissionregistration.k8s.io",
    "validatingadmissionpolicies.admissionregistration.k8s.io",
    "validatingadmissionpolicybindings.admissionregistration.k8s.io",
    "apiservices.apiregistration.k8s.io",
)


def test_platform_layout_uninstall_leaves_nothing_and_its_namespaces_delete(
    platform: Installed,
) -> None:
    """Issue 22 item 2 for the platform layout: `helm uninstall` of gamma, with a ScaledObject
    (holding KEDA's finalizer) left in one of its namespaces, runs the pre-delete hook; then no
    binding, finalizer, Lease, Secret, ConfigMap, webhook configuration or cluster-scoped object
    of gamma is left, and deleting its namespaces completes."""
    installed = platform
    cluster = installed.cluster
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": APPS, "labels": {TENANT_LABEL: TENANT}},
        }
    )
    installed.scaled_app(APPS, VALUE)
    cluster.kubectl("-n", APPS, "rollout", "status", "deploy/app-metric", "--timeout=180s",
                    timeout_s=200)  # fmt: skip
    wait_for(lambda: installed.metric_value(APPS) == str(VALUE), f"{APPS} served", 180, 0.2)
    scaled = get_json(installed, "-n", APPS, "get", "scaledobject", "app")
    assert scaled
    assert "finalizer.keda.sh" in scaled["metadata"]["finalizers"]  # KEDA's: what would hang
    lease = f"{TENANT}.operator.keda-tenancy.io"
    assert get_json(installed, "-n", KEDA_NS, "get", "lease", lease)
    certs = "app.kubernetes.io/managed-by=keda-tenancy-certs"
    assert listed(installed, "-n", KEDA_NS, "get", "secrets", "-l", certs)

    started = time.monotonic()
    try:
        cluster.helm("uninstall", "keda", "-n", KEDA_NS, "--wait", "--timeout=5m")
    except RuntimeError:
        print(
            cluster.kubectl("-n", KEDA_NS, "logs", "job/keda-tenancy-uninstall", check=False).stdout
        )
        raise
    uninstalled_s = time.monotonic() - started
    # The controller deletes the bindings once Helm has deleted the grant.
    wait_for(
        lambda: (
            not listed(
                installed, "get", "rolebindings", "-A", "-l", f"keda-tenancy.io/tenant={TENANT}"
            )
        ),
        f"{TENANT}'s bindings gone",
        60,
        0.1,
    )
    # The pods of the Deployments Helm deleted go by garbage collection, after their grace.
    wait_for(
        lambda: not listed(installed, "-n", KEDA_NS, "get", "pods"),
        f"{KEDA_NS}'s pods gone",
        90,
        0.2,
    )
    nothing_s = time.monotonic() - started
    assert get_json(installed, "-n", KEDA_NS, "get", "lease", lease) is None
    assert not listed(installed, "-n", KEDA_NS, "get", "secrets", "-l", certs)
    # Only what Kubernetes itself puts in a namespace is left in gamma's.
    for kind in ("rolebindings", "roles", "jobs", "deployments", "pods", "serviceaccounts",
                 "configmaps", "leases"):  # fmt: skip
        left = [
            o["metadata"]["name"]
            for o in listed(installed, "-n", KEDA_NS, "get", kind)
            if o["metadata"]["name"] not in ("default", "kube-root-ca.crt")
        ]
        assert not left, f"{kind} left in {KEDA_NS}: {left}"
    for kind in CLUSTER_KINDS:
        left = [
            o["metadata"]["name"]
            for o in listed(installed, "get", kind)
            if TENANT in o["metadata"]["name"]
        ]
        assert not left, f"{kind} of {TENANT} left: {left}"
    # The ScaledObject stays (the workload keeps its replicas), without KEDA's finalizer.
    scaled = get_json(installed, "-n", APPS, "get", "scaledobject", "app")
    assert scaled
    assert "finalizer.keda.sh" not in (scaled["metadata"].get("finalizers") or [])

    deleting = time.monotonic()
    cluster.kubectl(
        "delete", "namespace", APPS, BASE, KEDA_NS, "--wait=true", "--timeout=120s",
        timeout_s=150,
    )  # fmt: skip
    deleted_s = time.monotonic() - deleting
    for namespace in (APPS, BASE, KEDA_NS):
        assert get_json(installed, "get", "namespace", namespace) is None, namespace
    print(
        f"\n[platform] helm uninstall (pre-delete hook included) {uninstalled_s:.1f}s; nothing of "
        f"{TENANT} left {nothing_s:.1f}s after it began; its namespaces (one with a "
        f"ScaledObject left) deleted in {deleted_s:.1f}s"
    )


def listed(installed: Installed, *args: str) -> list[dict[str, Any]]:
    """The items a `kubectl get` lists ([] when the kind or namespace is not there)."""
    found = get_json(installed, *args)
    return found["items"] if found else []
