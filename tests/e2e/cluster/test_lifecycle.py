"""The platform's life beyond install (issue 22): what a platform team does or suffers, each run
while every tenant's metric is read at 10 Hz through kube-apiserver (tests/e2e/cluster/reads.py).

Runs after test_cluster.py, on the same installed cluster."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.deploy.charts import ROUTER_NAMESPACE, ROUTER_RELEASE
from tests.e2e.cluster.install import APPS, VALUES, Installed, tenant_namespace
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

# What our components create at run time, and what must come through any restart as it was:
# same objects (same uid), none lost, none doubled. kube-system is left out: kube-apiserver's
# identity Lease is new after each of its restarts, by design.
RUNTIME_KINDS = ("rolebindings", "secrets", "configmaps", "leases")
SKIPPED_NAMESPACES = ("kube-system", "kube-node-lease", "kube-public")


def inventory(installed: Installed) -> dict[tuple[str, str, str], str]:
    """(kind, namespace, name) -> uid, for every object of RUNTIME_KINDS outside kube-*."""
    found: dict[tuple[str, str, str], str] = {}
    for kind in RUNTIME_KINDS:
        done = installed.cluster.kubectl("get", kind, "-A", "-o", "json")
        for item in json.loads(done.stdout)["items"]:
            meta = item["metadata"]
            if meta["namespace"] in SKIPPED_NAMESPACES or meta["name"].startswith("sh.helm."):
                continue
            key = (kind, meta["namespace"], meta["name"])
            assert key not in found, f"{key} listed twice"
            found[key] = meta["uid"]
    return found


def settled_inventory(installed: Installed) -> dict[tuple[str, str, str], str]:
    """The inventory once two readings 5 s apart agree (earlier scenarios may still settle)."""
    readings: list[dict[tuple[str, str, str], str]] = []

    def agreed() -> dict[tuple[str, str, str], str]:
        readings.append(inventory(installed))
        return readings[-1] if len(readings) > 1 and readings[-1] == readings[-2] else {}

    return wait_for(agreed, "the runtime objects settled", 120, 5)


def managed_bindings(installed: Installed) -> set[tuple[str, str]]:
    done = installed.cluster.kubectl(
        "get", "rolebindings", "-A", "-l", "keda-tenancy.io/role-binding-of", "-o", "json"
    )
    items = json.loads(done.stdout)["items"]
    return {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}


@contextlib.contextmanager
def readers(installed: Installed) -> Iterator[dict[str, MetricReader]]:
    with contextlib.ExitStack() as stack:
        yield {
            tenant: stack.enter_context(
                MetricReader(installed.cluster, APPS[tenant], str(VALUES[tenant]))
            )
            for tenant in APPS
        }


def recovered(
    reading: dict[str, MetricReader], since: float, what: str, timeout_s: float = 240
) -> dict[str, float]:
    """Waits until every tenant's last 20 reads (2 s) since `since` succeeded; per tenant, the
    seconds its reads were out after `since` (0 when none failed)."""
    wait_for(
        lambda: all(r.good_streak(since, 20) for r in reading.values()),
        f"reads resume after {what}",
        timeout_s,
        0.5,
    )
    return {
        tenant: round(sum(o.seconds for o in reader.outages(since)), 2)
        for tenant, reader in reading.items()
    }


def test_16_recovery_from_router_kubelet_apiserver_and_etcd_restarts(installed: Installed) -> None:
    """All router pods deleted at once; the node's kubelet restarted; kube-apiserver restarted;
    etcd restarted. Reads resume after each with no manual step, and no binding, certificate
    Secret, ConfigMap or Lease is lost, doubled or recreated."""
    cluster = installed.cluster
    for tenant, namespace in APPS.items():
        wait_for(
            lambda n=namespace, t=tenant: installed.metric_value(n) == str(VALUES[t]),
            f"{namespace} served",
            180,
            1,
        )
    before = settled_inventory(installed)
    bindings = managed_bindings(installed)
    assert bindings, "the managers keep RoleBindings in the tenants' namespaces"

    def delete_router_pods() -> None:
        cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "delete", "pods", "-l", "app.kubernetes.io/component=router",
            "--wait=false",
        )  # fmt: skip

    def restart_kubelet() -> None:
        cluster.restart("kubelet")
        wait_for(cluster.node_ready, "the node Ready again", 120, 1)

    def restart_apiserver() -> None:
        cluster.restart("kube-apiserver")
        wait_for(
            lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
            "kube-apiserver ready again",
            120,
        )

    def restart_etcd() -> None:
        cluster.restart("etcd")
        wait_for(
            lambda: cluster.kubectl("get", "--raw", "/readyz/etcd", check=False).returncode == 0,
            "kube-apiserver reaches etcd again",
            120,
        )

    steps: list[tuple[str, Callable[[], None]]] = [
        ("all router pods deleted at once", delete_router_pods),
        ("the kubelet restarted", restart_kubelet),
        ("kube-apiserver restarted", restart_apiserver),
        ("etcd restarted", restart_etcd),
    ]
    report: list[str] = []
    with readers(installed) as reading:
        time.sleep(2)
        assert all(r.good_streak(0, 10) for r in reading.values()), "reads fail before any step"
        for what, step in steps:
            since = time.monotonic()
            step()
            out = recovered(reading, since, what)
            took = time.monotonic() - since
            longest = {t: round(r.longest_s(since), 2) for t, r in reading.items()}
            report.append(
                f"{what}: back in {took:.1f}s; reads out {out} s; longest read {longest} s; "
                f"failed {[len(r.failures(since)) for r in reading.values()]}"
            )
            print(f"\n[recovery] {report[-1]}")
            kinds = Counter(r.what[:70] for r in reading["alpha"].failures(since))
            for kind, count in kinds.most_common(4):
                print(f"[recovery]   alpha {count} x {kind}")
        total = {t: len(r.snapshot()) for t, r in reading.items()}
    print(f"[recovery] reads per tenant: {total}")
    assert all(n > 200 for n in total.values()), total
    # Nothing needed a hand: the router's pods are back, the APIService Available.
    cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "rollout", "status", f"deploy/{ROUTER_RELEASE}", "--timeout=180s"
    )  # fmt: skip
    wait_for(installed.apiservice_available, "the APIService Available", 120, 1)
    after = inventory(installed)
    lost = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    recreated = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert (lost, new, recreated) == ([], [], []), f"lost {lost}, new {new}, recreated {recreated}"
    assert managed_bindings(installed) == bindings
    # Every tenant's operator leads again (its Lease has a holder that renews).
    for tenant in APPS:
        done = cluster.kubectl(
            "-n", tenant_namespace(tenant), "get", "lease", f"{tenant}.operator.keda-tenancy.io", "-o", "json"
        )  # fmt: skip
        assert json.loads(done.stdout)["spec"].get("holderIdentity"), tenant
