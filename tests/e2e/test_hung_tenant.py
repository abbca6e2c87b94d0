"""A hung tenant costs the others nothing: with one tenant's metrics server stopped
(SIGSTOP: connections accepted by the kernel, nothing ever answered), the other tenant's
HPA follows its metric about as fast as with both healthy.

The HPA controller asks for every HPA's metrics from a few workers shared by all tenants
(5 by default). The hung tenant gets more HPAs than there are workers, and kept-alive
connections to the router for all of them, so if the router held each of its requests for
long, every worker would end up waiting on it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import TENANT_APPS, VALUES
from tests.e2e.metric_source import MetricSource
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

HUNG_APPS = [f"hung-{i}" for i in range(12)]  # more HPAs than the controller's 5 workers
CHANGES = [(11, 6), (7, 4), (11, 6), (7, 4)]  # alpha's metric, and the replicas its HPA wants
SYNC_PERIOD_S = 2  # the stack's --horizontal-pod-autoscaler-sync-period
DEADLINE_S = 5  # the router's default --upstream-timeout


def hpa_desired(stack: Stack, namespace: str, name: str) -> int | None:
    done = stack.kubectl("get", "hpa", name, "-n", namespace, "-o", "json", check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout).get("status", {}).get("desiredReplicas")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the reloader and the KEDA adapter it runs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    tree = process_tree(pid)
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGSTOP)
    try:
        yield
    finally:
        for member in reversed(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGCONT)


def seconds_to_follow(stack: Stack, source: MetricSource, value: int, desired: int) -> float:
    """How long alpha's HPA takes to want `desired` replicas once its metric is `value`."""
    started = time.monotonic()
    source.value = value
    wait_for(
        lambda: hpa_desired(stack, TENANT_APPS["alpha"], "keda-hpa-app") == desired,
        f"alpha HPA desired {desired}",
        180,
        0.2,
    )
    return time.monotonic() - started


def metric_path(namespace: str) -> str:
    selector = urllib.parse.quote("scaledobject.keda.sh/name=app", safe="")
    return (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/s0-metric-api-value"
        f"?labelSelector={selector}"
    )


def warm_pool(stack: Stack, namespace: str, concurrency: int = 16) -> None:
    """Concurrent reads, so that the router keeps that many connections to the tenant."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(lambda _: stack.get_raw(metric_path(namespace))[0], range(32)))
    assert set(codes) == {200}, codes


def test_a_hung_tenant_does_not_slow_the_other_tenants_hpa(
    stack: Stack, sources: dict[str, MetricSource]
) -> None:
    alpha, beta = sources["alpha"], stack.tenants["beta"]
    assert beta.adapter is not None
    assert beta.adapter.popen is not None
    beta_apps = TENANT_APPS["beta"]
    for name in HUNG_APPS:
        stack.scaled_app(beta_apps, sources["beta"].url, name=name)
    try:
        for name in ["app", *HUNG_APPS]:
            wait_for(
                lambda n=name: hpa_desired(stack, beta_apps, f"keda-hpa-{n}") == 20,
                f"beta HPA {name} settled",
                240,
                1,
            )
        wait_for(
            lambda: hpa_desired(stack, TENANT_APPS["alpha"], "keda-hpa-app") == 4,
            "alpha settled",
            180,
            1,
        )
        healthy = [seconds_to_follow(stack, alpha, *change) for change in CHANGES]
        warm_pool(stack, beta_apps)
        with stopped(beta.adapter.popen.pid):
            time.sleep(SYNC_PERIOD_S)  # the controller's next syncs find beta hung
            hung = [seconds_to_follow(stack, alpha, *change) for change in CHANGES]
        print(
            f"\nalpha HPA follows in {[round(s, 2) for s in healthy]} s healthy, "
            f"{[round(s, 2) for s in hung]} s with beta hung"
        )
        # About as fast: at worst one router deadline (the first requests to the hung
        # tenant wait for it, then it fails fast) and a sync period more than healthy; not
        # held behind beta's requests for their whole wait (30 s each before).
        assert max(hung) <= max(healthy) + DEADLINE_S + SYNC_PERIOD_S
    finally:
        alpha.value = VALUES["alpha"]
        for name in HUNG_APPS:
            stack.kubectl("delete", "scaledobject", name, "-n", beta_apps, check=False)
            stack.kubectl("delete", "deployment", name, "-n", beta_apps, check=False)
    wait_for(
        lambda: stack.get_raw(metric_path(beta_apps))[0] == 200,
        "beta served again",
        120,
        1,
    )
