"""The charts' PrometheusRules, run by Prometheus' own rule engine (`promtool test rules`), and
the Grafana dashboard's queries and layout.

Each alert gets series that make it fire and series that must not (another tenant, another
APIService, a value under its threshold, too short for its `for`). Every metric an alert or a
panel reads is one keda-tenancy exports (checked against the real registries) or one of the few
named external ones. promtool comes from Debian's `prometheus` package (tests/packages.sh deploy).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.certs.bootstrap import CertsMetrics
from reloader.metrics import ReloaderMetrics
from reloader.rolebindings import BindingMetrics
from reloader.supervise import SupervisorMetrics
from router.metrics import RouterMetrics
from tenancy_common.namespace_cache import WatchMetrics
from tests.deploy.charts import (
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    TENANT_CHART,
    Doc,
    Helm,
    of_kind,
)

pytestmark = pytest.mark.timeout(600)

DASHBOARD = ROUTER_CHART / "dashboards" / "keda-tenancy.json"
RUNBOOKS = ROUTER_CHART.parents[1] / "README.md"
# Series other programs export, and which: the rules may read these and ours only.
EXTERNAL_METRICS = {
    "up": "Prometheus, per scrape target",
    "aggregator_unavailable_apiservice": "kube-apiserver",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "leader_election_master_status": "KEDA's operator (controller-runtime)",
}
PROMQL_WORDS = {
    "sum", "max", "min", "by", "without", "on", "unless", "or", "and", "rate", "increase",
    "absent", "vector", "histogram_quantile", "time", "label_values", "le", "ignoring",
}  # fmt: skip


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `bash tests/packages.sh deploy` (Debian's prometheus)")
    return found


def our_metric_names() -> set[str]:
    """Every series name keda-tenancy's processes export (as scraped: counters end in _total)."""
    registry = CollectorRegistry()
    router = RouterMetrics(registry)
    router.requests.observe("t", 200, "forwarded", 0.01)  # collected only once seen
    ReloaderMetrics(registry)
    BindingMetrics(registry)
    SupervisorMetrics(registry)
    CertsMetrics(registry)
    WatchMetrics(registry)
    names = {"keda_tenancy_reloader_watched_publish_errors_total"}  # reloader/publishing.py
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (each is followed by a `{` matcher here)."""
    return {m for m in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)} - PROMQL_WORDS


def render_router_rules(helm: Helm, **values: Any) -> Doc:
    docs = helm.template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"prometheusRule": {"enabled": True}, **values},
    )
    (rule,) = of_kind(docs, "PrometheusRule")
    return rule


def render_tenant(helm: Helm, tenant: str, **values: Any) -> list[Doc]:
    return helm.template(
        TENANT_CHART,
        release="keda",
        namespace=f"keda-{tenant}",
        values={"tenant": tenant, "prometheusRule": {"enabled": True}, **values},
    )


def alerts(rule: Doc) -> Iterator[dict[str, Any]]:
    for group in rule["spec"]["groups"]:
        yield from (r for r in group["rules"] if "alert" in r)


def promtool_run(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def write_rules(rule: Doc, path: Path, *, keep: tuple[str, ...] | None = None) -> None:
    """The PrometheusRule's groups as a Prometheus rule file; `keep`: only these annotations
    (promtool compares every annotation, and summaries print the humanized value)."""
    groups = json.loads(json.dumps(rule["spec"]["groups"]))
    if keep is not None:
        for group in groups:
            for r in group["rules"]:
                r["annotations"] = {k: v for k, v in r["annotations"].items() if k in keep}
    path.write_text(yaml.safe_dump({"groups": groups}))


def series(name: str, values: str, /, **labels: str) -> dict[str, str]:
    matchers = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{matchers}}}", "values": values}


def fired(
    rule: Doc, alert: str, *, at: str, exp: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """An alert_rule_test: `exp` are the labels (beyond the rule's own) of the alerts expected
    at `at`; [] means none."""
    (found,) = (a for a in alerts(rule) if a["alert"] == alert)
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {**found.get("labels", {}), **labels},
                "exp_annotations": {"runbook_url": found["annotations"]["runbook_url"]},
            }
            for labels in exp or []
        ],
    }


# --- the rules ------------------------------------------------------------------------------


def test_every_rule_reads_metrics_that_exist_and_links_its_runbook(helm: Helm) -> None:
    ours = our_metric_names()
    runbooks = RUNBOOKS.read_text()
    rules = [render_router_rules(helm), render_tenant_rule(helm, "alpha")]
    seen = set()
    for rule in rules:
        for alert in alerts(rule):
            unknown = metric_names(alert["expr"]) - ours - set(EXTERNAL_METRICS)
            assert not unknown, f"{alert['alert']} reads series nothing exports: {unknown}"
            url = alert["annotations"]["runbook_url"]
            anchor = url.rpartition("#")[2]
            assert url.startswith("https://")
            assert "/deploy/README.md#" in url
            # GitHub's anchor of a `#### AlertName` heading is the lower-cased name.
            assert f"#### {alert['alert']}\n" in runbooks
            assert anchor == alert["alert"].lower()
            seen.add(alert["alert"])
    assert seen >= {
        "KedaTenancyTenantFailingFast",
        "KedaTenancyUnroutableRequests",
        "KedaTenancyAPIServiceUnavailable",
        "KedaTenancyCertificatesFailing",
        "KedaTenancyNamespaceCacheStale",
        "KedaTenancyMetricsServerDown",
        "KedaTenancyOperatorRestartLoop",
        "KedaTenancyNoOperatorLeader",
        "KedaTenancyNamespacesWaitingForAccess",
        "KedaTenancyReloaderNamespaceWatchStale",
    }


def render_tenant_rule(helm: Helm, tenant: str, **values: Any) -> Doc:
    (rule,) = of_kind(render_tenant(helm, tenant, **values), "PrometheusRule")
    return rule


def test_thresholds_are_values(helm: Helm) -> None:
    rule = render_router_rules(
        helm,
        prometheusRule={
            "enabled": True,
            "tenantFailingFast": {"for": "2m", "ratio": 0.9},
            "unroutableRequests": {"for": "1m", "perSecond": 3},
        },
    )
    by_name = {a["alert"]: a for a in alerts(rule)}
    assert by_name["KedaTenancyTenantFailingFast"]["for"] == "2m"
    assert by_name["KedaTenancyTenantFailingFast"]["expr"].rstrip().endswith("> 0.9")
    assert by_name["KedaTenancyUnroutableRequests"]["expr"].rstrip().endswith("> 3")
    tenant = render_tenant_rule(
        helm,
        "alpha",
        prometheusRule={
            "enabled": True,
            "operatorRestartLoop": {"for": "1m", "consecutiveFailures": 7, "containerRestarts": 9},
        },
    )
    (loop,) = (a for a in alerts(tenant) if a["alert"] == "KedaTenancyOperatorRestartLoop")
    assert ">= 7" in loop["expr"]
    assert ">= 9" in loop["expr"]
    assert loop["for"] == "1m"


def test_router_rules_fire_on_their_series_only(helm: Helm, promtool: str, tmp_path: Path) -> None:
    rule = render_router_rules(helm)
    write_rules(rule, tmp_path / "full.yaml")
    promtool_run(promtool, "check", "rules", "full.yaml", cwd=tmp_path)
    write_rules(rule, tmp_path / "rules.yaml", keep=("runbook_url",))
    ns = ROUTER_NAMESPACE
    pod = {"namespace": ns, "pod": "keda-tenancy-router-0"}
    days = 86400
    # fmt: off
    tests = [
        {  # alpha fails fast on every request; beta on a tenth of them
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_router_requests_total", "0+60x30", **pod, tenant="alpha",
                       code="503", outcome="upstream_error"),
                series("keda_tenancy_router_upstream_fast_failed_total", "0+60x30", **pod,
                       tenant="alpha"),
                series("keda_tenancy_router_requests_total", "0+60x30", **pod, tenant="beta",
                       code="200", outcome="forwarded"),
                series("keda_tenancy_router_upstream_fast_failed_total", "0+6x30", **pod,
                       tenant="beta"),
                # Another router release's series are not this release's.
                series("keda_tenancy_router_upstream_fast_failed_total", "0+60x30",
                       namespace="other", pod="x", tenant="gamma"),
                series("keda_tenancy_router_requests_total", "0+60x30", namespace="other",
                       pod="x", tenant="gamma", code="503", outcome="upstream_error"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyTenantFailingFast", at="4m"),  # not yet `for` 5m
                fired(rule, "KedaTenancyTenantFailingFast", at="15m", exp=[{"tenant": "alpha"}]),
            ],
        },
        {  # a tenant answering: no fast-fail at all
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_router_requests_total", "0+60x30", **pod, tenant="alpha",
                       code="200", outcome="forwarded"),
                series("keda_tenancy_router_upstream_fast_failed_total", "0x30", **pod,
                       tenant="alpha"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyTenantFailingFast", at="20m")],
        },
        {
            "interval": "1m",
            "input_series": [
                # 0.1/s unmapped (above 0.05), 1/min claimed twice (below)
                series("keda_tenancy_router_unroutable_requests_total", "0+6x40", **pod,
                       reason="unmapped"),
                series("keda_tenancy_router_unroutable_requests_total", "0+1x40", **pod,
                       reason="conflict"),
                series("aggregator_unavailable_apiservice", "0x5 1x30", job="apiserver",
                       name="v1beta1.external.metrics.k8s.io"),
                series("aggregator_unavailable_apiservice", "1x40", job="apiserver",
                       name="v1beta1.metrics.k8s.io"),
                series("keda_tenancy_namespace_watch_staleness_seconds", "400x40", **pod),
                series("keda_tenancy_namespace_watch_staleness_seconds", "30x40",
                       namespace=ns, pod="keda-tenancy-router-1"),
                # The tenant's reloader watch is the tenant chart's alert, not this one.
                series("keda_tenancy_namespace_watch_staleness_seconds", "900x40",
                       namespace="keda-alpha", pod="keda-operator-0"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyUnroutableRequests", at="8m"),
                fired(rule, "KedaTenancyUnroutableRequests", at="20m",
                      exp=[{"reason": "unmapped"}]),
                fired(rule, "KedaTenancyAPIServiceUnavailable", at="8m"),
                fired(rule, "KedaTenancyAPIServiceUnavailable", at="12m",
                      exp=[{"name": "v1beta1.external.metrics.k8s.io"}]),
                fired(rule, "KedaTenancyNamespaceCacheStale", at="5m",
                      exp=[{**pod}]),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_certs_namespace_errors_total", "0+1x60", namespace=ns,
                       pod="certs-0", secret_namespace="keda-alpha", reason="ca-not-a-ca"),
                series("keda_tenancy_certs_namespace_errors_total", "3x60", namespace=ns,
                       pod="certs-0", secret_namespace="keda-beta", reason="forbidden"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyCertificatesFailing", at="20m"),
                fired(rule, "KedaTenancyCertificatesFailing", at="50m", exp=[{
                    "namespace": ns, "pod": "certs-0", "secret_namespace": "keda-alpha",
                    "reason": "ca-not-a-ca"}]),
            ],
        },
        {  # expiry 10 days after the epoch (eval times are seconds from it) against 100 days
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_router_certificate_expiry_timestamp_seconds",
                       f"{10 * days}x200", **pod, certificate="serving"),
                series("keda_tenancy_router_certificate_expiry_timestamp_seconds",
                       f"{100 * days}x200", **pod, certificate="upstream-client"),
                series("keda_tenancy_certs_certificate_expiry_timestamp_seconds",
                       f"{10 * days}x200", namespace=ns, pod="certs-0",
                       secret_namespace="keda-alpha", secret="kedaorg-certs"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyRouterCertificateExpiresSoon", at="2h",
                      exp=[{**pod, "certificate": "serving"}]),
                fired(rule, "KedaTenancyCertificateExpiresSoon", at="2h", exp=[{
                    "namespace": ns, "pod": "certs-0", "secret_namespace": "keda-alpha",
                    "secret": "kedaorg-certs"}]),
            ],
        },
    ]
    # fmt: on
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    promtool_run(promtool, "test", "rules", "test.yaml", cwd=tmp_path)


def test_tenant_rules_fire_for_their_tenant_only(helm: Helm, promtool: str, tmp_path: Path) -> None:
    rule = render_tenant_rule(helm, "alpha")
    write_rules(rule, tmp_path / "full.yaml")
    promtool_run(promtool, "check", "rules", "full.yaml", cwd=tmp_path)
    write_rules(rule, tmp_path / "rules.yaml", keep=("runbook_url",))
    ns = "keda-alpha"
    metrics_server = {"container": "keda-operator-metrics-apiserver", "endpoint": "metrics"}
    leader = {"name": "alpha.operator.keda-tenancy.io"}
    tenant = {"namespace": ns, "tenant": "alpha"}
    # fmt: off
    tests = [
        {  # alpha's metrics server stops answering after 5 minutes; beta's is always down
            "interval": "1m",
            "input_series": [
                series("up", "1x5 0x20", **metrics_server, namespace=ns, pod="ms-1"),
                series("up", "0x25", **metrics_server, namespace="keda-beta", pod="ms-2"),
                series("up", "1x25", namespace=ns, pod="op-1", container="keda-operator",
                       endpoint="metrics"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyMetricsServerDown", at="9m"),  # not yet `for` 5m
                fired(rule, "KedaTenancyMetricsServerDown", at="15m", exp=[tenant]),
            ],
        },
        {  # two replicas, one of them up: served
            "interval": "1m",
            "input_series": [
                series("up", "0x25", **metrics_server, namespace=ns, pod="ms-1"),
                series("up", "1x25", **metrics_server, namespace=ns, pod="ms-2"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyMetricsServerDown", at="20m")],
        },
        {
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_reloader_consecutive_failures", "0 1 2 3x20", namespace=ns,
                       pod="op-1"),
                series("keda_tenancy_reloader_consecutive_failures", "2x20", namespace=ns,
                       pod="op-2"),
                series("kube_pod_container_status_restarts_total", "0+1x30", namespace=ns,
                       pod="op-3", container="keda-operator", job="kube-state-metrics"),
                series("kube_pod_container_status_restarts_total", "0+1x30",
                       namespace="keda-beta", pod="op-4", container="keda-operator",
                       job="kube-state-metrics"),
                series("keda_tenancy_reloader_namespaces_waiting_for_access", "2x30",
                       namespace=ns, pod="op-1"),
                series("keda_tenancy_reloader_namespaces_waiting_for_access", "0x30",
                       namespace=ns, pod="op-2"),
                series("keda_tenancy_namespace_watch_staleness_seconds", "400x30",
                       namespace=ns, pod="op-1"),
                series("keda_tenancy_namespace_watch_staleness_seconds", "400x30",
                       namespace="keda-tenancy-system", pod="router-0"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyOperatorRestartLoop", at="12m", exp=[
                    {"namespace": ns, "pod": "op-1"},
                    {"namespace": ns, "pod": "op-3", "container": "keda-operator"},
                ]),
                fired(rule, "KedaTenancyNamespacesWaitingForAccess", at="10m"),
                fired(rule, "KedaTenancyNamespacesWaitingForAccess", at="20m",
                      exp=[{"namespace": ns, "pod": "op-1"}]),
                fired(rule, "KedaTenancyReloaderNamespaceWatchStale", at="5m",
                      exp=[{"namespace": ns, "pod": "op-1"}]),
            ],
        },
        {  # the leader goes away while namespaces are selected
            "interval": "1m",
            "input_series": [
                series("leader_election_master_status", "1x5 0x30", **leader, namespace=ns,
                       pod="op-1"),
                series("keda_tenancy_reloader_empty_namespace_set", "0x35", namespace=ns,
                       pod="op-1"),
                series("leader_election_master_status", "0x35", name="beta.operator",
                       namespace="keda-beta", pod="op-9"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyNoOperatorLeader", at="10m"),
                fired(rule, "KedaTenancyNoOperatorLeader", at="20m", exp=[tenant]),
            ],
        },
        {  # no operator at all: fires too; kept stopped on purpose (no namespace): does not
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_reloader_empty_namespace_set", "0x35", namespace=ns,
                       pod="op-1"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m",
                                      exp=[tenant])],
        },
        {
            "interval": "1m",
            "input_series": [
                series("keda_tenancy_reloader_empty_namespace_set", "1x35", namespace=ns,
                       pod="op-1"),
                series("leader_election_master_status", "0x35", **leader, namespace=ns,
                       pod="op-1"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m")],
        },
    ]
    # fmt: on
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    promtool_run(promtool, "test", "rules", "test.yaml", cwd=tmp_path)


# --- monitors and NetworkPolicies -------------------------------------------------------------


def test_monitors_and_network_policies_admit_prometheus_to_the_metrics_ports_only(
    helm: Helm,
) -> None:
    monitoring = {"namespace": "monitoring", "podLabels": {"app": "prometheus"}}
    peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }
    for mode in ("process", "deployment"):
        docs = render_tenant(
            helm,
            "alpha",
            reloader={"mode": mode},
            podMonitor={"enabled": True},
            networkPolicy={"monitoring": monitoring},
        )
        (monitor,) = of_kind(docs, "PodMonitor")
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        assert ports == {"metrics", "reloader", "health"} | (
            {"forward-health"} if mode == "deployment" else set()
        )
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped: dict[str, set[int]] = {}
        for deployment in of_kind(docs, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), deployment["metadata"]["name"]
            for c in deployment["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    if p["name"] in ports:
                        scraped.setdefault(labels["app.kubernetes.io/component"], set()).add(
                            p["containerPort"]
                        )
        # Every scraped port is open to Prometheus, and Prometheus to nothing else.
        for policy in of_kind(docs, "NetworkPolicy"):
            component = (
                policy["spec"]["podSelector"]
                .get("matchLabels", {})
                .get("app.kubernetes.io/component")
            )
            admitted = {
                p["port"]
                for rule in policy["spec"].get("ingress", [])
                if peer in rule.get("from", [])
                for p in rule["ports"]
            }
            expected = scraped.get(component, set())
            assert admitted == expected, (mode, component)
        assert set(scraped) >= {"operator", "metrics-apiserver", "admission-webhooks"}
    # Without it, the tenant admits no scraping at all (as before).
    docs = render_tenant(helm, "alpha")
    assert not of_kind(docs, "PodMonitor")
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert all(p["port"] not in (8080, 8090) for p in rule["ports"]), policy
    # The router: its ServiceMonitors' ports are the ones opened to the monitoring namespace.
    router = helm.template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"serviceMonitor": {"enabled": True}, "networkPolicy": {"monitoring": monitoring}},
    )
    assert len(of_kind(router, "ServiceMonitor")) == 2
    for policy in of_kind(router, "NetworkPolicy"):
        health = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "health"]
        assert [r["from"] for r in health] == [[peer]]


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_queries_parse_and_read_metrics_that_exist(
    helm: Helm, promtool: str, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ours = our_metric_names()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for used in re.findall(r"\$(\w+)", expr):
                assert used == "__rate_interval" or used in variables, (panel["title"], used)
            unknown = metric_names(expr) - ours - set(EXTERNAL_METRICS)
            assert not unknown, f"{panel['title']}: {unknown}"
            concrete = re.sub(r"\$__rate_interval", "5m", expr)
            concrete = re.sub(r"\$\w+", ".*", concrete)
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": concrete}
            )
    assert len(rules) >= 15
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    promtool_run(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    # Every panel group the issue asks for is there.
    text = DASHBOARD.read_text()
    for metric in (
        "keda_tenancy_router_requests_total",
        "keda_tenancy_router_upstream_errors_total",
        "keda_tenancy_router_request_duration_seconds_bucket",
        "keda_tenancy_router_upstream_fast_failed_total",
        "keda_tenancy_router_upstream_connections",
        "keda_tenancy_reloader_restarts_total",
        "keda_tenancy_reloader_namespaces",
    ):
        assert metric in text, metric
    # The chart ships the same bytes, opt-in.
    docs = helm.template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"grafanaDashboard": {"enabled": True}},
    )
    (configmap,) = (
        c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["keda-tenancy.json"]) == dashboard


def test_dashboard_has_the_structure_grafana_loads() -> None:
    """The fields of Grafana's dashboard model (schemaVersion 39) a provisioned dashboard
    needs: panels with unique ids, a gridPos inside the 24-column grid that overlaps no other,
    a Prometheus datasource by the template variable and targets with refIds."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["time"]["from"], str)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert all(isinstance(v, int) for v in grid.values())
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, panel["title"]
        occupied |= cells
        assert panel["type"] in {"row", "timeseries", "stat", "table"}
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"]
