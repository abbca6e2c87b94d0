"""The Helm charts in deploy/charts, rendered with a real helm: lint, several value sets, the
isolation invariants (no clashing cluster-scoped names, no tenant APIService, verified TLS),
the schema, and the rendered flags parsed by the binaries they are meant for."""

from __future__ import annotations

import base64
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from reloader.config import ReloaderConfig
from router.config import RouterConfig
from tests.deploy.charts import (
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    TENANT_CHART,
    Doc,
    Helm,
    HelmFailed,
    HelmNotFound,
    container,
    deep_merge,
    find,
    find_helm,
    is_cluster_scoped,
    key,
    of_kind,
    render_installation,
    router_ca_values,
    tenant_namespace,
    walk,
)

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
            "tenants": {"tenant-a": {"namespaces": ["a-one", "a-two"]}, "tenant-b": None},
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
                "certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "corp"}}
            },
            "serviceMonitor": {"enabled": True},
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


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"helm is required in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def router_docs(helm: Helm) -> list[Doc]:
    return helm.template(ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE)


def render_router(helm: Helm, values: dict[str, Any]) -> list[Doc]:
    return helm.template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE, values=values
    )


def tenant_values(name: str, tenant: str, router_docs: list[Doc]) -> dict[str, Any]:
    values = deep_merge({"tenant": tenant}, _for_tenant(TENANT_VALUE_SETS[name], tenant))
    if not values.get("certificates", {}).get("certManager", {}).get("enabled"):
        values = deep_merge(router_ca_values(router_docs), values)
    return values


def render_tenant(helm: Helm, values: dict[str, Any]) -> list[Doc]:
    namespace = tenant_namespace(values["tenant"])
    return helm.template(TENANT_CHART, release="keda", namespace=namespace, values=values)


def load_cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def secret_pem(doc: Doc, item: str) -> bytes:
    return base64.b64decode(doc["data"][item])


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    key = ca.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        assert cert.signature_hash_algorithm is not None
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert cert.signature_hash_algorithm is not None
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    return True


def dns_names(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


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
    if name in ("label-cert-manager", "everything-on"):
        namespace, _, certificate = annotations["cert-manager.io/inject-ca-from"].partition("/")
        assert namespace == ROUTER_NAMESPACE
        find(docs, "Certificate", certificate)
        assert "caBundle" not in spec
    else:
        assert "cert-manager.io/inject-ca-from" not in annotations
        ca = load_cert(base64.b64decode(spec["caBundle"]))
        serving = load_cert(
            secret_pem(find(docs, "Secret", f"{ROUTER_RELEASE}-serving-tls"), "tls.crt")
        )
        assert signed_by(serving, ca)
        assert f"{ROUTER_RELEASE}.{ROUTER_NAMESPACE}.svc" in dns_names(serving)


def test_router_generated_certificates_chain_to_one_ca(router_docs: list[Doc]) -> None:
    ca_secret = find(router_docs, "Secret", f"{ROUTER_RELEASE}-ca")
    ca = load_cert(secret_pem(ca_secret, "tls.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    client_secret = find(router_docs, "Secret", f"{ROUTER_RELEASE}-upstream-client-tls")
    client = load_cert(secret_pem(client_secret, "tls.crt"))
    assert signed_by(client, ca)
    assert client.subject.rfc4514_string() == "CN=keda-tenancy-router"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    # The router verifies upstreams with the ca.crt next to its client certificate.
    assert secret_pem(client_secret, "ca.crt") == secret_pem(ca_secret, "tls.crt")


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
    assert not of_kind(docs, "Role")
    docs = render_router(helm, ROUTER_VALUE_SETS["everything-on"])
    assert not of_kind(docs, "Role")
    assert not of_kind(docs, "RoleBinding")
    # With the requestheader CA given as a value, the ConfigMap is not needed at all.
    args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
    assert flag(args, "requestheader-client-ca-file") == "/etc/keda-tenancy/requestheader/ca.crt"
    assert flag(args, "upstream-ca-file") == "/etc/keda-tenancy/upstream-ca/ca.crt"
    assert of_kind(docs, "ServiceMonitor")
    assert of_kind(docs, "NetworkPolicy")
    # A user-supplied issuer: no chart-made CA.
    assert not of_kind(docs, "ClusterIssuer")


def test_router_tenancy_flags_follow_the_values(helm: Helm) -> None:
    expectations = {
        "label": {"tenant-label-key": "keda-tenancy.io/tenant"},
        "hnc": {"hnc-roots": "tenant-a,tenant-b"},
        "hnc-root-label": {"hnc-root-label": "example.com/tenant-root"},
        "name-pattern": {"namespace-name-pattern": "(?P<tenant>[a-z0-9-]+?)--.+"},
        "tenancy-file": {"tenancy-file": "/etc/keda-tenancy/tenancy/tenancy.yaml"},
    }
    for name, flags in expectations.items():
        docs = render_router(helm, ROUTER_VALUE_SETS[name])
        args = container(find(docs, "Deployment", ROUTER_RELEASE))["args"]
        for flag_name, value in flags.items():
            assert flag(args, flag_name) == value, (name, args)
    docs = render_router(helm, ROUTER_VALUE_SETS["tenancy-file"])
    tenancy = find(docs, "ConfigMap", f"{ROUTER_RELEASE}-tenancy")
    assert "a-two" in tenancy["data"]["tenancy.yaml"]


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
    if values.get("reloader", {}).get("mode") == "deployment":
        assert keda["command"] == ["/keda"]
        keda_args = keda["args"]
        # The reloader's two fields are left out (it server-side applies them), so Helm or a
        # GitOps controller applying this never resets them.
        assert "replicas" not in operator["spec"]
        assert "annotations" not in operator["metadata"]
        # The new pod waits as a standby before the old one stops; the reloader hands over.
        assert operator["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        # ... which takes the released Lease at its next retry.
        assert env["KEDA_OPERATOR_LEADER_ELECTION_RETRY_PERIOD"]["value"] == "500ms"
        reloader = container(find(docs, "Deployment", "keda-namespace-reloader"))
        config = ReloaderConfig.from_args(reloader["args"], {})
        assert config.mode == "deployment"
        assert config.target_deployment == ("keda-tenant-a", "keda-operator")
        assert config.container == "keda-operator"
        assert config.replicas == 1
    else:
        assert keda["command"] == ["keda-tenancy-reloader"]
        # The next operator starts only after the Lease is released: KEDA's own retry period.
        assert "KEDA_OPERATOR_LEADER_ELECTION_RETRY_PERIOD" not in env
        config = ReloaderConfig.from_args(keda["args"], {})
        assert config.mode == "process"
        assert config.command[0] == "/keda"
        keda_args = list(config.command[1:])
        probe_port = keda["livenessProbe"]["httpGet"]["port"]
        assert probe_port == "reloader"
        assert config.health_port == next(
            p["containerPort"] for p in keda["ports"] if p["name"] == "reloader"
        )
    assert config.tenant == "tenant-a"
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
    assert flag(args, "requestheader-client-ca-file") == "/apiserver-certs/ca.crt"
    assert flag(args, "client-ca-file") == "/certs/ca.crt"
    assert flag(args, "metrics-service-address") == (
        "keda-operator.keda-tenant-a.svc.cluster.local:9666"
    )
    env = {e["name"]: e.get("value") for e in container(adapter)["env"]}
    assert env["WATCH_NAMESPACE"] == "keda-tenant-a"

    router_ca = load_cert(
        secret_pem(find(router_docs, "Secret", f"{ROUTER_RELEASE}-ca"), "tls.crt")
    )
    serving_secret = find(docs, "Secret", "keda-metrics-apiserver-tls")
    serving = load_cert(secret_pem(serving_secret, "tls.crt"))
    # The router verifies this certificate with its CA, for the name its template yields...
    assert signed_by(serving, router_ca)
    assert "keda-operator-metrics-apiserver.keda-tenant-a.svc" in dns_names(serving)
    # ... and this server checks the router's client certificate against the same CA.
    assert load_cert(secret_pem(serving_secret, "ca.crt")) == router_ca
    router_client = load_cert(
        secret_pem(find(router_docs, "Secret", f"{ROUTER_RELEASE}-upstream-client-tls"), "tls.crt")
    )
    assert signed_by(router_client, router_ca)
    # KEDA's internal CA is the tenant's own, not the router's.
    internal = find(docs, "Secret", "kedaorg-certs")
    internal_ca = load_cert(secret_pem(internal, "ca.crt"))
    assert internal_ca != router_ca
    internal_cert = load_cert(secret_pem(internal, "tls.crt"))
    assert signed_by(internal_cert, internal_ca)
    assert "keda-operator.keda-tenant-a.svc.cluster.local" in dns_names(internal_cert)
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    for hook in webhook["webhooks"]:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == secret_pem(internal, "ca.crt")


def test_tenant_cert_manager_uses_the_router_issuer(helm: Helm) -> None:
    docs = render_tenant(
        helm, deep_merge({"tenant": "tenant-a"}, TENANT_VALUE_SETS["cert-manager"])
    )
    assert not of_kind(docs, "Secret")
    certificate = find(docs, "Certificate", "keda-metrics-apiserver")
    assert certificate["spec"]["issuerRef"]["name"] == f"{ROUTER_RELEASE}-ca"
    assert certificate["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    router = render_router(helm, ROUTER_VALUE_SETS["label-cert-manager"])
    find(router, "ClusterIssuer", f"{ROUTER_RELEASE}-ca")
    webhook = find(docs, "ValidatingWebhookConfiguration", "keda-tenancy-tenant-a-admission")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "keda-tenant-a/kedaorg-certs"
    )
    assert find(docs, "ResourceQuota", "keda-tenancy")
    assert find(docs, "LimitRange", "keda-tenancy")


def test_tenant_rbac_scope(helm: Helm, router_docs: list[Doc]) -> None:
    def bindings(name: str) -> tuple[list[Doc], list[Doc]]:
        docs = render_tenant(helm, tenant_values(name, "tenant-a", router_docs))
        operator_role = "keda-tenancy-tenant-a-operator"
        return (
            [d for d in of_kind(docs, "RoleBinding") if d["roleRef"]["name"] == operator_role],
            [
                d
                for d in of_kind(docs, "ClusterRoleBinding")
                if d["roleRef"]["name"] == operator_role
            ],
        )

    namespaced, cluster = bindings("hnc-process")
    assert [d["metadata"]["namespace"] for d in namespaced] == ["tenant-a"]
    assert not cluster
    namespaced, cluster = bindings("name-pattern-no-webhooks-no-netpol")
    assert [d["metadata"]["namespace"] for d in namespaced] == ["tenant-a--one"]
    assert not cluster
    assert bindings("name-pattern") == ([], [])
    namespaced, cluster = bindings("label-process")
    assert not namespaced
    assert len(cluster) == 1


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
    "no-router-ca": {"certificates": {"routerCA": {"caCert": "", "caKey": ""}}},
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


def test_keda_adapter_accepts_the_rendered_flags(helm: Helm, router_docs: list[Doc]) -> None:
    adapter = _keda_binary(helm, "keda-adapter")
    docs = render_tenant(helm, tenant_values("label-process", "tenant-a", router_docs))
    _accepts(
        adapter, container(find(docs, "Deployment", "keda-operator-metrics-apiserver"))["args"]
    )
