"""What a tenant costs: `python -m bench.footprint` (or `make bench-footprint`), as root.

Brings up the kubelet-backed cluster of tests/e2e/cluster with kube-apiserver's audit log on
(Metadata level, this benchmark only), installs the router and the two tenants as the cluster
suite does (alpha: process mode; beta: deployment mode, HNC labels; each with one ScaledObject
polled every 2 s), lets it settle and then, over a rest window (--rest-s, 60 s), measures:

  per container  pods, containers, CPU and memory requested (the pod specs), CPU used over
                 the window (cpuacct), RSS of each of its processes (VmRSS, read on the node)
                 and the memory cgroup's anonymous memory
  per caller     API requests/s, writes/s, Lease writes/s over the window and watches open
                 at its end, from the audit log, by user and user agent
  latencies      a namespace labelled into each tenant until its metric is served through
                 the APIService; the label taken off again until the tenant's RoleBinding
                 there is deleted, its access is gone (`kubectl auth can-i`) and its last
                 watch in that namespace has ended

Prints per tenant and for the cluster-wide components (router, certificate controller), beside
one shared KEDA as its chart's defaults render it, and writes the figures as JSON (--json).
Not part of `make test`; not a timed test (nothing is asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.footprint_audit import (  # noqa: E402
    KEDA_AGENTS,
    POLICY,
    AuditLog,
    Event,
    Usage,
    open_watches_in,
    service_account_namespace,
    usage_by_caller,
    watch_ends,
)
from bench.footprint_node import ContainerUse, containers_of, cpu_ns, measure  # noqa: E402
from tests.deploy.charts import ROUTER_NAMESPACE, versions  # noqa: E402
from tests.e2e.cluster.cluster import Cluster  # noqa: E402
from tests.e2e.cluster.install import (  # noqa: E402
    APPS,
    Installed,
    namespace_labels,
    tenant_namespace,
)
from tests.e2e.images.build import Builder  # noqa: E402
from tests.e2e.stack import build_binaries, wait_for  # noqa: E402

MODES = {"alpha": "process", "beta": "deployment"}  # as tests/e2e/cluster/install.py installs
# KEDA's own executables (comm, at most 15 characters); every other process is keda-tenancy's.
KEDA_PROCESSES = ("keda", "keda-adapter", "keda-admission-")
# One shared KEDA from its chart's defaults (kedacore/charts keda 2.20: resources.operator,
# .metricServer and .webhooks each request 100m CPU and 100Mi, limit 1 CPU and 1000Mi).
SHARED_KEDA = {
    "pods": 3,
    "containers": 3,
    "cpu_request_m": 300,
    "memory_request_mib": 300.0,
    "components": ["keda-operator", "keda-operator-metrics-apiserver", "keda-admission-webhooks"],
}

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[footprint] {message} (at {time.monotonic() - STARTED:.0f}s)", flush=True)


class AuditedCluster(Cluster):
    """The suite's cluster with kube-apiserver's audit log on (this benchmark only)."""

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        if name == "kube-apiserver":
            policy = self.dir / "audit-policy.yaml"
            policy.write_text(POLICY)
            self.audit_log.unlink(missing_ok=True)
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=0",
            ]
        return super().start(name, argv, env)


# -- the rest window ---------------------------------------------------------------------------


def pods_in(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    done = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


def restarts(pods: list[dict[str, Any]]) -> dict[str, int]:
    return {
        f"{p['metadata']['name']}/{s['name']}": int(s.get("restartCount", 0))
        for p in pods
        for s in p.get("status", {}).get("containerStatuses", [])
    }


def caller_agent(caller: str) -> str:
    """The agent of a "user [agent]" caller key."""
    return caller.rsplit(" [", 1)[-1].rstrip("]")


def is_keda(process_name: str) -> bool:
    return process_name == "keda" or process_name.startswith(KEDA_PROCESSES[1:])


@dataclass
class Group:
    """A tenant, or a cluster-wide component: its containers and its callers' API use."""

    name: str
    mode: str
    containers: list[ContainerUse]
    callers: dict[str, Usage]
    window_s: float

    def row(self) -> dict[str, Any]:
        ours = sum(p.rss_kib for c in self.containers for p in c.processes if not is_keda(p.name))
        keda = sum(p.rss_kib for c in self.containers for p in c.processes if is_keda(p.name))
        api, ours_api, keda_api = Usage(), Usage(), Usage()
        for caller, usage in self.callers.items():
            api.add(usage)
            (keda_api if caller_agent(caller) in KEDA_AGENTS else ours_api).add(usage)
        used_ns = sum(c.cpu_ns_end - c.cpu_ns_start for c in self.containers)
        w = self.window_s
        return {
            "name": self.name,
            "mode": self.mode,
            "pods": len({c.pod for c in self.containers}),
            "containers": len(self.containers),
            "rss_ours_mib": round(ours / 1024, 1),
            "rss_keda_mib": round(keda / 1024, 1),
            "cgroup_rss_mib": round(sum(c.cgroup_rss_kib for c in self.containers) / 1024, 1),
            "cpu_request_m": sum(c.cpu_request_m for c in self.containers),
            "memory_request_mib": round(sum(c.memory_request_mib for c in self.containers), 1),
            "cpu_used_m": round(used_ns / 1e6 / w, 1),
            "api_requests_per_s": round(api.requests / w, 3),
            "api_requests_ours_per_s": round(ours_api.requests / w, 3),
            "api_requests_keda_per_s": round(keda_api.requests / w, 3),
            "api_writes_per_s": round(api.writes / w, 3),
            "api_writes_ours_per_s": round(ours_api.writes / w, 3),
            "lease_writes_per_s": round(api.lease_writes / w, 3),
            "open_watches": api.open_watches,
            "open_watches_ours": ours_api.open_watches,
            "open_watches_keda": keda_api.open_watches,
        }


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def deployment_of(pod: str) -> str:
    """A Deployment's pod name without its ReplicaSet hash and suffix."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def rest_window(
    cluster: Cluster, audit: AuditLog, rest_s: float
) -> tuple[list[Group], dict[str, Any]]:
    namespaces = {tenant_namespace(t): t for t in MODES} | {ROUTER_NAMESPACE: ""}
    pods = {ns: pods_in(cluster, ns) for ns in namespaces}
    refs = {ns: containers_of(items) for ns, items in pods.items()}
    cpu_start = {id(r): cpu_ns(r) for rs in refs.values() for r in rs}
    say(f"rest window: {rest_s:.0f}s, nothing changes")
    start = time.time()
    time.sleep(rest_s)
    end = time.time()
    window = end - start
    uses: dict[str, list[ContainerUse]] = {}
    for ns, rs in refs.items():
        uses[ns] = []
        for ref in rs:
            use = measure(ref)
            use.cpu_ns_start, use.cpu_ns_end = cpu_start[id(ref)], cpu_ns(ref)
            uses[ns].append(use)
    restarted = {
        ns: {k: v for k, v in restarts(pods_in(cluster, ns)).items() if restarts(p).get(k) != v}
        for ns, p in pods.items()
    }
    callers = usage_by_caller(audit.read(), start, end)

    def of_namespace(ns: str) -> dict[str, Usage]:
        return {
            c: u for c, u in callers.items() if service_account_namespace(c.split(" ")[0]) == ns
        }

    groups = [
        Group(
            tenant,
            mode,
            uses[tenant_namespace(tenant)],
            of_namespace(tenant_namespace(tenant)),
            window,
        )
        for tenant, mode in MODES.items()
    ]
    router_ns = uses[ROUTER_NAMESPACE]
    router_callers = of_namespace(ROUTER_NAMESPACE)
    accounts = {
        p["metadata"]["name"]: p["spec"].get("serviceAccountName", "default")
        for p in pods[ROUTER_NAMESPACE]
    }
    for component in sorted({deployment_of(c.pod) for c in router_ns}):
        containers = [c for c in router_ns if deployment_of(c.pod) == component]
        users = {f"system:serviceaccount:{ROUTER_NAMESPACE}:{accounts[c.pod]}" for c in containers}
        mine = {c: u for c, u in router_callers.items() if c.split(" ")[0] in users}
        groups.append(Group(component, "cluster", containers, mine, window))
    assigned = {c for g in groups for c in g.callers}
    if unassigned := {c: u for c, u in router_callers.items() if c not in assigned}:
        groups.append(Group("router-namespace-other", "cluster", [], unassigned, window))
    details = {
        "window_s": round(window, 1),
        "window": [iso(start), iso(end)],
        "restarted_during_window": {ns: r for ns, r in restarted.items() if r},
        "containers": {
            ns: [asdict(u) | {"rss_mib": round(u.rss_kib / 1024, 1)} for u in us]
            for ns, us in uses.items()
        },
        "callers": {
            c: asdict(u)
            for c, u in sorted(callers.items())
            if service_account_namespace(c.split(" ")[0]) in namespaces
        },
    }
    return groups, details


# -- the latencies ---------------------------------------------------------------------------


@dataclass
class Latency:
    tenant: str
    namespace: str
    label_to_served_s: float | None = None
    unlabel_to_binding_deleted_s: float | None = None
    unlabel_to_access_gone_s: float | None = None
    unlabel_to_watches_gone_s: float | None = None
    watches_before: int = 0
    notes: list[str] = field(default_factory=list)


def namespace_change(ns: str, after: float) -> Callable[[Event], bool]:
    def matches(e: Event) -> bool:
        return (
            e.resource == "namespaces"
            and e.name == ns
            and e.verb in ("patch", "update")
            and e.stage == "ResponseComplete"
            and e.at >= after
        )

    return matches


def join_and_leave(installed: Installed, audit: AuditLog, tenant: str, value: int) -> Latency:
    cluster = installed.cluster
    ns = f"bench-{tenant}-joins"
    result = Latency(tenant, ns)
    labels = namespace_labels(tenant, ns)
    operator = f"system:serviceaccount:{tenant_namespace(tenant)}:keda-operator"

    # The namespace and its workload exist first, outside any tenant: what is timed is the
    # label alone.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    installed.scaled_app(ns, value)
    cluster.kubectl(
        "-n", ns, "rollout", "status", "deploy/app-metric", "--timeout=180s", timeout_s=200
    )
    say(f"{tenant}: labelling {ns} into the tenant")
    before = time.time() - 1
    cluster.kubectl("label", "namespace", ns, *(f"{k}={v}" for k, v in labels.items()))
    label = wait_for(
        lambda: audit.first(namespace_change(ns, before)), "the label's audit event", 30
    )
    wait_for(lambda: installed.metric_value(ns) == str(value), f"{ns} served", 180, 0.2)
    result.label_to_served_s = round(time.time() - label.at, 2)

    # Then out again: the RoleBinding deleted, the access gone, every watch the tenant's
    # components held in the namespace ended.
    time.sleep(5)  # the operator's watches of the namespace are open
    watches = open_watches_in(
        audit.read(), ns, lambda user: service_account_namespace(user) == tenant_namespace(tenant)
    )
    result.watches_before = len(watches)
    say(f"{tenant}: {len(watches)} watches open in {ns}; taking the label off")
    before = time.time() - 1
    cluster.kubectl("label", "namespace", ns, *(f"{k}-" for k in labels))
    unlabel = wait_for(
        lambda: audit.first(namespace_change(ns, before)), "the unlabel's audit event", 30
    )

    def can_get_secrets() -> str:
        done = cluster.kubectl(
            "auth", "can-i", "get", "secrets", "-n", ns, "--as", operator, check=False
        )
        return done.stdout.strip()

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if result.unlabel_to_access_gone_s is None and can_get_secrets() == "no":
            result.unlabel_to_access_gone_s = round(time.time() - unlabel.at, 2)
        events = audit.read()
        if result.unlabel_to_binding_deleted_s is None:
            deleted = audit.first(
                lambda e: (
                    e.resource == "rolebindings"
                    and e.namespace == ns
                    and e.verb == "delete"
                    and e.stage == "ResponseComplete"
                ),
                unlabel.at,
            )
            if deleted is not None:
                result.unlabel_to_binding_deleted_s = round(deleted.at - unlabel.at, 2)
        ended = list(watch_ends(events, set(watches)))
        if result.unlabel_to_watches_gone_s is None and len(ended) == len(watches):
            last = max((e.at for e in ended), default=unlabel.at)
            result.unlabel_to_watches_gone_s = round(last - unlabel.at, 2)
        if None not in (
            result.unlabel_to_access_gone_s,
            result.unlabel_to_binding_deleted_s,
            result.unlabel_to_watches_gone_s,
        ):
            break
        time.sleep(0.2)
    else:
        result.notes.append("not all of binding/access/watches gone within 90s")
    opened_since = [
        w
        for w in open_watches_in(
            audit.read(), ns, lambda u: service_account_namespace(u) == tenant_namespace(tenant)
        ).values()
        if w.at > unlabel.at
    ]
    if opened_since:
        result.notes.append(f"{len(opened_since)} watches opened in {ns} after the unlabel")
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return result


# -- output ----------------------------------------------------------------------------------

COLUMNS = (
    ("name", "", "{}"),
    ("mode", "", "{}"),
    ("pods", "", "{}"),
    ("containers", "ctrs", "{}"),
    ("rss_ours_mib", "RSS ours MiB", "{:.1f}"),
    ("rss_keda_mib", "RSS KEDA MiB", "{:.1f}"),
    ("cgroup_rss_mib", "cgroup anon MiB", "{:.1f}"),
    ("cpu_request_m", "CPU req m", "{}"),
    ("memory_request_mib", "mem req MiB", "{:.0f}"),
    ("cpu_used_m", "CPU used m", "{:.1f}"),
    ("api_requests_ours_per_s", "API req/s ours", "{:.2f}"),
    ("api_requests_keda_per_s", "API req/s KEDA", "{:.2f}"),
    ("api_writes_per_s", "writes/s", "{:.2f}"),
    ("api_writes_ours_per_s", "writes/s ours", "{:.2f}"),
    ("lease_writes_per_s", "Lease w/s", "{:.2f}"),
    ("open_watches_ours", "watches ours", "{}"),
    ("open_watches_keda", "watches KEDA", "{}"),
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = [title or key for key, title, _ in COLUMNS]
    cells = [
        [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    return "\n".join([line(header), *(line(c) for c in cells)])


def shared_keda_row() -> dict[str, Any]:
    return {
        "name": "shared KEDA",
        "mode": "chart defaults",
        "pods": SHARED_KEDA["pods"],
        "containers": SHARED_KEDA["containers"],
        "cpu_request_m": SHARED_KEDA["cpu_request_m"],
        "memory_request_mib": SHARED_KEDA["memory_request_mib"],
    }


def report(
    groups: list[Group], details: dict[str, Any], latencies: list[Latency]
) -> dict[str, Any]:
    rows = [g.row() for g in groups]
    tenants = [r for r in rows if r["mode"] != "cluster"]
    lines = [
        "",
        f"At rest over {details['window_s']:.0f}s (2 tenants, one ScaledObject each polled every 2s):",
        table([*tenants, *(r for r in rows if r["mode"] == "cluster"), shared_keda_row()]),
        "",
        "RSS: sum of VmRSS of each container's processes (/proc/<pid>/status, from the node);",
        "'ours' is every keda-tenancy process, 'KEDA' KEDA's own binaries. cgroup anon: the",
        "containers' memory cgroups' total_rss. Requests from the pod specs. API figures from the",
        "audit log by ServiceAccount and user agent ('KEDA': KEDA's binaries' agents); writes",
        "leave out reviews (SubjectAccessReview...). Shared KEDA: its chart's requests only (not",
        "run here; its processes are the RSS KEDA column's, once for the cluster).",
    ]
    if details["restarted_during_window"]:
        lines.append(f"RESTARTED during the window: {details['restarted_during_window']}")
    lines += ["", "Per process (RSS MiB):"]
    for ns, containers in details["containers"].items():
        for c in containers:
            procs = ", ".join(f"{p['name']} {p['rss_kib'] / 1024:.1f}" for p in c["processes"])
            lines.append(f"  {ns}/{c['pod']}/{c['container']}: {procs}")
    lines += ["", "API callers (requests/s, Lease writes/s, open watches):"]
    window = details["window_s"]
    for caller, u in details["callers"].items():
        calls = ", ".join(f"{call} {n}" for call, n in sorted(u["by_call"].items()))
        lines.append(
            f"  {caller}: {u['requests'] / window:.2f} req/s, {u['writes'] / window:.2f} "
            f"writes/s, {u['lease_writes'] / window:.2f} Lease w/s, {u['open_watches']} "
            f"watches ({calls or 'no request'} in {window:.0f}s)"
        )
    lines += ["", "Namespace membership latencies (s):"]
    for lat in latencies:
        lines.append(
            f"  {lat.tenant} ({MODES[lat.tenant]} mode): label -> served {lat.label_to_served_s}; "
            f"unlabel -> RoleBinding deleted {lat.unlabel_to_binding_deleted_s}, access gone "
            f"{lat.unlabel_to_access_gone_s}, {lat.watches_before} watches gone "
            f"{lat.unlabel_to_watches_gone_s}" + (f" ({'; '.join(lat.notes)})" if lat.notes else "")
        )
    print("\n".join(lines), flush=True)
    return {
        "rows": rows,
        "shared_keda": shared_keda_row() | {"components": SHARED_KEDA["components"]},
        "latencies": [asdict(lat) for lat in latencies],
        **details,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest-s", type=float, default=60.0, help="the rest window")
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait after install")
    parser.add_argument("--json", type=Path, default=Path("footprint.json"))
    parser.add_argument("--no-latencies", action="store_true")
    parser.add_argument(
        "--layout",
        choices=("per-tenant", "platform"),
        default="per-tenant",
        help="platform: issue 21's layout (the router release's platform controller; per "
        "tenant only KEDA's operator, with keda-tenancy-operator-pod, and metrics server)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("the cluster runs a kubelet: run as root")
        return 1
    say("building or reusing the components and images")
    binaries = build_binaries()
    images = Builder(binaries, versions()["KEDA_VERSION"]).all()
    cluster = AuditedCluster(binaries, images)
    try:
        cluster.up()
        installed = Installed(cluster, images, platform=args.layout == "platform")
        say(f"installing the router and two tenants ({args.layout} layout)")
        installed.everything(say)
        audit = AuditLog(cluster.audit_log)
        say(f"settling {args.settle_s:.0f}s")
        time.sleep(args.settle_s)
        groups, details = rest_window(cluster, audit, args.rest_s)
        latencies = []
        if not args.no_latencies:
            for value, tenant in enumerate(APPS, start=11):
                latencies.append(join_and_leave(installed, audit, tenant, value))
        figures = report(groups, details, latencies)
    finally:
        cluster.down()
    figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    figures["layout"] = args.layout
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
