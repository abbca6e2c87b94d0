"""The tenant chart's knobs a KEDA user relies on (KEDA's own chart has them): KEDA's own
probes reached through the wrapper in both reloader modes, grpc-forward's probes, per-component
placement and probe timing, PodDisruptionBudgets, topology spread, extra volumes, the metrics
server's env, and the opt-in token permission for boundServiceAccountToken; each rendered by a
real helm and refused by the strict schema when malformed."""

from __future__ import annotations

from typing import Any

import pytest

from reloader import forward_cli
from reloader.config import ReloaderConfig
from reloader.supervise import parse_config as parse_supervisor_config
from tests.deploy.charts import TENANT_CHART, Doc, Helm, container, deep_merge, find, of_kind
from tests.deploy.test_charts import flag, render_tenant, tenant_values

COMPONENTS = {
    # values key: (Deployment, component label)
    "operator": ("keda-operator", "operator"),
    "metricsServer": ("keda-operator-metrics-apiserver", "metrics-apiserver"),
    "webhooks": ("keda-admission-webhooks", "admission-webhooks"),
}


def pod_spec(docs: list[Doc], deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_keda_operator_health_is_probed_through_its_wrapper(
    helm: Helm, router_docs: list[Doc], mode: str
) -> None:
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs), {"reloader": {"mode": mode}}
    )
    docs = render_tenant(helm, values)
    operator = container(find(docs, "Deployment", "keda-operator"))
    args = operator["args"]
    keda = args[args.index("--") + 1 :]
    assert keda[0] == "/keda"
    if mode == "process":
        health = ReloaderConfig.from_args(args, {}).operator_health
    else:
        health = parse_supervisor_config(args, {}).operator_health
    # The wrapper asks KEDA where KEDA serves its probes: the same argument, read once.
    assert flag(keda, "health-probe-bind-address") == ":8081"
    assert health is not None
    assert health.url == "http://127.0.0.1:8081"
    live, ready = operator["livenessProbe"], operator["readinessProbe"]
    assert live["httpGet"] == {"path": "/livez", "port": "reloader"}
    assert ready["httpGet"] == {"path": "/readyz", "port": "reloader"}
    # The wrapper answers within the probe's timeout even when KEDA does not answer at all.
    assert live["timeoutSeconds"] > health.timeout_s
    assert live["failureThreshold"] >= 1
    # Turned off: the wrapper never asks.
    off = deep_merge(values, {"operator": {"healthCheck": {"enabled": False}}})
    args = container(find(render_tenant(helm, off), "Deployment", "keda-operator"))["args"]
    if mode == "process":
        assert ReloaderConfig.from_args(args, {}).operator_health is None
    else:
        assert parse_supervisor_config(args, {}).operator_health is None


def test_keda_adapter_and_webhooks_are_probed_on_their_own_endpoints(
    helm: Helm, router_docs: list[Doc]
) -> None:
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    adapter = container(find(docs, "Deployment", "keda-operator-metrics-apiserver"))
    assert adapter["livenessProbe"]["httpGet"] == {
        "scheme": "HTTPS",
        "path": "/healthz",
        "port": "https",
    }
    assert adapter["readinessProbe"]["httpGet"]["path"] == "/readyz"
    webhooks = container(find(docs, "Deployment", "keda-admission-webhooks"))
    ports = {p["name"]: p["containerPort"] for p in webhooks["ports"]}
    assert flag(webhooks["args"], "health-probe-bind-address") == f":{ports['probes']}"
    assert webhooks["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert webhooks["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}


def test_grpc_forward_has_probes_and_metrics_on_its_health_port(
    helm: Helm, router_docs: list[Doc]
) -> None:
    values = deep_merge(
        tenant_values("label-deployment", "tenant-a", router_docs),
        {
            "metricsServer": {
                "grpcForward": {"healthPort": 8095, "livenessProbe": {"periodSeconds": 7}}
            }
        },
    )
    docs = render_tenant(helm, values)
    forward = container(find(docs, "Deployment", "keda-operator-metrics-apiserver"), "grpc-forward")
    parsed = forward_cli.build_parser().parse_args(forward["args"])
    assert parsed.health_port == 8095
    assert forward["ports"] == [
        {"name": "forward-health", "containerPort": 8095, "protocol": "TCP"}
    ]
    assert forward["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "forward-health"}
    assert forward["livenessProbe"]["periodSeconds"] == 7
    assert forward["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "forward-health"}


KNOBS: dict[str, Any] = {
    "nodeSelector": {"pool": "system"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "operator": {
        "nodeSelector": {"pool": "keda"},
        "tolerations": [{"key": "keda", "operator": "Exists"}],
        "livenessProbe": {"periodSeconds": 20, "failureThreshold": 6, "timeoutSeconds": 5},
    },
    "metricsServer": {
        "env": [{"name": "GOMEMLIMIT", "value": "400MiB"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "readinessProbe": {"initialDelaySeconds": 1},
    },
    "webhooks": {"livenessProbe": {"timeoutSeconds": 3}},
    "reloader": {"nodeSelector": {"pool": "reloaders"}},
    "podDisruptionBudget": {
        "operator": {"maxUnavailable": 1},
        "metricsServer": {"minAvailable": 1},
    },
    "topologySpreadConstraints": {
        "metricsServer": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ]
    },
    "volumes": {
        "operator": {
            "extraVolumes": [{"name": "custom-ca", "configMap": {"name": "my-ca-bundle"}}],
            "extraVolumeMounts": [
                {"name": "custom-ca", "mountPath": "/custom/ca", "readOnly": True}
            ],
        },
        "webhooks": {
            "extraVolumes": [{"name": "extra", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        },
    },
}


def test_per_component_placement_probes_volumes_and_budgets(
    helm: Helm, router_docs: list[Doc]
) -> None:
    values = deep_merge(tenant_values("label-process", "tenant-a", router_docs), KNOBS)
    docs = render_tenant(helm, values)
    operator = pod_spec(docs, "keda-operator")
    # The component's nodeSelector wins over the chart-wide one; tolerations add up; the
    # chart-wide affinity applies where the component has none.
    assert operator["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "keda"}
    assert operator["tolerations"] == [*KNOBS["tolerations"], *KNOBS["operator"]["tolerations"]]
    assert operator["affinity"] == KNOBS["affinity"]
    assert operator["containers"][0]["livenessProbe"]["periodSeconds"] == 20
    assert operator["containers"][0]["livenessProbe"]["failureThreshold"] == 6
    # KEDA's custom CA directory for scalers, mounted next to the chart's own volumes.
    assert {"name": "custom-ca", "configMap": {"name": "my-ca-bundle"}} in operator["volumes"]
    mounts = operator["containers"][0]["volumeMounts"]
    assert {"name": "custom-ca", "mountPath": "/custom/ca", "readOnly": True} in mounts
    assert {m["name"] for m in mounts} >= {"certificates", "tmp"}

    adapter = pod_spec(docs, "keda-operator-metrics-apiserver")
    assert adapter["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "system"}
    assert adapter["affinity"] == KNOBS["metricsServer"]["affinity"]
    env = {e["name"]: e for e in adapter["containers"][0]["env"]}
    assert env["GOMEMLIMIT"]["value"] == "400MiB"
    assert env["WATCH_NAMESPACE"]["value"] == "keda-tenant-a"  # the chart's stays
    assert adapter["containers"][0]["readinessProbe"]["initialDelaySeconds"] == 1
    (spread,) = adapter["topologySpreadConstraints"]
    # No labelSelector given: the component's own pods.
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "metrics-apiserver"
    )
    assert spread["labelSelector"]["matchLabels"].items() <= (
        find(docs, "Deployment", "keda-operator-metrics-apiserver")["spec"]["template"]["metadata"][
            "labels"
        ].items()
    )
    assert "topologySpreadConstraints" not in operator

    webhooks = pod_spec(docs, "keda-admission-webhooks")
    assert webhooks["affinity"] == KNOBS["affinity"]  # affinity reaches every component now
    assert webhooks["containers"][0]["livenessProbe"]["timeoutSeconds"] == 3
    assert {"name": "extra", "emptyDir": {}} in webhooks["volumes"]
    assert pod_spec(docs, "keda-rolebinding-manager")["nodeSelector"]["pool"] == "reloaders"

    budgets = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PodDisruptionBudget")}
    assert set(budgets) == {"keda-operator", "keda-metrics-apiserver"}
    assert budgets["keda-operator"]["maxUnavailable"] == 1
    assert budgets["keda-metrics-apiserver"]["minAvailable"] == 1
    for name, (deployment, _) in COMPONENTS.items():
        if name in KNOBS["podDisruptionBudget"]:
            pdb = budgets[f"keda-{COMPONENTS[name][1]}"]
            selected = find(docs, "Deployment", deployment)["spec"]["selector"]["matchLabels"]
            assert pdb["selector"]["matchLabels"] == selected


def test_defaults_render_no_budget_no_spread_and_no_extra_volume(
    helm: Helm, router_docs: list[Doc]
) -> None:
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    assert not of_kind(docs, "PodDisruptionBudget")
    for deployment, _ in COMPONENTS.values():
        spec = pod_spec(docs, deployment)
        assert "topologySpreadConstraints" not in spec
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert "custom-ca" not in {v["name"] for v in spec.get("volumes", [])}


def token_rules(docs: list[Doc]) -> list[dict[str, Any]]:
    return [
        rule
        for doc in docs
        if doc["kind"] in ("Role", "ClusterRole")
        for rule in doc.get("rules") or []
        if "serviceaccounts/token" in rule.get("resources", [])
    ]


def test_token_creation_for_bound_service_account_tokens_is_opt_in_and_scoped(
    helm: Helm, router_docs: list[Doc]
) -> None:
    values = tenant_values("label-process", "tenant-a", router_docs)
    assert token_rules(render_tenant(helm, values)) == []  # never by default
    enabled = deep_merge(
        values,
        {
            "rbac": {
                "serviceAccountTokens": {"enabled": True, "serviceAccountNames": ["vault-auth"]}
            }
        },
    )
    docs = render_tenant(helm, enabled)
    (rule,) = token_rules(docs)
    assert rule == {
        "apiGroups": [""],
        "resources": ["serviceaccounts/token"],
        "verbs": ["create"],
        "resourceNames": ["vault-auth"],
    }
    # In the operator's namespaced role, which follow scope binds only in the tenant's
    # namespaces (RoleBindings made as they join): never through a ClusterRoleBinding.
    holder = next(d for d in docs if d["kind"] == "ClusterRole" and rule in (d.get("rules") or []))
    assert holder["metadata"]["name"] == "keda-tenancy-tenant-a-operator"
    for binding in of_kind(docs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] != holder["metadata"]["name"]


REJECTED: dict[str, dict[str, Any]] = {
    "pdb-both": {"podDisruptionBudget": {"operator": {"minAvailable": 1, "maxUnavailable": 1}}},
    "pdb-unknown-component": {"podDisruptionBudget": {"router": {"maxUnavailable": 1}}},
    "probe-path": {"operator": {"livenessProbe": {"httpGet": {"path": "/"}}}},
    "probe-negative": {"webhooks": {"readinessProbe": {"periodSeconds": 0}}},
    "volume-shadows-certs": {
        "volumes": {"operator": {"extraVolumes": [{"name": "certificates", "emptyDir": {}}]}}
    },
    "mount-over-certs": {
        "volumes": {"metricsServer": {"extraVolumeMounts": [{"name": "x", "mountPath": "/certs"}]}}
    },
    "adapter-watch-namespace": {
        "metricsServer": {"env": [{"name": "WATCH_NAMESPACE", "value": ""}]}
    },
    "health-grace": {
        "operator": {"healthCheck": {"enabled": True, "startGrace": "soon", "timeout": "3s"}}
    },
    "token-names": {
        "rbac": {"serviceAccountTokens": {"enabled": True, "serviceAccountNames": ["A*"]}}
    },
    "forward-port-clash": {"metricsServer": {"grpcForward": {"healthPort": 6443}}},
    "spread-unknown": {"topologySpreadConstraints": {"reloader": []}},
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_the_strict_schema_refuses_malformed_knobs(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    values = deep_merge(tenant_values("label-process", "tenant-a", router_docs), REJECTED[name])
    result = helm.template_raw(
        TENANT_CHART, release="keda", namespace="keda-tenant-a", values=values
    )
    assert result.returncode != 0, result.stdout[:2000]
    assert "don't meet the specifications of the schema" in result.stderr
