"""The real thing on loopback: etcd, kube-apiserver (whose aggregator proxies to the
router), the router, per-tenant KEDA (operator through the reloader, metrics adapter),
and kube-controller-manager running the HPA controller.

Everything listens on 127.0.0.1 with certificates made here. Binaries come from
tests/e2e/build/build.sh (built from their Go modules, cached outside the checkout).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pki import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
ROUTER_SERVICE = ("keda-tenancy", "keda-tenancy-router")
ROUTER_NAMESPACE = "keda-tenancy-system"
"""Where the tenant chart's reloaders read the router's published rule (router.namespace)."""
TENANT_LABEL = "keda-tenancy.io/tenant"


def build_binaries() -> Path:
    """Build (or reuse) the real components; returns their directory."""
    done = subprocess.run(
        ["bash", str(ROOT / "tests/e2e/build/build.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], object], what: str, timeout_s: float = 60.0, interval_s: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {what}: {last!r}")


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        handle.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running and self.popen is not None:
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Tenant:
    name: str
    namespace: str  # where its KEDA runs
    adapter_port: int
    operator_ports: dict[str, int]
    metric_port: int
    adapter: Process | None = None
    operator: Process | None = None


class Kubectl:
    """kubectl as the cluster admin, for the process stack and the kubelet-backed cluster."""

    bin: Path
    kubeconfig: Path
    kubectl_timeout_s: float = 60

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        timeout_s: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s or self.kubectl_timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )


@dataclass
class Stack(Kubectl):
    bin: Path
    workdir: Path
    processes: dict[str, Process] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    reloader_flags: tuple[str, ...] = ()
    """Given to every tenant's reloader after the chart's own flags."""
    chart_values: dict[str, Any] = field(default_factory=dict)
    """Tenant chart values on top of the defaults, for every tenant."""
    pod_runners: dict[str, Any] = field(default_factory=dict)
    """Deployment mode: each tenant's stand-in kubelet (tests/e2e/pod_runner.py)."""
    chart_rbac: bool = False
    """Run each tenant's components under the ServiceAccounts and RBAC the tenant chart
    renders (a TokenRequest token each, the chart's RoleBinding manager binding the operator
    in the tenant's namespaces), not with the admin kubeconfig."""

    def __post_init__(self) -> None:
        self.certs = self.workdir / "certs"
        self.certs.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.apiserver_port = free_port()
        self.router_port = free_port()
        self.router_health_port = free_port()
        self.rule_file = self.workdir / "rule.yaml"
        self._make_pki()

    # -- certificates ------------------------------------------------------------------

    def _make_pki(self) -> None:
        c = self.certs
        self.cluster_ca = CertificateAuthority("kubernetes-ca")
        self.cluster_ca.write(c, "cluster-ca")
        self.cluster_ca.issue(
            "kube-apiserver",
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1",),
            server=True,
        ).write(c, "apiserver")
        self.cluster_ca.issue("admin", client=True, organizations=("system:masters",)).write(
            c, "admin"
        )
        self.front_proxy_ca = CertificateAuthority("front-proxy-ca")
        self.front_proxy_ca.write(c, "front-proxy-ca")
        self.front_proxy_ca.issue("front-proxy-client", client=True).write(c, "front-proxy-client")
        self.router_serving_ca = CertificateAuthority("router-serving-ca")
        self.router_serving_ca.write(c, "router-serving-ca")
        self.issue_router_serving()
        self.router_client_ca = CertificateAuthority("router-client-ca")
        self.router_client_ca.write(c, "router-client-ca")
        self.router_client_ca.issue("keda-tenancy-router", client=True).write(c, "router-client")
        self.backend_ca = CertificateAuthority("tenant-metrics-ca")
        self.backend_ca.write(c, "backend-ca")
        sa = CertificateAuthority("service-accounts")  # only its key pair is used
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        (c / "sa.key").write_bytes(
            sa.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (c / "sa.pub").write_bytes(
            sa.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.kubeconfig = self.write_kubeconfig("admin", c / "admin.crt", c / "admin.key")

    def issue_router_serving(self, common_name: str = "keda-tenancy-router") -> None:
        namespace, name = ROUTER_SERVICE
        self.router_serving_ca.issue(
            common_name,
            dns=(f"{name}.{namespace}.svc", "localhost"),
            ips=("127.0.0.1",),
            server=True,
        ).write(self.certs, "router-serving")

    def write_kubeconfig(self, user: str, cert: Path, key: Path) -> Path:
        return self._kubeconfig(
            self.workdir / f"{user}.kubeconfig",
            user,
            {"client-certificate": str(cert), "client-key": str(key)},
        )

    def _kubeconfig(self, path: Path, user: str, credentials: dict[str, str]) -> Path:
        """A kubeconfig for this API server, as `user` with `credentials`."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "e2e",
                            "cluster": {
                                "server": f"https://127.0.0.1:{self.apiserver_port}",
                                "certificate-authority": str(self.certs / "cluster-ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": user, "user": credentials}],
                    "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
                    "current-context": "e2e",
                }
            )
        )
        return path

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        self.cluster_ca.issue(user, client=True, organizations=groups).write(
            self.certs, f"user-{user}"
        )
        return self.write_kubeconfig(
            user, self.certs / f"user-{user}.crt", self.certs / f"user-{user}.key"
        )

    # -- processes ---------------------------------------------------------------------

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None
    ) -> Path:
        """A kubeconfig with a TokenRequest token of the ServiceAccount: what its pod gets."""
        done = self.kubectl("create", "token", name, "-n", namespace, "--duration=2h")
        return self._kubeconfig(
            path or self.workdir / f"{namespace}-{name}.kubeconfig",
            name,
            {"token": done.stdout.strip()},
        )

    def apply_chart_rbac(self, docs: list[dict[str, Any]]) -> None:
        """The ServiceAccounts, (Cluster)Roles and bindings of a rendered tenant release, and
        the ConfigMap the process-mode reloader publishes to."""
        self.apply(*chart_rbac_objects(docs))

    def run(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, argv, self.logs / f"{name}.log", env).start()
        self.processes[name] = process
        return process

    def stop(self) -> None:
        for runner in self.pod_runners.values():
            runner.stop()
        for process in reversed(list(self.processes.values())):
            process.stop()

    def start_control_plane(self) -> None:
        etcd_client, etcd_peer = free_port(), free_port()
        self.run(
            "etcd",
            [
                str(self.bin / "etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        c = self.certs
        # The port was free when the Stack was made; a process started since may have taken it
        # (an ephemeral port of an outgoing connection): then kube-apiserver exits at once, and
        # it is started again on another.
        for attempt in range(3):
            apiserver = self._start_apiserver(etcd_client)
            if self._apiserver_ready_or_lost_port(apiserver) or attempt == 2:
                break
            self.apiserver_port = free_port()
            self.kubeconfig = self.write_kubeconfig("admin", c / "admin.crt", c / "admin.key")
        wait_for(
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
            "kube-apiserver ready",
            120,
        )
        self.publish_tenancy_rule()

    def _apiserver_ready_or_lost_port(self, apiserver: Process) -> bool:
        """False if it exited because its port was taken; True once it answers /readyz, exited
        for another reason, or is still not ready after 120 s (the caller's wait says so)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
                return True
            if not apiserver.running:
                return "address already in use" not in apiserver.tail(5)
            time.sleep(0.2)
        return True

    def _start_apiserver(self, etcd_client: int) -> Process:
        c = self.certs
        return self.run(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={c / 'apiserver.crt'}",
                f"--tls-private-key-file={c / 'apiserver.key'}",
                f"--client-ca-file={c / 'cluster-ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={c / 'sa.pub'}",
                f"--service-account-signing-key-file={c / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                f"--requestheader-client-ca-file={c / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={c / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={c / 'front-proxy-client.key'}",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )

    def publish_tenancy_rule(self) -> None:
        """The router release's published tenancy rule (its ConfigMap and reader Role, as
        the router chart renders them): the router reads the same document as a file, the
        tenants' reloaders read the object, as in a cluster."""
        rule_map, reader = router_rule_objects()
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROUTER_NAMESPACE}},
            rule_map,
            reader,
        )
        self.rule_file.write_text(rule_map["data"]["rule.yaml"])

    def start_router(self, *extra: str) -> Process:
        c = self.certs
        tenancy = self.workdir / "tenancy.yaml"
        tenancy.write_text(
            "tenants:\n"
            + "".join(
                f"  {t.name}:\n    upstream: https://127.0.0.1:{t.adapter_port}\n    serverName: localhost\n"
                for t in self.tenants.values()
            )
        )
        process = self.run(
            "router",
            [
                sys.executable,
                "-m",
                "router",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.router_port}",
                "--health-bind-address=127.0.0.1",
                f"--health-port={self.router_health_port}",
                f"--tls-cert-file={c / 'router-serving.crt'}",
                f"--tls-private-key-file={c / 'router-serving.key'}",
                f"--upstream-client-cert-file={c / 'router-client.crt'}",
                f"--upstream-client-key-file={c / 'router-client.key'}",
                f"--upstream-ca-file={c / 'backend-ca.crt'}",
                "--upstream-url-template=https://keda-metrics.{tenant}.invalid:6443",
                f"--kubeconfig={self.kubeconfig}",
                f"--tenancy-rule-file={self.rule_file}",
                f"--tenancy-file={tenancy}",
                "--cert-reload-interval=1s",
                "--shutdown-grace-period=10s",
                *extra,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        wait_for(self.router_ready, "router ready", 30)
        return process

    def router_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.router_health_port}/readyz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def register_apiservice(self) -> None:
        namespace, name = ROUTER_SERVICE
        ca_bundle = base64.b64encode(self.router_serving_ca.cert_pem).decode()
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "type": "ExternalName",
                    "externalName": "127.0.0.1",
                    "ports": [
                        {"name": "https", "port": self.router_port, "targetPort": self.router_port}
                    ],
                },
            },
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
                "spec": {
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                    "service": {"name": name, "namespace": namespace, "port": self.router_port},
                    "caBundle": ca_bundle,
                },
            },
        )

    def apiservice_available(self) -> bool:
        done = self.kubectl(
            "get", "apiservice", "v1beta1.external.metrics.k8s.io", "-o", "json", check=False
        )
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    # -- tenants -----------------------------------------------------------------------

    def add_tenant(self, name: str, mode: str = "process") -> Tenant:
        """A tenant's KEDA: the operator run through the reloader (in `mode`, as the chart
        runs it) and the metrics adapter, trusting the router's client CA and CN."""
        tenant = Tenant(
            name=name,
            namespace=f"keda-{name}",
            adapter_port=free_port(),
            operator_ports={
                "metrics": free_port(),
                "probe": free_port(),
                "grpc": free_port(),
                "child-grpc": free_port(),
                "reloader": free_port(),
            },
            metric_port=0,
        )
        self.tenants[name] = tenant
        certs = self.certs / f"keda-{name}"
        certs.mkdir(exist_ok=True)
        # KEDA's operator <-> adapter gRPC uses mutual TLS from one directory (ca.crt, tls.crt, tls.key).
        internal = CertificateAuthority(f"keda-{name}-internal")
        (certs / "ca.crt").write_bytes(internal.cert_pem)
        pair = internal.issue(
            f"keda-{name}", dns=("localhost",), ips=("127.0.0.1",), client=True, server=True
        )
        (certs / "tls.crt").write_bytes(pair.cert_pem)
        (certs / "tls.key").write_bytes(pair.key_pem)
        self.backend_ca.issue(
            f"keda-metrics-{name}", dns=("localhost",), ips=("127.0.0.1",), server=True
        ).write(self.certs, f"adapter-{name}")
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": tenant.namespace}}
        )
        if self.chart_rbac:
            values = {**self.chart_values, "reloader": {"mode": mode}}
            self.apply_chart_rbac(chart_docs(name, tenant.namespace, **values))
        if mode == "process":
            self.start_operator(tenant, *self.reloader_flags)
        else:
            self.start_operator_deployment(tenant)
        self.start_adapter(tenant)
        return tenant

    def start_operator(self, tenant: Tenant, *reloader_flags: str) -> Process:
        """The operator container as the tenant chart renders it: the reloader (process
        mode) running /keda, both with the chart's flags and env; only what differs on
        loopback is rewritten (addresses, paths, the kubeconfig). `reloader_flags` come
        last and so win (the suite shortens the chart's restart timing)."""
        ports = tenant.operator_ports
        chart = chart_operator(tenant.name, tenant.namespace, **self.chart_values)
        local = {
            "--health-port": str(ports["reloader"]),
            "--metrics-bind-address": f"127.0.0.1:{ports['metrics']}",
            "--health-probe-bind-address": f"127.0.0.1:{ports['probe']}",
            "--cert-dir": str(self.certs / f"keda-{tenant.name}"),
            "--forward-grpc": f"127.0.0.1:{ports['grpc']}=127.0.0.1:{ports['child-grpc']}",
            "--metrics-service-bind-address": f"127.0.0.1:{ports['child-grpc']}",
        }
        reloader = [
            sys.executable,
            "-m",
            "reloader",
            *_rewrite(chart.reloader_args, local),
            f"--kubeconfig={self.kubeconfig}",
            "--health-bind-address=127.0.0.1",
            *reloader_flags,
        ]
        operator = [str(self.bin / "keda"), *_rewrite(chart.operator_args, local)]
        kubeconfig = self.kubeconfig
        if self.chart_rbac:
            kubeconfig = self.service_account_kubeconfig(tenant.namespace, "keda-operator")
            reloader = _rewrite(reloader, {"--kubeconfig": str(kubeconfig)})
            self.start_rolebinding_manager(tenant)
        env = {
            **os.environ,
            **chart.env,
            "PYTHONPATH": str(ROOT),
            "KUBECONFIG": str(kubeconfig),
            "POD_NAME": f"keda-operator-{tenant.name}",
            "POD_NAMESPACE": tenant.namespace,
        }
        env.pop("WATCH_NAMESPACE", None)
        tenant.operator = self.run(f"operator-{tenant.name}", [*reloader, "--", *operator], env=env)
        return tenant.operator

    def start_rolebinding_manager(self, tenant: Tenant) -> Process:
        """Process mode under the chart's RBAC: the chart's keda-rolebinding-manager (the
        reloader in bindings mode, its own ServiceAccount), which binds the operator in the
        tenant's namespaces."""
        docs = chart_docs(tenant.name, tenant.namespace, **self.chart_values)
        manager = next(
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "keda-rolebinding-manager"
        )
        args = [str(a) for a in manager["spec"]["template"]["spec"]["containers"][0]["args"]]
        kubeconfig = self.service_account_kubeconfig(tenant.namespace, "keda-rolebinding-manager")
        return self.run(
            f"rolebinding-manager-{tenant.name}",
            [
                sys.executable,
                "-m",
                "reloader",
                *_rewrite(args, {"--health-port": str(free_port())}),
                f"--kubeconfig={kubeconfig}",
                "--health-bind-address=127.0.0.1",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def start_operator_deployment(self, tenant: Tenant) -> Process:
        """Deployment mode as the tenant chart renders it: the chart's keda-operator
        Deployment (and its ServiceAccount) applied to the API server, kube-controller-manager
        rolling it (start_hpa_controller(deployments=True)), tests/e2e/pod_runner.py running its
        pods as a kubelet would, and the reloader with the chart's keda-namespace-reloader
        flags; each under the chart's ServiceAccount with `chart_rbac`, else as admin."""
        from tests.e2e.pod_runner import PodRunner  # noqa: PLC0415

        ports = tenant.operator_ports
        docs = chart_docs(
            tenant.name,
            tenant.namespace,
            **{**self.chart_values, "reloader": {"mode": "deployment"}},
        )
        deployment = next(
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "keda-operator"
        )
        account = next(
            d
            for d in docs
            if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "keda-operator"
        )
        self.apply(account, deployment)
        match = deployment["spec"]["selector"]["matchLabels"]
        operator_kubeconfig, reloader_kubeconfig = self.kubeconfig, self.kubeconfig
        if self.chart_rbac:
            operator_kubeconfig = self.service_account_kubeconfig(tenant.namespace, "keda-operator")
            reloader_kubeconfig = self.service_account_kubeconfig(
                tenant.namespace, "keda-namespace-reloader"
            )

        def localize(pod: str, argv: list[str]) -> tuple[list[str], dict[str, str], int]:
            """The chart's `keda-tenancy-supervise [flags] -- /keda [flags]`, on loopback."""
            if argv[0] != "keda-tenancy-supervise" or "--" not in argv:
                raise AssertionError(f"the chart's operator container runs {argv[:1]}")
            split = argv.index("--")
            if argv[split + 1] != "/keda":
                raise AssertionError(f"the supervisor runs {argv[split + 1]}, not /keda")
            health = free_port()
            supervisor = _rewrite(argv[1:split], {"--health-port": str(health)})
            local = {
                "--metrics-bind-address": f"127.0.0.1:{free_port()}",
                "--health-probe-bind-address": f"127.0.0.1:{free_port()}",
                "--cert-dir": str(self.certs / f"keda-{tenant.name}"),
            }
            # One gRPC address for every pod: only the leader listens (as behind the Service).
            grpc = f"--metrics-service-bind-address=127.0.0.1:{ports['grpc']}"
            keda = [str(self.bin / "keda"), *_rewrite(argv[split + 2 :], local), grpc]
            run = [
                sys.executable,
                "-m",
                "reloader.supervise",
                *supervisor,
                "--health-bind-address=127.0.0.1",
                f"--kubeconfig={operator_kubeconfig}",
                "--",
                *keda,
            ]
            return run, {"KUBECONFIG": str(operator_kubeconfig), "PYTHONPATH": str(ROOT)}, health

        self.pod_runners[tenant.name] = PodRunner(
            server=f"https://127.0.0.1:{self.apiserver_port}",
            certs=self.certs,
            namespace=tenant.namespace,
            selector=",".join(f"{k}={v}" for k, v in sorted(match.items())),
            container="keda-operator",
            localize=localize,
            logs=self.logs,
        ).start()
        self.start_grpc_forward(tenant, docs)
        reloader = next(
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "keda-namespace-reloader"
        )
        args = [str(a) for a in reloader["spec"]["template"]["spec"]["containers"][0]["args"]]
        tenant.operator = self.run(
            f"operator-{tenant.name}",
            [
                sys.executable,
                "-m",
                "reloader",
                *_rewrite(args, {"--health-port": str(ports["reloader"])}),
                f"--kubeconfig={reloader_kubeconfig}",
                "--health-bind-address=127.0.0.1",
                *self.reloader_flags,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return tenant.operator

    def start_grpc_forward(self, tenant: Tenant, docs: list[dict[str, Any]]) -> Process:
        """Deployment mode: the chart's grpc-forward container of the adapter's pod, between
        the adapter and the operator pods' gRPC address (start_adapter dials it)."""
        adapter = next(
            d
            for d in docs
            if d["kind"] == "Deployment"
            and d["metadata"]["name"] == "keda-operator-metrics-apiserver"
        )
        forward = next(
            c
            for c in adapter["spec"]["template"]["spec"]["containers"]
            if c["name"] == "grpc-forward"
        )
        # The old layout's program, or the platform layout's (the same flags).
        modules = {
            "keda-tenancy-grpc-forward": "reloader.forward_cli",
            "keda-tenancy-operator-forward": "operator_pod.forward_entry",
        }
        if len(forward["command"]) != 1 or forward["command"][0] not in modules:
            raise AssertionError(f"the chart's grpc-forward runs {forward['command']}")
        ports = tenant.operator_ports
        ports["grpc-forward"] = free_port()
        local = {
            "--listen": f"127.0.0.1:{ports['grpc-forward']}",
            "--target": f"127.0.0.1:{ports['grpc']}",
            "--health-port": str(free_port()),
        }
        return self.run(
            f"grpc-forward-{tenant.name}",
            [
                sys.executable,
                "-m",
                modules[forward["command"][0]],
                *_rewrite([str(a) for a in forward["args"]], local),
                "--health-bind-address=127.0.0.1",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def start_adapter(self, tenant: Tenant) -> Process:
        c = self.certs
        # As the chart runs it: a fixed WATCH_NAMESPACE (its own namespace), never restarted
        # for namespace changes; it reads no KEDA objects and asks the operator over gRPC.
        tenant.adapter = self.run(
            f"adapter-{tenant.name}",
            [
                str(self.bin / "keda-adapter"),
                "--bind-address=127.0.0.1",
                f"--secure-port={tenant.adapter_port}",
                f"--tls-cert-file={c / f'adapter-{tenant.name}.crt'}",
                f"--tls-private-key-file={c / f'adapter-{tenant.name}.key'}",
                f"--cert-dir={c / f'keda-{tenant.name}'}",
                f"--requestheader-client-ca-file={c / 'router-client-ca.crt'}",
                "--requestheader-allowed-names=keda-tenancy-router",
                "--authentication-skip-lookup",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--kubeconfig={self.kubeconfig}",
                f"--lister-kubeconfig={self.kubeconfig}",
                # Deployment mode: through the chart's grpc-forward container, as in its pod.
                "--metrics-service-address=127.0.0.1:"
                f"{tenant.operator_ports.get('grpc-forward', tenant.operator_ports['grpc'])}",
                "--metrics-service-grpc-authority=localhost",
                f"--port={free_port()}",
                "--authorization-webhook-cache-authorized-ttl=0s",
                "--authorization-webhook-cache-unauthorized-ttl=0s",
            ],
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                "WATCH_NAMESPACE": tenant.namespace,
                "KEDA_CLUSTER_OBJECT_NAMESPACE": tenant.namespace,
                "POD_NAMESPACE": tenant.namespace,
            },
        )
        return tenant.adapter

    def start_hpa_controller(self, *, deployments: bool = False) -> Process:
        """kube-controller-manager with the HPA controller (and, for deployment mode, the
        Deployment and ReplicaSet controllers)."""
        controllers = "horizontalpodautoscaling,namespace,garbagecollector"
        if deployments:
            controllers += ",deployment,replicaset"
        return self.run(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--controllers={controllers}",
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--horizontal-pod-autoscaler-downscale-stabilization=0s",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def tenant_namespace(self, tenant: str, name: str) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {TENANT_LABEL: tenant}},
            }
        )

    def scaled_app(
        self, namespace: str, metric_url: str, name: str = "app", target: str = "2"
    ) -> None:
        """A Deployment and a ScaledObject with a metrics-api trigger reading `metric_url`."""
        self.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
                        },
                    },
                },
            },
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "scaleTargetRef": {"name": name},
                    "pollingInterval": 2,
                    "minReplicaCount": 1,
                    "maxReplicaCount": 20,
                    "triggers": [
                        {
                            "type": "metrics-api",
                            "metadata": {
                                "url": metric_url,
                                "valueLocation": "value",
                                "targetValue": target,
                                "format": "json",
                            },
                        }
                    ],
                },
            },
        )

    def install_keda_crds(self) -> None:
        crd_dir = Path((self.bin / "keda-crd-dir.txt").read_text().strip())
        for crd in sorted(crd_dir.glob("*.yaml")):
            self.kubectl("apply", "--server-side", "-f", str(crd))
        wait_for(
            lambda: self.kubectl("get", "scaledobjects.keda.sh", "-A", check=False).returncode == 0,
            "KEDA CRDs established",
        )

    # -- kubectl: Kubectl ---------------------------------------------------------------

    def get_raw(self, path: str, kubeconfig: Path | None = None) -> tuple[int, dict[str, Any]]:
        """GET through kube-apiserver (and so the aggregator); (HTTP-ish code, body)."""
        done = self.kubectl("get", "--raw", path, check=False, kubeconfig=kubeconfig)
        if done.returncode == 0:
            return 200, json.loads(done.stdout)
        text = done.stderr
        # kubectl prints the Status from the server: 'Error from server (NotFound): ...'
        for code, reason in (
            (404, "NotFound"),
            (403, "Forbidden"),
            (503, "ServiceUnavailable"),
            (401, "Unauthorized"),
            (400, "BadRequest"),
            (504, "Timeout"),
        ):
            if f"({reason})" in text:
                return code, {"message": text}
        return 0, {"message": text}


@dataclass(frozen=True)
class ChartOperator:
    """The tenant chart's operator container (process mode), split at the reloader's `--`."""

    reloader_args: list[str]
    operator_args: list[str]
    env: dict[str, str]
    """The plain `value` entries (the fieldRef ones are the pod's name and namespace)."""


def chart_docs(tenant: str, namespace: str, **values: Any) -> list[dict[str, Any]]:
    """Render the tenant chart (default values plus `values`) for `tenant` in `namespace`."""
    from tests.deploy.charts import (  # noqa: PLC0415 - yaml and helm only when used
        TENANT_CHART,
        Helm,
        deep_merge,
        find_helm,
    )

    # The chart's default certificates come from keda-tenancy-certs at run time: a tenant
    # release needs nothing of the router's to render.
    return Helm(find_helm()).template(
        TENANT_CHART,
        release="keda",
        namespace=namespace,
        values=deep_merge({"tenant": tenant}, values),
    )


def router_rule_objects() -> tuple[dict[str, Any], dict[str, Any]]:
    """The router chart's published tenancy rule ConfigMap and its reader Role (defaults)."""
    from tests.deploy.charts import (  # noqa: PLC0415 - yaml and helm only when used
        ROUTER_CHART,
        ROUTER_RELEASE,
        Helm,
        find,
        find_helm,
    )

    docs = Helm(find_helm()).template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE
    )
    name = f"{ROUTER_RELEASE}-tenancy-rule"
    return find(docs, "ConfigMap", name), find(docs, "Role", f"{name}-reader")


def chart_rbac_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a rendered tenant release grants: ServiceAccounts, (Cluster)Roles, their bindings,
    the admission policy that narrows them, and the ConfigMap the process-mode reloader
    publishes its namespaces to."""
    kinds = {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    return [
        d
        for d in docs
        # Hook objects exist only while `helm uninstall` runs (test_uninstall_hook_rbac.py).
        if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
        and (
            d["kind"] in kinds
            or (d["kind"] == "ConfigMap" and d["metadata"]["name"] == "keda-operator-watched")
        )
    ]


def chart_operator(tenant: str, namespace: str, **values: Any) -> ChartOperator:
    """The operator container of the tenant chart in process mode."""
    from tests.deploy.charts import container, find  # noqa: PLC0415

    docs = chart_docs(tenant, namespace, **values)
    operator = container(find(docs, "Deployment", "keda-operator"), "keda-operator")
    args = [str(arg) for arg in operator["args"]]
    split = args.index("--")
    if args[split + 1] != "/keda":
        raise AssertionError(f"the chart's operator is not /keda under the reloader: {args}")
    env = {e["name"]: str(e["value"]) for e in operator.get("env") or [] if "value" in e}
    return ChartOperator(args[:split], args[split + 2 :], env)


def _rewrite(args: list[str], local: dict[str, str]) -> list[str]:
    """`--flag=value` with `value` replaced where `local` has the flag."""
    out = []
    for arg in args:
        flag, sep, _ = arg.partition("=")
        out.append(f"{flag}={local[flag]}" if sep and flag in local else arg)
    return out


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    reloader_flags: tuple[str, ...] = (),
    chart_values: dict[str, Any] | None = None,
    *,
    chart_rbac: bool = False,
) -> Iterator[Stack]:
    stack = Stack(
        build_binaries(),
        workdir,
        reloader_flags=reloader_flags,
        chart_values=chart_values or {},
        chart_rbac=chart_rbac,
    )

    try:
        yield stack
    finally:
        stack.stop()


def tls_context_for(stack: Stack) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(stack.certs / "router-serving-ca.crt"))
    context.load_cert_chain(
        str(stack.certs / "front-proxy-client.crt"), str(stack.certs / "front-proxy-client.key")
    )
    return context
