"""Issue 21's platform layout in the charts (opt-in): the router chart's `controller.enabled`
renders the platform controller, the tenant chart's `platformController.enabled` renders the
objects of the contract (grant, bind ClusterRole, data-less namespace set) and runs only KEDA's
pods, and with both off everything renders as before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from controller.config import ControllerConfig
from operator_pod.config import Config as OperatorPodConfig
from operator_pod.grpc_forward import ForwardConfig
from tests.deploy.charts import (
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    TENANT_CHART,
    Doc,
    Helm,
    container,
    deep_merge,
    find,
    key,
    of_kind,
    tenant_namespace,
)

pytestmark = pytest.mark.timeout(1500)

TENANT = "tenant-a"
NS = tenant_namespace(TENANT)
CONTROLLER = "keda-tenancy-controller"
GRANT_LABEL = "keda-tenancy.io/platform-controller"
NAMESPACES_CONFIGMAP = "keda-operator-namespaces"
LEASE = f"{TENANT}.operator.keda-tenancy.io"
OPERATOR_ROLE = f"keda-tenancy-{TENANT}-operator"
PLATFORM = {"platformController": {"enabled": True}}


def router(helm: Helm, values: dict[str, Any] | None = None) -> list[Doc]:
    return helm.template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE, values=values
    )


def tenant(helm: Helm, values: dict[str, Any] | None = None) -> list[Doc]:
    return helm.template(
        TENANT_CHART,
        release="keda",
        namespace=NS,
        values=deep_merge({"tenant": TENANT}, values or {}),
    )


def tenant_raw(helm: Helm, values: dict[str, Any]) -> Any:
    return helm.template_raw(
        TENANT_CHART, release="keda", namespace=NS, values=deep_merge({"tenant": TENANT}, values)
    )


def rules_of(docs: list[Doc], kind: str, name: str) -> list[dict[str, Any]]:
    return list(find(docs, kind, name)["rules"])


def granted_to(docs: list[Doc], service_account: str) -> list[dict[str, Any]]:
    """Every rendered rule bound to `service_account` (Roles and ClusterRoles, any binding)."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    out = []
    for binding in docs:
        if not binding["kind"].endswith("RoleBinding"):
            continue
        if not any(s.get("name") == service_account for s in binding.get("subjects") or []):
            continue
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        out += role["rules"] if role else []
    return out


# --- both off: the old layout, unchanged -------------------------------------------------------


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_disabled_renders_the_old_layout_exactly(helm: Helm, mode: str) -> None:
    values = {"reloader": {"mode": mode}}
    default = tenant(helm, values)
    explicit = tenant(
        helm,
        deep_merge(
            values,
            {
                "platformController": {
                    "enabled": False,
                    "namespace": "elsewhere",
                    "serviceAccount": "x",
                }
            },
        ),
    )
    assert explicit == default
    names = {(d["kind"], d["metadata"]["name"]) for d in default}
    manager = "keda-rolebinding-manager" if mode == "process" else "keda-namespace-reloader"
    assert ("Deployment", manager) in names
    assert ("Job", "keda-tenancy-uninstall") in names
    assert not [d for d in default if GRANT_LABEL in (d["metadata"].get("labels") or {})]
    assert ("ConfigMap", NAMESPACES_CONFIGMAP) not in names
    operator = container(find(default, "Deployment", "keda-operator"), "keda-operator")
    assert operator["command"] == [
        "keda-tenancy-reloader" if mode == "process" else "keda-tenancy-supervise"
    ]

    assert router(helm, {"controller": {"enabled": False}}) == router(helm)
    assert not [d for d in router(helm) if CONTROLLER in d["metadata"]["name"]]


# --- the router chart: the platform controller -------------------------------------------------


def test_router_renders_one_controller_with_the_routers_image_and_rule(helm: Helm) -> None:
    docs = router(helm, {"controller": {"enabled": True}})
    deployment = find(docs, "Deployment", CONTROLLER)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # never two writers at once
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == CONTROLLER
    router_pod = find(docs, "Deployment", ROUTER_RELEASE)["spec"]["template"]["spec"]
    ctl = container(deployment, "controller")
    assert ctl["image"] == container(find(docs, "Deployment", ROUTER_RELEASE))["image"]
    assert ctl["command"] == ["keda-tenancy-controller"]
    args = ctl["args"]
    # The tenant comes from the namespace name, by the pattern keda-tenancy-certs uses.
    pattern = next(a for a in args if a.startswith("--tenant-namespace-pattern="))
    regex = pattern.split("=", 1)[1]
    match = re.fullmatch(regex, NS)
    assert match
    assert match["tenant"] == TENANT
    assert not re.fullmatch(regex, ROUTER_NAMESPACE.replace("keda-", "x-"))
    # The same published rule as the router, mounted the same way.
    assert "--tenancy-rule-file=/etc/keda-tenancy/rule/rule.yaml" in args
    rule_volume = next(v for v in pod["volumes"] if v["name"] == "tenancy-rule")
    router_rule_volume = next(v for v in router_pod["volumes"] if v["name"] == "tenancy-rule")
    assert rule_volume == router_rule_volume
    assert {"name": "tenancy-rule", "mountPath": "/etc/keda-tenancy/rule", "readOnly": True} in ctl[
        "volumeMounts"
    ]
    assert ctl["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert ctl["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert ctl["securityContext"]["readOnlyRootFilesystem"] is True
    # Requests sized for 1,000 tenants: issue 21's bound is 512 MiB there.
    assert ctl["resources"]["requests"]["memory"] == "512Mi"
    assert ctl["resources"]["limits"]["memory"] == "1Gi"
    # The rule changes roll the pod, as they roll the router's.
    changed = router(
        helm, {"controller": {"enabled": True}, "tenancy": {"labelKeys": ["example.com/t"]}}
    )
    assert (
        find(changed, "Deployment", CONTROLLER)["spec"]["template"]["metadata"]["annotations"]
        != deployment["spec"]["template"]["metadata"]["annotations"]
    )


def test_router_controller_rbac_is_exactly_what_no_tenant_can_grant(helm: Helm) -> None:
    docs = router(helm, {"controller": {"enabled": True}})
    binding = find(docs, "ClusterRoleBinding", CONTROLLER)
    assert binding["roleRef"]["name"] == CONTROLLER
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ROUTER_NAMESPACE}
    ]
    rules = rules_of(docs, "ClusterRole", CONTROLLER)
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = (
        {("", "namespaces", v) for v in ("get", "list", "watch")}
        | {
            ("rbac.authorization.k8s.io", "rolebindings", v)
            for v in ("get", "list", "watch", "create", "delete", "patch")
        }
        | {("", "pods", v) for v in ("list", "watch")}
        | {
            ("keda.sh", r, "list")
            for r in ("scaledobjects", "scaledjobs", "triggerauthentications")
        }
        | {("eventing.keda.sh", "cloudeventsources", "list")}
        | {("", "events", "create")}
    )
    assert granted == expected
    assert not any("resourceNames" in rule for rule in rules)
    # Its only bindings are that one: nothing in any namespace, and no bind of its own.
    bound = [
        d
        for d in docs
        if d["kind"].endswith("RoleBinding")
        and any(s.get("name") == CONTROLLER for s in d.get("subjects") or [])
    ]
    assert [key(d) for d in bound] == [key(binding)]


def test_router_controller_network_policy_and_service_monitor(helm: Helm) -> None:
    values = {
        "controller": {"enabled": True},
        "networkPolicy": {"enabled": True, "apiServerCidrs": ["10.0.0.1/32"]},
        "serviceMonitor": {"enabled": True},
    }
    docs = router(helm, values)
    policy = find(docs, "NetworkPolicy", CONTROLLER)["spec"]
    pod_labels = find(docs, "Deployment", CONTROLLER)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    # Out: the API server only (no DNS: in-cluster clients use the Service IP).
    assert policy["egress"] == [
        {
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        }
    ]
    # In: its health port (metrics) only.
    assert [rule["ports"] for rule in policy["ingress"]] == [
        [{"port": "health", "protocol": "TCP"}]
    ]
    # The router's own policy does not select the controller, nor the controller's the router.
    router_policy = find(docs, "NetworkPolicy", ROUTER_RELEASE)["spec"]["podSelector"]
    assert not router_policy["matchLabels"].items() <= pod_labels.items()
    monitor = find(docs, "ServiceMonitor", CONTROLLER)["spec"]
    service = find(docs, "Service", CONTROLLER)
    assert monitor["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "health"
    off = router(helm, deep_merge(values, {"serviceMonitor": {"enabled": False}}))
    assert not [d for d in of_kind(off, "ServiceMonitor") if d["metadata"]["name"] == CONTROLLER]


# --- the tenant chart: only KEDA's pods, and the contract's objects ----------------------------


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_tenant_runs_only_kedas_pods(helm: Helm, mode: str) -> None:
    docs = tenant(
        helm, deep_merge(PLATFORM, {"reloader": {"mode": mode}, "webhooks": {"enabled": False}})
    )
    assert {d["metadata"]["name"] for d in of_kind(docs, "Deployment")} == {
        "keda-operator",
        "keda-operator-metrics-apiserver",
    }
    # The only hook is the pre-delete uninstall Job and its identity
    # (tests/deploy/test_uninstall_hook_platform.py); the rest is KEDA's.
    hooked = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert {d["metadata"]["annotations"]["helm.sh/hook"] for d in hooked} == {"pre-delete"}
    docs = [d for d in docs if d not in hooked]
    assert not of_kind(docs, "Job")
    assert {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")} == {
        "keda-operator",
        "keda-metrics-server",
    }
    # Nothing here reads the tenancy rule any more: no binding in the router's namespace.
    assert not [d for d in docs if d["metadata"].get("namespace") == ROUTER_NAMESPACE]
    # Webhooks stay an option.
    with_webhooks = tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": mode}}))
    assert "keda-admission-webhooks" in {
        d["metadata"]["name"] for d in of_kind(with_webhooks, "Deployment")
    }


def test_tenant_operator_runs_the_in_pod_process_with_the_contracts_flags(helm: Helm) -> None:
    docs = tenant(helm, PLATFORM)
    operator = container(find(docs, "Deployment", "keda-operator"), "keda-operator")
    assert operator["command"] == ["keda-tenancy-operator-pod"]
    args = operator["args"]
    ours, keda = args[: args.index("--")], args[args.index("--") + 1 :]
    for flag in (
        "--mode=process",
        f"--namespaces-configmap={NS}/{NAMESPACES_CONFIGMAP}",
        "--target-env=WATCH_NAMESPACE",
        f"--release-lease={NS}/{LEASE}",
        "--forward-grpc=:9666=127.0.0.1:9667",
        "--forward-grpc-bind-address=$(KEDA_TENANCY_POD_IP)",
        "--health-port=8090",
        "--grace-period=30s",
        "--check-operator-health=true",
    ):
        assert flag in ours
    # Nothing of the reloader's: the in-pod process decides no ownership.
    assert not [a for a in ours if a.startswith(("--tenant", "--watched-configmap", "--bind-"))]
    assert keda[0] == "/keda"
    assert f"--leader-election-id={LEASE}" in keda
    assert "--metrics-service-bind-address=127.0.0.1:9667" in keda
    env = {e["name"] for e in operator["env"]}
    assert "KEDA_TENANCY_POD_IP" in env
    assert "WATCH_NAMESPACE" not in env
    assert operator["livenessProbe"]["httpGet"]["port"] == "reloader"


def test_tenant_deployment_mode_leaves_watch_namespace_and_replicas_to_the_controller(
    helm: Helm,
) -> None:
    docs = tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": "deployment"}}))
    deployment = find(docs, "Deployment", "keda-operator")
    assert "replicas" not in deployment["spec"]
    operator = container(deployment, "keda-operator")
    assert operator["command"] == ["keda-tenancy-operator-pod"]
    args = operator["args"]
    ours = args[: args.index("--")]
    assert "--mode=deployment" in ours
    assert f"--lease={NS}/{LEASE}" in ours
    assert not [a for a in ours if a.startswith(("--namespaces-configmap", "--forward-grpc"))]
    assert "WATCH_NAMESPACE" not in {e["name"] for e in operator["env"]}


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_tenant_grants_the_controller_exactly_the_contracts_objects(helm: Helm, mode: str) -> None:
    values = deep_merge(
        PLATFORM,
        {
            "reloader": {"mode": mode},
            "platformController": {"namespace": "platform", "serviceAccount": "ctl"},
        },
    )
    docs = tenant(helm, values)
    controller = {"kind": "ServiceAccount", "name": "ctl", "namespace": "platform"}
    grant = find(docs, "RoleBinding", CONTROLLER)
    assert grant["metadata"]["namespace"] == NS
    assert grant["metadata"]["labels"][GRANT_LABEL] == "grant"
    assert grant["metadata"]["annotations"] == {
        "keda-tenancy.io/mode": mode,
        "keda-tenancy.io/operator-service-account": "keda-operator",
        "keda-tenancy.io/operator-clusterrole": OPERATOR_ROLE,
        "keda-tenancy.io/lease": LEASE,
    }
    assert grant["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": CONTROLLER,
    }
    assert grant["subjects"] == [controller]
    expected = [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [NAMESPACES_CONFIGMAP],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [LEASE],
            "verbs": ["get", "update"],
        },
    ]
    if mode == "deployment":
        expected.append(
            {
                "apiGroups": ["apps"],
                "resources": ["deployments"],
                "resourceNames": ["keda-operator"],
                "verbs": ["get", "patch"],
            }
        )
    assert rules_of(docs, "Role", CONTROLLER) == expected
    # bind on this tenant's operator ClusterRole, and nothing else, cluster-wide.
    bind = find(docs, "ClusterRoleBinding", f"keda-tenancy-{TENANT}-controller-bind")
    assert bind["subjects"] == [controller]
    assert rules_of(docs, "ClusterRole", bind["roleRef"]["name"]) == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "resourceNames": [OPERATOR_ROLE],
            "verbs": ["bind"],
        }
    ]
    # The ClusterRole the grant names exists in this release (what the controller binds).
    assert find(docs, "ClusterRole", OPERATOR_ROLE)
    # Those two bindings are all it gets from this release.
    bound = sorted(key(d) for d in docs if controller in (d.get("subjects") or []))
    assert bound == sorted([key(bind), key(grant)])


def test_the_namespace_set_has_no_data_and_the_operator_may_only_read_it(helm: Helm) -> None:
    docs = tenant(helm, PLATFORM)
    configmap = find(docs, "ConfigMap", NAMESPACES_CONFIGMAP)
    # Without data a helm upgrade never resets what the controller published.
    assert "data" not in configmap
    assert "binaryData" not in configmap
    assert configmap["metadata"]["labels"][GRANT_LABEL] == "namespaces"
    operator_rules = granted_to(docs, "keda-operator")
    on_it = [r for r in operator_rules if NAMESPACES_CONFIGMAP in (r.get("resourceNames") or [])]
    assert on_it == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [NAMESPACES_CONFIGMAP],
            "verbs": ["get", "list", "watch"],
        }
    ]
    # No identity of this release may write it, the grant, the controller's Role or bindings.
    writes = {"create", "update", "patch", "delete", "deletecollection", "*", "bind", "escalate"}
    for service_account in ("keda-operator", "keda-metrics-server", "keda-webhook"):
        for rule in granted_to(docs, service_account):
            if not set(rule["verbs"]) & writes:
                continue
            assert not {"configmaps", "roles", "rolebindings", "*"} & set(rule["resources"]), (
                service_account,
                rule,
            )


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_the_routers_explain_reads_the_platform_layouts_objects_only(helm: Helm, mode: str) -> None:
    """Issue 21: explain says whether the controller bound the operator and published the
    namespace; the router gets those two names of this tenant, nothing of the old layout."""
    docs = tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": mode}}))
    assert sorted(
        (name, resource)
        for rule in granted_to(docs, "keda-tenancy-router")
        for resource in rule["resources"]
        for name in rule.get("resourceNames") or ["*"]
        if rule["verbs"] == ["get"]
    ) == [
        (NAMESPACES_CONFIGMAP, "configmaps"),
        (f"keda-tenancy-operator-{TENANT}", "rolebindings"),
    ]


@pytest.mark.parametrize("scope", ["hnc", "namespaces", "external", "cluster"])
def test_tenant_refuses_the_platform_layout_with_another_rbac_scope(helm: Helm, scope: str) -> None:
    values = deep_merge(PLATFORM, {"rbac": {"scope": scope, "namespaces": ["a-one"]}})
    result = tenant_raw(helm, values)
    assert result.returncode != 0
    assert "platformController.enabled needs rbac.scope auto or follow" in result.stderr


TENANT_REJECTED: dict[str, dict[str, Any]] = {
    "unknown-key": {"platformController": {"enabled": True, "replicas": 2}},
    "enabled-not-boolean": {"platformController": {"enabled": "yes"}},
    "namespace-not-a-name": {"platformController": {"namespace": "Keda_System"}},
    "service-account-empty": {"platformController": {"serviceAccount": ""}},
    "extra-arg-not-a-flag": {"platformController": {"operatorPodExtraArgs": ["rm -rf"]}},
}
ROUTER_REJECTED: dict[str, dict[str, Any]] = {
    "unknown-key": {"controller": {"enabled": True, "replicas": 2}},
    "enabled-not-boolean": {"controller": {"enabled": "true"}},
    "bad-log-level": {"controller": {"logLevel": "verbose"}},
    "bad-port": {"controller": {"healthPort": 0}},
    "bad-probe-key": {"controller": {"livenessProbe": {"httpGet": {"path": "/"}}}},
    "bad-resources-key": {"controller": {"resources": {"request": {"memory": "1Gi"}}}},
}


@pytest.mark.parametrize("name", sorted(TENANT_REJECTED))
def test_tenant_schema_refuses_malformed_platform_values(helm: Helm, name: str) -> None:
    result = tenant_raw(helm, TENANT_REJECTED[name])
    assert result.returncode != 0, result.stdout[:2000]
    assert "platformController" in result.stderr


@pytest.mark.parametrize("name", sorted(ROUTER_REJECTED))
def test_router_schema_refuses_malformed_controller_values(helm: Helm, name: str) -> None:
    result = helm.template_raw(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values=ROUTER_REJECTED[name],
    )
    assert result.returncode != 0, result.stdout[:2000]
    assert "controller" in result.stderr


def test_both_charts_lint_and_agree_on_the_controllers_identity(helm: Helm) -> None:
    router_values = {"controller": {"enabled": True}, "networkPolicy": {"enabled": True}}
    result = helm.lint(ROUTER_CHART, namespace=ROUTER_NAMESPACE, values=router_values)
    assert result.returncode == 0, result.stdout + result.stderr
    for mode in ("process", "deployment"):
        values = deep_merge({"tenant": TENANT}, deep_merge(PLATFORM, {"reloader": {"mode": mode}}))
        result = helm.lint(TENANT_CHART, namespace=NS, values=values)
        assert result.returncode == 0, result.stdout + result.stderr
    # The tenant chart's defaults name the ServiceAccount the router chart creates.
    routers = router(helm, router_values)
    account = find(routers, "ServiceAccount", CONTROLLER)
    grant = find(tenant(helm, PLATFORM), "RoleBinding", CONTROLLER)
    assert grant["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": ROUTER_NAMESPACE,
        }
    ]


# --- the rendered flags, parsed by the programs they are meant for ----------------------------


@pytest.mark.parametrize(
    "tenancy",
    [
        {},
        {"labelKeys": [], "hnc": {"roots": ["tenant-a"]}},
        {"labelKeys": [], "namespaceNamePattern": "(?P<tenant>[a-z0-9]+(-[a-z0-9]+)*)--.+"},
    ],
    ids=["label", "hnc", "name-pattern"],
)
def test_keda_tenancy_controller_accepts_the_rendered_flags(
    helm: Helm, tenancy: dict[str, Any], tmp_path: Path
) -> None:
    docs = router(helm, {"controller": {"enabled": True}, "tenancy": tenancy})
    ctl = container(find(docs, "Deployment", CONTROLLER), "controller")
    args = list(ctl["args"])
    rule_flag = next(a for a in args if a.startswith("--tenancy-rule-file="))
    local = tmp_path / "rule.yaml"
    rule = find(docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy-rule")["data"]["rule.yaml"]
    local.write_text(rule)
    args[args.index(rule_flag)] = f"--tenancy-rule-file={local}"
    config = ControllerConfig.from_args(args, {})
    match = config.tenant_namespace_pattern.fullmatch(NS)
    assert match
    assert match["tenant"] == TENANT
    assert config.health_port == ctl["ports"][0]["containerPort"]
    # The operator pods it watches for Lease releases are the tenant chart's.
    operator = find(tenant(helm, PLATFORM), "Deployment", "keda-operator")
    pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    for requirement in config.operator_pod_selector.split(","):
        name, _, value = requirement.partition("=")
        assert pod_labels[name] == value
    assert config.operator_container in {
        c["name"] for c in operator["spec"]["template"]["spec"]["containers"]
    }
    assert config.cluster_role_template.format(tenant=TENANT) == OPERATOR_ROLE


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_keda_tenancy_operator_pod_accepts_the_rendered_flags(helm: Helm, mode: str) -> None:
    docs = tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": mode}}))
    operator = container(find(docs, "Deployment", "keda-operator"), "keda-operator")
    config = OperatorPodConfig.from_args(operator["args"], {})
    assert config.mode == mode
    assert config.health_port == next(
        p["containerPort"] for p in operator["ports"] if p["name"] == "reloader"
    )
    assert config.command[0] == "/keda"
    if mode == "process":
        assert config.namespaces_configmap == (NS, NAMESPACES_CONFIGMAP)
        # The gRPC port held on the pod IP only (the kubelet expands the variable), KEDA's on
        # loopback behind it, as the reloader held it.
        assert config.forward_grpc == (("$(KEDA_TENANCY_POD_IP)", 9666), ("127.0.0.1", 9667))
        assert "--metrics-service-bind-address=127.0.0.1:9667" in config.command
    else:
        assert config.forward_grpc is None
    assert config.lease == (NS, LEASE)
    assert config.operator_health is not None  # KEDA's own probes asked, as before


# --- the metrics server's gRPC forwarder (deployment mode) -------------------------------------


def grpc_forward(docs: list[Doc]) -> dict[str, Any]:
    return container(find(docs, "Deployment", "keda-operator-metrics-apiserver"), "grpc-forward")


def test_platform_deployment_mode_forwards_with_the_stdlib_program(helm: Helm) -> None:
    """Issue 21's bound of 32 MiB per process: the platform layout's sidecar is the operator
    pod's package's program; the old layout keeps keda-tenancy-grpc-forward, and both get
    the same flags, port and probes."""
    old = grpc_forward(tenant(helm, {"reloader": {"mode": "deployment"}}))
    new = grpc_forward(tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": "deployment"}})))
    assert old["command"] == ["keda-tenancy-grpc-forward"]
    assert new["command"] == ["keda-tenancy-operator-forward"]
    assert {k: v for k, v in new.items() if k != "command"} == {
        k: v for k, v in old.items() if k != "command"
    }
    # Process mode holds the gRPC port in the operator's pod: no sidecar in either layout.
    for values in ({}, PLATFORM):
        metrics_server = find(tenant(helm, values), "Deployment", "keda-operator-metrics-apiserver")
        assert [c["name"] for c in metrics_server["spec"]["template"]["spec"]["containers"]] == [
            "keda-operator-metrics-apiserver"
        ]


def test_keda_tenancy_operator_forward_accepts_the_rendered_flags(helm: Helm) -> None:
    docs = tenant(helm, deep_merge(PLATFORM, {"reloader": {"mode": "deployment"}}))
    forward = grpc_forward(docs)
    config = ForwardConfig.from_args(forward["args"], {})
    adapter = container(
        find(docs, "Deployment", "keda-operator-metrics-apiserver"),
        "keda-operator-metrics-apiserver",
    )
    # It listens where the adapter dials, on loopback only, and dials the operator's Service.
    assert f"--metrics-service-address={config.listen[0]}:{config.listen[1]}" in adapter["args"]
    assert config.listen == ("127.0.0.1", 9666)
    assert config.target == (f"keda-operator.{NS}.svc.cluster.local", 9666)
    assert config.health_port == next(
        p["containerPort"] for p in forward["ports"] if p["name"] == "forward-health"
    )
