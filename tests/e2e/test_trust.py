"""Separate trust, against the real kube-apiserver and a real KEDA metrics adapter.

The router and tenant charts are rendered with default values and applied (the router without
its APIService: the session stack owns that one). keda-tenancy-certs runs as the chart's
ServiceAccount (a TokenRequest token) under the RBAC the charts render, and makes every
certificate; the tenant's KEDA metrics adapter runs with the flags the tenant chart renders,
as the chart's keda-metrics-server ServiceAccount, from the Secrets keda-tenancy-certs wrote.
Then: the router's client certificate is accepted, and every certificate a tenant could
obtain with CN keda-tenancy-router is refused with 401.
"""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controller.certs.pki import Authority, LeafRequest, issue, new_authority
from tests.deploy.charts import (
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    TENANT_CHART,
    Doc,
    Helm,
    container,
    find,
    find_helm,
)
from tests.e2e.stack import ROOT, Process, Stack, free_port, running_stack, wait_for

pytestmark = pytest.mark.e2e

TENANT = "gamma"  # none of the session stack's namespaces belong to it
TENANT_NS = f"keda-{TENANT}"
METRICS_HOST = f"keda-operator-metrics-apiserver.{TENANT_NS}.svc"
CERTS_SA = f"{ROUTER_RELEASE}-certs"
IDENTITY = {"X-Remote-User": "alice", "X-Remote-Group": "system:authenticated"}
DISCOVERY = "/apis/external.metrics.k8s.io/v1beta1"


@dataclass
class Trust:
    stack: Stack
    dir: Path
    router_docs: list[Doc]
    tenant_docs: list[Doc]
    spec_file: Path
    certs_kubeconfig: Path
    adapter_port: int = 0
    adapter: Process | None = None

    def secret(self, namespace: str, name: str) -> dict[str, bytes]:
        done = self.stack.kubectl("get", "secret", name, "-n", namespace, "-o", "json")
        data = json.loads(done.stdout).get("data") or {}
        return {k: base64.b64decode(v) for k, v in data.items()}

    def secret_versions(self, namespace: str) -> dict[str, str]:
        done = self.stack.kubectl("get", "secrets", "-n", namespace, "-o", "json")
        return {
            item["metadata"]["name"]: item["metadata"]["resourceVersion"]
            for item in json.loads(done.stdout)["items"]
        }

    def run_certs(self, spec_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "controller.certs.bootstrap",
                f"--spec-file={spec_file or self.spec_file}",
                f"--kubeconfig={self.certs_kubeconfig}",
                "--once",
                "--log-level=debug",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            check=False,
        )

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


def token_kubeconfig(stack: Stack, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of the ServiceAccount: what its pod would get."""
    return stack.service_account_kubeconfig(namespace, account, path)


def apply_docs(stack: Stack, docs: list[Doc]) -> None:
    stack.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=helm",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    )


@pytest.fixture(scope="module")
def trust(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trust]:
    workdir = tmp_path_factory.mktemp("trust")
    helm = Helm(find_helm())
    router_docs = helm.template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"apiService": {"create": False}},
    )
    tenant_docs = helm.template(
        TENANT_CHART, release="keda", namespace=TENANT_NS, values={"tenant": TENANT}
    )
    stack.apply(
        *(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in (ROUTER_NAMESPACE, TENANT_NS)
        )
    )
    apply_docs(stack, [d for d in router_docs if d["kind"] != "APIService"])
    apply_docs(stack, tenant_docs)
    spec = find(router_docs, "ConfigMap", CERTS_SA)["data"]["spec.yaml"]
    spec_file = workdir / "spec.yaml"
    spec_file.write_text(spec)
    made = Trust(
        stack=stack,
        dir=workdir,
        router_docs=router_docs,
        tenant_docs=tenant_docs,
        spec_file=spec_file,
        certs_kubeconfig=token_kubeconfig(
            stack, ROUTER_NAMESPACE, CERTS_SA, workdir / "certs.kubeconfig"
        ),
    )
    done = made.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]
    start_adapter(made)
    yield made
    if made.adapter is not None:
        made.adapter.stop()


def start_adapter(trust: Trust) -> None:
    """KEDA's metrics adapter with the tenant chart's flags, env and ServiceAccount; the files
    are the Secrets' contents, where the chart mounts them (paths remapped to this directory)."""
    stack = trust.stack
    deployment = find(trust.tenant_docs, "Deployment", "keda-operator-metrics-apiserver")
    pod = deployment["spec"]["template"]["spec"]
    adapter = container(deployment)
    mounts = {m["name"]: m["mountPath"] for m in adapter["volumeMounts"]}
    remap: dict[str, str] = {}
    for volume in pod["volumes"]:
        secret = volume.get("secret", {}).get("secretName")
        if secret is None:
            continue
        local = trust.dir / volume["name"]
        local.mkdir(exist_ok=True)
        for key, value in trust.secret(TENANT_NS, secret).items():
            (local / key).write_bytes(value)
        remap[mounts[volume["name"]]] = str(local)
    kubeconfig = token_kubeconfig(
        stack, TENANT_NS, pod["serviceAccountName"], trust.dir / "adapter.kubeconfig"
    )
    trust.adapter_port = free_port()
    args = []
    for rendered in adapter["args"]:
        arg = rendered
        for mount, local in remap.items():
            arg = arg.replace(f"={mount}/", f"={local}/").replace(f"={mount}", f"={local}")
        if arg.startswith("--secure-port="):
            arg = f"--secure-port={trust.adapter_port}"
        elif arg.startswith("--port="):
            arg = f"--port={free_port()}"
        elif arg.startswith("--metrics-service-address="):
            arg = f"--metrics-service-address=127.0.0.1:{free_port()}"  # no operator needed
        args.append(arg)
    env = {e["name"]: e["value"] for e in adapter["env"] if "value" in e}
    env |= {"POD_NAMESPACE": TENANT_NS, "KUBERNETES_SERVICE_HOST": ""}
    trust.adapter = stack.run(
        f"trust-adapter-{TENANT}",
        [
            str(stack.bin / "keda-adapter"),
            *args,
            "--bind-address=127.0.0.1",
            # The pod's in-cluster identity, as a kubeconfig: the chart's ServiceAccount.
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--lister-kubeconfig={kubeconfig}",
        ],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), **env},
    )
    wait_for(lambda: _port_open(trust.adapter_port), "tenant metrics adapter listening", 120, 0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def status_with(trust: Trust, cert: Path, key: Path, headers: dict[str, str]) -> int:
    """HTTP status of GET DISCOVERY with this client certificate, the server verified the way
    the router verifies it (tenantServing CA, the tenant's Service name)."""
    ca = trust.write(
        "router-upstream-ca.crt",
        _configmap(trust, f"{ROUTER_RELEASE}-trust")["tenant-serving-ca.crt"].encode(),
    )
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    request = f"GET {DISCOVERY} HTTP/1.1\r\nHost: {METRICS_HOST}\r\nConnection: close\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with (
        socket.create_connection(("127.0.0.1", trust.adapter_port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=METRICS_HOST) as tls,
    ):
        tls.sendall(request.encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    return int(response.split(b" ", 2)[1])


def _configmap(trust: Trust, name: str) -> dict[str, str]:
    done = trust.stack.kubectl("get", "configmap", name, "-n", ROUTER_NAMESPACE, "-o", "json")
    return dict(json.loads(done.stdout)["data"])


def _pair(trust: Trust, name: str, data: dict[str, bytes]) -> tuple[Path, Path]:
    return trust.write(f"{name}.crt", data["tls.crt"]), trust.write(f"{name}.key", data["tls.key"])


def _signed(pem: bytes, ca_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --- the tests --------------------------------------------------------------------------------


def test_keda_tenancy_certs_makes_three_separate_trusts(trust: Trust) -> None:
    names = {
        "apiService": f"{ROUTER_RELEASE}-apiservice-ca",
        "upstreamClient": f"{ROUTER_RELEASE}-upstream-client-ca",
        "tenantServing": f"{ROUTER_RELEASE}-tenant-serving-ca",
    }
    cas = {k: trust.secret(ROUTER_NAMESPACE, v)["tls.crt"] for k, v in names.items()}
    assert len(set(cas.values())) == 3
    serving = trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-serving-tls")["tls.crt"]
    client = trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-upstream-client-tls")["tls.crt"]
    metrics = trust.secret(TENANT_NS, "keda-metrics-apiserver-tls")
    for pem, owner in ((serving, "apiService"), (client, "upstreamClient")):
        assert [k for k, ca in cas.items() if _signed(pem, ca)] == [owner]
    assert [k for k, ca in cas.items() if _signed(metrics["tls.crt"], ca)] == ["tenantServing"]
    # The tenant namespace holds public CA certificates and its own keys only.
    assert metrics["client-ca.crt"] == cas["upstreamClient"]
    assert metrics["ca.crt"] == cas["tenantServing"]
    router_keys = {trust.secret(ROUTER_NAMESPACE, v)["tls.key"] for v in names.values()} | {
        trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-upstream-client-tls")["tls.key"]
    }
    for name in trust.secret_versions(TENANT_NS):
        assert not set(trust.secret(TENANT_NS, name).values()) & router_keys, name
    # The published trust ConfigMap has certificates, never keys.
    published = _configmap(trust, f"{ROUTER_RELEASE}-trust")
    assert published["upstream-client-ca.crt"].encode() == cas["upstreamClient"]
    assert not [v for v in published.values() if "PRIVATE KEY" in v]
    # The stack's own tenants did not grant it anything: nothing was written there.
    for namespace in ("keda-alpha", "keda-beta"):
        assert not [n for n in trust.secret_versions(namespace) if n.startswith("keda-tenancy")]


def test_the_router_identity_is_accepted(trust: Trust) -> None:
    cert, key = _pair(
        trust,
        "router-client",
        trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-upstream-client-tls"),
    )
    assert status_with(trust, cert, key, IDENTITY) == 200


def test_a_certificate_a_tenant_could_obtain_as_the_router_is_refused_401(trust: Trust) -> None:
    now = datetime.datetime.now(datetime.UTC)
    as_router = LeafRequest(common_name="keda-tenancy-router", client=True, server=True)
    internal = Authority.from_data(trust.secret(TENANT_NS, "keda-tenancy-internal-ca"))
    # What cert-manager's tenantServing ClusterIssuer would sign for any namespace.
    tenant_serving = Authority.from_data(
        trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-tenant-serving-ca")
    )
    self_signed = Authority.from_data(
        new_authority("keda-tenancy-router", datetime.timedelta(days=1), now)
    )
    candidates = {
        # The tenant's own internal CA, whose key is in its namespace.
        "internal-ca": issue(internal, as_router, now),
        # The issuer every tenant may use for serving certificates.
        "tenant-serving-ca": issue(tenant_serving, as_router, now),
        # The Secrets the tenant holds, as they are.
        "metrics-server-serving": trust.secret(TENANT_NS, "keda-metrics-apiserver-tls"),
        "keda-internal-leaf": trust.secret(TENANT_NS, "kedaorg-certs"),
        # Anyone's own CA with the router's name.
        "self-made-ca": issue(self_signed, as_router, now),
    }
    refused = {
        name: status_with(trust, *_pair(trust, f"tenant-{name}", data), IDENTITY)
        for name, data in candidates.items()
    }
    assert refused == dict.fromkeys(candidates, 401)


def test_a_second_run_changes_nothing_and_renewal_keeps_the_cas(trust: Trust) -> None:
    before = {ns: trust.secret_versions(ns) for ns in (ROUTER_NAMESPACE, TENANT_NS)}
    done = trust.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]
    assert {ns: trust.secret_versions(ns) for ns in before} == before
    # Renewal due (renewBefore just under the validity): leaves are reissued, the CAs stay.
    spec: dict[str, Any] = yaml.safe_load(trust.spec_file.read_text())
    for certificate in [*spec["certificates"], *spec["tenants"]["certificates"]]:
        certificate["validity"] = "1h"
        certificate["renewBefore"] = "59m59s"
    due = trust.write("spec-due.yaml", yaml.safe_dump(spec).encode())
    old_client = trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-upstream-client-tls")
    # First run: the shorter validity reissues every leaf; two seconds on, all are due.
    done = trust.run_certs(due)
    assert done.returncode == 0, done.stderr[-3000:]
    time.sleep(2)
    done = trust.run_certs(due)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {ns: trust.secret_versions(ns) for ns in before}
    for ns, versions in before.items():
        for name, version in versions.items():
            changed = after[ns][name] != version
            assert changed == name.endswith(("-tls", "kedaorg-certs")), (ns, name)
    new_client = trust.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-upstream-client-tls")
    assert new_client["tls.crt"] != old_client["tls.crt"]
    # The renewed identity still chains to the same client CA the tenant trusts.
    cert, key = _pair(trust, "router-client-renewed", new_client)
    assert status_with(trust, cert, key, IDENTITY) == 200


def test_the_webhook_ca_bundle_survives_a_gitops_reapply(trust: Trust) -> None:
    """keda-tenancy-certs owns caBundle under its own field manager; applying the chart again
    (server-side, as Argo CD or Flux do; the chart has no caBundle) leaves it in place."""
    name = f"keda-tenancy-{TENANT}-admission"

    def live() -> dict[str, Any]:
        done = trust.stack.kubectl(
            "get", "validatingwebhookconfiguration", name, "-o", "json", "--show-managed-fields"
        )
        return dict(json.loads(done.stdout))

    internal = trust.secret(TENANT_NS, "keda-tenancy-internal-ca")["tls.crt"]
    before = live()
    bundles = {base64.b64decode(h["clientConfig"]["caBundle"]) for h in before["webhooks"]}
    assert bundles == {internal}
    managers = {
        entry["manager"]
        for entry in before["metadata"]["managedFields"]
        if "caBundle" in json.dumps(entry.get("fieldsV1", {}))
    }
    assert managers == {"keda-tenancy-certs"}
    apply_docs(trust.stack, trust.tenant_docs)
    after = live()
    assert [h["clientConfig"].get("caBundle") for h in after["webhooks"]] == [
        h["clientConfig"]["caBundle"] for h in before["webhooks"]
    ]
    # And the next keda-tenancy-certs pass has nothing to do there.
    done = trust.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr + done.stdout
    assert "no grant in keda-alpha" in log  # the log is there, and says so for the others
    assert "set the caBundle" not in log


SA_TOKEN = "kubernetes.io/service-account-token"


def test_the_certs_controller_cannot_mint_a_service_account_token(trust: Trust) -> None:
    """RBAC lets keda-tenancy-certs create Secrets wherever a release grants it (create cannot
    be limited by name or type), and a service-account-token Secret would have the token
    controller mint a token for that ServiceAccount (the tenant's operator, say). The router
    chart's admission policy makes kube-apiserver refuse its identity anything but the
    kubernetes.io/tls Secrets it keeps."""
    stack = trust.stack
    certs_user = f"system:serviceaccount:{ROUTER_NAMESPACE}:{CERTS_SA}"
    # RBAC alone would allow it: the policy is what refuses.
    for namespace in (TENANT_NS, ROUTER_NAMESPACE):
        allowed = stack.kubectl(
            "auth", "can-i", "create", "secrets", "-n", namespace, f"--as={certs_user}",
            check=False,
        )  # fmt: skip
        assert allowed.stdout.strip() == "yes", (namespace, allowed.stderr)

    def create(namespace: str, name: str, kind: str, *extra: str) -> str:
        doc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": kind,
        }
        if kind == SA_TOKEN:
            doc["metadata"]["annotations"] = {"kubernetes.io/service-account.name": "keda-operator"}
        elif kind == "kubernetes.io/tls":
            doc["data"] = {"tls.crt": "", "tls.key": ""}
        done = stack.kubectl(
            "create", "-f", "-", *extra,
            kubeconfig=trust.certs_kubeconfig, stdin=json.dumps(doc), check=False,
        )  # fmt: skip
        return done.stderr if done.returncode else "created"

    # kube-apiserver enforces a policy once it has loaded it (applied with the chart).
    wait_for(
        lambda: (
            "ValidatingAdmissionPolicy" in create(TENANT_NS, "probe", SA_TOKEN, "--dry-run=server")
        ),
        "the certs admission policy in force",
        30,
    )
    attempts = {
        "operator-token": (TENANT_NS, "keda-operator-token", SA_TOKEN),
        "router-token": (ROUTER_NAMESPACE, "router-token", SA_TOKEN),
        "opaque": (TENANT_NS, "anything", "Opaque"),
        "tls-of-another-name": (TENANT_NS, "anything-tls", "kubernetes.io/tls"),
        "router-name-in-a-tenant": (TENANT_NS, f"{ROUTER_RELEASE}-upstream-client-ca", "kubernetes.io/tls"),
    }  # fmt: skip
    refused = {what: create(*attempt) for what, attempt in attempts.items()}
    for what, answer in refused.items():
        assert f"ValidatingAdmissionPolicy '{CERTS_SA}-secrets'" in answer, (what, answer)
        assert "denied request" in answer, (what, answer)
    assert "writes only kubernetes.io/tls" in refused["operator-token"]
    assert "keeps no Secret named anything-tls" in refused["tls-of-another-name"]
    for namespace, name, _ in attempts.values():
        gone = stack.kubectl("get", "secret", name, "-n", namespace, check=False)
        assert "NotFound" in gone.stderr, (namespace, name)
    # What it keeps it still writes: a full pass succeeds under the policy.
    done = trust.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_malformed_ca_in_one_tenant_namespace_stays_there(trust: Trust) -> None:
    """A second tenant release whose internal CA Secret is unusable (an RSA CA): the run
    reports it there (log, Event on the Secret, exit status) and still makes the other
    tenant's certificates; once deleted, the Secret is made anew."""
    stack = trust.stack
    other_ns = "keda-delta"
    docs = Helm(find_helm()).template(
        TENANT_CHART, release="keda", namespace=other_ns, values={"tenant": "delta"}
    )
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other_ns}})
    apply_docs(stack, docs)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "an RSA CA")])
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
    cert_file = trust.write("rsa-ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    key_file = trust.write(
        "rsa-ca.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    stack.kubectl(
        "create", "secret", "tls", "keda-tenancy-internal-ca", "-n", other_ns,
        f"--cert={cert_file}", f"--key={key_file}",
    )  # fmt: skip
    # keda-delta comes before keda-gamma: gamma's leaf, deleted, must be made in the same run.
    stack.kubectl("delete", "secret", "kedaorg-certs", "-n", TENANT_NS)
    done = trust.run_certs()
    assert done.returncode != 0
    assert "keda-delta" in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [
        (line["namespace"], line["secret"])
        for line in lines
        if line.get("reason") == "ca-key-not-ecdsa"
    ] == [(other_ns, "keda-tenancy-internal-ca")]
    internal = Authority.from_data(trust.secret(TENANT_NS, "keda-tenancy-internal-ca"))
    assert internal.signed(
        x509.load_pem_x509_certificate(trust.secret(TENANT_NS, "kedaorg-certs")["tls.crt"])
    )
    # Said where the tenant looks: an Event on the Secret (the real API server validated it).
    events = json.loads(stack.kubectl("get", "events", "-n", other_ns, "-o", "json").stdout)
    assert [
        (e["type"], e["reason"], e["involvedObject"]["name"], e["source"]["component"])
        for e in events["items"]
        if e["involvedObject"]["kind"] == "Secret"
    ] == [("Warning", "CaKeyNotEcdsa", "keda-tenancy-internal-ca", "keda-tenancy-certs")]
    # The CA was left alone; deleted, it is made anew and the tenant gets its certificates.
    assert trust.secret(other_ns, "keda-tenancy-internal-ca")["tls.crt"] == ca.public_bytes(
        serialization.Encoding.PEM
    )
    stack.kubectl("delete", "secret", "keda-tenancy-internal-ca", "-n", other_ns)
    done = trust.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]
    made = Authority.from_data(trust.secret(other_ns, "keda-tenancy-internal-ca"))
    assert made.signed(
        x509.load_pem_x509_certificate(trust.secret(other_ns, "kedaorg-certs")["tls.crt"])
    )


def test_a_new_tenant_namespace_gets_its_certificates_from_the_watch(trust: Trust) -> None:
    """Issue 21: keda-tenancy-certs, running under the chart's RBAC with a full pass once an
    hour, serves a tenant namespace that appears after its pass, once that tenant's release
    grants it (a while after the namespace, as `kubectl create namespace` then `helm install`)."""
    stack = trust.stack
    namespace = "keda-kappa"
    health = free_port()
    with (trust.dir / "certs-watch.log").open("w") as log:
        certs = subprocess.Popen(
            [
                sys.executable, "-m", "controller.certs.bootstrap",
                f"--spec-file={trust.spec_file}", f"--kubeconfig={trust.certs_kubeconfig}",
                "--resync-interval=1h", "--health-bind-address=127.0.0.1",
                f"--health-port={health}", "--log-level=debug",
            ],
            stdout=log, stderr=subprocess.STDOUT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(ready, "keda-tenancy-certs ready", 60, 0.2)
        time.sleep(2)  # its first full pass is over: what follows comes from the watch
        stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        time.sleep(2)  # seen, and not granted yet
        grant = Helm(find_helm()).template(
            TENANT_CHART, release="keda", namespace=namespace, values={"tenant": "kappa"}
        )
        apply_docs(
            stack,
            [
                d for d in grant
                if d["kind"] in ("Role", "RoleBinding")
                and d["metadata"]["name"] == "keda-tenancy-certs"
            ],
        )  # fmt: skip

        def made() -> bool:
            return {
                "keda-tenancy-internal-ca",
                "kedaorg-certs",
                "keda-metrics-apiserver-tls",
            } <= set(trust.secret_versions(namespace))

        wait_for(made, f"{namespace}'s certificates", 60, 0.5)
        assert certs.poll() is None
    finally:
        certs.terminate()
        certs.wait(30)
        stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A control plane of its own: this test installs the chart's APIService, which the session
    stack's router owns."""
    with running_stack(tmp_path_factory.mktemp("bare")) as stack:
        stack.start_control_plane()
        yield stack


def test_the_apiservice_ca_bundle_is_set_once_and_survives_a_gitops_reapply(
    bare_cluster: Stack, tmp_path: Path
) -> None:
    stack = bare_cluster
    helm = Helm(find_helm())
    docs = helm.template(ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE)
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROUTER_NAMESPACE}})
    apply_docs(stack, docs)
    spec = tmp_path / "spec.yaml"
    spec.write_text(find(docs, "ConfigMap", CERTS_SA)["data"]["spec.yaml"])
    made = Trust(
        stack=stack,
        dir=tmp_path,
        router_docs=docs,
        tenant_docs=[],
        spec_file=spec,
        certs_kubeconfig=token_kubeconfig(stack, ROUTER_NAMESPACE, CERTS_SA, tmp_path / "kc"),
    )
    done = made.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]

    def apiservice() -> dict[str, Any]:
        out = stack.kubectl(
            "get", "apiservice", "v1beta1.external.metrics.k8s.io", "-o", "json",
            "--show-managed-fields",
        )  # fmt: skip
        return dict(json.loads(out.stdout))

    ca = made.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-apiservice-ca")["tls.crt"]
    serving = made.secret(ROUTER_NAMESPACE, f"{ROUTER_RELEASE}-serving-tls")["tls.crt"]
    first = apiservice()
    assert base64.b64decode(first["spec"]["caBundle"]) == ca
    assert _signed(serving, ca)
    owners = {
        e["manager"]
        for e in first["metadata"]["managedFields"]
        if "caBundle" in json.dumps(e.get("fieldsV1", {}))
    }
    assert owners == {"keda-tenancy-certs"}
    # A GitOps sync applies the chart again: the same bytes, and the caBundle stays.
    again = helm.template(ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE)
    assert again == docs
    apply_docs(stack, again)
    assert apiservice()["spec"]["caBundle"] == first["spec"]["caBundle"]
    # keda-tenancy-certs' second pass: nothing to write.
    versions = made.secret_versions(ROUTER_NAMESPACE)
    done = made.run_certs()
    assert done.returncode == 0, done.stderr[-3000:]
    assert made.secret_versions(ROUTER_NAMESPACE) == versions
    assert "set the caBundle" not in done.stderr + done.stdout
