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
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from tests.deploy.charts import versions
from tests.e2e.cluster.cluster import running_cluster
from tests.e2e.cluster.install import APPS, VALUES, Installed
from tests.e2e.images.build import Builder
from tests.e2e.stack import build_binaries

T = TypeVar("T")


# A step that keeps failing this long ends the demo (with teardown); shorter failures are
# printed and retried on the next tick (a pod restarting, the API server busy).
GIVE_UP_AFTER_S = 120.0


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[demo] {message} (at {time.monotonic() - STARTED:.0f}s)", flush=True)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


class Steps:
    """Runs the loop's steps; a failure is one line, and only a persistent one is fatal."""

    def __init__(self) -> None:
        self.failing_since: dict[str, float] = {}

    def run(self, what: str, step: Callable[[], T]) -> T | None:
        try:
            result = step()
        except Exception as exc:
            since = self.failing_since.setdefault(what, time.monotonic())
            failing = time.monotonic() - since
            if failing > GIVE_UP_AFTER_S:
                raise RuntimeError(
                    f"{what} has failed for {failing:.0f}s: {one_line(exc)}"
                ) from exc
            say(
                f"{what} failed: {one_line(exc)}; retrying on the next tick "
                f"(giving up after {GIVE_UP_AFTER_S:.0f}s of failures)"
            )
            return None
        self.failing_since.pop(what, None)
        return result


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
    try:
        with running_cluster(binaries, images) as cluster:
            installed = Installed(cluster, images)
            say(
                "installing KEDA's CRDs, the router chart and two tenant charts (alpha: label "
                "rule, process mode; beta: HNC labels, deployment mode)"
            )
            installed.everything(say)
            say("ready")
            say(f"kubeconfig: {cluster.kubeconfig}")
            say(
                f"try: {cluster.bin / 'kubectl'} --kubeconfig {cluster.kubeconfig} "
                "get apiservice,pods -A"
            )
            say(f"logs: {cluster.logs}   (Ctrl-C to stop and tear down)")
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
            loop(installed, lambda: stopping)
            say("stopping")
    except KeyboardInterrupt:
        say("interrupted: the cluster was torn down")
        return 130
    except RuntimeError as exc:
        say(f"giving up: {one_line(exc)} (the cluster was torn down)")
        return 1
    say("stopped")
    return 0


def loop(installed: Installed, stopping: Callable[[], bool]) -> None:
    steps = Steps()
    for tick in itertools.count():
        if stopping():
            return
        cells = []
        for tenant, namespace in APPS.items():
            value = VALUES[tenant] + 2 * ((tick // 10) % 3)
            if tick % 10 == 0:
                steps.run(
                    f"setting {tenant}'s value in {namespace}",
                    lambda ns=namespace, v=value: installed.set_value(ns, v),
                )
            replicas = steps.run(
                f"reading {namespace}'s HPA and Deployment",
                lambda ns=namespace: installed.replicas(ns),
            )
            desired, ready = replicas or (None, None)
            served = steps.run(
                f"reading {tenant}'s metric through the router",
                lambda ns=namespace: installed.metric_value(ns),
            )
            cells.append(
                f"{tenant} [{namespace}] source={value} via-router={served or '-'} "
                f"hpa-desired={desired if desired is not None else '-'} ready={ready or 0}"
            )
        print(" | ".join(cells), flush=True)
        for _ in range(20):
            if stopping():
                return
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
