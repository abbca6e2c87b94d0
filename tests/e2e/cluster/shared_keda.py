"""A cluster-wide KEDA as KEDA itself renders it, and the fence that keeps it out of tenants'
namespaces during a migration (deploy/README.md, "Migrating from a shared KEDA").

KEDA's Helm chart is not available offline; KEDA's own release manifest is: `config/default`
of its Go module (what `keda-<version>.yaml` on its release page is built from), rendered by
kubectl's kustomize. Its operator watches every namespace (WATCH_NAMESPACE=""), its metrics
server is the backend of its own APIService v1beta1.external.metrics.k8s.io. Only the images
are the suite's (built locally from KEDA's module, never pulled) and the requests smaller.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cluster.cluster import Cluster
from tests.e2e.images.build import Images

NAMESPACE = "keda"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
SERVER_NAME = f"{METRICS_SERVICE}.{NAMESPACE}.svc"
ROUTER_METRICS_SERVICE = "keda-metrics-apiserver-router"
URL = f"https://{ROUTER_METRICS_SERVICE}.{NAMESPACE}.svc:443"
"""The router's default upstream: the shared KEDA's second metrics server (router_metrics_server)."""
REQUESTHEADER_CONFIGMAP = "keda-requestheader-ca"
FENCE = "keda-tenancy-migration-fence"

Obj = dict[str, Any]


def manifest(cluster: Cluster, images: Images) -> list[Obj]:
    """KEDA's release manifest without its CRDs (applied once per cluster already)."""
    crd_dir = Path((cluster.bin / "keda-crd-dir.txt").read_text().strip())
    rendered = cluster.kubectl("kustomize", str(crd_dir.parents[1] / "default"), timeout_s=120)
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    docs = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    image_of = {
        "keda-operator": images.tenant.reference,  # KEDA's /keda, unchanged, in the tenant image
        "keda-metrics-apiserver": images.metrics_apiserver.reference,
        "keda-admission-webhooks": images.webhooks.reference,
    }
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["image"] = image_of[container["name"]]
            container["imagePullPolicy"] = "Never"
            # Two cores for the whole cluster: KEDA's 100m requests each would not all fit.
            container["resources"]["requests"] = {"cpu": "10m", "memory": "32Mi"}
    return docs


def router_metrics_server(docs: list[Obj], router_client_ca: str) -> list[Obj]:
    """A second metrics server of the shared KEDA, for the router alone: KEDA's own Deployment
    copied under another name, trusting only the router's client CA as front proxy, behind a
    Service of its own. The shared metrics server the aggregator calls is never restarted (KEDA's
    has no preStop delay: its rollout refuses connections for a moment, measured as failed
    reads); the copy asks the same operator, and presents the same certificate (kedaorg-certs),
    so the router verifies it by SERVER_NAME."""
    (original,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == METRICS_SERVICE
    ]
    copy = json.loads(json.dumps(original))
    labels = {"app": ROUTER_METRICS_SERVICE}
    copy["metadata"] = {"name": ROUTER_METRICS_SERVICE, "namespace": NAMESPACE, "labels": labels}
    copy["spec"]["selector"] = {"matchLabels": labels}
    copy["spec"]["template"]["metadata"] = {"labels": labels}
    pod = copy["spec"]["template"]["spec"]
    pod["containers"][0]["args"] += [
        "--requestheader-client-ca-file=/requestheader/ca.crt",
        "--requestheader-allowed-names=keda-tenancy-router",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
    ]
    pod["volumes"].append({"name": "requestheader", "configMap": {"name": REQUESTHEADER_CONFIGMAP}})
    pod["containers"][0]["volumeMounts"].append(
        {"name": "requestheader", "mountPath": "/requestheader", "readOnly": True}
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": REQUESTHEADER_CONFIGMAP, "namespace": NAMESPACE},
            "data": {"ca.crt": router_client_ca},
        },
        copy,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ROUTER_METRICS_SERVICE, "namespace": NAMESPACE},
            "spec": {
                "selector": labels,
                "ports": [{"name": "https", "port": 443, "targetPort": 6443}],
            },
        },
    ]


def fence(tenant_label: str) -> list[Obj]:
    """The shared operator may write nothing in a namespace a tenant owns (the same label the
    router and the tenant's KEDA decide by) and nothing cluster-scoped (its APIService caBundle
    patching would take the APIService back from the router). kube-apiserver enforces it, at
    the moment the label is set: before, only the shared KEDA acts there; after, only the
    tenant's (whose RoleBinding the label brings)."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": FENCE},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["*"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE", "DELETE"],
                            "resources": ["*/*"],  # every resource and subresource
                            "scope": "*",
                        }
                    ],
                    # Cluster-scoped objects are matched whatever this selector says.
                    "namespaceSelector": {
                        "matchExpressions": [{"key": tenant_label, "operator": "Exists"}]
                    },
                },
                "matchConditions": [
                    {
                        "name": "shared-keda-operator",
                        "expression": f"request.userInfo.username == '{OPERATOR_USER}'",
                    }
                ],
                "validations": [
                    {
                        "expression": "false",
                        "message": "keda-tenancy migration: the shared KEDA may not write here "
                        "(a tenant's namespace, or cluster-scoped)",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": FENCE},
            "spec": {"policyName": FENCE, "validationActions": ["Deny"]},
        },
    ]


def fenced(cluster: Cluster, *target: str) -> bool:
    """Whether kube-apiserver refuses the shared operator a (dry-run) write to `target`."""
    done = cluster.kubectl(
        "--as", OPERATOR_USER, "annotate", *target, "keda-tenancy.io/fence-check=1",
        "--overwrite", "--dry-run=server", check=False,
    )  # fmt: skip
    if done.returncode == 0:
        return False
    assert FENCE in done.stderr, done.stderr  # refused by the fence, not by RBAC
    return True


def serving_ca(cluster: Cluster) -> str:
    """The CA of the shared metrics server's certificate (KEDA's own cert rotation)."""
    done = cluster.kubectl("-n", NAMESPACE, "get", "secret", "kedaorg-certs", "-o", "json")
    return base64.b64decode(json.loads(done.stdout)["data"]["ca.crt"]).decode()
