"""Issue 23's monitoring, on the cluster: a Prometheus pod scrapes the router and both tenants
through the charts' NetworkPolicies (admitted by `networkPolicy.monitoring`), with the targets the
charts' ServiceMonitors and PodMonitors select and the charts' PrometheusRules; stopping one
tenant's metrics server fires that tenant's alerts and no other alert."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE, TENANT_CHART
from tests.e2e.cluster import monitoring
from tests.e2e.cluster.install import APPS, VALUES, Installed, tenant_namespace
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

MONITORING = [
    "--set", f"networkPolicy.monitoring.namespace={monitoring.NAMESPACE}",
    "--set", "networkPolicy.monitoring.podLabels.app=prometheus",
    "--set", "prometheusRule.enabled=true",
]  # fmt: skip
# Every alert's `for` short, so an alert whose condition held would show within the scenario.
ROUTER_MONITORING = [
    *MONITORING,
    "--set", "serviceMonitor.enabled=true",
    "--set", "prometheusRule.for=20s",
    *(a for k in ("tenantFailingFast", "unroutableRequests", "apiServiceUnavailable",
                  "certificatesFailing", "namespaceCacheStale")
      for a in ("--set", f"prometheusRule.{k}.for=20s")),
]  # fmt: skip
TENANT_MONITORING = [
    *MONITORING,
    "--set", "podMonitor.enabled=true",
    *(a for k in ("metricsServerDown", "operatorRestartLoop", "noOperatorLeader",
                  "namespacesWaitingForAccess", "namespaceWatchStale")
      for a in ("--set", f"prometheusRule.{k}.for=20s")),
]  # fmt: skip
METRICS_SERVER = "deploy/keda-operator-metrics-apiserver"


def upgrade(installed: Installed, *, monitored: bool) -> None:
    cluster = installed.cluster
    cluster.helm(
        "upgrade", ROUTER_RELEASE, str(ROUTER_CHART), "-n", ROUTER_NAMESPACE,
        *installed.router_args(), *(ROUTER_MONITORING if monitored else []),
        "--wait", "--timeout=5m",
    )  # fmt: skip
    for tenant in APPS:
        cluster.helm(
            "upgrade", "keda", str(TENANT_CHART), "-n", tenant_namespace(tenant),
            *installed.tenant_args(tenant), *(TENANT_MONITORING if monitored else []),
            "--wait", "--timeout=5m",
        )  # fmt: skip


def firing(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(alertname, whose) of the firing alerts: whose is the tenant or the namespace."""
    return {
        (a["labels"]["alertname"], a["labels"].get("tenant") or a["labels"].get("namespace", ""))
        for a in alerts
        if a["state"] == "firing"
    }


def test_prometheus_scrapes_through_the_policies_and_a_tenant_down_fires_only_its_alerts(
    installed: Installed,
) -> None:
    started = time.monotonic()
    cluster = installed.cluster
    alpha = tenant_namespace("alpha")
    monitoring.operator_crds(cluster)
    upgrade(installed, monitored=True)
    try:
        image = monitoring.prometheus_image(cluster)
        monitoring.deploy_prometheus(cluster, image)
        # Every metrics port of both tenants and the router, through their NetworkPolicies.
        expected = {
            ROUTER_NAMESPACE: {"router", "certs"},
            **{
                tenant_namespace(t): {"operator", "metrics-apiserver", "admission-webhooks"}
                for t in APPS
            },
        }

        def targets() -> list[dict[str, Any]]:
            data = monitoring.api(cluster, "targets")
            return data["activeTargets"] if data else []

        def all_up() -> bool:
            active = targets()
            return bool(active) and all(t["health"] == "up" for t in active)

        wait_for(all_up, "every target up", 120, 2)
        active = targets()
        scraped: dict[str, set[str]] = {}
        for target in active:
            labels = target["labels"]
            scraped.setdefault(labels["namespace"], set()).add(labels["pod"].rsplit("-", 2)[0])
        for namespace, components in expected.items():
            pods = " ".join(sorted(scraped.get(namespace, set())))
            for component in components:
                assert component in pods or (
                    component == "metrics-apiserver" and "keda-operator-metrics" in pods
                ), (namespace, component, pods)
        # beta's operator pod (deployment mode) answers on KEDA's port and the supervisor's.
        endpoints = {(t["labels"]["namespace"], t["labels"]["endpoint"]) for t in active}
        assert {(alpha, "metrics"), (alpha, "reloader"), (alpha, "health")} <= endpoints
        beta = tenant_namespace("beta")
        assert {
            (beta, "metrics"),
            (beta, "reloader"),
            (beta, "health"),
            (beta, "forward-health"),
        } <= endpoints
        # The policies admit Prometheus to the metrics ports only: not to a metrics server's
        # HTTPS port, which only the router may reach.
        prometheus_pod = cluster.kubectl(
            "-n", monitoring.NAMESPACE, "get", "pods", "-l", "app=prometheus",
            "-o", "jsonpath={.items[0].metadata.name}",
        ).stdout  # fmt: skip
        ms_ip = next(
            t["labels"] for t in active
            if t["labels"]["namespace"] == beta
            and t["labels"].get("container") == "keda-operator-metrics-apiserver"
        )  # fmt: skip
        address = (
            next(t["scrapeUrl"] for t in active if t["labels"]["pod"] == ms_ip["pod"])
            .split("//")[1]
            .split(":")[0]
        )
        probe = cluster.kubectl(
            "-n", monitoring.NAMESPACE, "exec", prometheus_pod, "--", "python3", "-c",
            "import socket,sys\ntry:\n socket.create_connection((sys.argv[1],6443),timeout=3)"
            "\n print('open')\nexcept OSError:\n print('closed')", address, check=False,
        )  # fmt: skip
        assert probe.stdout.strip() == "closed", probe.stdout + probe.stderr
        print(f"\n[monitoring] {len(active)} targets up after {time.monotonic() - started:.0f}s")

        # Healthy: nothing fires (every `for` is 20 s; the rules have run for longer by now).
        time.sleep(25)
        alerts = monitoring.api(cluster, "alerts")["alerts"]
        assert firing(alerts) == set(), alerts

        cluster.kubectl("-n", alpha, "scale", METRICS_SERVER, "--replicas=0")
        wanted = {
            ("KedaTenancyTenantFailingFast", "alpha"),
            ("KedaTenancyMetricsServerDown", "alpha"),
        }

        def alpha_fires() -> bool:
            return wanted <= firing(monitoring.api(cluster, "alerts")["alerts"])

        stopped = time.monotonic()
        wait_for(alpha_fires, "alpha's alerts firing", 300, 3)
        print(f"[monitoring] alpha's alerts fired {time.monotonic() - stopped:.0f}s after its stop")
        time.sleep(10)  # anything else would have had time to fire too
        alerts = monitoring.api(cluster, "alerts")["alerts"]
        assert firing(alerts) == wanted, alerts
    finally:
        cluster.kubectl("-n", alpha, "scale", METRICS_SERVER, "--replicas=1")
        cluster.kubectl("delete", "namespace", monitoring.NAMESPACE, "--wait=false", check=False)
        upgrade(installed, monitored=False)
    wait_for(
        lambda: installed.metric_value(APPS["alpha"]) == str(VALUES["alpha"]),
        "alpha back",
        180,
        1,
    )
    print(f"[monitoring] scenario took {time.monotonic() - started:.0f}s")
