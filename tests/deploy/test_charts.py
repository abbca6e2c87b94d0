"""The Helm charts in deploy/charts, rendered with a real helm: lint, several value sets, the
isolation invariants (no clashing cluster-scoped names, no tenant APIService, verified TLS),
the schema, and the rendered flags parsed by the binaries they are meant for."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from prometheus_client import CollectorRegistry

from controller.certs.bootstrap import TENANT_AUTHORITY, CertsConfig, CertsMetrics, Spec
from reloader import forward_cli
from reloader.config import ReloaderConfig
from reloader.desired import desired_namespaces
from reloader.supervise import parse_config as parse_supervisor_config
from router.config import RouterConfig
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache, WatchMetrics
from tests.deploy.charts import (
    REPO,
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    TENANT_CHART,
    Doc,
    Helm,
    HelmFailed,
    container,
    deep_merge,
    find,
    is_cluster_scoped,
    key,
    of_kind,
    render_installation,
    router_client_ca_pem,
    tenant_namespace,
    walk,
)
from tests.e2e.cluster import rbac_matrix

# The first test may build helm from its module (the e2e build script; cached afterwards).
pytestmark = pytest.mark.timeout(1500)

CERT_MANAGER = {"certificates": {"certManager": {"enabled": True}}}

ROUTER_VALUE_SETS: dict[str, dict[str, Any]] = {
    "label": {},
    "label-cert-manager": CERT_MANAGER,
    "hnc": {"tenancy": {"labelKeys": [], "hnc": {"roots": ["tenant-a", "tenant-b"]}}},
    "hnc-root-label": {
        "tenancy": {"labelKeys": [], "hnc": {"rootLabel": "example.com/tenant-root"}}
    },
    "name-pattern": {
        "tenancy": {"labelKeys": [], "namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+"}
    },
    "tenancy-file": {
        "tenancy": {
            "labelKeys": [],
            "tenants": {
                "tenant-a": {"namespaces": ["a-one", "a-two"]},
                "tenant-b": {"namespaces": ["b-one"]},
            },
        }
    },
    "everything-on": deep_merge(
        CERT_MANAGER,
        {
            "router": {
                "requestheader": {
                    "clientCA": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                    "allowedNames": ["front-proxy-client"],
                },
                "upstream": {
                    "caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                },
                "defaultUpstream": "https://keda-operator-metrics-apiserver.keda.svc:443",
            },
            "certificates": {
                "certManager": {
                    "apiServiceIssuerRef": {"kind": "ClusterIssuer", "name": "corp"},
                    "tenantServingIssuerRef": {"kind": "ClusterIssuer", "name": "corp-tenants"},
                }
            },
            "tenancy": {
                "tenants": {
                    "tenant-x": {"upstream": "https://keda-metrics.platform-x.svc:8443"},
                    "tenant-y": {"upstream": "https://10.1.2.3:6443"},
                }
            },
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "networkPolicy": {"enabled": True, "apiServerCidrs": ["10.0.0.1/32"]},
            "rbac": {"useBuiltinAuthReaderRole": True},
        },
    ),
}

TENANT_VALUE_SETS: dict[str, dict[str, Any]] = {
    "label-process": {},
    "label-deployment": {"reloader": {"mode": "deployment"}},
    "hnc-process": {"tenancy": {"labelKeys": [], "hnc": {"roots": ["{tenant}"]}}},
    "hnc-deployment-cilium": {
        "tenancy": {"labelKeys": [], "hnc": {"roots": ["{tenant}"]}},
        "reloader": {"mode": "deployment"},
        "networkPolicy": {"flavor": "cilium"},
    },
    "name-pattern": {
        "tenancy": {"labelKeys": [], "namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+"},
        "tenantNamespaceSelectors": [{"matchLabels": {"example.com/owner": "{tenant}"}}],
        "rbac": {"scope": "external"},
    },
    "name-pattern-no-webhooks-no-netpol": {
        "tenancy": {"labelKeys": [], "namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+"},
        "webhooks": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "rbac": {"scope": "namespaces", "namespaces": ["{tenant}--one"]},
    },
    "cert-manager": deep_merge(
        CERT_MANAGER,
        {
            "resourceQuota": {"enabled": True},
            "limitRange": {"enabled": True},
            "networkPolicy": {
                "apiServerCidrs": ["10.0.0.1/32"],
                "metricsFrom": [{"podSelector": {}}],
            },
        },
    ),
}


def _for_tenant(values: Any, tenant: str) -> Any:
    """Replace {tenant} in every string of a value set."""
    if isinstance(values, dict):
        return {k: _for_tenant(v, tenant) for k, v in values.items()}
    if isinstance(values, list):
        return [_for_tenant(v, tenant) for v in values]
    if isinstance(values, str):
        return values.replace("{tenant}", tenant)
    return values


def render_router(helm: Helm, values: dict[str, Any]) -> list[Doc]:
    return helm.template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE, values=values
    )


def tenant_values(name: str, tenant: str, router_docs: list[Doc]) -> dict[str, Any]:
    values = deep_merge({"tenant": tenant}, _for_tenant(TENANT_VALUE_SETS[name], tenant))
    if values.get("certificates", {}).get("certManager", {}).get("enabled"):
        values = deep_merge({"router": {"clientCA": router_client_ca_pem()}}, values)
    return values


def render_tenant(helm: Helm, values: dict[str, Any]) -> list[Doc]:
    namespace = tenant_namespace(values["tenant"])
    return helm.template(TENANT_CHART, release="keda", namespace=namespace, values=values)


def load_cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def flag(args: list[str], name: str) -> str | None:
    prefix = f"--{name}="
    values = [a.removeprefix(prefix) for a in args if a.startswith(prefix)]
    assert len(values) <= 1, f"--{name} given {len(values)} times"
    return values[0] if values else None


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["label", "label-cert-manager", "hnc", "everything-on"])
def test_router_chart_lints(helm: Helm, name: str) -> None:
    result = helm.lint(ROUTER_CHART, namespace=ROUTER_NAMESPACE, values=ROUTER_VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["label-process", "hnc-deployment-cilium", "cert-manager"])
def test_tenant_chart_lints(helm: Helm, router_docs: list[Doc], name: str) -> None:
    values = tenant_values(name, "tenant-a", router_docs)
    result = helm.lint(TENANT_CHART, namespace="keda-tenant-a", values=values)
    assert result.returncode == 0, result.stdout + result.stderr


# --- router ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROUTER_VALUE_SETS))
def test_router_renders_a_hardened_deployment_whose_flags_the_router_accepts(
    helm: Helm, name: str, tmp_path: Path
) -> None:
    docs = render_router(helm, ROUTER_VALUE_SETS[name])
    deployment = find(docs, "Deployment", ROUTER_RELEASE)
    spec = deployment["spec"]["template"]["spec"]
    router = container(deployment)
    assert deployment["spec"]["replicas"] >= 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = router["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert router["resources"]["requests"]
    assert router["resources"]["limits"]
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        assert router[probe]["httpGet"] == {"path": path, "port": "health"}
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname"
    }
    pdb = find(docs, "PodDisruptionBudget", ROUTER_RELEASE)
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    # Every flag the chart passes is one the router parses, with the mounted files' paths; the
    # tenancy file is the ConfigMap's content, written where the router can read it here.
    args = list(router["args"])
    rule_file = flag(args, "tenancy-rule-file")
    assert rule_file is not None  # the router decides with the rule it publishes
    local_rule = tmp_path / "rule.yaml"
    local_rule.write_text(published_rule_text(docs))
    args[args.index(f"--tenancy-rule-file={rule_file}")] = f"--tenancy-rule-file={local_rule}"
    assert str(Path(rule_file).parent) in {m["mountPath"] for m in router["volumeMounts"]}
    if tenancy_file := flag(args, "tenancy-file"):
        local = tmp_path / "tenancy.yaml"
        local.write_text(
            find(docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy")["data"]["tenancy.yaml"]
        )
        args[args.index(f"--tenancy-file={tenancy_file}")] = f"--tenancy-file={local}"
    config = RouterConfig.from_args(args, {})
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    for path in (
        config.tls_cert_file,
        config.tls_private_key_file,
        config.upstream_client_cert_file,
        config.upstream_ca_file,
        config.requestheader_client_ca_file,
    ):
        if path is not None:
            assert str(Path(path).parent) in mounts, path
    assert "{tenant}" in config.upstream_url_template
    assert config.upstream_url_template.startswith("https://")


@pytest.mark.parametrize("name", sorted(ROUTER_VALUE_SETS))
def test_router_apiservice_is_verified_never_insecure(helm: Helm, name: str) -> None:
    docs = render_router(helm, ROUTER_VALUE_SETS[name])
    assert not [v for k, v in walk(docs) if k == "insecureSkipTLSVerify"]
    (apiservice,) = of_kind(docs, "APIService")
    assert apiservice["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    spec = apiservice["spec"]
    assert spec["service"] == {
        "name": ROUTER_RELEASE,
        "namespace": ROUTER_NAMESPACE,
        "port": 443,
    }
    service = find(docs, "Service", ROUTER_RELEASE)
    assert 443 in [p["port"] for p in service["spec"]["ports"]]
    annotations = apiservice["metadata"].get("annotations") or {}
    # Never rendered: a render-time CA would change the caBundle on every GitOps sync.
    assert "caBundle" not in spec
    if name in ("label-cert-manager", "everything-on"):
        namespace, _, certificate = annotations["cert-manager.io/inject-ca-from"].partition("/")
        assert namespace == ROUTER_NAMESPACE
        find(docs, "Certificate", certificate)
    else:
        # keda-tenancy-certs sets it, from the CA that signs the serving certificate.
        assert "cert-manager.io/inject-ca-from" not in annotations
        certs = certs_spec(docs)
        assert certs.apiservices == {"v1beta1.external.metrics.k8s.io": "apiService"}
        (serving,) = [c for c in certs.certificates if c.secret == f"{ROUTER_RELEASE}-serving-tls"]
        assert serving.authority == "apiService"
        assert f"{ROUTER_RELEASE}.{ROUTER_NAMESPACE}.svc" in serving.request.dns_names


def certs_spec(docs: list[Doc]) -> Spec:
    """The spec keda-tenancy-certs runs with, parsed by keda-tenancy-certs itself."""
    config = find(docs, "ConfigMap", f"{ROUTER_RELEASE}-certs")
    return Spec.parse(yaml.safe_load(config["data"]["spec.yaml"]))


def test_router_default_certificates_are_three_separate_trusts_made_at_run_time(
    router_docs: list[Doc],
) -> None:
    # No key, no certificate in the rendered output: helm template generates nothing.
    assert not of_kind(router_docs, "Secret")
    assert not [v for k, v in walk(router_docs) if k in ("tls.key", "caBundle")]
    certs = certs_spec(router_docs)
    assert certs.namespace == ROUTER_NAMESPACE
    secrets = {name: a.secret for name, a in certs.authorities.items()}
    assert secrets == {
        "apiService": f"{ROUTER_RELEASE}-apiservice-ca",
        "upstreamClient": f"{ROUTER_RELEASE}-upstream-client-ca",
        "tenantServing": f"{ROUTER_RELEASE}-tenant-serving-ca",
    }
    by_secret = {c.secret: c for c in certs.certificates}
    assert by_secret[f"{ROUTER_RELEASE}-serving-tls"].authority == "apiService"
    client = by_secret[f"{ROUTER_RELEASE}-upstream-client-tls"]
    assert client.authority == "upstreamClient"
    assert client.request.common_name == "keda-tenancy-router"
    assert client.request.client
    assert not client.request.server
    # Renewed well ahead of the PrometheusRule's 30 days, which is well ahead of expiry.
    for certificate in certs.certificates:
        assert certificate.request.renew_before >= datetime.timedelta(days=31)
        assert certificate.request.validity > certificate.request.renew_before
    # Tenants: the metrics server from tenantServing, KEDA's internal from the tenant's own CA,
    # and only the client CA's public certificate.
    assert certs.tenants is not None
    match = certs.tenants.namespace_pattern.fullmatch("keda-tenant-a")
    assert match is not None
    assert match["tenant"] == "tenant-a"
    tenant = {c.secret: c for c in certs.tenants.certificates}
    serving = tenant["keda-metrics-apiserver-tls"].for_tenant("tenant-a", "keda-tenant-a")
    assert serving.authority == "tenantServing"
    assert serving.trust == {"ca.crt": "tenantServing", "client-ca.crt": "upstreamClient"}
    assert "keda-operator-metrics-apiserver.keda-tenant-a.svc" in serving.request.dns_names
    assert tenant["kedaorg-certs"].authority == TENANT_AUTHORITY
    assert certs.tenants.webhook_configuration == "keda-tenancy-{tenant}-admission"
    # The router verifies tenants with the tenantServing CA alone.
    router = container(find(router_docs, "Deployment", ROUTER_RELEASE))
    assert flag(router["args"], "upstream-ca-file") == "/etc/keda-tenancy/upstream-ca/ca.crt"
    volumes = find(router_docs, "Deployment", ROUTER_RELEASE)["spec"]["template"]["spec"]["volumes"]
    (upstream_ca,) = [v for v in volumes if v["name"] == "upstream-ca"]
    assert upstream_ca["configMap"] == {
        "name": f"{ROUTER_RELEASE}-trust",
        "items": [{"key": "tenant-serving-ca.crt", "path": "ca.crt"}],
    }
    assert certs.trust_keys["tenant-serving-ca.crt"] == "tenantServing"


def test_router_certs_controller_runs_with_least_privilege(router_docs: list[Doc]) -> None:
    name = f"{ROUTER_RELEASE}-certs"
    deployment = find(router_docs, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    certs = container(deployment)
    assert certs["command"] == ["keda-tenancy-certs"]
    config = CertsConfig.from_args(certs["args"], {})
    mounts = {m["mountPath"] for m in certs["volumeMounts"]}
    assert str(Path(config.spec_file).parent) in mounts
    assert certs["securityContext"]["readOnlyRootFilesystem"] is True
    role = find(router_docs, "Role", name)
    assert role["metadata"]["namespace"] == ROUTER_NAMESPACE
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert all(set(r["verbs"]) <= {"get", "update"} for r in named)
    assert not [r for r in role["rules"] if set(r["verbs"]) - {"get", "update", "create"}]
    # Events (on the Secret it cannot keep), created only.
    assert {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]} in role["rules"]
    cluster = find(router_docs, "ClusterRole", name)
    assert cluster["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiregistration.k8s.io"],
            "resources": ["apiservices"],
            "resourceNames": ["v1beta1.external.metrics.k8s.io"],
            "verbs": ["get", "patch"],
        },
    ]
    # Its pods are not the router's: the router Service never sends them traffic.
    service = find(router_docs, "Service", ROUTER_RELEASE)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= labels.items()
    # Its own Service exposes only the health port, whose /metrics the ServiceMonitor scrapes.
    own = find(router_docs, "Service", name)
    assert own["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in own["spec"]["ports"]] == ["health"]


def test_router_certs_controller_may_write_only_the_tls_secrets_it_keeps(
    helm: Helm, router_docs: list[Doc]
) -> None:
    """`create` on Secrets cannot be limited by RBAC; the admission policy limits it, for the
    controller's identity only, to kubernetes.io/tls and the names of its spec (so no
    ServiceAccount token can be minted with it). Proven on kube-apiserver in tests/e2e."""
    name = f"{ROUTER_RELEASE}-certs"
    policy = find(router_docs, "ValidatingAdmissionPolicy", f"{name}-secrets")
    binding = find(router_docs, "ValidatingAdmissionPolicyBinding", f"{name}-secrets")
    assert binding["spec"] == {"policyName": f"{name}-secrets", "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["secrets"],
        }
    ]
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{ROUTER_NAMESPACE}:{name}'"
    )
    kind, names = (v["expression"] for v in spec["validations"])
    assert kind == "has(object.type) && object.type == 'kubernetes.io/tls'"
    # The names are the spec's: the router's own here, a tenant's anywhere else.
    certs = certs_spec(router_docs)
    assert certs.tenants is not None
    own = {a.secret for a in certs.authorities.values()} | {c.secret for c in certs.certificates}
    tenant = {c.secret for c in certs.tenants.certificates} | {certs.tenants.authority.secret}
    listed = [set(re.findall(r"'([^']+)'", part)) for part in names.split("?")[1].split(":")]
    assert f"request.namespace == '{ROUTER_NAMESPACE}'" in names
    assert listed == [own, tenant]
    # Off only where asked (a cluster without the API), and with cert-manager (no controller).
    for values in (
        {"certificates": {"controller": {"admissionPolicy": False}}},
        {"admissionPolicy": {"enabled": False}},
        CERT_MANAGER,
    ):
        docs = render_router(helm, values)
        for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert f"{name}-secrets" not in {d["metadata"]["name"] for d in of_kind(docs, kind)}


def test_router_cert_manager_keeps_the_client_identity_in_its_own_namespace(helm: Helm) -> None:
    docs = render_router(helm, ROUTER_VALUE_SETS["label-cert-manager"])
    assert not of_kind(docs, "Secret")
    certificates = {d["metadata"]["name"]: d for d in of_kind(docs, "Certificate")}
    issuers = {d["metadata"]["name"]: d for d in of_kind(docs, "Issuer")}
    (cluster_issuer,) = of_kind(docs, "ClusterIssuer")
    assert cluster_issuer["metadata"]["name"] == f"{ROUTER_RELEASE}-tenant-serving"
    client = certificates[f"{ROUTER_RELEASE}-upstream-client"]
    assert client["spec"]["commonName"] == "keda-tenancy-router"
    ref = client["spec"]["issuerRef"]
    assert ref["kind"] == "Issuer"
    # A namespaced Issuer in the router's namespace: no tenant can reference it.
    issuer = issuers[ref["name"]]
    assert issuer["metadata"]["namespace"] == ROUTER_NAMESPACE
    ca = certificates[ref["name"]]
    assert ca["spec"]["isCA"] is True
    assert ca["metadata"]["namespace"] == ROUTER_NAMESPACE
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    # Three different CA secrets behind the three issuers.
    serving_ref = certificates[f"{ROUTER_RELEASE}-serving"]["spec"]["issuerRef"]
    ca_secrets = {
        issuers[serving_ref["name"]]["spec"]["ca"]["secretName"],
        issuer["spec"]["ca"]["secretName"],
        cluster_issuer["spec"]["ca"]["secretName"],
    }
    assert len(ca_secrets) == 3
    # The router verifies tenants with a tenantServing-issued Secret's ca.crt, mounted alone.
    trust = certificates[f"{ROUTER_RELEASE}-tenant-serving-trust"]
    assert trust["spec"]["issuerRef"]["name"] == cluster_issuer["metadata"]["name"]
    volumes = find(docs, "Deployment", ROUTER_RELEASE)["spec"]["template"]["spec"]["volumes"]
    (upstream_ca,) = [v for v in volumes if v["name"] == "upstream-ca"]
    assert upstream_ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_router_rbac_reads_namespaces_and_only_the_auth_configmap(router_docs: list[Doc]) -> None:
    role = find(router_docs, "ClusterRole", f"{ROUTER_RELEASE}-namespace-reader")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
    ]
    auth = find(router_docs, "Role", f"{ROUTER_RELEASE}-auth-reader")
    assert auth["metadata"]["namespace"] == "kube-system"
    assert auth["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["extension-apiserver-authentication"],
            "verbs": ["get"],
        }
    ]
    binding = find(router_docs, "RoleBinding", f"{ROUTER_RELEASE}-auth-reader")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": ROUTER_RELEASE, "namespace": ROUTER_NAMESPACE}
    ]


def test_router_builtin_auth_reader_role_and_optional_objects(helm: Helm) -> None:
    docs = render_router(helm, {"rbac": {"useBuiltinAuthReaderRole": True}})
    binding = find(docs, "RoleBinding", f"{ROUTER_RELEASE}-auth-reader")
    assert binding["roleRef"]["name"] == "extension-apiserver-authentication-reader"
    assert sorted(r["metadata"]["name"] for r in of_kind(docs, "Role")) == [
        f"{ROUTER_RELEASE}-certs",
        f"{ROUTER_RELEASE}-tenancy-rule-reader",  # bound by the tenant releases
    ]
    docs = render_router(helm, ROUTER_VALUE_SETS["everything-on"])
    # Only the published rule's reader, which the router itself is never bound to.
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == [
        f"{ROUTER_RELEASE}-tenancy-rule-reader"
    ]
    assert not of_kind(docs, "RoleBinding")
    # With the requestheader CA given as a value, the ConfigMap is not needed at all.
    args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
    assert flag(args, "requestheader-client-ca-file") == "/etc/keda-tenancy/requestheader/ca.crt"
    assert flag(args, "upstream-ca-file") == "/etc/keda-tenancy/upstream-ca/ca.crt"
    assert of_kind(docs, "ServiceMonitor")
    assert of_kind(docs, "NetworkPolicy")
    # A user-supplied issuer: no chart-made CA.
    assert not of_kind(docs, "ClusterIssuer")


def published_rule_text(router_docs: list[Doc]) -> str:
    rule_map = find(router_docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy-rule")
    assert rule_map["metadata"]["namespace"] == ROUTER_NAMESPACE
    return str(rule_map["data"]["rule.yaml"])


def test_router_publishes_the_rule_its_values_give(helm: Helm) -> None:
    expectations: dict[str, dict[str, Any]] = {
        "label": {"labelKeys": ["keda-tenancy.io/tenant"]},
        "hnc": {"labelKeys": [], "hnc": {"roots": ["tenant-a", "tenant-b"], "rootLabel": ""}},
        "hnc-root-label": {"hnc": {"roots": [], "rootLabel": "example.com/tenant-root"}},
        "name-pattern": {"namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+"},
        # Only the namespace lists are published; upstream overrides stay the router's.
        "tenancy-file": {
            "tenants": {
                "tenant-a": {"namespaces": ["a-one", "a-two"]},
                "tenant-b": {"namespaces": ["b-one"]},
            }
        },
        "everything-on": {"tenants": {}},
    }
    for name, expected in expectations.items():
        docs = render_router(helm, ROUTER_VALUE_SETS[name])
        args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
        assert flag(args, "tenancy-rule-file") == "/etc/keda-tenancy/rule/rule.yaml"
        for rule_flag in (
            "tenant-label-key",
            "hnc-roots",
            "hnc-root-label",
            "namespace-name-pattern",
        ):
            assert flag(args, rule_flag) is None, (name, args)
        document = yaml.safe_load(published_rule_text(docs))
        for key_name, value in expected.items():
            assert document[key_name] == value, (name, document)
        from tenancy_common.tenancy_config import parse_rule_document  # noqa: PLC0415

        parse_rule_document(document, source=name)
    docs = render_router(helm, ROUTER_VALUE_SETS["everything-on"])
    overrides = yaml.safe_load(
        find(docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy")["data"]["tenancy.yaml"]
    )
    assert overrides["tenants"]["tenant-y"] == {"upstream": "https://10.1.2.3:6443"}
    reader = find(docs, "Role", f"{ROUTER_RELEASE}-tenancy-rule-reader")
    assert reader["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [f"{ROUTER_RELEASE}-tenancy-rule"],
            "verbs": ["get"],
        }
    ]


def nested_hnc_tree() -> dict[NamespaceName, Namespace]:
    depth = ".tree.hnc.x-k8s.io/depth"
    trees = {"a": ["a"], "a-dev": ["a", "a-dev"], "b": ["a", "b"], "b-dev": ["a", "b", "b-dev"]}
    return {
        NamespaceName(name): Namespace(
            NamespaceName(name), {f"{n}{depth}": str(len(path) - 1 - i) for i, n in enumerate(path)}
        )
        for name, path in trees.items()
    }


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_nested_hnc_roots_installed_as_documented_give_one_owner(
    helm: Helm, tmp_path: Path, mode: str
) -> None:
    """Issue 20 (a): root b inside root a; the router lists both, each tenant release is
    installed as deploy/README.md says. Every reloader must decide exactly as the router:
    a owns a and a-dev, b and b-dev are conflicts, so b's KEDA gets nothing and a's no b."""
    router_values = {"tenancy": {"labelKeys": [], "hnc": {"roots": ["a", "b"]}}}
    installation = render_installation(
        helm,
        ("a", "b"),
        router_values=router_values,
        tenant_values=lambda t: {
            "tenancy": {"labelKeys": None, "hnc": {"roots": [t]}},
            "reloader": {"mode": mode},
        },
    )
    router_args = list(container(find(installation.router, "Deployment", ROUTER_RELEASE))["args"])
    if flag(router_args, "tenancy-rule-file"):
        rule_path = tmp_path / "rule.yaml"
        rule_path.write_text(published_rule_text(installation.router))
        router_args = [
            f"--tenancy-rule-file={rule_path}" if a.startswith("--tenancy-rule-file=") else a
            for a in router_args
        ]
    router_rule = RouterConfig.from_args(router_args, {}).tenancy
    tree = nested_hnc_tree()
    owners = {name: router_rule.decide(ns, tree).tenant for name, ns in tree.items()}
    assert owners == {"a": "a", "a-dev": "a", "b": None, "b-dev": None}
    for tenant, docs in installation.tenants.items():
        for args in reloader_args_of(docs):
            config = ReloaderConfig.from_args(args, {})
            rule = reloader_rule(config, installation.router, docs)
            desired = desired_namespaces(tree, rule=rule, tenant=config.tenant).names
            assert desired == tuple(sorted(n for n, t in owners.items() if t == tenant)), (
                tenant,
                args,
            )


def reloader_args_of(docs: list[Doc]) -> list[list[str]]:
    """The args of every container that runs keda-tenancy-reloader."""
    found = []
    for deployment in of_kind(docs, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            if c.get("command") == ["keda-tenancy-reloader"]:
                found.append([str(a) for a in c["args"]])
    assert found
    return found


def reloader_rule(config: ReloaderConfig, router_docs: list[Doc], docs: list[Doc]) -> Any:
    """The rule a reloader decides with: the router's published one, read with the access
    its own release grants (a RoleBinding in the router's namespace to the router's Role)."""
    source = getattr(config, "rule_configmap", None)
    if source is None:
        return config.rule
    from reloader.rule_source import parse_published_rule  # noqa: PLC0415

    namespace, name = source
    assert namespace == ROUTER_NAMESPACE
    rule_map = find(router_docs, "ConfigMap", name)
    role = find(router_docs, "Role", f"{name}-reader")
    assert role["rules"][0]["resourceNames"] == [name]
    binding = next(
        d
        for d in of_kind(docs, "RoleBinding")
        if d["metadata"]["namespace"] == namespace and d["roleRef"]["name"] == f"{name}-reader"
    )
    accounts = {s["name"] for s in binding["subjects"]}
    assert accounts & {"keda-operator", "keda-namespace-reloader", "keda-rolebinding-manager"}
    assert config.tenant is not None
    return parse_published_rule(
        rule_map["data"]["rule.yaml"], ref=f"{namespace}/{name}", tenant=config.tenant
    ).rule


# --- tenants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TENANT_VALUE_SETS))
def test_tenant_never_renders_an_apiservice_or_insecure_tls(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
    assert not of_kind(docs, "APIService")
    assert not [v for k, v in walk(docs) if k == "insecureSkipTLSVerify"]
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]
    operator = find(docs, "Deployment", "keda-operator")
    args = container(operator)["args"]
    assert "--enable-apiservice-patching=false" in args
    assert "--enable-cert-rotation=false" in args
    assert not of_kind(docs, "ClusterRole") or not [
        rule
        for role in of_kind(docs, "ClusterRole")
        for rule in role["rules"]
        if "apiregistration.k8s.io" in rule["apiGroups"]
    ]


@pytest.mark.parametrize("name", sorted(TENANT_VALUE_SETS))
def test_tenant_flags_are_accepted_by_reloader_and_scope_keda_to_the_tenant(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    values = tenant_values(name, "tenant-a", router_docs)
    docs = render_tenant(helm, values)
    operator = find(docs, "Deployment", "keda-operator")
    keda = container(operator, "keda-operator")
    env = {e["name"]: e for e in keda["env"]}
    assert env["KEDA_CLUSTER_OBJECT_NAMESPACE"]["value"] == "keda-tenant-a"
    assert "WATCH_NAMESPACE" not in env, "the reloader owns WATCH_NAMESPACE, never empty"
    # A new operator starts only once the Lease is released (by the reloader in process
    # mode, by the old pod's supervisor in deployment mode), so the retry period is only the
    # leader's renewal pace: 15 s is under 0.1 Lease writes a second per tenant at rest.
    assert env["KEDA_OPERATOR_LEADER_ELECTION_RETRY_PERIOD"]["value"] == "15s"
    assert env["KEDA_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE"]["value"] == "40s"
    assert env["KEDA_OPERATOR_LEADER_ELECTION_LEASE_DURATION"]["value"] == "60s"
    assert keda["livenessProbe"]["httpGet"]["port"] == "reloader"
    assert keda["readinessProbe"]["httpGet"]["port"] == "reloader"
    if values.get("reloader", {}).get("mode") == "deployment":
        assert keda["command"] == ["keda-tenancy-supervise"]
        supervisor = parse_supervisor_config(keda["args"], {})
        assert supervisor.command[0] == "/keda"
        keda_args = list(supervisor.command[1:])
        # The Lease it waits for and releases is the one KEDA elects with.
        assert supervisor.lease == ("keda-tenant-a", "tenant-a.operator.keda-tenancy.io")
        assert supervisor.health_port == next(
            p["containerPort"] for p in keda["ports"] if p["name"] == "reloader"
        )
        # The reloader's two fields are left out (it server-side applies them), so Helm or a
        # GitOps controller applying this never resets them.
        assert "replicas" not in operator["spec"]
        assert "annotations" not in operator["metadata"]
        # The new pod is ready (waiting for the Lease) before the old one stops.
        assert operator["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        assert operator["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
        reloader = container(find(docs, "Deployment", "keda-namespace-reloader"))
        config = ReloaderConfig.from_args(reloader["args"], {})
        assert config.mode == "deployment"
        assert config.target_deployment == ("keda-tenant-a", "keda-operator")
        assert config.container == "keda-operator"
        assert config.replicas == 1
    else:
        assert keda["command"] == ["keda-tenancy-reloader"]
        config = ReloaderConfig.from_args(keda["args"], {})
        assert config.mode == "process"
        assert config.command[0] == "/keda"
        keda_args = list(config.command[1:])
        assert config.health_port == next(
            p["containerPort"] for p in keda["ports"] if p["name"] == "reloader"
        )
    assert config.tenant == "tenant-a"
    # Ownership comes from the router's published rule, never a copy in the tenant release.
    assert config.rule_configmap == (ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-tenancy-rule")
    assert config.rule is None
    assert config.target_env == "WATCH_NAMESPACE"
    assert flag(keda_args, "leader-election-id") == "tenant-a.operator.keda-tenancy.io"
    assert "--leader-elect" in keda_args
    # The Lease the reloader hands over is the one KEDA elects with, in KEDA's namespace.
    assert config.release_lease == ("keda-tenant-a", "tenant-a.operator.keda-tenancy.io")
    assert flag(keda_args, "validating-webhook-name") == "keda-tenancy-tenant-a-admission"
    assert flag(keda_args, "enable-webhook-patching") == "false"


def test_tenant_metrics_server_trusts_only_the_router(helm: Helm, router_docs: list[Doc]) -> None:
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    adapter = find(docs, "Deployment", "keda-operator-metrics-apiserver")
    args = container(adapter)["args"]
    assert flag(args, "requestheader-allowed-names") == "keda-tenancy-router"
    # The router client CA's public certificate, which keda-tenancy-certs stores next to the
    # serving certificate; direct client certificates too: never this tenant's internal CA.
    assert flag(args, "requestheader-client-ca-file") == "/apiserver-certs/client-ca.crt"
    assert flag(args, "client-ca-file") == "/apiserver-certs/client-ca.crt"
    assert flag(args, "metrics-service-address") == (
        "keda-operator.keda-tenant-a.svc.cluster.local:9666"
    )
    env = {e["name"]: e.get("value") for e in container(adapter)["env"]}
    assert env["WATCH_NAMESPACE"] == "keda-tenant-a"
    volumes = {v["name"]: v for v in adapter["spec"]["template"]["spec"]["volumes"]}
    assert volumes["apiserver-certs"]["secret"]["secretName"] == "keda-metrics-apiserver-tls"

    # Nothing generated at render time, no key of anyone's in the release.
    assert not of_kind(docs, "Secret")
    assert not [v for k, v in walk(docs) if k in ("tls.key", "caKey", "caBundle")]
    # What keda-tenancy-certs writes here is the router chart's spec for this namespace.
    certs = certs_spec(router_docs)
    assert certs.tenants is not None
    assert certs.tenants.namespace_pattern.fullmatch("keda-tenant-a")
    kept = {c.secret for c in certs.tenants.certificates} | {certs.tenants.authority.secret}
    # The release grants it exactly those Secrets, here only.
    certs_sa = {"kind": "ServiceAccount", "name": f"{ROUTER_RELEASE}-certs"}
    certs_sa["namespace"] = ROUTER_NAMESPACE
    role = find(docs, "Role", "keda-tenancy-certs")
    assert role["metadata"]["namespace"] == "keda-tenant-a"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": sorted(kept, key=role["rules"][1]["resourceNames"].index),
            "verbs": ["get", "update"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    assert set(role["rules"][1]["resourceNames"]) == kept
    binding = find(docs, "RoleBinding", "keda-tenancy-certs")
    assert binding["subjects"] == [certs_sa]
    webhook_role = find(docs, "ClusterRole", "keda-tenancy-tenant-a-certs")
    assert webhook_role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["keda-tenancy-tenant-a-admission"],
            "verbs": ["get", "patch"],
        }
    ]
    assert find(docs, "ClusterRoleBinding", "keda-tenancy-tenant-a-certs")["subjects"] == [certs_sa]
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    for hook in webhook["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]


@pytest.mark.parametrize("name", ["label-process", "label-deployment", "hnc-deployment-cilium"])
def test_deployment_mode_adapter_reaches_the_operator_through_grpc_forward(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    values = tenant_values(name, "tenant-a", router_docs)
    docs = render_tenant(helm, values)
    adapter = find(docs, "Deployment", "keda-operator-metrics-apiserver")
    containers = {c["name"]: c for c in adapter["spec"]["template"]["spec"]["containers"]}
    args = containers["keda-operator-metrics-apiserver"]["args"]
    service = "keda-operator.keda-tenant-a.svc.cluster.local"
    if values.get("reloader", {}).get("mode") != "deployment":
        # Process mode: the operator's own reloader holds its gRPC port (--forward-grpc).
        assert set(containers) == {"keda-operator-metrics-apiserver"}
        assert flag(args, "metrics-service-address") == f"{service}:9666"
        # The adapter dials the Service, so the operator's reloader listens on the pod IP,
        # and only there (not every address of the pod).
        keda = container(find(docs, "Deployment", "keda-operator"))
        config = ReloaderConfig.from_args(keda["args"], {})
        assert config.forward_grpc == (("$(KEDA_TENANCY_POD_IP)", 9666), ("127.0.0.1", 9667))
        env = {e["name"]: e for e in keda["env"]}
        assert env["KEDA_TENANCY_POD_IP"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "status.podIP"}
        }
        assert config.forward_grpc_max_connections >= 1
        return
    # The rolled operator pods are reached through the sidecar on loopback; TLS is end to end
    # and the adapter still verifies the operator's certificate by the Service's name.
    assert set(containers) == {"keda-operator-metrics-apiserver", "grpc-forward"}
    assert flag(args, "metrics-service-address") == "127.0.0.1:9666"
    assert flag(args, "metrics-service-grpc-authority") == service
    forward = containers["grpc-forward"]
    # The project's image (the reloader's), next to KEDA's unchanged adapter image.
    assert (
        forward["image"] == container(find(docs, "Deployment", "keda-namespace-reloader"))["image"]
    )
    assert forward["command"] == ["keda-tenancy-grpc-forward"]
    assert flag(forward["args"], "listen") == "127.0.0.1:9666"
    assert flag(forward["args"], "target") == f"{service}:9666"
    parsed = forward_cli.build_parser().parse_args(forward["args"])
    assert (parsed.listen, parsed.target) == ("127.0.0.1:9666", f"{service}:9666")
    # Its gRPC listener is on loopback only: the one port it declares is its health port.
    (port,) = forward["ports"]
    assert port["containerPort"] == parsed.health_port


def test_tenant_cert_manager_uses_the_router_tenant_serving_issuer(helm: Helm) -> None:
    values = deep_merge(
        {"tenant": "tenant-a", "router": {"clientCA": router_client_ca_pem()}},
        TENANT_VALUE_SETS["cert-manager"],
    )
    docs = render_tenant(helm, values)
    assert not of_kind(docs, "Secret")
    assert not of_kind(docs, "Role") or not [
        d for d in of_kind(docs, "Role") if d["metadata"]["name"] == "keda-tenancy-certs"
    ]
    certificate = find(docs, "Certificate", "keda-metrics-apiserver")
    assert certificate["spec"]["issuerRef"]["name"] == f"{ROUTER_RELEASE}-tenant-serving"
    assert certificate["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    router = render_router(helm, ROUTER_VALUE_SETS["label-cert-manager"])
    find(router, "ClusterIssuer", f"{ROUTER_RELEASE}-tenant-serving")
    # The router client CA: its public certificate as a value, in a ConfigMap.
    args = container(find(docs, "Deployment", "keda-operator-metrics-apiserver"))["args"]
    assert flag(args, "requestheader-client-ca-file") == "/router-client-ca/ca.crt"
    assert flag(args, "client-ca-file") == "/router-client-ca/ca.crt"
    ca = find(docs, "ConfigMap", "keda-tenancy-router-client-ca")
    assert load_cert(ca["data"]["ca.crt"]) == load_cert(router_client_ca_pem())
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "keda-tenant-a/kedaorg-certs"
    )
    assert find(docs, "ResourceQuota", "keda-tenancy")
    assert find(docs, "LimitRange", "keda-tenancy")
    # Without the client CA there is nothing to verify the router with: refused.
    values["router"]["clientCA"] = ""
    with pytest.raises(HelmFailed, match=r"router\.clientCA"):
        render_tenant(helm, values)


# --- GitOps: the same values render the same bytes --------------------------------------------


@pytest.mark.parametrize(
    ("chart", "name"),
    [("router", n) for n in sorted(ROUTER_VALUE_SETS)]
    + [("tenant", n) for n in sorted(TENANT_VALUE_SETS)],
)
def test_two_helm_template_runs_are_identical(
    helm: Helm, router_docs: list[Doc], chart: str, name: str
) -> None:
    if chart == "router":
        values = ROUTER_VALUE_SETS[name]
        path, release, namespace = ROUTER_CHART, ROUTER_RELEASE, ROUTER_NAMESPACE
    else:
        values = tenant_values(name, "tenant-a", router_docs)
        path, release, namespace = TENANT_CHART, "keda", "keda-tenant-a"
    runs = [
        helm.template_raw(path, release=release, namespace=namespace, values=values)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout


# --- the smaller items --------------------------------------------------------------------------


def test_tenant_webhook_covers_every_tenant_selector(helm: Helm, router_docs: list[Doc]) -> None:
    selectors = [
        {"matchLabels": {"keda-tenancy.io/tenant": "tenant-a"}},
        {"matchLabels": {"capsule.clastix.io/tenant": "tenant-a"}},
        {"matchExpressions": [{"key": "tenant-a.tree.hnc.x-k8s.io/depth", "operator": "Exists"}]},
    ]
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs),
        {
            "tenancy": {
                "labelKeys": ["keda-tenancy.io/tenant", "capsule.clastix.io/tenant"],
                "hnc": {"roots": ["tenant-a"]},
            }
        },
    )
    docs = render_tenant(helm, values)
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    hooks = webhook["webhooks"]
    names = [h["name"] for h in hooks]
    assert len(set(names)) == len(names)
    for resource in ("scaledobjects", "scaledjobs", "triggerauthentications", "cloudeventsources"):
        covering = [
            h["namespaceSelector"] for h in hooks if h["rules"][0]["resources"] == [resource]
        ]
        assert covering == selectors, resource
    # Explicit selectors: every one of them too.
    values = deep_merge(values, {"tenantNamespaceSelectors": selectors[1:]})
    webhook = find(
        render_tenant(helm, values),
        "ValidatingWebhookConfiguration",
        "keda-tenancy-tenant-a-admission",
    )
    assert {json.dumps(h["namespaceSelector"]) for h in webhook["webhooks"]} == {
        json.dumps(s) for s in selectors[1:]
    }


IDENTITY_EXAMPLES = sorted((REPO / "deploy" / "examples").glob("identity-*.yaml"))


@pytest.mark.parametrize("example", IDENTITY_EXAMPLES, ids=lambda p: p.stem)
def test_tenant_cloud_identity_per_component(
    helm: Helm, router_docs: list[Doc], example: Path
) -> None:
    given = yaml.safe_load(example.read_text())
    values = deep_merge(tenant_values("label-process", "tenant-a", router_docs), given)
    docs = render_tenant(helm, values)
    components = {
        "operator": ("keda-operator", "keda-operator"),
        "metricsServer": ("keda-metrics-server", "keda-operator-metrics-apiserver"),
        "webhooks": ("keda-webhook", "keda-admission-webhooks"),
    }
    assert given["serviceAccounts"]["operator"]["annotations"], "the operator runs the scalers"
    for key_name, (account, deployment) in components.items():
        sa = find(docs, "ServiceAccount", account)
        wanted = given.get("serviceAccounts", {}).get(key_name, {})
        assert (sa["metadata"].get("annotations") or {}) == wanted.get("annotations", {})
        assert wanted.get("labels", {}).items() <= sa["metadata"]["labels"].items()
        pod = find(docs, "Deployment", deployment)["spec"]["template"]
        assert pod["spec"]["serviceAccountName"] == account
        pod_labels = given.get("podLabels", {}).get(key_name, {})
        assert pod_labels.items() <= pod["metadata"]["labels"].items()
    # Another tenant's release with default values carries none of it.
    other = render_tenant(helm, tenant_values("label-process", "tenant-b", router_docs))
    assert not find(other, "ServiceAccount", "keda-operator")["metadata"].get("annotations")


def test_router_prometheus_rule_alerts_30_days_before_expiry(helm: Helm) -> None:
    assert not of_kind(render_router(helm, {}), "PrometheusRule")
    with_monitor = {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}
    docs = render_router(helm, with_monitor)
    (rule,) = of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    certs = alerts["KedaTenancyCertificateExpiresSoon"]
    assert "keda_tenancy_certs_certificate_expiry_timestamp_seconds" in certs["expr"]
    assert "- time() < 30 * 86400" in certs["expr"]
    failing = alerts["KedaTenancyCertificatesFailing"]
    assert "keda_tenancy_certs_namespace_errors_total" in failing["expr"]
    assert "$labels.secret_namespace" in failing["annotations"]["summary"]
    # Both metrics are scraped: the router's Service and keda-tenancy-certs' own.
    monitored = {
        json.dumps(m["spec"]["selector"]["matchLabels"], sort_keys=True)
        for m in of_kind(docs, "ServiceMonitor")
    }
    services = {json.dumps(s["spec"]["selector"], sort_keys=True) for s in of_kind(docs, "Service")}
    assert monitored == services
    assert len(monitored) == 2
    for values in ({"prometheusRule": {"enabled": True}}, ROUTER_VALUE_SETS["everything-on"]):
        (rule,) = of_kind(render_router(helm, values), "PrometheusRule")
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        router = alerts["KedaTenancyRouterCertificateExpiresSoon"]
        assert "keda_tenancy_router_certificate_expiry_timestamp_seconds" in router["expr"]
        assert "- time() < 30 * 86400" in router["expr"]
    # The metric the rule reads is the one the router exports.
    from router.metrics import RouterMetrics  # noqa: PLC0415

    registry = CollectorRegistry()
    RouterMetrics(registry).cert_expiry.labels("serving").set(1)
    assert registry.get_sample_value(
        "keda_tenancy_router_certificate_expiry_timestamp_seconds", {"certificate": "serving"}
    )
    # A stale namespace list is alerted on with the bound the router warns at in /readyz.
    stale = alerts["KedaTenancyNamespaceCacheStale"]
    assert "keda_tenancy_namespace_watch_staleness_seconds" in stale["expr"]
    assert stale["expr"].strip().endswith("> 300")
    router_args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
    assert flag(router_args, "max-namespace-staleness") == "300s"
    WatchMetrics(registry).follow(NamespaceCache())
    assert registry.get_sample_value("keda_tenancy_namespace_watch_staleness_seconds") is not None
    CertsMetrics(registry).expiry.labels("keda-a", "kedaorg-certs").set(1)
    assert registry.get_sample_value(
        "keda_tenancy_certs_certificate_expiry_timestamp_seconds",
        {"secret_namespace": "keda-a", "secret": "kedaorg-certs"},
    )
    errors = CollectorRegistry()
    CertsMetrics(errors).namespace_errors.labels("keda-a", "ca-not-a-ca").inc()
    assert errors.get_sample_value(
        "keda_tenancy_certs_namespace_errors_total",
        {"secret_namespace": "keda-a", "reason": "ca-not-a-ca"},
    )


def test_router_network_policy_lets_default_and_override_upstreams_out(helm: Helm) -> None:
    docs = render_router(helm, ROUTER_VALUE_SETS["everything-on"])
    policy = find(docs, "NetworkPolicy", ROUTER_RELEASE)
    egress = policy["spec"]["egress"]
    namespaces = {
        peer["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name")
        for rule in egress
        for peer in rule.get("to", [])
        if "namespaceSelector" in peer and not peer.get("podSelector")
    }
    # defaultUpstream keda-operator-metrics-apiserver.keda.svc and tenant-x's Service override.
    assert {"keda", "platform-x"} <= namespaces
    ip_rules = [rule for rule in egress for peer in rule.get("to", []) if "ipBlock" in peer]
    assert {
        "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
        "ports": [{"port": 6443, "protocol": "TCP"}],
    } in ip_rules
    # Without overrides there is nothing extra, and the API server egress is by port (it
    # follows control-plane address changes) unless CIDRs are given.
    plain = find(
        render_router(helm, {"networkPolicy": {"enabled": True}}), "NetworkPolicy", ROUTER_RELEASE
    )
    api = [r for r in plain["spec"]["egress"] if "to" not in r]
    assert api == [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]
    assert len(plain["spec"]["egress"]) == 3


def test_tenant_api_server_egress_is_not_frozen_at_install(
    helm: Helm, router_docs: list[Doc]
) -> None:
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    policy = find(docs, "NetworkPolicy", "keda-operator")
    api = [r for r in policy["spec"]["egress"] if "to" not in r]
    assert api == [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]


def test_tenant_rbac_scope(helm: Helm, router_docs: list[Doc]) -> None:
    def bindings(name: str, extra: dict[str, Any] | None = None) -> tuple[list[Doc], list[Doc]]:
        values = deep_merge(tenant_values(name, "tenant-a", router_docs), extra or {})
        docs = render_tenant(helm, values)
        operator_role = "keda-tenancy-tenant-a-operator"
        return (
            [d for d in of_kind(docs, "RoleBinding") if d["roleRef"]["name"] == operator_role],
            [
                d
                for d in of_kind(docs, "ClusterRoleBinding")
                if d["roleRef"]["name"] == operator_role
            ],
        )

    # The default, for every rule: RoleBindings made at run time (none rendered, none cluster-wide).
    for name in ("label-process", "label-deployment", "hnc-process", "hnc-deployment-cilium"):
        assert bindings(name) == ([], []), name
    namespaced, cluster = bindings("hnc-process", {"rbac": {"scope": "hnc"}})
    assert [d["metadata"]["namespace"] for d in namespaced] == ["tenant-a"]
    assert not cluster
    namespaced, cluster = bindings("name-pattern-no-webhooks-no-netpol")
    assert [d["metadata"]["namespace"] for d in namespaced] == ["tenant-a--one"]
    assert not cluster
    # An explicit list is honoured by auto too.
    listed = {"rbac": {"scope": "auto", "namespaces": ["x1"]}}
    namespaced, cluster = bindings("label-process", listed)
    assert [d["metadata"]["namespace"] for d in namespaced] == ["x1"]
    assert not cluster
    assert bindings("name-pattern") == ([], [])
    namespaced, cluster = bindings("label-process", {"rbac": {"scope": "cluster"}})
    assert not namespaced
    assert len(cluster) == 1


NO_CLUSTER_WIDE = {
    "secrets",
    "deployments/scale",
    "statefulsets/scale",
    "jobs",
    "horizontalpodautoscalers",
    "rolebindings",
}


def cluster_grants(docs: list[Doc], service_account: str) -> list[dict[str, Any]]:
    """Every rule a ClusterRoleBinding grants `service_account` (rendered roles; the built-in
    system:auth-delegator grants TokenReviews and SubjectAccessReviews only)."""
    roles = {d["metadata"]["name"]: d for d in of_kind(docs, "ClusterRole")}
    return [
        rule
        for binding in of_kind(docs, "ClusterRoleBinding")
        if any(s["name"] == service_account for s in binding["subjects"])
        and binding["roleRef"]["name"] != "system:auth-delegator"
        for rule in roles[binding["roleRef"]["name"]]["rules"]
    ]


@pytest.mark.parametrize("name", ["label-process", "label-deployment", "hnc-process"])
def test_follow_scope_binds_through_a_component_that_is_not_the_operator(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
    process = name.endswith("process")
    manager_sa = "keda-rolebinding-manager" if process else "keda-namespace-reloader"
    # The operator: cluster-wide only namespaces and the cluster-scoped KEDA kinds, never bind.
    operator_rules = cluster_grants(docs, "keda-operator")
    operator_resources = {r for rule in operator_rules for r in rule["resources"]}
    assert operator_resources <= {
        "namespaces",
        "clustertriggerauthentications",
        "clustertriggerauthentications/status",
        "clustercloudeventsources",
        "clustercloudeventsources/status",
    }
    assert not any(
        "patch" in rule["verbs"] and not all(r.endswith("/status") for r in rule["resources"])
        for rule in operator_rules
    )
    assert not any(
        "bind" in rule["verbs"] or "escalate" in rule["verbs"] for rule in operator_rules
    )
    # The manager: bind on exactly the operator's ClusterRole, RoleBindings, namespaces.
    manager_rules = cluster_grants(docs, manager_sa)
    bind = [rule for rule in manager_rules if "bind" in rule["verbs"]]
    assert bind == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "resourceNames": ["keda-tenancy-tenant-a-operator"],
            "verbs": ["bind"],
        }
    ]
    for rule in manager_rules:
        assert not set(rule["resources"]) & (NO_CLUSTER_WIDE - {"rolebindings"}), rule
        if "rolebindings" in rule["resources"]:
            assert sorted(rule["verbs"]) == ["create", "delete", "list", "patch"]
    for sa in ("keda-operator", "keda-metrics-server"):
        for rule in cluster_grants(docs, sa):
            assert not set(rule["resources"]) & NO_CLUSTER_WIDE, (sa, rule)
    # Its flags are accepted by the reloader, and point at the operator.
    if process:
        manager = container(find(docs, "Deployment", "keda-rolebinding-manager"))
        assert (
            find(docs, "Deployment", "keda-rolebinding-manager")["spec"]["template"]["spec"][
                "serviceAccountName"
            ]
            == manager_sa
        )
        config = ReloaderConfig.from_args(manager["args"], {})
        assert config.mode == "bindings"
        assert config.watched_configmap == ("keda-tenant-a", "keda-operator-watched")
        operator = container(find(docs, "Deployment", "keda-operator"), "keda-operator")
        operator_config = ReloaderConfig.from_args(operator["args"], {})
        assert operator_config.check_operator_access
        assert operator_config.watched_configmap == config.watched_configmap
        assert operator_config.bindings is None
        assert find(docs, "ConfigMap", "keda-operator-watched").get("data") is None
        role = find(docs, "Role", "keda-operator")
        assert {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["keda-operator-watched"],
            "verbs": ["patch"],
        } in role["rules"]
    else:
        assert not of_kind(
            [d for d in docs if d["metadata"]["name"] == "keda-rolebinding-manager"], "Deployment"
        )
        config = ReloaderConfig.from_args(
            container(find(docs, "Deployment", "keda-namespace-reloader"))["args"], {}
        )
    assert config.bindings is not None
    assert config.bindings.cluster_role == "keda-tenancy-tenant-a-operator"
    assert config.bindings.subject == ("keda-tenant-a", "keda-operator")
    assert config.bindings.unbind_timeout_s == 5  # the security bound (issue 20)
    assert config.tenant == "tenant-a"


SHARED_KINDS = {
    "clustertriggerauthentications": "keda.sh",
    "clustercloudeventsources": "eventing.keda.sh",
}


@pytest.mark.parametrize("name", ["label-process", "label-deployment"])
def test_operator_writes_shared_cluster_objects_only_as_keda_does(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    """Issue 20: every tenant's KEDA shares ClusterTriggerAuthentications and
    ClusterCloudEventSources. It may patch their status and update them (KEDA adds and removes
    its finalizer so), never patch them; the admission policy bound to this operator alone lets
    an update change only that finalizer."""
    docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
    rules = cluster_grants(docs, "keda-operator")
    for plural, group in SHARED_KINDS.items():
        verbs = {
            resource: set(rule["verbs"])
            for rule in rules
            if group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        assert verbs[plural] == {"get", "list", "watch", "update"}, plural
        assert verbs[f"{plural}/status"] == {"patch"}, plural
    policy = find(
        docs, "ValidatingAdmissionPolicy", "keda-tenancy-tenant-a-operator-cluster-objects"
    )
    matched = {
        resource
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
        if rule["operations"] == ["UPDATE"]
        for resource in rule["resources"]
    }
    assert matched == set(SHARED_KINDS)
    assert policy["spec"]["failurePolicy"] == "Fail"
    [condition] = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:keda-tenant-a:keda-operator'"
    )
    binding = find(
        docs, "ValidatingAdmissionPolicyBinding", "keda-tenancy-tenant-a-operator-cluster-objects"
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]


def test_tenant_network_policies(helm: Helm, router_docs: list[Doc]) -> None:
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    policies = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "NetworkPolicy")}
    deny = policies["keda-tenancy-default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    adapter = policies["keda-operator-metrics-apiserver"]
    (rule,) = adapter["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": ROUTER_NAMESPACE}
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "router"
    router = find(router_docs, "Deployment", ROUTER_RELEASE)
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    operator = policies["keda-operator"]
    tenant_peers = operator["egress"][0]["to"]
    assert tenant_peers == [
        {"namespaceSelector": {"matchLabels": {"keda-tenancy.io/tenant": "tenant-a"}}}
    ]
    # Ingress to the operator only from its metrics server.
    (rule,) = operator["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "metrics-apiserver"
    )


def test_tenant_cilium_policy_matches_hnc_tree_labels(helm: Helm, router_docs: list[Doc]) -> None:
    docs = render_tenant(helm, tenant_values("hnc-deployment-cilium", "tenant-a", router_docs))
    assert not of_kind(docs, "NetworkPolicy")
    policy = find(docs, "CiliumClusterwideNetworkPolicy", "keda-tenancy-tenant-a-operator")
    assert policy["spec"]["endpointSelector"]["matchLabels"]["io.kubernetes.pod.namespace"] == (
        "keda-tenant-a"
    )
    assert policy["spec"]["egress"][0]["toEndpoints"] == [
        {
            "matchExpressions": [
                {
                    "key": "io.cilium.k8s.namespace.labels.tenant-a.tree.hnc.x-k8s.io/depth",
                    "operator": "Exists",
                }
            ]
        }
    ]
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    assert webhook["webhooks"][0]["namespaceSelector"] == {
        "matchExpressions": [{"key": "tenant-a.tree.hnc.x-k8s.io/depth", "operator": "Exists"}]
    }


# --- two tenants and the router together ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["label-process", "hnc-deployment-cilium", "name-pattern", "cert-manager"]
)
def test_two_tenants_and_the_router_never_clash(helm: Helm, name: str) -> None:
    installation = render_installation(
        helm,
        router_values=CERT_MANAGER if name == "cert-manager" else {},
        tenant_values=lambda tenant: _for_tenant(TENANT_VALUE_SETS[name], tenant),
    )
    docs = installation.all_docs()
    counts = Counter(key(doc) for doc in docs)
    assert [k for k, n in counts.items() if n > 1] == []
    for doc in docs:
        assert is_cluster_scoped(doc) or doc["metadata"].get("namespace"), key(doc)
    for tenant, tenant_docs in installation.tenants.items():
        for doc in tenant_docs:
            if is_cluster_scoped(doc):
                assert tenant in doc["metadata"]["name"], key(doc)
    assert len(of_kind(docs, "APIService")) == 1


# --- schema and template-time checks -----------------------------------------------------------

ROUTER_REJECTED = {
    "plain-http-upstream": {"router": {"upstream": {"urlTemplate": "http://x.{tenant}.svc"}}},
    "template-without-tenant": {"router": {"upstream": {"urlTemplate": "https://x.svc:443"}}},
    "insecure-apiservice": {"apiService": {"insecureSkipTLSVerify": True}},
    "no-tenancy-rule": {"tenancy": {"labelKeys": []}},
    "pattern-without-group": {"tenancy": {"namespaceNamePattern": "(.+)--.+"}},
    "bad-log-level": {"router": {"logLevel": "verbose"}},
    "zero-replicas": {"replicaCount": 0},
    "root-container": {
        "securityContext": {"runAsNonRoot": False, "allowPrivilegeEscalation": False}
    },
    "bad-duration": {"router": {"upstream": {"timeout": "30"}}},
    "typo": {"routr": {}},
    "client-identity-from-a-cluster-issuer": {
        "certificates": {
            "certManager": {
                "enabled": True,
                "upstreamClientIssuerRef": {"kind": "ClusterIssuer", "name": "anyone"},
            }
        }
    },
    "renew-before-is-not-a-duration": {"certificates": {"renewBefore": "45 days"}},
    "tenant-pattern-without-group": {"certificates": {"tenants": {"namespacePattern": "keda-.+"}}},
}

TENANT_REJECTED = {
    "no-tenant": {"tenant": ""},
    "bad-tenant": {"tenant": "Tenant_A"},
    "bad-mode": {"reloader": {"mode": "sidecar"}},
    "bad-scope": {"rbac": {"scope": "everywhere"}},
    "watch-namespace-env": {"operator": {"env": [{"name": "WATCH_NAMESPACE", "value": ""}]}},
    "reloader-port-clash": {"reloader": {"healthPort": 8081}},
    "bad-flavor": {"networkPolicy": {"flavor": "calico"}},
    "no-router-cn": {"router": {"clientCommonName": ""}},
    "not-a-pem": {"router": {"clientCA": "hello"}},
    # Template-time checks.
    "name-pattern-without-selectors": {
        "tenancy": {"labelKeys": [], "namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+"}
    },
    "hnc-roots-without-tenant": {"tenancy": {"hnc": {"roots": ["someone-else"]}}},
    "namespaces-scope-without-namespaces": {"rbac": {"scope": "namespaces"}},
    "old-router-ca-values": {"certificates": {"routerCA": {"caCert": "", "caKey": ""}}},
    # client-go refuses these at KEDA's start; the chart says so at install.
    "lease-not-longer-than-renew": {
        "operator": {"leaderElectionLeaseDuration": "40s", "leaderElectionRenewDeadline": "40s"}
    },
    "renew-within-jittered-retry": {
        "operator": {
            "leaderElectionLeaseDuration": "2m",
            "leaderElectionRenewDeadline": "1m",
            "leaderElectionRetryPeriod": "50s",
        }
    },
    "bad-duration": {"operator": {"leaderElectionRetryPeriod": "15 seconds"}},
}


@pytest.mark.parametrize("name", sorted(ROUTER_REJECTED))
def test_router_rejects_bad_values(helm: Helm, name: str) -> None:
    result = helm.template_raw(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values=ROUTER_REJECTED[name],
    )
    assert result.returncode != 0, result.stdout[:2000]
    assert "Error" in result.stderr


@pytest.mark.parametrize("name", sorted(TENANT_REJECTED))
def test_tenant_rejects_bad_values(helm: Helm, router_docs: list[Doc], name: str) -> None:
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs), TENANT_REJECTED[name]
    )
    result = helm.template_raw(
        TENANT_CHART, release="keda", namespace="keda-tenant-a", values=values
    )
    assert result.returncode != 0, result.stdout[:2000]
    assert "Error" in result.stderr


@pytest.mark.parametrize(
    "timings",
    [
        {"leaderElectionRetryPeriod": ""},  # KEDA's own 2s with the chart's 60s/40s
        {
            "leaderElectionLeaseDuration": "1m30s",
            "leaderElectionRenewDeadline": "1m",
            "leaderElectionRetryPeriod": "49500ms",
        },
    ],
)
def test_tenant_accepts_leader_election_timings_client_go_accepts(
    helm: Helm, router_docs: list[Doc], timings: dict[str, str]
) -> None:
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs), {"operator": timings}
    )
    keda = container(
        find(render_tenant(helm, values), "Deployment", "keda-operator"), "keda-operator"
    )
    env = {e["name"]: e.get("value") for e in keda["env"]}
    for value, name in [
        ("leaderElectionLeaseDuration", "LEASE_DURATION"),
        ("leaderElectionRenewDeadline", "RENEW_DEADLINE"),
        ("leaderElectionRetryPeriod", "RETRY_PERIOD"),
    ]:
        if timings.get(value) == "":
            assert f"KEDA_OPERATOR_LEADER_ELECTION_{name}" not in env  # KEDA's default
        elif value in timings:
            assert env[f"KEDA_OPERATOR_LEADER_ELECTION_{name}"] == timings[value]


def test_tenant_refuses_a_system_namespace(helm: Helm, router_docs: list[Doc]) -> None:
    values = tenant_values("label-process", "tenant-a", router_docs)
    with pytest.raises(HelmFailed, match="own namespace"):
        helm.template(TENANT_CHART, release="keda", namespace="default", values=values)


# --- the real KEDA binaries accept the rendered flags -----------------------------------------


def _keda_binary(helm: Helm, name: str) -> Path:
    path = helm.path.parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not built next to helm ({helm.path.parent})")
    return path


def _accepts(binary: Path, args: list[str]) -> None:
    """pflag parses every flag before --help: an unknown flag exits 2."""
    result = subprocess.run(
        [str(binary), *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["label-process", "label-deployment"])
def test_keda_operator_accepts_the_rendered_flags(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    keda = _keda_binary(helm, "keda")
    docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
    operator = container(find(docs, "Deployment", "keda-operator"))
    args = operator["args"]
    if "--" in args:
        args = args[args.index("--") + 2 :]
    _accepts(keda, args)


@pytest.mark.parametrize("name", ["label-process", "label-deployment"])
def test_keda_adapter_accepts_the_rendered_flags(
    helm: Helm, router_docs: list[Doc], name: str
) -> None:
    adapter = _keda_binary(helm, "keda-adapter")
    docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
    _accepts(
        adapter, container(find(docs, "Deployment", "keda-operator-metrics-apiserver"))["args"]
    )


def test_the_rbac_matrix_covers_every_identity_of_both_certificate_options(helm: Helm) -> None:
    """test_13 asks kube-apiserver about the identities the cluster's install creates (default
    certificates); with cert-manager instead, the charts create no identity beyond those."""

    def identities(router_values: dict[str, Any]) -> set[tuple[str, str]]:
        installation = render_installation(
            helm,
            tenants=rbac_matrix.TENANTS,
            router_values=router_values,
            tenant_values=lambda t: {"reloader": {"mode": "deployment"}} if t == "beta" else {},
        )
        return {
            (d["metadata"]["namespace"], d["metadata"]["name"])
            for d in installation.all_docs()
            # Hook objects exist only during `helm uninstall` (test_uninstall_hook.py).
            if d
            and d["kind"] == "ServiceAccount"
            and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
        }

    default = identities({})
    assert default == set(rbac_matrix.identities())
    assert identities({"certificates": {"certManager": {"enabled": True}}}) <= default
