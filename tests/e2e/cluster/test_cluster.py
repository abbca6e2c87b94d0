"""The charts installed on a kubelet-backed node: the scenarios of tests/e2e/test_stack.py
against running pods, plus NetworkPolicy isolation between tenants."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE
from tests.e2e.cluster import rbac_matrix
from tests.e2e.cluster.cluster import Cluster
from tests.e2e.cluster.explain import explain
from tests.e2e.cluster.install import (
    APPS,
    HNC_ROOT,
    MAX_REPLICAS,
    TENANT_LABEL,
    VALUES,
    Installed,
    deployment,
    metric_path,
    tenant_namespace,
)
from tests.e2e.cluster.leaders import (
    Instance,
    LeaseTimeline,
    LogFollower,
    kubectl_argv,
    lease_violations,
    merge_runs,
    overlapping_leaders,
    parse_log,
)
from tests.e2e.cluster.network import DNS_SERVICE_IP
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e


def test_00_the_node_runs_pods_with_dns_and_services(cluster: Cluster) -> None:
    """The foundation: a pod starts, resolves a Service name through CoreDNS, and reaches it;
    names outside the cluster do not resolve (nothing is looked up off the machine)."""
    python = cluster.images.python.reference
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "smoke"}},
        deployment("smoke", "web", python, ["python3", "-m", "http.server", "8080"], port=8080),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "smoke"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster.kubectl("-n", "smoke", "rollout", "status", "deploy/web", "--timeout=120s")
    probe = """
import socket, urllib.request
ip = socket.gethostbyname("web.smoke.svc.cluster.local")
print(ip, urllib.request.urlopen("http://web.smoke.svc/", timeout=5).status)
try:
    socket.gethostbyname("example.org")
    print("resolved")
except OSError:
    print("unresolved")
"""

    def in_pod() -> list[str]:
        done = cluster.kubectl(
            "-n", "smoke", "exec", "deploy/web", "--", "python3", "-c", probe, check=False
        )
        return done.stdout.split() if done.returncode == 0 else []

    words = wait_for(in_pod, "the pod reaches the Service by name", 30, 1)
    service_ip = cluster.kubectl(
        "-n", "smoke", "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    assert words == [service_ip, "200", "unresolved"]
    resolv = cluster.kubectl(
        "-n", "smoke", "exec", "deploy/web", "--", "cat", "/etc/resolv.conf"
    ).stdout
    assert f"nameserver {DNS_SERVICE_IP}" in resolv
    cluster.kubectl("delete", "namespace", "smoke", "--wait=false")


def test_01_apiservice_available(installed: Installed) -> None:
    assert installed.apiservice_available()
    served = json.loads(
        installed.cluster.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1").stdout
    )
    assert served["kind"] == "APIResourceList"


def test_02_each_tenant_gets_its_own_value(installed: Installed) -> None:
    for tenant, namespace in APPS.items():
        wait_for(
            lambda ns=namespace, v=VALUES[tenant]: installed.metric_value(ns) == str(v),
            f"{tenant}'s metric through kube-apiserver",
            180,
            1,
        )


def pod_logs(installed: Installed, namespace: str, selector: str) -> str:
    done = installed.cluster.kubectl(
        "-n",
        namespace,
        "logs",
        "-l",
        selector,
        "--all-containers",
        "--tail=-1",
        "--prefix",
        check=False,
    )
    return done.stdout


def test_03_isolation_and_unmapped_namespaces(installed: Installed) -> None:
    probe = f"isolation-probe-{os.getpid()}"
    for _ in range(3):
        installed.get_raw(metric_path(APPS["alpha"], probe))
    selector = "app.kubernetes.io/component=metrics-apiserver"
    wait_for(
        lambda: probe in pod_logs(installed, "keda-alpha", selector), "alpha's KEDA saw it", 30, 1
    )
    assert probe not in pod_logs(installed, "keda-beta", selector)
    code, body = installed.get_raw(metric_path("kube-system"))
    assert code == 404
    assert "not served by any tenant" in str(body["message"])


def test_04_identity_crosses_the_router_intact(installed: Installed) -> None:
    namespace = APPS["alpha"]
    installed.cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "external-metrics-reader"},
            "rules": [
                {
                    "apiGroups": ["external.metrics.k8s.io"],
                    "resources": ["*"],
                    "verbs": ["get", "list"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-readers", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "external-metrics-reader",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "metrics-readers",
                }
            ],
        },
    )
    jane = installed.cluster.user_kubeconfig("jane", ("metrics-readers",))
    bob = installed.cluster.user_kubeconfig("bob")
    # kube-apiserver lets both through to the APIService (discovery is open to authenticated
    # users); the tenant's KEDA, by delegated authorization of the identity the router
    # forwarded, refuses bob and admits jane through her group.
    code, body = installed.get_raw(metric_path(namespace), kubeconfig=bob)
    assert code == 403, body
    assert wait_for(
        lambda: installed.get_raw(metric_path(namespace), kubeconfig=jane)[0] == 200,
        "jane allowed",
        60,
        1,
    )


def test_05_the_hpa_scales_a_real_deployment(installed: Installed) -> None:
    alpha, beta = APPS["alpha"], APPS["beta"]
    wait_for(
        lambda: installed.replicas(alpha) == (4, 4), "alpha: 4 desired and ready (7 / 2)", 240, 1
    )
    installed.set_value(alpha, 11)
    try:
        wait_for(lambda: installed.replicas(alpha) == (6, 6), "alpha: 6 (11 / 2)", 240, 1)
    finally:
        installed.set_value(alpha, VALUES["alpha"])
    wait_for(
        lambda: installed.replicas(beta) == (MAX_REPLICAS, MAX_REPLICAS),
        f"beta capped at {MAX_REPLICAS} (42 / 2)",
        240,
        1,
    )


def test_06_a_new_tenant_namespace_is_picked_up(installed: Installed) -> None:
    settled(installed)
    started = time.monotonic()
    with Poller(installed) as poller:  # the tenant's existing namespace meanwhile
        installed.tenant_namespace("alpha", "alpha-new")
        installed.scaled_app("alpha-new", 5)
        wait_for(
            lambda: installed.replicas("alpha-new")[0] is not None,
            "KEDA made the HPA in alpha-new",
            180,
            1,
        )
        wait_for(lambda: installed.metric_value("alpha-new") == "5", "alpha-new served", 180, 1)
        served_s = time.monotonic() - started
    # Reported, not asserted: how a namespace change, as the chart runs KEDA, affects the
    # tenant's other reads (the operator restarts with the new WATCH_NAMESPACE).
    print(
        f"\n[cluster] alpha-new served after {served_s:.1f}s; alpha-apps meanwhile: "
        f"{poller.reads} reads, {len(poller.failures)} failed, slowest {poller.slowest_s:.1f}s"
    )


def test_06b_deployment_mode_namespace_changes_without_failed_reads(installed: Installed) -> None:
    """beta runs deployment mode: each change of its namespaces makes the reloader apply a new
    WATCH_NAMESPACE, and the operator's Deployment rolls (surge first, the dead pod's Lease
    released, the adapter's reconnect held by grpc-forward, a request cut with the old
    operator retried by the router). beta's existing namespace is read meanwhile: no read
    fails. Slowest and failed reads are printed, not asserted on (kubectl per read)."""
    beta, expected = APPS["beta"], str(VALUES["beta"])
    settled(installed, beta, expected)
    cluster = installed.cluster
    namespace = tenant_namespace("beta")

    def watched() -> list[str]:
        done = cluster.kubectl("-n", namespace, "get", "deployment", "keda-operator", "-o", "json")
        pod = json.loads(done.stdout)["spec"]["template"]["spec"]
        keda = next(c for c in pod["containers"] if c["name"] == "keda-operator")
        env = {e["name"]: e.get("value", "") for e in keda.get("env") or []}
        return env.get("WATCH_NAMESPACE", "").split(",")

    events_before = hpa_failure_events(installed, beta)
    changes = 0
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with Poller(installed, beta, expected) as poller:
        for i in range(4):
            name = f"beta-preview-{i // 2}"
            added = i % 2 == 0
            if added:
                installed.tenant_namespace("beta", name)
            else:
                cluster.kubectl("delete", "namespace", name, "--wait=false")
            wait_for(
                lambda n=name, a=added: (n in watched()) == a,
                f"beta's operator Deployment {'with' if added else 'without'} {name}",
                180,
                0.5,
            )
            cluster.kubectl(
                "-n", namespace, "rollout", "status", "deployment/keda-operator", "--timeout=180s"
            )
            changes += 1
            time.sleep(3)  # the new operator serving, the old pod gone
    events = hpa_failure_events(installed, beta) - events_before
    slowest = sorted(router_durations_ms(installed, beta, since), reverse=True)[:4]
    print(
        f"\n[cluster] beta (deployment mode), {changes} namespace changes: {poller.reads} reads "
        f"of {beta}, {len(poller.failures)} failed, slowest {poller.slowest_s:.1f}s "
        f"(kubectl per read), slowest in the router's access log "
        f"{', '.join(f'{ms / 1000:.2f}s' for ms in slowest)}; HPA failure events {events}"
    )
    assert poller.reads > 20
    assert not poller.failures, f"failed reads while beta's operator rolled: {poller.failures}"


def router_access_log(installed: Installed, namespace: str, since: str) -> list[dict[str, Any]]:
    """The router pods' JSON access-log entries about `namespace` since `since` (RFC 3339)."""
    done = installed.cluster.kubectl(
        "-n",
        ROUTER_NAMESPACE,
        "logs",
        f"-lapp.kubernetes.io/instance={ROUTER_RELEASE},app.kubernetes.io/component=router",
        f"--since-time={since}",
        "--tail=-1",
        "--prefix=false",
        check=False,
    )
    entries = []
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("namespace") == namespace:
                entries.append(entry)
    return entries


def router_durations_ms(installed: Installed, namespace: str, since: str) -> list[float]:
    """How long each router pod took for the requests about `namespace` since `since`: the
    time the read waited, without kubectl's own."""
    return [
        float(e.get("duration_ms") or 0.0) for e in router_access_log(installed, namespace, since)
    ]


@pytest.mark.parametrize("tenant", ["alpha", "beta"], ids=["process-mode", "deployment-mode"])
def test_06c_an_operator_rollout_fails_no_read(installed: Installed, tenant: str) -> None:
    """A chart upgrade, a drain or `kubectl rollout restart` rolls the operator's pod: the new
    pod is ready while it waits for the Lease, the old pod's KEDA exits and its Lease is
    released at once (the reloader, the supervisor), and the new KEDA leads at its first
    attempt. The tenant's existing namespace is read meanwhile: no read fails."""
    namespace, expected = APPS[tenant], str(VALUES[tenant])
    settled(installed, namespace, expected)
    cluster = installed.cluster
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with Poller(installed, namespace, expected) as poller:
        for _ in range(2):
            cluster.kubectl(
                "-n", tenant_namespace(tenant), "rollout", "restart", "deployment/keda-operator"
            )
            cluster.kubectl(
                "-n",
                tenant_namespace(tenant),
                "rollout",
                "status",
                "deployment/keda-operator",
                "--timeout=180s",
            )
            time.sleep(3)  # the new operator serving, the old pod gone
    slowest = sorted(router_durations_ms(installed, namespace, since), reverse=True)[:3]
    print(
        f"\n[cluster] {tenant}, 2 operator rollouts: {poller.reads} reads of {namespace}, "
        f"{len(poller.failures)} failed, slowest in the router's access log "
        f"{', '.join(f'{ms / 1000:.2f}s' for ms in slowest)}"
    )
    assert poller.reads > 10
    assert not poller.failures, f"failed reads while {tenant}'s operator rolled: {poller.failures}"


OPERATOR_PODS = "app.kubernetes.io/component=operator,app.kubernetes.io/instance=keda"


def test_06d_a_relabelled_or_force_deleted_operator_pod_never_makes_two_leaders(
    installed: Installed,
) -> None:
    """beta runs deployment mode. Relabelling its leading operator pod takes it out of the
    Deployment (its ReplicaSet starts a replacement, whose supervisor waits for the Lease) and
    out of every label-selected watch, while its KEDA may run on; force-deleting a pod removes
    it from the API while the kubelet is still to stop it. Neither proves that its KEDA has
    stopped, so the namespace reloader never releases its Lease: the Lease leaves a holder only
    once its KEDA has stopped (its supervisor released it) or after it expired, and no KEDA
    logs "successfully acquired lease" while another that acquired it before still runs."""
    cluster, namespace = installed.cluster, tenant_namespace("beta")
    settled(installed, APPS["beta"], str(VALUES["beta"]))
    kubectl = kubectl_argv(cluster.bin, cluster.kubeconfig)
    timeline = LeaseTimeline(kubectl, namespace, "beta.operator.keda-tenancy.io")
    followers: dict[str, LogFollower] = {}

    def follow(pod: str) -> None:
        if pod not in followers:
            followers[pod] = LogFollower(kubectl, namespace, pod, "keda-operator")

    def operator_pods() -> list[str]:
        done = cluster.kubectl(
            "-n", namespace, "get", "pods", "-l", OPERATOR_PODS, "-o", "jsonpath={.items[*].metadata.name}"
        )  # fmt: skip
        return done.stdout.split()

    def started_keda(pod: str) -> bool:
        done = cluster.kubectl("-n", namespace, "logs", pod, "-c", "keda-operator", check=False)
        return '"starting the operator"' in done.stdout

    try:
        first = wait_for(timeline.holder_pod, "beta's operator leads", 60, 0.5)
        follow(first)
        cluster.kubectl(
            "-n", namespace, "label", "pod", first, "app.kubernetes.io/instance=relabelled", "--overwrite"
        )  # fmt: skip
        second = wait_for(
            lambda: next(
                (pod for pod in operator_pods() if pod != first and started_keda(pod)), ""
            ),
            "the replacement pod's supervisor started its KEDA (--lease-wait is 30 s)",
            180,
            1,
        )
        follow(second)
        writes = len(timeline.records)
        wait_for(lambda: len(timeline.records) >= writes + 3, "three more Lease writes", 90, 0.5)
        leader = timeline.holder_pod()
        follow(leader)
        cluster.kubectl("-n", namespace, "delete", "pod", leader, "--force", "--grace-period=0")
        wait_for(
            lambda: timeline.holder_pod() not in ("", leader),
            f"another operator leads after {leader} was force-deleted",
            180,
            1,
        )
        if first != leader:  # the relabelled pod goes too; the Deployment keeps its own
            cluster.kubectl("-n", namespace, "delete", "pod", first, "--wait=false")
        cluster.kubectl(
            "-n", namespace, "rollout", "status", "deployment/keda-operator", "--timeout=180s"
        )  # fmt: skip
    finally:
        timeline.close()
        for follower in followers.values():
            follower.close(wait_s=90)
    runs = [follower.run for follower in followers.values()]
    for pod in operator_pods():
        for previous in (False, True):
            done = cluster.kubectl(
                "-n", namespace, "logs", pod, "-c", "keda-operator", "--timestamps",
                *(["--previous"] if previous else []), check=False,
            )  # fmt: skip
            lines = parse_log(done.stdout) if done.returncode == 0 else []
            if lines:
                runs.append(Instance(pod, lines, lines[-1][0] if previous else None))
    runs = merge_runs(runs)
    reloader = pod_logs(installed, namespace, "app.kubernetes.io/component=namespace-reloader")
    print(
        f"\n[cluster] beta: relabelled {first}, force-deleted {leader}; the Lease went "
        + " -> ".join(dict.fromkeys(r.holder or "(released)" for r in timeline.records))
        + f"; the namespace reloader released it {reloader.count('released the dead operator')}"
        " time(s)"
    )
    assert lease_violations(timeline.records, runs) == []
    assert overlapping_leaders(runs, timeline.records) == []
    assert "deleted without a report that its operator stopped" in reloader
    settled(installed, APPS["beta"], str(VALUES["beta"]))


def hpa_failure_events(installed: Installed, namespace: str) -> int:
    done = installed.cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    return sum(
        int(event.get("count") or 1)
        for event in json.loads(done.stdout)["items"]
        if event.get("reason") in ("FailedGetExternalMetric", "FailedComputeMetricsReplicas")
    )


def test_07_deleting_a_namespace_with_a_scaledobject_completes(installed: Installed) -> None:
    installed.tenant_namespace("alpha", "alpha-doomed")
    installed.scaled_app("alpha-doomed", 3)
    wait_for(
        lambda: installed.replicas("alpha-doomed")[0] is not None, "HPA in alpha-doomed", 180, 1
    )
    installed.cluster.kubectl("delete", "namespace", "alpha-doomed", "--wait=false")
    wait_for(
        lambda: (
            installed.cluster.kubectl("get", "namespace", "alpha-doomed", check=False).returncode
            != 0
        ),
        "namespace gone (KEDA removed its finalizer)",
        180,
        1,
    )


def settled(installed: Installed, namespace: str = APPS["alpha"], expected: str = "7") -> None:
    """Restarts the reloaders may still do after earlier namespace changes are over."""
    streak = 0

    def steady() -> bool:
        nonlocal streak
        streak = streak + 1 if installed.metric_value(namespace) == expected else 0
        return streak >= 5

    wait_for(steady, f"{namespace} steadily served", 180, 0.5)


class Poller:
    """Reads alpha's metric in a loop; every read that is not the value is a failure."""

    def __init__(
        self, installed: Installed, namespace: str = APPS["alpha"], expected: str = "7"
    ) -> None:
        self.failures: list[str] = []
        self.reads = 0
        self._stop = threading.Event()

        self.slowest_s = 0.0

        def poll() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                code, body = installed.get_raw(metric_path(namespace))
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                self.reads += 1
                items = body.get("items") or [] if code == 200 else []
                value = str(items[0]["value"]) if items else None
                if value != expected:
                    self.failures.append(f"{code}: {str(body.get('message', ''))[:200]}")
                time.sleep(0.2)

        self._thread = threading.Thread(target=poll, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def router_rolled_out(installed: Installed) -> Iterator[None]:
    yield
    installed.cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "rollout", "status", f"deploy/{ROUTER_RELEASE}", "--timeout=180s"
    )


def test_08_router_rollout_restart_without_failed_reads(
    installed: Installed, router_rolled_out: None
) -> None:
    settled(installed)
    with Poller(installed) as poller:
        time.sleep(1)
        installed.cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "rollout", "restart", f"deploy/{ROUTER_RELEASE}"
        )
        installed.cluster.kubectl(
            "-n",
            ROUTER_NAMESPACE,
            "rollout",
            "status",
            f"deploy/{ROUTER_RELEASE}",
            "--timeout=180s",
        )
        time.sleep(3)
    assert poller.reads > 10
    assert not poller.failures, f"failed reads during the rollout: {poller.failures}"


def test_09_certificate_rotation_without_failed_reads(
    installed: Installed, router_rolled_out: None
) -> None:
    """deploy/README.md: a deleted leaf Secret is reissued by keda-tenancy-certs at its next
    resync, and the router reloads it from disk; a `helm upgrade` meanwhile changes nothing."""
    settled(installed)
    cluster = installed.cluster
    serving = f"{ROUTER_RELEASE}-serving-tls"

    def serving_cert() -> str:
        done = cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "get", "secret", serving, "-o", "jsonpath={.data.tls\\.crt}",
            check=False,
        )  # fmt: skip
        return done.stdout if done.returncode == 0 else ""

    before = serving_cert()
    assert before
    with Poller(installed) as poller:
        time.sleep(1)
        cluster.kubectl(
            "-n",
            ROUTER_NAMESPACE,
            "delete",
            "secret",
            serving,
            f"{ROUTER_RELEASE}-upstream-client-tls",
        )
        cluster.helm(
            "upgrade", ROUTER_RELEASE, str(ROUTER_CHART), "-n", ROUTER_NAMESPACE, *installed.router_args(),
            "--wait", "--timeout=5m",
        )  # fmt: skip
        # keda-tenancy-certs resyncs every minute (certificates.controller.resyncInterval).
        after = wait_for(lambda: serving_cert() not in ("", before) and serving_cert(),
                         "the serving certificate reissued", 150, 2)  # fmt: skip
        time.sleep(15)  # more than the router's certificate reload interval (10 s)
    assert after != before
    assert not poller.failures, f"failed reads during rotation: {poller.failures}"
    assert installed.apiservice_available()


def test_10_a_tenant_down_does_not_stop_the_other(installed: Installed) -> None:
    cluster = installed.cluster
    settled(installed)
    beta = tenant_namespace("beta")
    cluster.kubectl("-n", beta, "scale", "deploy/keda-operator-metrics-apiserver", "--replicas=0")
    try:
        wait_for(
            lambda: installed.get_raw(metric_path(APPS["beta"]))[0] == 503,
            "beta answers 503",
            120,
            1,
        )
        time.sleep(12)  # several availability checks by the aggregator
        assert installed.apiservice_available()
        for _ in range(5):
            assert installed.metric_value(APPS["alpha"]) == "7"
    finally:
        cluster.kubectl(
            "-n", beta, "scale", "deploy/keda-operator-metrics-apiserver", "--replicas=1"
        )
    wait_for(lambda: installed.metric_value(APPS["beta"]) == "42", "beta back", 180, 1)


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except OSError as exc:
    print("closed", exc)
"""


def connects(cluster: Cluster, namespace: str, pod: str, host: str, port: int) -> bool:
    """A TCP connect from `pod`; False on refusal or a 3 s timeout. (Debian's busybox nc has
    no -z, and its wget segfaults in pods: the probe is Python.)"""
    done = cluster.kubectl(
        "-n", namespace, "exec", pod, "--", "python3", "-c", CONNECT, host, str(port), check=False
    )
    return done.stdout.startswith("open")


def test_11_network_policy_keeps_tenants_apart(installed: Installed) -> None:
    cluster = installed.cluster
    alpha_apps = APPS["alpha"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "prober", "namespace": alpha_apps},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "prober",
                        "image": installed.images.python.reference,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "86400"],
                        "securityContext": {"runAsUser": 65532, "allowPrivilegeEscalation": False},
                    }
                ],
            },
        }
    )
    cluster.kubectl(
        "-n", alpha_apps, "wait", "--for=condition=Ready", "pod/prober", "--timeout=120s"
    )

    def pod_ip(namespace: str, selector: str) -> str:
        return cluster.kubectl(
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ).stdout

    beta = tenant_namespace("beta")
    beta_metrics = pod_ip(beta, "app.kubernetes.io/component=metrics-apiserver")
    beta_operator = pod_ip(beta, "app.kubernetes.io/component=operator")
    # The probe works: it reaches its own namespace's metric source by name.
    assert wait_for(
        lambda: connects(cluster, alpha_apps, "prober", "app-metric", 8080),
        "prober -> own namespace",
        30,
        1,
    )
    assert not connects(cluster, alpha_apps, "prober", beta_metrics, 6443)
    assert not connects(
        cluster, alpha_apps, "prober", f"keda-operator-metrics-apiserver.{beta}.svc", 443
    )
    assert not connects(cluster, alpha_apps, "prober", beta_operator, 9666)
    # The router can (as every read through it shows; here the raw connection).
    router = cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=router",
        "-o", "jsonpath={.items[0].metadata.name}",
    ).stdout  # fmt: skip
    done = cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "exec", router, "--", "python", "-c", CONNECT, beta_metrics, "6443",
        check=False,
    )  # fmt: skip
    assert done.stdout.startswith("open"), done.stdout + done.stderr


def test_12_each_operator_reads_secrets_only_in_its_tenants_namespaces(
    installed: Installed,
) -> None:
    """Issue 11 with the charts' default RBAC, in both reloader modes: the operator's
    permissions are bound per namespace by the managed RoleBindings, never cluster-wide."""
    cluster = installed.cluster

    def can_get_secrets(tenant: str, namespace: str) -> str:
        subject = f"system:serviceaccount:{tenant_namespace(tenant)}:keda-operator"
        done = cluster.kubectl(
            "auth", "can-i", "get", "secrets", "-n", namespace, "--as", subject, check=False
        )
        return done.stdout.strip()

    for tenant, other in (("alpha", "beta"), ("beta", "alpha")):
        assert can_get_secrets(tenant, APPS[tenant]) == "yes", tenant
        assert can_get_secrets(tenant, APPS[other]) == "no", tenant
        assert can_get_secrets(tenant, tenant_namespace(other)) == "no", tenant
        assert can_get_secrets(tenant, "default") == "no", tenant
        binding = json.loads(
            cluster.kubectl(
                "-n", APPS[tenant], "get", "rolebinding",
                f"keda-tenancy-{tenant}-operator-managed", "-o", "json",
            ).stdout
        )  # fmt: skip
        assert binding["roleRef"]["name"] == f"keda-tenancy-{tenant}-operator"
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": "keda-operator",
                "namespace": tenant_namespace(tenant),
            }
        ]
    # Nothing cluster-wide grants any tenant's operator Secrets.
    bindings = json.loads(cluster.kubectl("get", "clusterrolebindings", "-o", "json").stdout)
    for item in bindings["items"]:
        for subject in item.get("subjects") or []:
            if subject.get("name") == "keda-operator":
                assert item["roleRef"]["name"].endswith("-operator-cluster"), item["metadata"]


def test_13_rbac_matrix(installed: Installed) -> None:
    """Issue 27: every identity both charts create, asked of kube-apiserver (SubjectAccessReview)
    for the table deploy/README.md shows, both ways; then the escalation itself, binding any
    tenant's operator role outside its namespaces as each identity (server-side dry run), is
    refused: by RBAC, or for the identities that may create RoleBindings by the admission policy."""
    cluster = installed.cluster
    created = json.loads(
        cluster.kubectl(
            "get", "serviceaccounts", "-A", "-l", "app.kubernetes.io/part-of=keda-tenancy",
            "-o", "json",
        ).stdout
    )  # fmt: skip
    found = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in created["items"]}
    assert found == set(rbac_matrix.identities())  # a new identity needs its rows

    checks = rbac_matrix.checks()
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
    out = cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(reviews)).stdout
    answers, at = [], 0  # kubectl prints one object after another
    while out[at:].strip():
        answer, end = json.JSONDecoder().raw_decode(out[at:].lstrip())
        answers.append(answer)
        at = len(out) - len(out[at:].lstrip()) + end
    wrong = [
        f"{c.row}: {'allowed' if a['status'].get('allowed') else 'denied'}"
        for c, a in zip(checks, answers, strict=True)
        if bool(a["status"].get("allowed")) != c.allowed
    ]
    assert not wrong, "\n".join(wrong)

    # The escalation: each identity binds each tenant's operator role where it must not.
    forbidden_places = ("kube-system", ROUTER_NAMESPACE, "default")
    refused_by_policy = []
    for namespace, name in rbac_matrix.identities():
        subject = f"system:serviceaccount:{namespace}:{name}"
        for tenant in rbac_matrix.TENANTS:
            other = next(t for t in rbac_matrix.TENANTS if t != tenant)
            for place in (*forbidden_places, APPS[other], tenant_namespace(other)):
                done = cluster.kubectl(
                    "create", "rolebinding", f"escalation-{tenant}", "-n", place,
                    f"--clusterrole=keda-tenancy-{tenant}-operator",
                    f"--serviceaccount={tenant_namespace(tenant)}:keda-operator",
                    "--dry-run=server", "--as", subject, check=False,
                )  # fmt: skip
                assert done.returncode != 0, f"{subject} bound {tenant}'s operator in {place}"
                if "keda-tenancy: RoleBinding" in done.stderr:
                    refused_by_policy.append((name, tenant, place))
                else:
                    assert "forbidden" in done.stderr, done.stderr
    # The managers hold RoleBinding rights: for them it is the policy that refuses (so this
    # test fails without it), and their own tenant's namespace stays open to them.
    for tenant, manager in rbac_matrix.BINDING_MANAGERS.items():
        assert (manager, tenant, "kube-system") in refused_by_policy
        assert (
            manager,
            tenant,
            APPS["beta" if tenant == "alpha" else "alpha"],
        ) in refused_by_policy
        done = cluster.kubectl(
            "create", "rolebinding", "escalation-control", "-n", APPS[tenant],
            f"--clusterrole=keda-tenancy-{tenant}-operator",
            f"--serviceaccount={tenant_namespace(tenant)}:keda-operator", "--dry-run=server",
            "--as", f"system:serviceaccount:{tenant_namespace(tenant)}:{manager}",
        )  # fmt: skip
        assert done.returncode == 0
    print(
        f"\nRBAC matrix: {len(checks)} checks, {len(refused_by_policy)} escalations refused by the policy"
    )


def _encrypted_key_ca() -> dict[str, str]:
    """CA Secret data keda-tenancy-certs cannot use: the key is encrypted (this crashed it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA with an encrypted key")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    pem_cert = ca.public_bytes(serialization.Encoding.PEM)
    return {
        k: base64.b64encode(v).decode() for k, v in (("tls.crt", pem_cert), ("tls.key", pem_key))
    }


def test_14_a_malformed_ca_secret_in_one_tenant_namespace_stays_there(
    installed: Installed,
) -> None:
    """deploy/README.md: a malformed CA Secret in one tenant namespace fails that namespace
    only. The other tenant (after it in every pass) still gets its certificates renewed (its
    deleted leaf is reissued), keda-tenancy-certs keeps running (no restart, ready), the broken
    tenant is told by an Event on the Secret, and nothing of the broken tenant is overwritten
    (its KEDA keeps serving)."""
    settled(installed)
    cluster = installed.cluster
    alpha, beta = tenant_namespace("alpha"), tenant_namespace("beta")
    ca_secret = "keda-tenancy-internal-ca"

    def secret(namespace: str, name: str) -> dict[str, Any] | None:
        done = cluster.kubectl("-n", namespace, "get", "secret", name, "-o", "json", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def controller_pod() -> dict[str, Any]:
        pods = json.loads(
            cluster.kubectl(
                "-n", ROUTER_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=certs",
                "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        (pod,) = pods
        return dict(pod)

    def restarts(pod: dict[str, Any]) -> int:
        return sum(s["restartCount"] for s in pod["status"]["containerStatuses"])

    def put_ca(data: dict[str, str], labels: dict[str, str]) -> None:
        cluster.kubectl("-n", alpha, "delete", "secret", ca_secret, check=False)
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": ca_secret, "namespace": alpha, "labels": labels},
                "type": "kubernetes.io/tls",
                "data": data,
            }
        )

    pod_before = controller_pod()
    original = secret(alpha, ca_secret)
    assert original is not None
    broken = _encrypted_key_ca()
    put_ca(broken, {})
    try:
        # Beta's leaf, deleted, is made anew at the next pass (every minute), from its CA.
        leaf = secret(beta, "kedaorg-certs")
        assert leaf is not None
        cluster.kubectl("-n", beta, "delete", "secret", "kedaorg-certs")
        remade = wait_for(
            lambda: secret(beta, "kedaorg-certs"), "beta's kedaorg-certs reissued", 150, 2
        )
        assert remade["data"]["tls.crt"] != leaf["data"]["tls.crt"]
        assert remade["data"]["ca.crt"] == leaf["data"]["ca.crt"]

        def warnings() -> list[str]:
            events = json.loads(cluster.kubectl("-n", alpha, "get", "events", "-o", "json").stdout)
            return [
                e["reason"]
                for e in events["items"]
                if e["involvedObject"].get("name") == ca_secret and e["type"] == "Warning"
            ]

        assert wait_for(warnings, "a Warning Event on alpha's CA Secret", 90, 2) == [
            "CaKeyEncrypted"
        ]
        # The broken CA was left as it was, and alpha's KEDA kept its certificates.
        current = secret(alpha, ca_secret)
        assert current is not None
        assert current["data"] == broken
        assert installed.metric_value(APPS["alpha"]) == "7"
        assert installed.metric_value(APPS["beta"]) == "42"
        # Still running, never restarted, ready (the router's own certificates are fine).
        pod = controller_pod()
        assert pod["metadata"]["uid"] == pod_before["metadata"]["uid"]
        assert restarts(pod) == restarts(pod_before)
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        log = cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "logs", pod["metadata"]["name"], "--since=5m"
        ).stdout  # fmt: skip
        failures = [
            line
            for line in (json.loads(raw) for raw in log.splitlines() if raw.startswith("{"))
            if line.get("namespace") == alpha and line.get("reason") == "ca-key-encrypted"
        ]
        assert failures
        assert failures[0]["secret"] == ca_secret
    finally:
        # Alpha's own CA back as it was: its leaves chain to it again, nothing to reissue.
        put_ca(original["data"], original["metadata"].get("labels") or {})


def router_tenants(installed: Installed, namespace: str, since: str) -> list[str]:
    """The tenant each router request about `namespace` since `since` went to."""
    return [str(e.get("tenant")) for e in router_access_log(installed, namespace, since)]


def test_15_a_namespace_moved_to_another_tenant_leaves_the_old_ones_reach(
    installed: Installed,
) -> None:
    """Issue 20: a namespace moves from alpha to beta (its labels change) while alpha's operator,
    with its own identity, does all it may to keep it (strips the watched ConfigMap's
    annotation, claims the namespace there). Within the manager's unbind bound alpha's operator
    can no longer read its Secrets, beta's can, and the router serves it from beta."""
    cluster = installed.cluster
    namespace = "mover"

    def can_get_secrets(tenant: str) -> str:
        subject = f"system:serviceaccount:{tenant_namespace(tenant)}:keda-operator"
        return cluster.kubectl(
            "auth", "can-i", "get", "secrets", "-n", namespace, "--as", subject, check=False
        ).stdout.strip()

    installed.tenant_namespace("alpha", namespace)
    installed.scaled_app(namespace, 9)
    wait_for(lambda: can_get_secrets("alpha") == "yes", "alpha's binding in mover", 120, 1)
    wait_for(lambda: installed.metric_value(namespace) == "9", "mover served by alpha", 180, 1)

    # What alpha's operator may write, with the token its pod gets: a merge patch of the watched
    # ConfigMap (`patch` on that one object, no `get`, so not through kubectl patch).
    token = cluster.kubectl("create", "token", "keda-operator", "-n", "keda-alpha").stdout.strip()
    server = json.loads(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    context = ssl.create_default_context(cafile=server["certificate-authority"])
    claim = urllib.request.Request(
        f"{server['server']}/api/v1/namespaces/keda-alpha/configmaps/keda-operator-watched",
        method="PATCH",
        data=json.dumps(
            {
                "metadata": {"annotations": {"keda-tenancy.io/watched-published": None}},
                "data": {"not-a-pod": f"{namespace},{APPS['alpha']}"},
            }
        ).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
        },
    )
    claims: list[int] = []
    stop = threading.Event()

    def keep_claiming() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(claim, context=context, timeout=10) as answer:
                    claims.append(answer.status)
            except urllib.error.HTTPError as refused:
                claims.append(refused.code)
            except OSError:
                claims.append(0)
            stop.wait(0.5)

    claimer = threading.Thread(target=keep_claiming, daemon=True)
    claimer.start()
    try:
        wait_for(lambda: 200 in claims, "alpha's operator writing its claim", 30, 0.2)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        moved = time.monotonic()
        cluster.kubectl(
            "label", "namespace", namespace, f"{TENANT_LABEL}-",
            f"{HNC_ROOT}.tree.hnc.x-k8s.io/depth=1", f"{namespace}.tree.hnc.x-k8s.io/depth=0",
        )  # fmt: skip
        wait_for(lambda: can_get_secrets("alpha") == "no", "alpha's access gone", 60, 0.2)
        unbound_s = time.monotonic() - moved
        wait_for(lambda: can_get_secrets("beta") == "yes", "beta's binding in mover", 120, 1)
        wait_for(
            lambda: (
                installed.metric_value(namespace) == "9"
                and router_tenants(installed, namespace, since)[-1:] == ["beta"]
            ),
            "mover served by beta",
            180,
            1,
        )
        served_s = time.monotonic() - moved
    finally:
        stop.set()
        claimer.join()
        cluster.kubectl(
            "-n", "keda-alpha", "patch", "configmap", "keda-operator-watched", "--type=json",
            "-p", '[{"op": "remove", "path": "/data/not-a-pod"}]', check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    print(
        f"\n[cluster] mover moved alpha -> beta: alpha's Secrets access gone after "
        f"{unbound_s:.1f}s (alpha's operator claiming it {claims.count(200)} times), "
        f"served by beta after {served_s:.1f}s"
    )
    # The manager's documented bound (--unbind-timeout 5s from seeing it leave), with room for
    # its watch and the API server's authorizer cache on this loaded 2-core machine.
    assert unbound_s < 20


def test_16_explain_names_the_cause(installed: Installed) -> None:
    """Issue 23: run in the router pod, `explain` names why a namespace's metrics fail: no
    tenant owns it, its tenant is down, or it waits for its operator's access."""
    cluster = installed.cluster
    settled(installed)
    started = time.monotonic()

    nobody = explain(installed, "kube-system")
    assert nobody
    for verdict in nobody.values():
        assert verdict.startswith(
            f"no tenant owns kube-system: no label {TENANT_LABEL}, no HNC tree label"
        ), verdict

    # test_15 moved a namespace away from alpha: its process-mode operator restarts for the
    # smaller set, and for that while its metrics server answers nothing (KEDA serves metrics
    # only through a running operator), which explain rightly calls "tenant down".
    def alpha_ok() -> dict[str, str] | None:
        verdicts = explain(installed, APPS["alpha"])
        return verdicts if all(v.endswith("— ok") for v in verdicts.values()) else None

    served = wait_for(alpha_ok, "explain: alpha ok", 120, 2)
    for verdict in served.values():
        assert verdict.startswith(f"tenant alpha owns {APPS['alpha']} by label"), verdict

    # A tenant down: beta's metrics server scaled to 0; alpha stays ok.
    beta = tenant_namespace("beta")
    cluster.kubectl("-n", beta, "scale", "deploy/keda-operator-metrics-apiserver", "--replicas=0")
    try:

        def down() -> dict[str, str] | None:
            installed.get_raw(metric_path(APPS["beta"]))
            verdicts = explain(installed, APPS["beta"])
            return verdicts if any(v.endswith("— tenant down") for v in verdicts.values()) else None

        verdicts = wait_for(down, "a router pod says beta is down", 120, 1)
        said = next(v for v in verdicts.values() if v.endswith("— tenant down"))
        assert said.startswith(f"tenant beta owns {APPS['beta']} by the HNC tree of root beta")
        assert "its metrics server failed" in said or "its metrics server is down" in said
        assert all("— tenant down" not in v for v in explain(installed, APPS["alpha"]).values())
    finally:
        cluster.kubectl(
            "-n", beta, "scale", "deploy/keda-operator-metrics-apiserver", "--replicas=1"
        )

    # Waiting for access: the managed binding's name is taken by someone else's object, so
    # alpha's binding manager cannot make it and KEDA never gets the namespace.
    blocked = "alpha-blocked"
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": blocked}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "keda-tenancy-alpha-operator-managed", "namespace": blocked},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": blocked}],
        },
    )
    try:
        cluster.kubectl("label", "namespace", blocked, f"{TENANT_LABEL}=alpha")
        waiting = wait_for(
            lambda: (
                (v := explain(installed, blocked))
                and all(x.startswith(f"tenant alpha owns {blocked}") for x in v.values())
                and v
            ),
            "every router pod sees alpha own it",
            60,
            1,
        )
        for verdict in waiting.values():
            assert verdict.endswith("— waiting for access"), verdict
            assert "does not grant ClusterRole keda-tenancy-alpha-operator" in verdict
    finally:
        cluster.kubectl("delete", "namespace", blocked, "--wait=false")
    wait_for(lambda: installed.metric_value(APPS["beta"]) == "42", "beta back", 180, 1)
    print(f"\n[cluster] test_16 took {time.monotonic() - started:.1f}s")
