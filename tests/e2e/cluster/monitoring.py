"""A Prometheus in the cluster, scraping what the charts' monitoring objects select.

There is no Prometheus Operator here: its CRDs are applied (from its Go module) so the charts'
ServiceMonitors, PodMonitors and PrometheusRules exist, and this module turns them into the
static scrape configuration and rule file the Operator's would amount to (targets resolved from
the Services' endpoints and the pods, with the labels it sets: job, namespace, pod, container,
endpoint, service). Prometheus runs as a pod in its own namespace, so every scrape crosses the
charts' NetworkPolicies.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.charts import versions
from tests.e2e.cluster.cluster import Cluster
from tests.e2e.images.build import Builder, BuiltImage
from tests.e2e.stack import build_binaries

NAMESPACE = "monitoring"
LABELS = {"app": "prometheus"}
OPERATOR_CRDS = [
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
]
# The monitors ask for 30 s; the scenario scrapes and evaluates faster to be short.
INTERVAL = "5s"


def operator_crds(cluster: Cluster) -> None:
    done = subprocess.run(
        ["go", "mod", "download", "-json",
         f"github.com/prometheus-operator/prometheus-operator@{versions()['PROMETHEUS_OPERATOR_VERSION']}"],
        capture_output=True, text=True, check=True, timeout=600,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
    )  # fmt: skip
    root = Path(json.loads(done.stdout)["Dir"])
    for name in OPERATOR_CRDS:
        cluster.kubectl("apply", "--server-side", "-f", str(root / name))
    for kind in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{kind}.monitoring.coreos.com",
            "--timeout=60s",
        )  # fmt: skip


def prometheus_image(cluster: Cluster) -> BuiltImage:
    """Built like the suite's other images (cached), and imported into the node's store."""
    builder = Builder(build_binaries(), versions()["KEDA_VERSION"])
    image = builder.static(
        "keda-tenancy.local/prometheus:e2e",
        builder.bases.prometheus,
        builder.bases.debian_key(),
        subprocess.run(
            ["prometheus", "--version"], capture_output=True, text=True, check=True
        ).stdout,
    )
    cluster.ctr("images", "import", str(image.archive))
    return image


def _get(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)[
        "items"
    ]
    return items


def _matches(labels: dict[str, str], selector: dict[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _namespaces(monitor: dict[str, Any]) -> list[str]:
    names: list[str] = monitor["spec"].get("namespaceSelector", {}).get("matchNames") or [
        monitor["metadata"]["namespace"]
    ]
    return names


def scrape_configs(cluster: Cluster) -> list[dict[str, Any]]:
    """The ServiceMonitors' and PodMonitors' targets as static scrape configs."""
    configs: list[dict[str, Any]] = []
    for monitor in _get(cluster, "servicemonitors.monitoring.coreos.com", "-A"):
        for namespace in _namespaces(monitor):
            services = [
                s for s in _get(cluster, "services", "-n", namespace)
                if _matches(s["metadata"].get("labels", {}), monitor["spec"]["selector"])
            ]  # fmt: skip
            for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
                statics = []
                for service in services:
                    name = service["metadata"]["name"]
                    (endpoints,) = _get(
                        cluster, "endpoints", "-n", namespace, "--field-selector",
                        f"metadata.name={name}",
                    )  # fmt: skip
                    for subset in endpoints.get("subsets", []):
                        ports = [p for p in subset["ports"] if p.get("name") == endpoint["port"]]
                        for port in ports:
                            for address in subset.get("addresses", []):
                                statics.append({
                                    "targets": [f"{address['ip']}:{port['port']}"],
                                    "labels": {
                                        "job": name, "namespace": namespace, "service": name,
                                        "pod": address.get("targetRef", {}).get("name", ""),
                                        "endpoint": endpoint["port"],
                                    },
                                })  # fmt: skip
                configs.append(_job(monitor, index, endpoint, statics))
    for monitor in _get(cluster, "podmonitors.monitoring.coreos.com", "-A"):
        job = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
        for namespace in _namespaces(monitor):
            pods = [
                p for p in _get(cluster, "pods", "-n", namespace)
                if _matches(p["metadata"].get("labels", {}), monitor["spec"]["selector"])
                and p["status"].get("podIP") and p["status"].get("phase") == "Running"
            ]  # fmt: skip
            for index, endpoint in enumerate(monitor["spec"]["podMetricsEndpoints"]):
                statics = [
                    {
                        "targets": [f"{pod['status']['podIP']}:{port['containerPort']}"],
                        "labels": {
                            "job": job, "namespace": namespace,
                            "pod": pod["metadata"]["name"], "container": container["name"],
                            "endpoint": endpoint["port"],
                        },
                    }
                    for pod in pods
                    for container in pod["spec"]["containers"]
                    for port in container.get("ports", [])
                    if port.get("name") == endpoint["port"]
                ]  # fmt: skip
                configs.append(_job(monitor, index, endpoint, statics))
    return configs


def _job(
    monitor: dict[str, Any], index: int, endpoint: dict[str, Any], statics: list[dict[str, Any]]
) -> dict[str, Any]:
    meta = monitor["metadata"]
    return {
        "job_name": f"{monitor['kind'].lower()}/{meta['namespace']}/{meta['name']}/{index}",
        "scheme": endpoint.get("scheme", "http"),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": INTERVAL,
        "scrape_timeout": "4s",
        "static_configs": statics,
    }


def rule_groups(cluster: Cluster) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for rule in _get(cluster, "prometheusrules.monitoring.coreos.com", "-A"):
        groups += rule["spec"]["groups"]
    return groups


def deploy_prometheus(cluster: Cluster, image: BuiltImage) -> None:
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": ["/etc/prometheus/rules.yml"],
        "scrape_configs": scrape_configs(cluster),
    }
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus", "namespace": NAMESPACE},
            "data": {
                "prometheus.yml": yaml.safe_dump(config),
                "rules.yml": yaml.safe_dump({"groups": rule_groups(cluster)}),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prometheus", "namespace": NAMESPACE},
            "spec": {"selector": LABELS, "ports": [{"port": 9090, "targetPort": 9090}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "prometheus", "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "securityContext": {"runAsUser": 65532, "fsGroup": 65532},
                        "containers": [{
                            "name": "prometheus",
                            "image": image.reference,
                            "imagePullPolicy": "Never",
                            "args": [
                                "--config.file=/etc/prometheus/prometheus.yml",
                                "--storage.tsdb.path=/prometheus",
                                "--storage.tsdb.retention.time=1h",
                                "--web.listen-address=:9090",
                            ],
                            "ports": [{"containerPort": 9090}],
                            "readinessProbe": {
                                "httpGet": {"path": "/-/ready", "port": 9090},
                                "periodSeconds": 2,
                            },
                            "resources": {"requests": {"cpu": "20m", "memory": "64Mi"},
                                          "limits": {"memory": "512Mi"}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/prometheus"},
                                {"name": "data", "mountPath": "/prometheus"},
                            ],
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "prometheus"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
    )  # fmt: skip
    cluster.kubectl(
        "-n", NAMESPACE, "rollout", "status", "deploy/prometheus", "--timeout=180s",
        timeout_s=200,
    )  # fmt: skip


def api(cluster: Cluster, path: str, **params: str) -> Any:
    """Prometheus' HTTP API through the kube-apiserver's service proxy."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    done = cluster.kubectl(
        "get", "--raw",
        f"/api/v1/namespaces/{NAMESPACE}/services/prometheus:9090/proxy/api/v1/{path}{query}",
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)["data"]
