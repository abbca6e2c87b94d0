"""Install keda-tenancy into the cluster the way deploy/README.md says, and the tenants'
workloads: KEDA's CRDs, the router chart, two tenant charts, namespaces, a metric source and
a scaled Deployment per tenant namespace.

alpha: the label rule (keda-tenancy.io/tenant=alpha), reloader in process mode.
beta:  HNC-style tree labels (root `beta`), reloader in deployment mode. There is no HNC
       controller here: the test writes the labels HNC would, and binds the operator's RBAC
       per namespace (rbac.scope=namespaces) since nothing propagates a root RoleBinding.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE, TENANT_CHART
from tests.e2e.cluster.cluster import Cluster
from tests.e2e.images.build import Images
from tests.e2e.stack import wait_for

TENANT_LABEL = "keda-tenancy.io/tenant"
HNC_ROOT = "beta"
APPS = {"alpha": "alpha-apps", "beta": "beta-apps"}
VALUES = {"alpha": 7, "beta": 42}
MAX_REPLICAS = 8
METRIC = "s0-metric-api-value"

# A metric endpoint per tenant namespace: {"value": <contents of /tmp/value>}; the tests
# change the value with `kubectl exec`.
METRIC_SERVER = """
import http.server, json, os, pathlib
value = pathlib.Path("/tmp/value")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        text = value.read_text().strip() if value.exists() else os.environ["INITIAL_VALUE"]
        body = json.dumps({"value": float(text)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""


def tenant_namespace(tenant: str) -> str:
    return f"keda-{tenant}"


def namespace_labels(tenant: str, namespace: str) -> dict[str, str]:
    """What makes `namespace` the tenant's under its rule (for beta: the labels HNC writes)."""
    if tenant == "beta":
        labels = {f"{HNC_ROOT}.tree.hnc.x-k8s.io/depth": "0" if namespace == HNC_ROOT else "1"}
        if namespace != HNC_ROOT:
            labels[f"{namespace}.tree.hnc.x-k8s.io/depth"] = "0"
        return labels
    return {TENANT_LABEL: tenant}


def metric_path(namespace: str, metric: str = METRIC, app: str = "app") -> str:
    selector = urllib.parse.quote(f"scaledobject.keda.sh/name={app}", safe="")
    return f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={selector}"


@dataclass
class Installed:
    cluster: Cluster
    images: Images
    # Issue 21's platform layout for every tenant: the router release's platform controller
    # and, per tenant, only KEDA's operator (with keda-tenancy-operator-pod) and metrics server.
    platform: bool = False

    # -- install -------------------------------------------------------------------------

    def keda_crds(self) -> None:
        """README step 1: once per cluster; the same CRDs as KEDA's release, from its module."""
        crd_dir = Path((self.cluster.bin / "keda-crd-dir.txt").read_text().strip())
        self.cluster.kubectl("apply", "--server-side", "-f", str(crd_dir))
        wait_for(
            lambda: (
                self.cluster.kubectl("get", "scaledobjects.keda.sh", "-A", check=False).returncode
                == 0
            ),
            "KEDA CRDs established",
        )

    def router_args(self) -> list[str]:
        image = self.images.router
        return [
            "--set", f"image.repository={image.reference.rsplit(':', 1)[0]}",
            "--set", f"image.tag={Images.tag(image)}",
            "--set", "image.pullPolicy=Never",
            "--set", f"tenancy.labelKeys={{{TENANT_LABEL}}}",
            "--set", f"tenancy.hnc.roots={{{HNC_ROOT}}}",
            "--set", "networkPolicy.enabled=true",
            *(["--set", "controller.enabled=true"] if self.platform else []),
        ]  # fmt: skip

    def router(self) -> None:
        """README step 3."""
        self.cluster.kubectl("create", "namespace", ROUTER_NAMESPACE)
        self.cluster.helm(
            "install", ROUTER_RELEASE, str(ROUTER_CHART), "-n", ROUTER_NAMESPACE,
            *self.router_args(), "--wait", "--timeout=5m",
        )  # fmt: skip

    def tenant_args(self, tenant: str) -> list[str]:
        tenant_image = self.images.tenant
        args = [
            "--set", f"tenant={tenant}",
            "--set", f"images.tenant.repository={tenant_image.reference.rsplit(':', 1)[0]}",
            # The tag from the prefix and keda.version, as a user's (the canary moves keda.version).
            "--set", f"images.tenant.tagPrefix={Images.tenant_tag_prefix(tenant_image)}",
            "--set", "images.pullPolicy=Never",
        ]  # fmt: skip
        if tenant == "beta":
            args += [
                "--set", "tenancy.labelKeys=null",
                "--set", f"tenancy.hnc.roots={{{HNC_ROOT}}}",
                "--set", "reloader.mode=deployment",
            ]  # fmt: skip
        if self.platform:
            args += ["--set", "platformController.enabled=true", "--set", "webhooks.enabled=false"]
        return args

    def tenant(self, tenant: str) -> None:
        """README steps 4 and 5."""
        namespace = tenant_namespace(tenant)
        self.cluster.kubectl("create", "namespace", namespace)
        self.cluster.helm(
            "install", "keda", str(TENANT_CHART), "-n", namespace, *self.tenant_args(tenant),
            "--wait", "--timeout=5m",
        )  # fmt: skip

    def tenant_namespace(self, tenant: str, namespace: str) -> None:
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": namespace_labels(tenant, namespace)},
            }
        )

    def everything(self, say: Callable[[str], None] = lambda _: None) -> None:
        """Install it all, then wait until what the demo and the scenarios use is ready."""
        self.keda_crds()
        self.tenant_namespace("beta", HNC_ROOT)
        for tenant, namespace in APPS.items():
            self.tenant_namespace(tenant, namespace)
        self.router()
        for tenant in APPS:
            self.tenant(tenant)
        for tenant, namespace in APPS.items():
            self.scaled_app(namespace, VALUES[tenant])
        self.wait_ready(say)

    def wait_ready(self, say: Callable[[str], None] = lambda _: None) -> None:
        """The metric sources and scaled Deployments rolled out, the APIService Available, and
        each tenant's first value served through the router (issue 25: writing a value before
        its pod ran crashed the demo)."""
        for namespace in APPS.values():
            for name in ("app-metric", "app"):
                say(f"waiting for {namespace}/{name} to roll out")
                self.cluster.kubectl(
                    "-n", namespace, "rollout", "status", f"deploy/{name}", "--timeout=180s",
                    timeout_s=200,
                )  # fmt: skip
        say("waiting for the APIService v1beta1.external.metrics.k8s.io to be Available")
        wait_for(self.apiservice_available, "APIService Available", 120)
        for tenant, namespace in APPS.items():
            say(f"waiting for {tenant}'s first value through the router ({namespace})")
            wait_for(
                lambda ns=namespace: self.metric_value(ns),
                f"{tenant}'s first value through the router",
                180,
                1,
            )

    # -- workloads -----------------------------------------------------------------------

    def scaled_app(self, namespace: str, value: float, name: str = "app") -> None:
        """A metric source, a real Deployment and a ScaledObject reading the source."""
        source = f"{name}-metric"
        self.cluster.apply(
            deployment(
                namespace,
                source,
                self.images.python.reference,
                ["python3", "-c", METRIC_SERVER],
                port=8080,
                env={"INITIAL_VALUE": str(value)},
            ),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": source, "namespace": namespace},
                "spec": {
                    "selector": {"app": source},
                    "ports": [{"port": 8080, "targetPort": 8080}],
                },
            },
            deployment(namespace, name, self.images.busybox.reference, ["sleep", "86400"]),
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "scaleTargetRef": {"name": name},
                    "pollingInterval": 2,
                    "minReplicaCount": 1,
                    "maxReplicaCount": MAX_REPLICAS,
                    "triggers": [
                        {
                            "type": "metrics-api",
                            "metadata": {
                                "url": f"http://{source}.{namespace}.svc:8080/value",
                                "valueLocation": "value",
                                "targetValue": "2",
                                "format": "json",
                            },
                        }
                    ],
                },
            },
        )

    def set_value(self, namespace: str, value: float, name: str = "app") -> None:
        """Write the metric source's value, once its pod runs: `exec` into a pod that is not
        running yet fails ("container not found"), so that is waited out, for up to a minute."""
        wait_for(
            lambda: self.cluster.kubectl(
                "-n", namespace, "exec", f"deploy/{name}-metric", "--",
                "sh", "-c", f"echo {value} > /tmp/value", check=False,
            ).returncode == 0,
            f"{namespace}/{name}-metric to take the value {value}",
            60,
            1,
        )  # fmt: skip

    # -- reading -------------------------------------------------------------------------

    def apiservice_available(self) -> bool:
        done = self.cluster.kubectl(
            "get", "apiservice", "v1beta1.external.metrics.k8s.io", "-o", "json", check=False
        )
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    def get_raw(self, path: str, kubeconfig: Path | None = None) -> tuple[int, dict[str, Any]]:
        """GET through kube-apiserver (and so the aggregator): (HTTP-ish code, body)."""
        done = self.cluster.kubectl("get", "--raw", path, check=False, kubeconfig=kubeconfig)
        if done.returncode == 0:
            return 200, json.loads(done.stdout)
        for code, reason in (
            (404, "NotFound"),
            (403, "Forbidden"),
            (503, "ServiceUnavailable"),
            (401, "Unauthorized"),
            (400, "BadRequest"),
            (504, "Timeout"),
        ):
            if f"({reason})" in done.stderr:
                return code, {"message": done.stderr}
        return 0, {"message": done.stderr}

    def metric_value(self, namespace: str, kubeconfig: Path | None = None) -> str | None:
        code, body = self.get_raw(metric_path(namespace), kubeconfig)
        if code != 200:
            return None
        items = body.get("items") or []
        return str(items[0]["value"]) if items else None

    def replicas(self, namespace: str, name: str = "app") -> tuple[int | None, int | None]:
        """(the HPA's desired replicas, the Deployment's ready replicas)."""
        desired = None
        done = self.cluster.kubectl(
            "get", "hpa", f"keda-hpa-{name}", "-n", namespace, "-o", "json", check=False
        )
        if done.returncode == 0:
            desired = json.loads(done.stdout).get("status", {}).get("desiredReplicas")
        done = self.cluster.kubectl(
            "get", "deploy", name, "-n", namespace, "-o", "json", check=False
        )
        ready = (
            json.loads(done.stdout).get("status", {}).get("readyReplicas")
            if done.returncode == 0
            else None
        )
        return desired, ready


def deployment(
    namespace: str,
    name: str,
    image: str,
    command: list[str],
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
        },
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if port is not None:
        container["ports"] = [{"containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 2}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
            },
        },
    }
