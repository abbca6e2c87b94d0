"""Issue 22, item 1: onboarding a tenant as deploy/README.md ("Onboarding a tenant") says, while
the existing tenants' metrics are read at 10 Hz through kube-apiserver: the time from `helm
install` of the new tenant's release to its first metric served through the APIService, and
where it went. The new tenant is offboarded again at the end (README section 9), so the scenarios
after this one see the two tenants they expect."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from tests.deploy.charts import ROUTER_NAMESPACE, TENANT_CHART
from tests.e2e.cluster.install import APPS, VALUES, Installed, metric_path, tenant_namespace
from tests.e2e.cluster.milestones import (
    Check,
    Get,
    Milestones,
    deployment_ready,
    exists,
    pod_timeline,
)
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

NEW_TENANT = "gamma"
NEW_APPS = "gamma-apps"
NEW_VALUE = 5
# The bound issue 22 sets on this (2-core) machine; printed against the measurement, not
# asserted (no timed tests): the scenario fails only if the tenant is never served.
ONBOARDING_GOAL_S = 20
NEVER_S = 180


def first_value_served(namespace: str, expected: str) -> Check:
    def check(get: Get) -> bool:
        code, body = get(metric_path(namespace))
        items = body.get("items") or [] if code == 200 else []
        return bool(items) and str(items[0]["value"]) == expected

    return check


def onboarding_milestones(installed: Installed) -> Milestones:
    keda_ns = tenant_namespace(NEW_TENANT)
    secrets = f"/api/v1/namespaces/{keda_ns}/secrets"
    return Milestones(
        installed.cluster,
        {
            "certificates issued (keda-metrics-apiserver-tls)": exists(
                f"{secrets}/keda-metrics-apiserver-tls"
            ),
            "certificates issued (kedaorg-certs)": exists(f"{secrets}/kedaorg-certs"),
            "operator access bound in the tenant's namespace": exists(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NEW_APPS}/rolebindings/"
                f"keda-tenancy-{NEW_TENANT}-operator-managed"
            ),
            "operator ready": deployment_ready(keda_ns, "keda-operator"),
            "metrics server ready": deployment_ready(keda_ns, "keda-operator-metrics-apiserver"),
            "webhooks ready": deployment_ready(keda_ns, "keda-admission-webhooks"),
            "RoleBinding manager ready": deployment_ready(keda_ns, "keda-rolebinding-manager"),
            "first metric served through the APIService": first_value_served(
                NEW_APPS, str(NEW_VALUE)
            ),
        },
    )


def log_lines(installed: Installed) -> list[str]:
    """What the router said about the new tenant (each distinct message once, with its count
    and first time), and its KEDA's first words on gRPC and access: the causes behind the
    milestones' gaps."""
    cluster = installed.cluster
    keda_ns = tenant_namespace(NEW_TENANT)
    lines = []
    done = cluster.kubectl(
        "logs", "-n", ROUTER_NAMESPACE, "-l", "app.kubernetes.io/component=router",
        "--tail=3000", check=False,
    )  # fmt: skip
    seen: dict[str, list[str | int]] = {}
    for line in done.stdout.splitlines():
        if NEW_TENANT not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        detail = {
            k: v for k, v in entry.items() if k not in ("ts", "level", "logger", "duration_s")
        }
        key = json.dumps(detail, sort_keys=True)[:300]
        found = seen.setdefault(key, [str(entry.get("ts")), 0])
        found[1] = int(found[1]) + 1
    lines += [f"router x{count} from {ts}: {key}" for key, (ts, count) in seen.items()][:20]
    for selector, needle in (
        ("app.kubernetes.io/name=metrics-apiserver", "grpc"),
        ("app.kubernetes.io/name=operator", "reloader"),
        ("app.kubernetes.io/name=rolebinding-manager", ""),
    ):
        done = cluster.kubectl(
            "logs", "-n", keda_ns, "-l", selector, "--tail=400", "--all-containers", check=False
        )  # fmt: skip
        found = [line for line in done.stdout.splitlines() if needle.lower() in line.lower()]
        lines += [line[:300] for line in found[:12]] or [f"{selector}: {done.stderr[:200]}"]
    return lines


def offboard(installed: Installed) -> None:
    """README section 9, for the tenant this scenario added."""
    cluster = installed.cluster
    cluster.kubectl(
        "delete", "scaledobjects", "--all", "-n", NEW_APPS, "--timeout=60s", check=False
    )
    with contextlib.suppress(RuntimeError):  # not installed when the install itself failed
        cluster.helm("uninstall", "keda", "-n", tenant_namespace(NEW_TENANT), "--wait")
    cluster.kubectl(
        "delete", "namespace", NEW_APPS, tenant_namespace(NEW_TENANT), "--timeout=120s",
        timeout_s=150,
    )  # fmt: skip


def test_17_onboarding_a_tenant_within_the_goal_without_failed_reads(installed: Installed) -> None:
    cluster = installed.cluster
    keda_ns = tenant_namespace(NEW_TENANT)
    # The workload exists before its KEDA, in a namespace labelled for the tenant only once the
    # release is installed (README "Onboarding a tenant": a tenant's Service looked up before it
    # exists is cached as nonexistent by the cluster DNS for its negative TTL, 30 s).
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NEW_APPS}})
    installed.scaled_app(NEW_APPS, NEW_VALUE)
    cluster.kubectl(
        "-n", NEW_APPS, "rollout", "status", "deploy/app-metric", "--timeout=180s", timeout_s=200
    )  # fmt: skip
    cluster.kubectl("create", "namespace", keda_ns)
    milestones = onboarding_milestones(installed)
    try:
        with contextlib.ExitStack() as stack:
            reading = {
                tenant: stack.enter_context(
                    MetricReader(cluster, APPS[tenant], str(VALUES[tenant]))
                )
                for tenant in APPS
            }
            time.sleep(1)
            since = time.monotonic()
            milestones.start()
            cluster.helm(
                "install", "keda", str(TENANT_CHART), "-n", keda_ns,
                *installed.tenant_args(NEW_TENANT),
            )  # fmt: skip
            released = time.monotonic() - milestones.started
            installed.tenant_namespace(NEW_TENANT, NEW_APPS)
            labelled = time.monotonic() - milestones.started
            wait_for(milestones.all_reached, "every onboarding step", NEVER_S, 0.2)
            failed = {t: len(r.failures(since)) for t, r in reading.items()}
            longest = {t: round(r.longest_s(since), 2) for t, r in reading.items()}
            count = {t: len(r.snapshot(since)) for t, r in reading.items()}
            first_failures = {
                t: [f.what for f in r.failures(since)[:3]] for t, r in reading.items()
            }
        served = milestones.reached["first metric served through the APIService"]
        print(
            f"\n[onboarding] {NEW_TENANT}: first metric served {served:.1f}s after helm install "
            f"(goal {ONBOARDING_GOAL_S}s)"
        )
        print(f"[onboarding]   helm install started at {milestones.started_wall:.1f} (epoch)")
        print(f"[onboarding]   helm install returned: {released:.1f}s")
        print(f"[onboarding]   {NEW_APPS} labelled for {NEW_TENANT}: {labelled:.1f}s")
        for name, at in sorted(milestones.reached.items(), key=lambda item: item[1]):
            print(f"[onboarding]   {name}: {at:.1f}s")
        for line in pod_timeline(milestones, keda_ns):
            print(f"[onboarding]   pod {line}")
        code, events = milestones.get(f"/api/v1/namespaces/{keda_ns}/events")
        for event in events.get("items", []) if code == 200 else []:
            if event.get("type") == "Warning":
                print(
                    f"[onboarding]   event {event['involvedObject']['name']} {event['reason']} "
                    f"x{event.get('count', 1)}: {event.get('message', '')[:140]}"
                )
        for line in log_lines(installed):
            print(f"[onboarding]   log {line}")
        print(
            f"[onboarding]   other tenants meanwhile: {count} reads, {failed} failed, "
            f"longest {longest} s"
        )
        assert failed == dict.fromkeys(APPS, 0), first_failures
        assert all(n > 5 * served for n in count.values()), count
    finally:
        milestones.close()
        offboard(installed)
    # The other tenants were not touched: still their own values.
    for tenant, namespace in APPS.items():
        assert installed.metric_value(namespace) == str(VALUES[tenant])
