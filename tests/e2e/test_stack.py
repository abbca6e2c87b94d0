"""The ten scenarios, against the real kube-apiserver, etcd, KEDA and HPA controller."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.e2e.conftest import TENANT_APPS, VALUES
from tests.e2e.metric_source import MetricSource
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def metric_path(namespace: str, metric: str = "s0-metric-api-value", app: str = "app") -> str:
    selector = urllib.parse.quote(f"scaledobject.keda.sh/name={app}", safe="")
    return f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={selector}"


def metric_value(stack: Stack, namespace: str, **kwargs: str) -> str | None:
    code, body = stack.get_raw(metric_path(namespace), **kwargs)  # type: ignore[arg-type]
    if code != 200:
        return None
    items = body.get("items") or []
    return str(items[0]["value"]) if items else None


def hpa_desired(stack: Stack, namespace: str, name: str = "keda-hpa-app") -> int | None:
    done = stack.kubectl("get", "hpa", name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout).get("status", {}).get("desiredReplicas")


def test_01_apiservice_available_and_stays_so_with_a_tenant_down(stack: Stack) -> None:
    assert stack.apiservice_available()
    beta = stack.tenants["beta"]
    assert beta.adapter is not None
    beta.adapter.stop()
    try:
        time.sleep(12)  # several availability checks by the aggregator
        assert stack.apiservice_available()
        wait_for(lambda: metric_value(stack, "alpha-apps") == "7", "alpha still served", 60, 1)
    finally:
        stack.start_adapter(beta)
    wait_for(lambda: metric_value(stack, "beta-apps") == "42", "beta served again", 90, 1)


def test_02_each_tenant_gets_its_own_value(stack: Stack) -> None:
    for tenant, namespace in TENANT_APPS.items():
        wait_for(
            lambda ns=namespace, v=VALUES[tenant]: metric_value(stack, ns) == str(v),
            f"{tenant} metric",
            90,
            1,
        )


def keda_logs(stack: Stack, tenant: str) -> str:
    """Everything the tenant's KEDA (adapter and operator) logged."""
    return "".join(
        stack.processes[f"{part}-{tenant}"].log.read_text(errors="replace")
        for part in ("adapter", "operator")
    )


def test_03_isolation_and_unmapped_namespaces(stack: Stack) -> None:
    probe = f"isolation-probe-{os.getpid()}"
    for _ in range(3):
        stack.get_raw(metric_path("alpha-apps", probe))  # an unknown metric: KEDA logs its name
    wait_for(lambda: probe in keda_logs(stack, "alpha"), "alpha's KEDA saw the request", 10)
    assert probe not in keda_logs(stack, "beta")  # beta's KEDA never heard of it
    code, body = stack.get_raw(metric_path("kube-system"))
    assert code == 404
    assert "not served by any tenant" in str(body["message"])


def test_04_identity_crosses_the_router_intact(stack: Stack) -> None:
    namespace = "alpha-apps"
    # RBAC through a group: only a caller whose groups arrive intact at the adapter is allowed.
    stack.apply(
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
    # Straight to the router, as the aggregator would: the tenant's adapter itself decides.
    context = ssl.create_default_context(cafile=str(stack.certs / "router-serving-ca.crt"))
    context.load_cert_chain(
        str(stack.certs / "front-proxy-client.crt"), str(stack.certs / "front-proxy-client.key")
    )

    def via_router(user: str, *groups: str) -> int:
        connection = http.client.HTTPSConnection(
            "localhost", stack.router_port, context=context, timeout=15
        )
        try:
            connection.putrequest("GET", metric_path(namespace))
            connection.putheader("X-Remote-User", user)
            for group in groups:  # one header line per group, as the aggregator sends them
                connection.putheader("X-Remote-Group", group)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                assert json.loads(body)["kind"] == "Status"
            return int(response.status)
        finally:
            connection.close()

    assert via_router("bob") == 403  # the adapter's delegated authorization refuses bob
    assert wait_for(
        lambda: via_router("jane", "metrics-readers") == 200,
        "jane allowed through her group",
        30,
        1,
    )
    # And end to end through kube-apiserver with real user certificates.
    jane = stack.user_kubeconfig("jane", ("metrics-readers",))
    bob = stack.user_kubeconfig("bob")
    assert stack.get_raw(metric_path(namespace), kubeconfig=bob)[0] == 403
    assert wait_for(
        lambda: stack.get_raw(metric_path(namespace), kubeconfig=jane)[0] == 200,
        "jane via kubectl",
        30,
        1,
    )


def test_05_hpa_follows_the_metric(stack: Stack, sources: dict[str, MetricSource]) -> None:
    wait_for(lambda: hpa_desired(stack, "alpha-apps") == 4, "alpha HPA desired 4 (7 / 2)", 120, 1)
    sources["alpha"].value = 11
    try:
        wait_for(
            lambda: hpa_desired(stack, "alpha-apps") == 6, "alpha HPA desired 6 (11 / 2)", 120, 1
        )
    finally:
        sources["alpha"].value = VALUES["alpha"]
    wait_for(
        lambda: hpa_desired(stack, "beta-apps") == 20, "beta HPA capped at max 20 (42 / 2)", 120, 1
    )


def test_06_a_new_tenant_namespace_is_picked_up(
    stack: Stack, sources: dict[str, MetricSource]
) -> None:
    stack.tenant_namespace("alpha", "alpha-new")
    stack.scaled_app("alpha-new", sources["alpha"].url)
    wait_for(
        lambda: hpa_desired(stack, "alpha-new") is not None,
        "KEDA created the HPA in the new namespace",
        120,
        1,
    )
    wait_for(
        lambda: metric_value(stack, "alpha-new") == "7",
        "metric served for the new namespace",
        120,
        1,
    )
    operator_log = stack.processes["operator-alpha"].log.read_text()
    assert "alpha-new" in operator_log


def test_07_deleting_a_namespace_with_a_scaledobject_completes(
    stack: Stack, sources: dict[str, MetricSource]
) -> None:
    stack.tenant_namespace("alpha", "alpha-doomed")
    stack.scaled_app("alpha-doomed", sources["alpha"].url)
    wait_for(
        lambda: hpa_desired(stack, "alpha-doomed") is not None,
        "HPA in the doomed namespace",
        120,
        1,
    )
    stack.kubectl("delete", "namespace", "alpha-doomed", "--wait=false")
    wait_for(
        lambda: stack.kubectl("get", "namespace", "alpha-doomed", check=False).returncode != 0,
        "namespace gone (KEDA removed its finalizer)",
        120,
        1,
    )


def settled(stack: Stack, namespace: str = "alpha-apps", expected: str = "7") -> None:
    """Wait out restarts the reloaders may still do after earlier namespace changes:
    the metric must read fine several times in a row."""
    streak = 0

    def steady() -> bool:
        nonlocal streak
        streak = streak + 1 if metric_value(stack, namespace) == expected else 0
        return streak >= 5

    wait_for(steady, f"{namespace} steadily served", 90, 0.5)


def test_08_router_certificates_rotate_without_failed_reads(stack: Stack) -> None:
    settled(stack)
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            value = metric_value(stack, "alpha-apps")
            if value != "7":
                failures.append(str(value))
            time.sleep(0.2)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(1)
        for name, issue in (
            (
                "router-serving",
                lambda: stack.router_serving_ca.issue(
                    "keda-tenancy-router-rotated",
                    dns=("keda-tenancy-router.keda-tenancy.svc", "localhost"),
                    ips=("127.0.0.1",),
                    server=True,
                ),
            ),
            (
                "router-client",
                lambda: stack.router_client_ca.issue("keda-tenancy-router", client=True),
            ),
        ):
            pair = issue()
            for suffix, data in ((".key", pair.key_pem), (".crt", pair.cert_pem)):
                tmp = stack.certs / f"{name}{suffix}.tmp"
                tmp.write_bytes(data)
                tmp.replace(stack.certs / f"{name}{suffix}")
        time.sleep(5)  # several reload intervals, and new connections both ways
    finally:
        stop.set()
        poller.join()
    assert not failures, f"failed reads during rotation: {failures}"
    served = json.loads(
        stack.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1").stdout
    )
    assert served["kind"] == "APIResourceList"


def test_09_a_dead_tenant_does_not_stop_the_other(stack: Stack) -> None:
    beta = stack.tenants["beta"]
    assert beta.adapter is not None
    settled(stack)
    beta.adapter.stop()
    try:
        for _ in range(5):
            assert metric_value(stack, "alpha-apps") == "7"
        code, _ = stack.get_raw(metric_path("beta-apps"))
        assert code == 503
    finally:
        stack.start_adapter(beta)
    wait_for(lambda: metric_value(stack, "beta-apps") == "42", "beta back", 90, 1)


def test_10_sigterm_drains_and_a_restart_serves_again(stack: Stack) -> None:
    settled(stack)
    results: list[str | None] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            results.append(metric_value(stack, "alpha-apps"))

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1)
    router = stack.processes["router"]
    started = time.monotonic()
    router.signal(signal.SIGTERM)
    assert router.popen is not None
    code = router.popen.wait(15)
    took = time.monotonic() - started
    stop.set()
    poller.join()
    assert code == 0
    assert took < 11  # within --shutdown-grace-period (10s)
    assert "7" in results
    log = router.log.read_text()
    assert "secure listener stopped" in log
    stack.start_router()
    wait_for(stack.apiservice_available, "APIService Available again", 60)
    wait_for(lambda: metric_value(stack, "alpha-apps") == "7", "queries succeed again", 60, 1)


def reloader_metric(stack: Stack, tenant: str, name: str) -> float:
    port = stack.tenants[tenant].operator_ports["reloader"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"keda_tenancy_reloader_{name}") and not line.startswith("#")
    )


def lease_holder(stack: Stack, tenant: str = "alpha") -> str:
    lease = f"{tenant}.operator.keda-tenancy.io"  # the chart's leader-election id
    done = stack.kubectl("get", "lease", lease, "-n", f"keda-{tenant}", "-o", "json")
    return str(json.loads(done.stdout)["spec"].get("holderIdentity") or "")


def test_11_namespace_changes_fail_no_read_of_an_existing_namespace(stack: Stack) -> None:
    """The chart's configuration (operator --leader-elect, adapter never restarted): while the
    tenant's namespaces change, its existing namespace's metric keeps being served. A read may
    wait for the restarted operator, never for the old operator's Lease (15 s): reads give up
    after 12 s, below the HPA controller's 15 s sync period.

    A read the old operator had accepted when it exited would fail ("error reading from
    server": KEDA's gRPC server does not drain); the reloader closes the adapter's connection
    while idle before stopping the operator, so none may fail that way either."""
    settled(stack)
    holders = [lease_holder(stack)]
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal reads
        while not stop.is_set():
            done = stack.kubectl(
                "get", "--raw", metric_path("alpha-apps"), "--request-timeout=12s", check=False
            )
            reads += 1
            if done.returncode != 0 or json.loads(done.stdout)["items"][0]["value"] != "7":
                message = done.stderr.strip()[:300] or done.stdout[:300]
                failures.append(message)
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for change in ("add alpha-churn-1", "add alpha-churn-2", "remove alpha-churn-1"):
            restarts = reloader_metric(stack, "alpha", "restarts_total")
            verb, name = change.split()
            if verb == "add":
                stack.tenant_namespace("alpha", name)
            else:
                stack.kubectl("delete", "namespace", name, "--wait=false")
            wait_for(
                lambda r=restarts: reloader_metric(stack, "alpha", "restarts_total") > r,
                f"the operator restarted after '{change}'",
                60,
                0.2,
            )
            holders.append(wait_for(lambda: lease_holder(stack), "the new operator leads", 60, 0.2))
            settled(stack)
    finally:
        stop.set()
        poller.join()
    assert reads > 20
    assert len(set(holders)) == 4, holders  # a new operator, a new identity, each time
    assert not failures, f"failed reads during namespace changes: {failures}"
    # Each restarted operator took over its predecessor's Lease: released, not waited out.
    assert reloader_metric(stack, "alpha", "lease_releases_total") >= 3
