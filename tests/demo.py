"""Demo: the Helm charts installed on a kubelet-backed cluster on this machine.

Builds what is missing (the Kubernetes components, KEDA, CoreDNS, kube-router from their Go
modules; the images from deploy/images/*.Dockerfile; all cached after the first run), starts
the cluster, installs the router and two tenants with Helm as deploy/README.md does, and then
prints each tenant's metric as read through kube-apiserver and the HPA's desired and the
Deployment's ready replicas, changing the metric values as it goes. Ctrl-C tears it all down.
Needs root (it runs a kubelet).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from types import FrameType

from tests.deploy.charts import versions
from tests.e2e.cluster.cluster import running_cluster
from tests.e2e.cluster.install import APPS, VALUES, Installed
from tests.e2e.images.build import Builder
from tests.e2e.stack import build_binaries


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        say("the cluster runs a kubelet: run as root (or `make demo-loopback`, no node)")
        return 1
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    say("building or reusing the components and images (first run: see README for times)")
    binaries = build_binaries()
    images = Builder(binaries, versions()["KEDA_VERSION"]).all()
    with running_cluster(binaries, images) as cluster:
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        installed = Installed(cluster, images)
        say(
            "installing KEDA's CRDs, the router chart and two tenant charts (alpha: label rule, process mode; beta: HNC labels, deployment mode)"
        )
        installed.everything()
        say(f"kubeconfig: {cluster.kubeconfig}")
        say(
            f"try: {cluster.bin / 'kubectl'} --kubeconfig {cluster.kubeconfig} get apiservice,pods -A"
        )
        say(f"logs: {cluster.logs}   (Ctrl-C to stop and tear down)")
        for tick in itertools.count():
            if stopping:
                break
            cells = []
            for tenant, namespace in APPS.items():
                value = VALUES[tenant] + 2 * ((tick // 10) % 3)
                if tick % 10 == 0:
                    installed.set_value(namespace, value)
                desired, ready = installed.replicas(namespace)
                cells.append(
                    f"{tenant} [{namespace}] source={value} via-router={installed.metric_value(namespace) or '-'} "
                    f"hpa-desired={desired if desired is not None else '-'} ready={ready or 0}"
                )
            print(" | ".join(cells), flush=True)
            for _ in range(20):
                if stopping:
                    break
                time.sleep(0.1)
        say("stopping")
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
