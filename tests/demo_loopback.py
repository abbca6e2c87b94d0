"""Local demo: the real stack on loopback, with two tenants each running their own KEDA.

Builds what is missing (etcd, kube-apiserver, kube-controller-manager, kubectl, KEDA from
their Go modules; cached after the first run), starts them, the router behind the
external-metrics APIService and, per tenant, KEDA's operator (through the reloader) and
metrics adapter. Then it prints each tenant's metric as read through kube-apiserver and
the HPA's desired replicas, every few seconds, changing the metric values as it goes.
Ctrl-C stops everything.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from tests.e2e.metric_source import MetricSource
from tests.e2e.stack import Stack, build_binaries, wait_for

TENANTS = {"tenant-a": ("tenant-a--web", 7), "tenant-b": ("tenant-b--jobs", 42)}


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def metric(stack: Stack, namespace: str) -> str:
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/s0-metric-api-value"
        "?labelSelector=scaledobject.keda.sh%2Fname%3Dapp"
    )
    code, body = stack.get_raw(path)
    if code != 200:
        return f"HTTP {code}"
    items = body.get("items") or []
    return str(items[0]["value"]) if items else "-"


def desired(stack: Stack, namespace: str) -> str:
    done = stack.kubectl("get", "hpa", "keda-hpa-app", "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        return "-"
    return str(json.loads(done.stdout).get("status", {}).get("desiredReplicas", "-"))


def main() -> int:
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    say(
        "building or reusing etcd, kube-apiserver, kube-controller-manager, kubectl and KEDA (first run: ~15 min)"
    )
    binaries = build_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="keda-tenancy-demo-"))
    stack = Stack(binaries, workdir)
    sources = {tenant: MetricSource(value) for tenant, (_, value) in TENANTS.items()}
    try:
        say("starting etcd and kube-apiserver")
        stack.start_control_plane()
        stack.install_keda_crds()
        for tenant, (namespace, _) in TENANTS.items():
            say(f"starting {tenant}'s KEDA (operator under the reloader, metrics adapter)")
            stack.tenant_namespace(tenant, namespace)
            stack.add_tenant(tenant)
        say("starting the router behind the v1beta1.external.metrics.k8s.io APIService")
        stack.register_apiservice()
        stack.start_router()
        stack.start_hpa_controller()
        wait_for(stack.apiservice_available, "APIService Available", 60)
        for tenant, (namespace, _) in TENANTS.items():
            stack.scaled_app(namespace, sources[tenant].url)
        say(f"kubeconfig: {stack.kubeconfig}")
        say(
            f"try: kubectl --kubeconfig {stack.kubeconfig} get apiservice v1beta1.external.metrics.k8s.io"
        )
        say(f"logs: {stack.logs}   (Ctrl-C to stop)")
        for tick in itertools.count():
            if stopping:
                break
            cells = []
            for tenant, (namespace, base) in TENANTS.items():
                sources[tenant].value = base + (tick // 5) % 4
                cells.append(
                    f"{tenant} [{namespace}] source={sources[tenant].value} "
                    f"via-router={metric(stack, namespace)} hpa-desired={desired(stack, namespace)}"
                )
            print(" | ".join(cells), flush=True)
            for _ in range(20):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        say("stopping")
        stack.stop()
        for source in sources.values():
            source.close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
