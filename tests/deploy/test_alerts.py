"""The charts' PrometheusRules, run by Prometheus' own rule engine (`promtool test rules`), and
the Grafana dashboard's queries and layout.

Each alert gets series that make it fire and series that must not (another tenant, another
APIService, a value under its threshold, too short for its `for`). Every metric an alert or a
panel reads is one keda-tenancy exports (checked against the real registries) or one of the few
named external ones. promtool comes from Debian's `prometheus` package (tests/packages.sh deploy).
"""

from __future__ import annotations

import itertools
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
from controller.metrics import ControllerMetrics
from operator_pod.app import OperatorPod
from operator_pod.config import Config as OperatorPodConfig
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
    "kube_deployment_spec_replicas": "kube-state-metrics",
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
    ControllerMetrics(registry)
    names = {"keda_tenancy_reloader_watched_publish_errors_total"}  # reloader/publishing.py
    names |= operator_pod_metric_names()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def operator_pod_metric_names() -> set[str]:
    """What keda-tenancy-operator-pod exports (its own stdlib registry, every part wired in:
    the namespace-set follower, the gRPC forwarder, KEDA's health probes)."""
    config = OperatorPodConfig.from_args(
        [
            "--mode=process",
            "--namespaces-configmap=keda-alpha/keda-operator-namespaces",
            "--release-lease=keda-alpha/alpha.operator.keda-tenancy.io",
            "--forward-grpc=:9666=127.0.0.1:9667",
            "--check-operator-health=true",
            "--",
            "keda",
        ],
        {},
    )
    text = OperatorPod(config, environ={}, hostname="h").registry.expose().decode()
    # `# TYPE <name as scraped> <kind>`: counters already carry _total.
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


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
    rules = [
        render_router_rules(helm),
        render_router_rules(helm, controller={"enabled": True}),
        render_tenant_rule(helm, "alpha"),
        *(
            render_tenant_rule(helm, "alpha", **PLATFORM, reloader={"mode": mode})
            for mode in ("process", "deployment")
        ),
    ]
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
        "KedaTenancyNamespaceSetNotFollowed",
        "KedaTenancyControllerDown",
        "KedaTenancyTenantReconcileFailing",
        "KedaTenancyNamespacesWaitingForBinding",
    }


PLATFORM: dict[str, Any] = {"platformController": {"enabled": True}}


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
    platform = render_tenant_rule(
        helm,
        "alpha",
        **PLATFORM,
        prometheusRule={
            "enabled": True,
            "operatorRestartLoop": {"for": "1m", "consecutiveFailures": 7, "containerRestarts": 9},
            "namespaceSetNotFollowed": {"for": "2m", "seconds": 42},
        },
    )
    by_name = {a["alert"]: a for a in alerts(platform)}
    assert ">= 7" in by_name["KedaTenancyOperatorRestartLoop"]["expr"]
    assert ">= 9" in by_name["KedaTenancyOperatorRestartLoop"]["expr"]
    followed = by_name["KedaTenancyNamespaceSetNotFollowed"]
    assert followed["expr"].rstrip().endswith("> 42")
    assert followed["for"] == "2m"
    router = render_router_rules(
        helm,
        controller={"enabled": True},
        prometheusRule={
            "enabled": True,
            "controllerDown": {"for": "3m"},
            "tenantReconcileFailing": {"for": "4m"},
            "namespacesWaitingForBinding": {"for": "6m", "threshold": 2},
        },
    )
    by_name = {a["alert"]: a for a in alerts(router)}
    assert by_name["KedaTenancyControllerDown"]["for"] == "3m"
    assert by_name["KedaTenancyTenantReconcileFailing"]["for"] == "4m"
    assert by_name["KedaTenancyNamespacesWaitingForBinding"]["for"] == "6m"
    assert by_name["KedaTenancyNamespacesWaitingForBinding"]["expr"].rstrip().endswith("> 2")


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


# --- the platform layout (platformController.enabled) ---------------------------------------

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_old_layout_alerts_and_podmonitor_render_byte_for_byte_as_before(
    helm: Helm, mode: str
) -> None:
    """The platform layout's alerts are beside the old ones, not instead: a tenant without
    platformController.enabled gets exactly the PrometheusRule and PodMonitor it had (the golden
    files are the charts' output before the platform layout's alerts)."""
    result = helm.template_raw(
        TENANT_CHART,
        release="keda",
        namespace="keda-alpha",
        values={
            "tenant": "alpha",
            "prometheusRule": {"enabled": True},
            "podMonitor": {"enabled": True},
            "reloader": {"mode": mode},
        },
        extra_args=[
            "--show-only",
            "templates/prometheusrule.yaml",
            "--show-only",
            "templates/podmonitor.yaml",
        ],
    )
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / f"tenant-monitoring-old-layout-{mode}.yaml"
    assert result.stdout == golden.read_text()


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_platform_layout_alerts_read_the_operator_pods_series_not_the_reloaders(
    helm: Helm, mode: str
) -> None:
    rule = render_tenant_rule(helm, "alpha", **PLATFORM, reloader={"mode": mode})
    names = {a["alert"] for a in alerts(rule)}
    assert names == {
        "KedaTenancyMetricsServerDown",
        "KedaTenancyOperatorRestartLoop",
        "KedaTenancyNoOperatorLeader",
    } | ({"KedaTenancyNamespaceSetNotFollowed"} if mode == "process" else set())
    read = set().union(*(metric_names(a["expr"]) for a in alerts(rule)))
    assert not {m for m in read if m.startswith("keda_tenancy_reloader_")}
    assert "keda_tenancy_namespace_watch_staleness_seconds" not in read
    # The follower's `object` label is the ConfigMap the chart points the operator pod at.
    docs = render_tenant(helm, "alpha", **PLATFORM, reloader={"mode": mode})
    (operator,) = (
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "keda-operator"
    )
    (keda,) = (
        c
        for c in operator["spec"]["template"]["spec"]["containers"]
        if c["name"] == "keda-operator"
    )
    assert keda["command"] == ["keda-tenancy-operator-pod"]
    flags = dict(a.split("=", 1) for a in keda["args"] if a.startswith("--") and "=" in a)
    if mode == "process":
        (followed,) = (
            a for a in alerts(rule) if a["alert"] == "KedaTenancyNamespaceSetNotFollowed"
        )
        assert f'object="configmap {flags["--namespaces-configmap"]}"' in followed["expr"]


def test_platform_tenant_rules_fire_on_the_operator_pods_series(
    helm: Helm, promtool: str, tmp_path: Path
) -> None:
    rule = render_tenant_rule(helm, "alpha", **PLATFORM)
    write_rules(rule, tmp_path / "full.yaml")
    promtool_run(promtool, "check", "rules", "full.yaml", cwd=tmp_path)
    write_rules(rule, tmp_path / "rules.yaml", keep=("runbook_url",))
    ns = "keda-alpha"
    leader = {"name": "alpha.operator.keda-tenancy.io"}
    tenant = {"namespace": ns, "tenant": "alpha"}
    exits = "keda_tenancy_operator_pod_operator_exits_total"
    empty = "keda_tenancy_operator_pod_namespace_set_empty"
    current = "keda_tenancy_operator_pod_follow_last_current_timestamp_seconds"
    configmap = {"object": f"configmap {ns}/keda-operator-namespaces"}
    # fmt: off
    tests = [
        {  # KEDA exits 4 times in a row in op-1, twice in op-2; op-3's container restarts
            "interval": "1m",
            "input_series": [
                series(exits, "0 1 2 3 4x20", namespace=ns, pod="op-1", code="1"),
                series(exits, "0 1 2x20", namespace=ns, pod="op-2", code="2"),
                series(exits, "0+1x20", namespace="keda-beta", pod="op-9", code="1"),
                series("kube_pod_container_status_restarts_total", "0+1x30", namespace=ns,
                       pod="op-3", container="keda-operator", job="kube-state-metrics"),
                # The old layout's series mean nothing here.
                series("keda_tenancy_reloader_consecutive_failures", "5x30", namespace=ns,
                       pod="op-2"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyOperatorRestartLoop", at="12m", exp=[
                    {"namespace": ns, "pod": "op-1"},
                    {"namespace": ns, "pod": "op-3", "container": "keda-operator"},
                ]),
            ],
        },
        {  # the leader goes away while the set lists namespaces
            "interval": "1m",
            "input_series": [
                series("leader_election_master_status", "1x5 0x30", **leader, namespace=ns,
                       pod="op-1"),
                series(empty, "0x35", namespace=ns, pod="op-1"),
                # The reloader's "empty" is the old layout's: it does not silence this one.
                series("keda_tenancy_reloader_empty_namespace_set", "1x35", namespace=ns,
                       pod="op-1"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyNoOperatorLeader", at="10m"),
                fired(rule, "KedaTenancyNoOperatorLeader", at="20m", exp=[tenant]),
            ],
        },
        {  # no operator pod at all (nothing scraped): fires
            "interval": "1m",
            "input_series": [
                series(empty, "1x35", namespace="keda-beta", pod="op-9"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m",
                                      exp=[tenant])],
        },
        {  # decided empty: KEDA kept stopped on purpose
            "interval": "1m",
            "input_series": [
                series(empty, "1x35", namespace=ns, pod="op-1"),
                series("leader_election_master_status", "0x35", **leader, namespace=ns,
                       pod="op-1"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m")],
        },
        {  # op-1 last confirmed the set at the epoch; op-2 every minute
            "interval": "1m",
            "input_series": [
                series(current, "0x30", **configmap, namespace=ns, pod="op-1"),
                series(current, "0+60x30", **configmap, namespace=ns, pod="op-2"),
                series(current, "0x30", object="lease keda-alpha/alpha.operator.keda-tenancy.io",
                       namespace=ns, pod="op-3"),
                series(current, "0x30", object="configmap keda-beta/keda-operator-namespaces",
                       namespace="keda-beta", pod="op-9"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyNamespaceSetNotFollowed", at="5m"),  # 300 s: not above
                fired(rule, "KedaTenancyNamespaceSetNotFollowed", at="10m",
                      exp=[{"namespace": ns, "pod": "op-1"}]),
            ],
        },
    ]
    # fmt: on
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    promtool_run(promtool, "test", "rules", "test.yaml", cwd=tmp_path)


def test_platform_deployment_mode_knows_an_empty_set_by_the_operators_replicas(
    helm: Helm, promtool: str, tmp_path: Path
) -> None:
    """The controller scales keda-operator to 0 while the set is empty (docs/controller.md)."""
    rule = render_tenant_rule(helm, "alpha", **PLATFORM, reloader={"mode": "deployment"})
    write_rules(rule, tmp_path / "rules.yaml", keep=("runbook_url",))
    ns = "keda-alpha"
    leader = {"name": "alpha.operator.keda-tenancy.io"}
    ksm = {"job": "kube-state-metrics"}
    replicas = "kube_deployment_spec_replicas"
    tenant = {"namespace": ns, "tenant": "alpha"}
    # fmt: off
    tests = [
        {  # replicas 1 and no leader: fires; another Deployment or tenant at 0 changes nothing
            "interval": "1m",
            "input_series": [
                series(replicas, "1x35", **ksm, namespace=ns, deployment="keda-operator"),
                series(replicas, "0x35", **ksm, namespace=ns,
                       deployment="keda-operator-metrics-apiserver"),
                series(replicas, "0x35", **ksm, namespace="keda-beta",
                       deployment="keda-operator"),
                series("leader_election_master_status", "0x35", **leader, namespace=ns,
                       pod="op-1"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m",
                                      exp=[tenant])],
        },
        {  # scaled to 0 by the controller: no operator on purpose
            "interval": "1m",
            "input_series": [
                series(replicas, "0x35", **ksm, namespace=ns, deployment="keda-operator"),
            ],
            "alert_rule_test": [fired(rule, "KedaTenancyNoOperatorLeader", at="20m")],
        },
        {  # a leader: nothing
            "interval": "1m",
            "input_series": [
                series(replicas, "1x35", **ksm, namespace=ns, deployment="keda-operator"),
                series("leader_election_master_status", "1x35", **leader, namespace=ns,
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


def test_router_alerts_on_the_platform_controller_only_when_it_runs(
    helm: Helm, promtool: str, tmp_path: Path
) -> None:
    controller_alerts = {
        "KedaTenancyControllerDown",
        "KedaTenancyTenantReconcileFailing",
        "KedaTenancyNamespacesWaitingForBinding",
    }
    assert not {a["alert"] for a in alerts(render_router_rules(helm))} & controller_alerts
    rule = render_router_rules(helm, controller={"enabled": True})
    assert {a["alert"] for a in alerts(rule)} >= controller_alerts
    write_rules(rule, tmp_path / "full.yaml")
    promtool_run(promtool, "check", "rules", "full.yaml", cwd=tmp_path)
    write_rules(rule, tmp_path / "rules.yaml", keep=("runbook_url",))
    ns = ROUTER_NAMESPACE
    controller = {"namespace": ns, "pod": "keda-tenancy-controller-0"}
    scrape = {"container": "controller", "endpoint": "health"}
    errors = "keda_tenancy_controller_reconcile_errors_total"
    waiting = "keda_tenancy_controller_namespaces_waiting"
    # fmt: off
    tests = [
        {  # the controller stops answering after 5 minutes; the router keeps answering
            "interval": "1m",
            "input_series": [
                series("up", "1x5 0x20", **controller, **scrape),
                series("up", "1x25", namespace=ns, pod="router-0", container="router",
                       endpoint="health"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyControllerDown", at="9m"),  # not yet `for` 5m
                fired(rule, "KedaTenancyControllerDown", at="15m", exp=[{}]),
            ],
        },
        {
            "interval": "1m",
            "input_series": [series("up", "1x25", **controller, **scrape)],
            "alert_rule_test": [fired(rule, "KedaTenancyControllerDown", at="20m")],
        },
        {  # alpha fails every minute, beta failed once long ago, gamma is another release's
            "interval": "1m",
            "input_series": [
                series(errors, "0+1x60", **controller, tenant="alpha"),
                series(errors, "3x60", **controller, tenant="beta"),
                series(errors, "0+1x60", namespace="other", pod="c", tenant="gamma"),
                series(waiting, "2x30", **controller),
                series(waiting, "5x30", namespace="other", pod="c"),
            ],
            "alert_rule_test": [
                fired(rule, "KedaTenancyTenantReconcileFailing", at="10m"),
                fired(rule, "KedaTenancyTenantReconcileFailing", at="30m",
                      exp=[{"tenant": "alpha"}]),
                fired(rule, "KedaTenancyNamespacesWaitingForBinding", at="10m"),
                fired(rule, "KedaTenancyNamespacesWaitingForBinding", at="20m",
                      exp=[controller]),
            ],
        },
        {  # nothing waits: no alert
            "interval": "1m",
            "input_series": [series(waiting, "0x30", **controller)],
            "alert_rule_test": [fired(rule, "KedaTenancyNamespacesWaitingForBinding", at="20m")],
        },
    ]
    # fmt: on
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    promtool_run(promtool, "test", "rules", "test.yaml", cwd=tmp_path)


def test_router_servicemonitor_scrapes_the_platform_controller(helm: Helm) -> None:
    docs = helm.template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"serviceMonitor": {"enabled": True}, "controller": {"enabled": True}},
    )
    monitors = of_kind(docs, "ServiceMonitor")
    assert len(monitors) == 3  # the router, keda-tenancy-certs, the controller
    (service,) = (
        s for s in of_kind(docs, "Service") if s["metadata"]["name"] == "keda-tenancy-controller"
    )
    selected = [
        m for m in monitors
        if m["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ]  # fmt: skip
    assert len(selected) == 1
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in selected[0]["spec"]["endpoints"]} <= ports
    (deployment,) = (
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "keda-tenancy-controller"
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The alert's `container` matcher is the controller's container.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (down,) = (
        a
        for a in alerts(render_router_rules(helm, controller={"enabled": True}))
        if a["alert"] == "KedaTenancyControllerDown"
    )
    assert f'container="{container["name"]}"' in down["expr"]


# --- monitors and NetworkPolicies -------------------------------------------------------------


def test_monitors_and_network_policies_admit_prometheus_to_the_metrics_ports_only(
    helm: Helm,
) -> None:
    monitoring = {"namespace": "monitoring", "podLabels": {"app": "prometheus"}}
    peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}},
    }
    for platform, mode in itertools.product((False, True), ("process", "deployment")):
        docs = render_tenant(
            helm,
            "alpha",
            reloader={"mode": mode},
            podMonitor={"enabled": True},
            networkPolicy={"monitoring": monitoring},
            platformController={"enabled": platform},
        )
        (monitor,) = of_kind(docs, "PodMonitor")
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        # The platform layout has no RoleBinding manager or namespace reloader (`health`).
        assert ports == {"metrics", "reloader"} | ({"health"} if not platform else set()) | (
            {"forward-health"} if mode == "deployment" else set()
        )
        # Every scraped port is one a rendered pod has.
        assert ports <= {
            p["name"]
            for d in of_kind(docs, "Deployment")
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }, (platform, mode)
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
            assert admitted == expected, (platform, mode, component)
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
