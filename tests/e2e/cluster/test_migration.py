"""Issue 22, item 5: migrate from one cluster-wide KEDA to a KEDA per tenant, as deploy/README.md
("Migrating from a shared KEDA") says, while every namespace's metric is read at 10 Hz through
kube-apiserver and its HPA keeps scaling.

Starts from a cluster without the router (conftest.py runs this module first) and leaves none
of its objects behind, so the session's `installed` fixture installs afresh after it.

No ScaledObject is reconciled by two operators at once: the namespace's tenancy label is the one
decision. kube-apiserver refuses the shared operator every write in a labelled namespace (and
every cluster-scoped write) from the moment the label is set (ValidatingAdmissionPolicy, the
fence); the tenant's operator gets access there only through the label (its RoleBinding). Reads
never fall in the gap while the tenant's KEDA starts watching: a router rule keeps sending the
tenant's ScaledObject reads to the shared KEDA (still watching, its writes refused) until the
tenant's KEDA serves the namespace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE, TENANT_CHART
from tests.e2e.cluster import shared_keda
from tests.e2e.cluster.cluster import Cluster
from tests.e2e.cluster.install import (
    MAX_REPLICAS,
    TENANT_LABEL,
    Installed,
    deployment,
    metric_path,
    tenant_namespace,
)
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.images.build import Images
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

APPS = {"gamma": "gamma-apps", "delta": "delta-apps"}
VALUES = {"gamma": 7, "delta": 11}
SHARED_CA_SECRET = "shared-keda-ca"
PROBE = "canary"
"""A second ScaledObject per namespace, never covered by the bridge rule: it answers through the
tenant's KEDA only once that KEDA serves the namespace."""


def router_values(bridge: str | None, default_upstream: bool = True) -> list[str]:
    """The router during the migration: the shared KEDA as the default upstream (its own CA and
    name), the APIService left to the handover; `bridge`: that tenant's `app` reads still go to
    the shared KEDA (routing.upstreams.shared-keda, one tenant rule)."""
    values: dict[str, Any] = {
        "apiService": {"create": False},
        "tenancy": {"labelKeys": [TENANT_LABEL]},
        "networkPolicy": {"enabled": True},
    }
    if default_upstream:
        values["router"] = {"defaultUpstream": shared_keda.URL}
        values["routing"] = {
            "defaultUpstream": {
                "caSecret": SHARED_CA_SECRET,
                "serverName": shared_keda.SERVER_NAME,
            }
        }
    if bridge:
        values.setdefault("routing", {})
        values["routing"]["upstreams"] = {
            "shared-keda": {
                "url": shared_keda.URL,
                "serverName": shared_keda.SERVER_NAME,
                "caSecret": SHARED_CA_SECRET,
                "tenant": bridge,
            }
        }
        values["routing"]["rules"] = [
            {
                "name": f"{bridge}-via-shared-keda",
                "tenant": bridge,
                "labelSelector": {"values": {"scaledobject.keda.sh/name": "app"}},
                "upstream": "shared-keda",
            }
        ]
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
    with handle:
        json.dump(values, handle)  # JSON is YAML
    return ["-f", handle.name]


def helm_router(installed: Installed, verb: str, values: list[str]) -> None:
    image = installed.images.router
    installed.cluster.helm(
        verb, ROUTER_RELEASE, str(ROUTER_CHART), "-n", ROUTER_NAMESPACE,
        "--set", f"image.repository={image.reference.rsplit(':', 1)[0]}",
        "--set", f"image.tag={Images.tag(image)}",
        "--set", "image.pullPolicy=Never",
        *(["--reset-values"] if verb == "upgrade" else []),
        *values, "--wait", "--timeout=5m",
    )  # fmt: skip


def trust(cluster: Cluster, key: str) -> str:
    done = cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "get", "configmap", f"{ROUTER_RELEASE}-trust", "-o", "json",
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return ""
    return str(json.loads(done.stdout).get("data", {}).get(key, ""))


def probe_app(installed: Installed, namespace: str) -> None:
    """A second ScaledObject on the same metric source, scaling a Deployment of its own."""
    installed.cluster.apply(
        deployment(namespace, PROBE, installed.images.busybox.reference, ["sleep", "86400"]),
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": PROBE, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"name": PROBE},
                "pollingInterval": 2,
                "minReplicaCount": 1,
                "maxReplicaCount": MAX_REPLICAS,
                "triggers": [
                    {
                        "type": "metrics-api",
                        "metadata": {
                            "url": f"http://app-metric.{namespace}.svc:8080/value",
                            "valueLocation": "value",
                            "targetValue": "2",
                            "format": "json",
                        },
                    }
                ],
            },
        },
    )


def probe_value(installed: Installed, namespace: str) -> str | None:
    code, body = installed.get_raw(metric_path(namespace, app=PROBE))
    items = body.get("items") or [] if code == 200 else []
    return str(items[0]["value"]) if items else None


def default_upstream_healthy(cluster: Cluster) -> bool:
    """Every router pod's health probe of the default upstream answered (not failing fast)."""
    done = cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=router",
        "-o", "json",
    )  # fmt: skip
    pods = [p["metadata"]["name"] for p in json.loads(done.stdout)["items"]]
    for pod in pods:
        metrics = cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{ROUTER_NAMESPACE}/pods/{pod}:8080/proxy/metrics",
            check=False,
        )  # fmt: skip
        if 'keda_tenancy_router_backend_healthy{tenant="_default"} 1.0' not in metrics.stdout:
            return False
    return bool(pods)


def watched_by(cluster: Cluster, tenant: str) -> str:
    """What the tenant's operator runs with (its reloader publishes it, process mode)."""
    done = cluster.kubectl(
        "-n", tenant_namespace(tenant), "get", "configmap", "keda-operator-watched", "-o", "json",
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return ""
    return " ".join((json.loads(done.stdout).get("data") or {}).values())


@contextlib.contextmanager
def readers(cluster: Cluster) -> Iterator[dict[str, MetricReader]]:
    with contextlib.ExitStack() as stack:
        yield {
            ns: stack.enter_context(MetricReader(cluster, ns, str(VALUES[tenant])))
            for tenant, ns in APPS.items()
        }


def cleanup(installed: Installed, docs: list[dict[str, Any]]) -> None:
    """Leave the cluster as this module found it (KEDA's CRDs stay: the suite applies them)."""
    cluster = installed.cluster
    # The fence first: a shared operator fenced out of a namespace could not remove its
    # finalizer from the ScaledObjects there, and the namespace would never go.
    for doc in shared_keda.fence(TENANT_LABEL):
        cluster.kubectl("delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found",
                        check=False)  # fmt: skip
    for tenant, namespace in APPS.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.kubectl(
                "delete", "scaledobjects", "--all", "-n", namespace, "--wait=true", check=False,
                timeout_s=120,
            )  # fmt: skip
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            cluster.helm("uninstall", "keda", "-n", tenant_namespace(tenant), "--wait")
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        cluster.helm("uninstall", ROUTER_RELEASE, "-n", ROUTER_NAMESPACE, "--wait")
    for doc in docs:
        cluster.kubectl(
            "delete", doc["kind"], doc["metadata"]["name"],
            *(["-n", doc["metadata"]["namespace"]] if doc["metadata"].get("namespace") else []),
            "--ignore-not-found", "--wait=false", check=False,
        )  # fmt: skip
    namespaces = [*APPS.values(), *map(tenant_namespace, APPS), ROUTER_NAMESPACE, "keda"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.kubectl("delete", "namespace", *namespaces, "--ignore-not-found", check=False,
                        timeout_s=300)  # fmt: skip


def test_migrate_two_tenants_off_a_shared_keda(cluster: Cluster, images: Images) -> None:
    installed = Installed(cluster, images)
    installed.keda_crds()
    docs = shared_keda.manifest(cluster, images)
    report: list[str] = []
    try:
        run_migration(installed, docs, report)
    finally:
        for line in report:
            print(f"[migration summary] {line}")
        cleanup(installed, docs)


def run_migration(installed: Installed, docs: list[dict[str, Any]], report: list[str]) -> None:
    cluster = installed.cluster
    # -- the starting point: one cluster-wide KEDA, its own APIService, two teams' HPAs -------
    cluster.apply(*docs)
    for name in ("keda-operator", "keda-metrics-apiserver", "keda-admission"):
        cluster.kubectl(
            "-n", "keda", "rollout", "status", f"deploy/{name}", "--timeout=180s", timeout_s=200
        )  # fmt: skip
    for tenant, namespace in APPS.items():
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        installed.scaled_app(namespace, VALUES[tenant])
        probe_app(installed, namespace)
    wait_for(installed.apiservice_available, "the shared KEDA's APIService Available", 180, 1)
    for tenant, namespace in APPS.items():
        wait_for(
            lambda n=namespace, t=tenant: installed.metric_value(n) == str(VALUES[t]),
            f"{namespace} served by the shared KEDA",
            180,
            1,
        )

    with readers(cluster) as reading:
        time.sleep(2)
        assert all(r.good_streak(0, 10) for r in reading.values()), "reads fail before any step"

        def step(what: str, since: float) -> None:
            failed = {ns: len(r.failures(since)) for ns, r in reading.items()}
            longest = {ns: round(r.longest_s(since), 2) for ns, r in reading.items()}
            report.append(
                f"{what}: {time.monotonic() - since:.1f}s; failed reads {failed}; "
                f"longest read {longest} s"
            )
            print(f"\n[migration] {report[-1]}", flush=True)
            for ns, reader in reading.items():
                for kind, count in Counter(r.what[:90] for r in reader.failures(since)).items():
                    print(f"[migration]   {ns} {count} x {kind}", flush=True)

        # 1. The router beside the shared KEDA, not yet in the path (no APIService of its own).
        since = time.monotonic()
        cluster.kubectl("create", "namespace", ROUTER_NAMESPACE)
        cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "create", "secret", "generic", SHARED_CA_SECRET,
            f"--from-literal=ca.crt={shared_keda.serving_ca(cluster)}",
        )  # fmt: skip
        helm_router(installed, "install", router_values(None))
        wait_for(lambda: trust(cluster, "apiservice-ca.crt"), "the router's CAs published", 120, 1)
        step("1. router installed beside the shared KEDA", since)

        # 2. A second metrics server of the shared KEDA, for the router (the first untouched).
        since = time.monotonic()
        copy = shared_keda.router_metrics_server(docs, trust(cluster, "upstream-client-ca.crt"))
        cluster.apply(*copy)
        cluster.kubectl(
            "-n", "keda", "rollout", "status", f"deploy/{shared_keda.ROUTER_METRICS_SERVICE}",
            "--timeout=180s", timeout_s=200,
        )  # fmt: skip
        wait_for(lambda: default_upstream_healthy(cluster), "the router's probes reach it", 120, 1)
        step("2. a metrics server of the shared KEDA for the router", since)

        # 3. The fence, then the APIService handed to the router in one write (service and
        #    caBundle together: no moment where one points at the router and the other not).
        since = time.monotonic()
        cluster.apply(*shared_keda.fence(TENANT_LABEL))
        apiservice = ("apiservice", "v1beta1.external.metrics.k8s.io")
        wait_for(lambda: shared_keda.fenced(cluster, *apiservice), "the fence enforced", 60, 0.5)
        ca = base64.b64encode(trust(cluster, "apiservice-ca.crt").encode()).decode()
        service = {"name": ROUTER_RELEASE, "namespace": ROUTER_NAMESPACE, "port": 443}
        cluster.kubectl(
            "patch", *apiservice, "--type=merge",
            "-p", json.dumps({"spec": {"service": service, "caBundle": ca}}),
        )  # fmt: skip
        wait_for(installed.apiservice_available, "the APIService Available via the router", 60)
        time.sleep(3)  # the aggregator's endpoint cache, and reads through the router since
        spec = json.loads(cluster.kubectl("get", *apiservice, "-o", "json").stdout)["spec"]
        assert spec["service"]["name"] == ROUTER_RELEASE, spec
        assert spec["caBundle"] == ca, spec
        step("3. fence on, APIService handed to the router", since)

        # 4. Each tenant in turn.
        for tenant, namespace in APPS.items():
            since = time.monotonic()
            helm_router(installed, "upgrade", router_values(tenant))
            other = [ns for ns in APPS.values() if ns != namespace]
            assert not shared_keda.fenced(cluster, "hpa", "keda-hpa-app", "-n", namespace)
            # The one decision: from here kube-apiserver refuses the shared operator any write
            # in the namespace, and the tenant's KEDA (whose operator stays stopped until it
            # has a namespace) gets it.
            cluster.kubectl("label", "namespace", namespace, f"{TENANT_LABEL}={tenant}")
            wait_for(
                lambda n=namespace: shared_keda.fenced(cluster, "hpa", "keda-hpa-app", "-n", n),
                f"the shared operator fenced out of {namespace}",
                30,
                0.2,
            )
            keda_ns = tenant_namespace(tenant)
            cluster.kubectl("create", "namespace", keda_ns)
            cluster.helm(
                "install", "keda", str(TENANT_CHART), "-n", keda_ns,
                *installed.tenant_args(tenant), "--wait", "--timeout=5m",
            )  # fmt: skip
            wait_for(
                lambda n=namespace, t=tenant: n in watched_by(cluster, t),
                f"{tenant}'s operator watching {namespace}",
                180,
                1,
            )
            wait_for(
                lambda n=namespace, t=tenant: probe_value(installed, n) == str(VALUES[t]),
                f"{tenant}'s KEDA serving {namespace}",
                180,
                1,
            )
            helm_router(installed, "upgrade", router_values(None))
            for ns in other:
                moved = json.loads(cluster.kubectl("get", "namespace", ns, "-o", "json").stdout)
                assert shared_keda.fenced(cluster, "hpa", "keda-hpa-app", "-n", ns) == (
                    TENANT_LABEL in (moved["metadata"].get("labels") or {})
                )
            step(f"4. {tenant} moved to its own KEDA ({namespace})", since)

        # 5. The shared KEDA goes: first out of the router, then its objects, then the fence.
        since = time.monotonic()
        log = cluster.kubectl("-n", "keda", "logs", "deploy/keda-operator", check=False).stdout
        refused = [line for line in log.splitlines() if shared_keda.FENCE in line]
        report.append(f"shared operator writes refused by the fence: {len(refused)}")
        for line in refused[:3]:
            print(f"[migration]   refused: {line[:240]}")
        helm_router(installed, "upgrade", router_values(None, default_upstream=False))
        for doc in reversed(docs):
            if doc["kind"] == "APIService":
                continue  # the router's now: deleting it would cut every namespace's reads
            cluster.kubectl(
                "delete", doc["kind"], doc["metadata"]["name"],
                *(["-n", doc["metadata"]["namespace"]] if doc["metadata"].get("namespace") else []),
                "--ignore-not-found", "--wait=false",
            )  # fmt: skip
        for doc in shared_keda.fence(TENANT_LABEL):
            cluster.kubectl("delete", doc["kind"], doc["metadata"]["name"])
        wait_for(
            lambda: (
                not json.loads(cluster.kubectl("-n", "keda", "get", "pods", "-o", "json").stdout)[
                    "items"
                ]
            ),
            "the shared KEDA's pods gone",
            120,
            1,
        )
        spec = json.loads(cluster.kubectl("get", *apiservice, "-o", "json").stdout)["spec"]
        assert spec["service"]["name"] == ROUTER_RELEASE, spec
        step("5. shared KEDA removed", since)

        totals = {ns: len(r.snapshot()) for ns, r in reading.items()}
        failed = {ns: len(r.failures()) for ns, r in reading.items()}
        longest = {ns: round(r.longest_s(), 2) for ns, r in reading.items()}
    report.append(f"whole migration: reads {totals}; failed {failed}; longest read {longest} s")
    # The HPAs scale through the tenants' KEDAs: ceil(value / target 2).
    for tenant, namespace in APPS.items():
        want = min(MAX_REPLICAS, -(-VALUES[tenant] // 2))
        wait_for(
            lambda n=namespace, w=want: installed.replicas(n)[0] == w,
            f"{namespace}'s HPA at {want}",
            120,
            1,
        )
    assert failed == dict.fromkeys(APPS.values(), 0), report[-1]
