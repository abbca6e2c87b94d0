"""1,000 tenants simulated: `python -m bench.tenants --tenants 10,100,1000` (or
`make bench-tenants`). Not part of `make test`; nothing is asserted.

For each N, a fresh process-level stack of tests/e2e (real etcd and kube-apiserver, its audit
log on at Metadata level) holds N tenants in the platform layout (CONTRACT-21): each tenant's
KEDA namespace keda-<tenant> with what the tenant chart renders with
platformController.enabled (rendered ONCE and the name substituted, bench/tenants_objects.py:
the grant RoleBinding and Role, the bind ClusterRole and ClusterRoleBinding, the operator's
ClusterRoles, Roles and ServiceAccounts, the data-less keda-operator-namespaces ConfigMap), a
Lease and a (Pending) operator Pod, and --namespaces namespaces labelled
keda-tenancy.io/tenant=<tenant>, all created straight through the API in parallel.

The platform controller (keda-tenancy-controller) runs as a real process with the router
chart's controller.enabled arguments, as its ServiceAccount (a TokenRequest token) bound to the
ClusterRole the router chart renders, so every binding it makes passes the API server's
escalation check against what each tenant release granted. For --sample tenants the in-pod
process (keda-tenancy-operator-pod, with the tenant chart's arguments) runs a stand-in
operator (tests/fakes/operator_child.py) under the operator's ServiceAccount; it records the
WATCH_NAMESPACE it got. For every tenant, its "operator's namespace set" is the ConfigMap.

Measured at each N: the controller's RSS and CPU seconds (/proc) after the sync and after
--rest-s at rest; kube-apiserver's requests/s by verb (apiserver_request_total) and the
controller's own (audit log, by user) at rest and during each burst; the time from a label
change to the binding created/deleted in the namespace, to the tenant's namespace set with or
without it, and (sampled tenants) to the stand-in's WATCH_NAMESPACE: single changes at rest
(one sampled tenant at a time) and bursts of N changes (one namespace per tenant unlabelled,
labelled again, then moved to the next tenant). Prints the tables and the ratios against
issue 21's targets; --json writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import tenants_objects as objects  # noqa: E402
from bench.footprint_audit import POLICY, AuditLog, Usage, usage_by_caller  # noqa: E402
from bench.tenants_api import Api, Change, Recorder, in_parallel  # noqa: E402
from bench.tenants_stats import (  # noqa: E402
    CONTROLLER_RSS_TARGET_MIB,
    LABEL_CHANGE_TARGET_S,
    REST_WRITES_PER_TENANT_TARGET,
    ProcessUse,
    Summary,
    authorization_seconds,
    format_rates,
    mean_ms,
    rates_by_verb,
    ratio,
    request_counts,
    summarize,
    table,
    writes_per_second,
)
from tests.e2e.stack import (  # noqa: E402
    ROUTER_NAMESPACE,
    Process,
    Stack,
    _rewrite,
    build_binaries,
    free_port,
    wait_for,
)

CONTROLLER = "keda-tenancy-controller"
CONTROLLER_USER = f"system:serviceaccount:{ROUTER_NAMESPACE}:{CONTROLLER}"
MOVED = 9
"""The index of each tenant's namespace that the changes move."""
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[tenants] {message} (at {time.monotonic() - STARTED:.0f}s)", flush=True)


class AuditedStack(Stack):
    """The e2e stack with kube-apiserver's audit log on (this benchmark only)."""

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def run(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        if name == "kube-apiserver":
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(POLICY)
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=0",
            ]
        return super().run(name, argv, env)


# -- the charts, rendered once ------------------------------------------------------------------


def tenant_chart_docs() -> list[dict[str, Any]]:
    from tests.e2e.stack import chart_docs  # noqa: PLC0415

    return chart_docs(
        objects.PLACEHOLDER,
        objects.keda_namespace(objects.PLACEHOLDER),
        platformController={"enabled": True},
    )


def controller_docs() -> list[dict[str, Any]]:
    from tests.deploy.charts import ROUTER_CHART, ROUTER_RELEASE, Helm, find_helm  # noqa: PLC0415

    return Helm(find_helm()).template(
        ROUTER_CHART,
        release=ROUTER_RELEASE,
        namespace=ROUTER_NAMESPACE,
        values={"controller": {"enabled": True}},
    )


def by_kind_name(docs: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container_args(deployment: dict[str, Any]) -> list[str]:
    return [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]


# -- latencies ----------------------------------------------------------------------------------


def first_after(
    history: Sequence[Change], at: float, matches: Callable[[Change], bool]
) -> float | None:
    """Seconds from `at` to the first recorded change at or after it that `matches`."""
    for change in history:
        if change.at >= at and matches(change):
            return change.at - at
    return None


def binding_latency(
    rbs: Recorder, namespace: str, tenant: str, at: float, join: bool
) -> float | None:
    """JOIN: the tenant's binding exists in `namespace`; LEAVE: it is gone (DELETED: a binding
    only marked for deletion still grants)."""
    history = rbs.history((namespace, objects.binding_name(tenant)))
    if join:
        return first_after(history, at, lambda c: c.type != "DELETED")
    return first_after(history, at, lambda c: c.type == "DELETED")


def set_latency(cms: Recorder, namespace: str, tenant: str, at: float, join: bool) -> float | None:
    """The tenant's published namespace set with (JOIN) or without (LEAVE) `namespace`."""
    history = cms.history((objects.keda_namespace(tenant), objects.NAMESPACES_CONFIGMAP))

    def matches(change: Change) -> bool:
        published = objects.namespaces_in(change.obj)
        return published is not None and (namespace in published) == join

    return first_after(history, at, lambda c: c.type != "DELETED" and matches(c))


def operator_starts(log: Path) -> list[tuple[float, frozenset[str]]]:
    """The stand-in operator's starts: (CLOCK_MONOTONIC time, its WATCH_NAMESPACE)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "start":
                    watched = record.get("watch_namespace") or ""
                    out.append((float(record["t"]), frozenset(n for n in watched.split(",") if n)))
    return out


def operator_latency(log: Path, namespace: str, at: float, join: bool) -> float | None:
    for started, watched in operator_starts(log):
        if started >= at and (namespace in watched) == join:
            return started - at
    return None


@dataclass
class ChangeMade:
    namespace: str
    tenant: str
    join: bool
    at: float
    sampled: bool


@dataclass
class Latencies:
    binding: list[float | None] = field(default_factory=list)
    namespace_set: list[float | None] = field(default_factory=list)
    operator: list[float | None] = field(default_factory=list)

    def row(self) -> dict[str, Summary]:
        return {
            "binding": summarize(self.binding),
            "set": summarize(self.namespace_set),
            "operator": summarize(self.operator),
        }


# -- one N ---------------------------------------------------------------------------------------


@dataclass
class Result:
    tenants: int
    namespaces: int
    objects: int
    create_s: float
    sync_s: float
    sync_use: ProcessUse
    rest_use: ProcessUse
    end_use: ProcessUse
    rest_s: float
    rest_cpu_s: float
    rest_api: dict[str, float]
    rest_controller: dict[str, float]
    rest_controller_writes: float
    rest_by_user: dict[str, float]
    """Requests/s at rest by user (audit log), the busiest first."""
    bursts_api: dict[str, dict[str, float]]
    bursts_controller: dict[str, dict[str, float]]
    latencies: dict[str, dict[str, Summary]]
    sampled_operators: int
    bursts_controller_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    """The controller's requests in each burst by "verb resource" (audit log)."""
    rest_authorization_ms: float = math.nan
    """kube-apiserver's mean authorization time per request at rest."""


@dataclass
class Run:
    stack: AuditedStack
    api: Api
    tenants: list[str]
    namespaces: int
    sample: list[str]
    args: argparse.Namespace
    audit: AuditLog = field(init=False)
    rbs: Recorder = field(init=False)
    cms: Recorder = field(init=False)
    controller: Process | None = None
    operator_logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.stack.audit_log)
        self.rbs = Recorder(
            self.api,
            "/apis/rbac.authorization.k8s.io/v1/rolebindings",
            f"{objects.PLATFORM_LABEL}=binding",
        )
        self.cms = Recorder(self.api, "/api/v1/configmaps", f"{objects.PLATFORM_LABEL}=namespaces")

    # -- setup

    def create_tenants(self, docs: list[dict[str, Any]]) -> tuple[int, float]:
        template = objects.template_objects(docs)
        everything: list[dict[str, Any]] = []
        for tenant in self.tenants:
            everything.append(objects.namespace(objects.keda_namespace(tenant)))
            everything.extend(
                objects.namespace(name, tenant)
                for name in objects.app_namespaces(tenant, self.namespaces)
            )
            everything.extend(objects.for_tenant(template, tenant))
        started = time.monotonic()
        for wave in objects.creation_order(everything):
            in_parallel(
                (
                    lambda o=o: self.api.create(
                        o, objects.collection_path(o["kind"], o["metadata"].get("namespace", ""))
                    )
                    for o in wave
                ),
                threads=self.args.threads,
            )
        return len(everything), time.monotonic() - started

    def start_controller(self) -> Process:
        docs = controller_docs()
        self.stack.apply(
            by_kind_name(docs, "ServiceAccount", CONTROLLER),
            by_kind_name(docs, "ClusterRole", CONTROLLER),
            by_kind_name(docs, "ClusterRoleBinding", CONTROLLER),
        )
        kubeconfig = self.stack.service_account_kubeconfig(ROUTER_NAMESPACE, CONTROLLER)
        self.health_port = free_port()
        args = _rewrite(
            container_args(by_kind_name(docs, "Deployment", CONTROLLER)),
            {
                "--tenancy-rule-file": str(self.stack.rule_file),
                "--health-port": str(self.health_port),
            },
        )
        self.controller = self.stack.run(
            "controller",
            [
                sys.executable,
                "-m",
                "controller",
                *args,
                f"--kubeconfig={kubeconfig}",
                "--health-bind-address=127.0.0.1",
                *self.args.controller_flag,
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return self.controller

    def synced(self) -> bool:
        if self.controller is not None and not self.controller.running:
            raise RuntimeError(f"the controller exited:\n{self.controller.tail()}")
        bindings = self.rbs.snapshot()
        if len(bindings) < len(self.tenants) * self.namespaces:
            return False
        sets = self.cms.snapshot()
        return all(
            len(objects.namespaces_in(cm) or ()) == self.namespaces for cm in sets.values()
        ) and len(sets) == len(self.tenants)

    def start_operators(self, docs: list[dict[str, Any]]) -> None:
        """keda-tenancy-operator-pod with the tenant chart's arguments, for each sampled tenant,
        under the operator's ServiceAccount, running the stand-in operator."""
        text = json.dumps(by_kind_name(docs, "Deployment", "keda-operator"))
        for tenant in self.sample:
            deployment = json.loads(text.replace(objects.PLACEHOLDER, tenant))
            args = container_args(deployment)
            own = args[: args.index("--")]
            namespace = objects.keda_namespace(tenant)
            log = self.stack.logs / f"child-{tenant}.jsonl"
            self.operator_logs[tenant] = log
            kubeconfig = self.stack.service_account_kubeconfig(namespace, "keda-operator")
            local = {
                "--forward-grpc": f"127.0.0.1:{free_port()}=127.0.0.1:{free_port()}",
                "--forward-grpc-bind-address": "127.0.0.1",
                "--health-port": str(free_port()),
                # The stand-in serves no probes.
                "--check-operator-health": "false",
                # Its stand-in exits at once on SIGTERM.
                "--grace-period": "5s",
            }
            self.stack.run(
                f"operator-pod-{tenant}",
                [
                    sys.executable,
                    "-m",
                    "operator_pod",
                    *_rewrite(own, local),
                    f"--kubeconfig={kubeconfig}",
                    "--health-bind-address=127.0.0.1",
                    "--",
                    sys.executable,
                    "-m",
                    "tests.fakes.operator_child",
                    f"--log={log}",
                ],
                env={
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "KUBECONFIG": str(kubeconfig),
                    "POD_NAME": "keda-operator-0",
                    "POD_NAMESPACE": namespace,
                },
            )

    def operators_running(self) -> bool:
        return all(
            any(len(w) == self.namespaces for _, w in operator_starts(log))
            for log in self.operator_logs.values()
        )

    # -- measuring

    def controller_use(self) -> ProcessUse:
        assert self.controller is not None
        assert self.controller.popen is not None
        return ProcessUse.read(self.controller.popen.pid)

    def api_counts(self) -> dict[tuple[str, str], float]:
        return request_counts(self.api.text("/metrics"))

    def server_cpu_s(self) -> float:
        """CPU seconds of kube-apiserver and etcd so far."""
        return sum(
            ProcessUse.read(p.popen.pid).cpu_s
            for name, p in self.stack.processes.items()
            if name in ("kube-apiserver", "etcd") and p.popen is not None and p.running
        )

    def authorization(self) -> tuple[float, float]:
        return authorization_seconds(self.api.text("/metrics"))

    def controller_usage(self, start: float, end: float) -> Usage:
        total = Usage()
        for caller, usage in usage_by_caller(self.audit.read(), start, end).items():
            if caller.startswith(f"{CONTROLLER_USER} "):
                total.add(usage)
        return total

    def change(self, namespace: str, tenant: str | None) -> float:
        at = time.monotonic()
        self.api.merge_patch(
            objects.collection_path("Namespace") + f"/{namespace}", objects.label_patch(tenant)
        )
        return at

    def measure(self, changes: list[ChangeMade], timeout_s: float) -> Latencies:
        """Waits (up to timeout_s) until every change's effects are seen, then collects them."""
        deadline = time.monotonic() + timeout_s

        def collect() -> Latencies:
            out = Latencies()
            for c in changes:
                out.binding.append(binding_latency(self.rbs, c.namespace, c.tenant, c.at, c.join))
                out.namespace_set.append(set_latency(self.cms, c.namespace, c.tenant, c.at, c.join))
                if c.sampled and c.tenant in self.operator_logs:
                    out.operator.append(
                        operator_latency(self.operator_logs[c.tenant], c.namespace, c.at, c.join)
                    )
            return out

        while True:
            got = collect()
            done = all(v is not None for v in [*got.binding, *got.namespace_set, *got.operator])
            if done or time.monotonic() > deadline:
                return got
            time.sleep(0.25)

    def singles(self) -> dict[str, Latencies]:
        """One change at a time, at rest: each sampled tenant's namespace leaves, then joins."""
        out = {"leave": Latencies(), "join": Latencies()}
        for tenant in self.sample:
            namespace = objects.app_namespaces(tenant, self.namespaces)[MOVED]
            for direction, label in (("leave", None), ("join", tenant)):
                time.sleep(self.args.single_gap_s)
                at = self.change(namespace, label)
                got = self.measure([ChangeMade(namespace, tenant, label is not None, at, True)], 30)
                for name in ("binding", "namespace_set", "operator"):
                    getattr(out[direction], name).extend(getattr(got, name))
        return out

    def burst(
        self, moves: list[tuple[str, str | None, str | None]]
    ) -> tuple[list[ChangeMade], float, float]:
        """All `moves` (namespace, from tenant, to tenant) at once; the changes they make."""
        made: list[ChangeMade] = []
        sampled = set(self.sample)

        def move(namespace: str, old: str | None, new: str | None) -> None:
            at = self.change(namespace, new)
            if old is not None:
                made.append(ChangeMade(namespace, old, False, at, old in sampled))
            if new is not None:
                made.append(ChangeMade(namespace, new, True, at, new in sampled))

        start_wall, start = time.time(), time.monotonic()
        in_parallel((lambda m=m: move(*m) for m in moves), threads=self.args.threads)
        return made, start_wall, time.monotonic() - start


def run_one(n: int, args: argparse.Namespace, binaries: Path, docs: list[dict[str, Any]]) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-tenants-{n}-", dir=args.workdir))
    stack = AuditedStack(binaries, workdir)
    try:
        stack.start_control_plane()
        say(f"N={n}: kube-apiserver up ({workdir})")
        certs = stack.certs
        api = Api(
            stack.apiserver_port, certs / "cluster-ca.crt", certs / "admin.crt", certs / "admin.key"
        )
        tenants = [objects.tenant_name(i) for i in range(n)]
        count = min(args.sample, n)
        sample = [tenants[i * n // count] for i in range(count)]
        run = Run(stack, api, tenants, args.namespaces, sample, args)
        created, create_s = run.create_tenants(docs)
        say(f"N={n}: {created} objects created in {create_s:.1f}s")
        run.rbs.start()
        run.cms.start()
        started = time.monotonic()
        run.start_controller()
        wait_for(run.synced, "every binding and namespace set", args.sync_timeout_s, 0.5)
        sync_s = time.monotonic() - started
        sync_use = run.controller_use()
        say(f"N={n}: synced in {sync_s:.1f}s, controller {sync_use}")
        if importlib.util.find_spec("operator_pod") is not None and sample:
            run.start_operators(docs)
            wait_for(run.operators_running, "the sampled operators running", 120, 0.5)
            say(f"N={n}: {len(sample)} operator pods running their stand-in")
        else:
            say("no operator_pod package here: the stand-in operators are left out")
        # At rest.
        time.sleep(5)
        counts0, wall0, cpu0 = run.api_counts(), time.time(), run.controller_use().cpu_s
        authz0 = run.authorization()
        time.sleep(args.rest_s)
        rest_authz_ms = mean_ms(authz0, run.authorization())
        counts1, wall1 = run.api_counts(), time.time()
        rest_use = run.controller_use()
        rest_api = rates_by_verb(counts0, counts1, wall1 - wall0)
        usage = run.controller_usage(wall0, wall1)
        rest_controller = {k: v / (wall1 - wall0) for k, v in sorted(usage.by_call.items())}
        rest_writes = usage.writes / (wall1 - wall0)
        by_user: dict[str, float] = {}
        for caller, use in usage_by_caller(run.audit.read(), wall0, wall1).items():
            user = caller.split(" [", 1)[0]
            by_user[user] = by_user.get(user, 0.0) + use.requests / (wall1 - wall0)
        say(f"N={n}: at rest {format_rates(rest_api)}; controller {rest_writes:.3f} writes/s")
        # Single changes at rest.
        latencies: dict[str, dict[str, Summary]] = {}
        for direction, got in run.singles().items():
            latencies[f"single {direction}"] = got.row()
        say(f"N={n}: single changes done")
        # Bursts: leave (unlabelled), join (labelled again), move (to the next tenant).
        moved = [(objects.app_namespaces(t, args.namespaces)[MOVED], t) for t in tenants]
        plans: dict[str, list[tuple[str, str | None, str | None]]] = {
            "leave": [(ns, t, None) for ns, t in moved],
            "join": [(ns, None, t) for ns, t in moved],
            "move": [(ns, t, tenants[(i + 1) % n]) for i, (ns, t) in enumerate(moved)],
        }
        bursts_api: dict[str, dict[str, float]] = {}
        bursts_controller: dict[str, dict[str, float]] = {}
        bursts_calls: dict[str, dict[str, int]] = {}
        for name, plan in plans.items():
            time.sleep(args.single_gap_s * 2)
            before, cpu_before = run.api_counts(), run.controller_use().cpu_s
            authz_before = run.authorization()
            server_before = run.server_cpu_s()
            made, wall_start, sent_s = run.burst(plan)
            got = run.measure(made, args.burst_timeout_s)
            cpu_s = run.controller_use().cpu_s - cpu_before
            done_at = max(
                (
                    c.at + v
                    for values in (got.binding, got.namespace_set)
                    for c, v in zip(made, values, strict=True)
                    if v is not None
                ),
                default=time.monotonic(),
            )
            window = max(done_at - min(c.at for c in made), 0.01)
            time.sleep(1)
            wall_end = wall_start + window
            bursts_api[name] = rates_by_verb(before, run.api_counts(), time.time() - wall_start)
            usage = run.controller_usage(wall_start, wall_end + 0.5)
            bursts_calls[name] = dict(sorted(usage.by_call.items()))
            bursts_controller[name] = {
                "requests/s": usage.requests / window,
                "writes/s": usage.writes / window,
                "window_s": window,
                "sent_s": sent_s,
                # Whether the controller or the machine (2 shared cores) was the bound.
                "controller_cpu_s": cpu_s,
                "load1": os.getloadavg()[0],
                "authorization_ms": mean_ms(authz_before, run.authorization()),
                "server_cpu_s": run.server_cpu_s() - server_before,
            }
            for direction in ("leave", "join"):
                part = [c for c in made if c.join == (direction == "join")]
                if not part:
                    continue
                sub = Latencies()
                for c in part:
                    sub.binding.append(
                        binding_latency(run.rbs, c.namespace, c.tenant, c.at, c.join)
                    )
                    sub.namespace_set.append(
                        set_latency(run.cms, c.namespace, c.tenant, c.at, c.join)
                    )
                    if c.sampled and c.tenant in run.operator_logs:
                        sub.operator.append(
                            operator_latency(run.operator_logs[c.tenant], c.namespace, c.at, c.join)
                        )
                latencies[f"burst {name}: {direction}"] = sub.row()
            say(f"N={n}: burst {name} done in {window:.1f}s")
        end_use = run.controller_use()
        run.rbs.stop()
        run.cms.stop()
        return Result(
            tenants=n,
            namespaces=args.namespaces,
            objects=created,
            create_s=create_s,
            sync_s=sync_s,
            sync_use=sync_use,
            rest_use=rest_use,
            end_use=end_use,
            rest_s=wall1 - wall0,
            rest_cpu_s=rest_use.cpu_s - cpu0,
            rest_api=rest_api,
            rest_controller=rest_controller,
            rest_controller_writes=rest_writes,
            rest_by_user=dict(sorted(by_user.items(), key=lambda kv: -kv[1])),
            bursts_api=bursts_api,
            bursts_controller=bursts_controller,
            latencies=latencies,
            sampled_operators=len(run.operator_logs),
            bursts_controller_calls=bursts_calls,
            rest_authorization_ms=rest_authz_ms,
        )
    finally:
        stack.stop()
        if not args.keep:
            import shutil  # noqa: PLC0415

            shutil.rmtree(workdir, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------


def report(results: Sequence[Result]) -> str:
    out = []
    out.append(
        table(
            [
                "tenants",
                "namespaces",
                "sync s",
                "RSS synced MiB",
                "RSS rest MiB",
                "RSS end (peak) MiB",
                "CPU s synced",
                "CPU s/min rest",
                "API req/s at rest (all users, by verb)",
                "API writes/s rest",
                "controller req/s rest",
                "controller writes/s rest",
            ],
            [
                [
                    str(r.tenants),
                    str(r.tenants * r.namespaces),
                    f"{r.sync_s:.1f}",
                    f"{r.sync_use.rss_mib:.0f}",
                    f"{r.rest_use.rss_mib:.0f}",
                    f"{r.end_use.rss_mib:.0f} ({r.end_use.peak_rss_mib:.0f})",
                    f"{r.sync_use.cpu_s:.1f}",
                    f"{r.rest_cpu_s * 60 / r.rest_s:.2f}",
                    format_rates(r.rest_api),
                    f"{writes_per_second(r.rest_api):.2f}",
                    f"{sum(r.rest_controller.values()):.2f}",
                    f"{r.rest_controller_writes:.3f}",
                ]
                for r in results
            ],
        )
    )
    for r in results:
        busiest = ", ".join(f"{u} {v:.2f}" for u, v in list(r.rest_by_user.items())[:4])
        out.append(
            f"N={r.tenants} at rest: requests/s by user (audit log) {busiest or '-'}; "
            f"kube-apiserver authorization {r.rest_authorization_ms:.1f} ms/request"
        )
    out.append("")
    out.append(
        table(
            [
                "tenants",
                "burst",
                "sent in s",
                "done in s",
                "API req/s (all users, by verb)",
                "controller req/s",
                "controller writes/s",
                "controller CPU s",
                "apiserver+etcd CPU s",
                "load1",
                "authz ms/request",
            ],
            [
                [
                    str(r.tenants),
                    name,
                    f"{r.bursts_controller[name]['sent_s']:.1f}",
                    f"{r.bursts_controller[name]['window_s']:.1f}",
                    format_rates(rates),
                    f"{r.bursts_controller[name]['requests/s']:.1f}",
                    f"{r.bursts_controller[name]['writes/s']:.1f}",
                    f"{r.bursts_controller[name].get('controller_cpu_s', math.nan):.1f}",
                    f"{r.bursts_controller[name].get('server_cpu_s', math.nan):.1f}",
                    f"{r.bursts_controller[name].get('load1', math.nan):.1f}",
                    f"{r.bursts_controller[name].get('authorization_ms', math.nan):.1f}",
                ]
                for r in results
                for name, rates in r.bursts_api.items()
            ],
        )
    )
    for r in results:
        for name, calls in r.bursts_controller_calls.items():
            shown = ", ".join(f"{call} {count}" for call, count in calls.items())
            out.append(f"N={r.tenants} burst {name}, the controller's requests: {shown or '-'}")
    out.append("")
    out.append("label change -> effect, seconds p50/p99/max (binding: created/deleted; set: the")
    out.append(
        "tenant's keda-operator-namespaces with/without it; operator: the stand-in's WATCH_NAMESPACE)"
    )
    out.append(
        table(
            ["tenants", "changes", "binding", "namespace set", "operator (sampled)"],
            [
                [
                    str(r.tenants),
                    f"{name} ({row['binding'].count + row['binding'].missing})",
                    row["binding"].cell(),
                    row["set"].cell(),
                    row["operator"].cell(),
                ]
                for r in results
                for name, row in r.latencies.items()
            ],
        )
    )
    out.append("")
    out.append("ratios against issue 21's targets (<= 1.00 meets it)")
    rows = []
    for r in results:
        worst = max(
            (
                s.max
                for row in r.latencies.values()
                for key, s in row.items()
                if key in ("binding", "set") and s.count
            ),
            default=float("nan"),
        )
        worst_p99 = max(
            (
                s.p99
                for row in r.latencies.values()
                for key, s in row.items()
                if key in ("binding", "set") and s.count
            ),
            default=float("nan"),
        )
        per_tenant = r.rest_controller_writes / r.tenants
        rows.append(
            [
                str(r.tenants),
                f"{ratio(r.end_use.peak_rss_mib, CONTROLLER_RSS_TARGET_MIB)} ({r.end_use.peak_rss_mib:.0f}/{CONTROLLER_RSS_TARGET_MIB:.0f} MiB)",
                f"{ratio(worst_p99, LABEL_CHANGE_TARGET_S)} ({worst_p99:.2f}/{LABEL_CHANGE_TARGET_S:.0f} s)",
                f"{ratio(worst, LABEL_CHANGE_TARGET_S)} ({worst:.2f}/{LABEL_CHANGE_TARGET_S:.0f} s)",
                f"{ratio(per_tenant, REST_WRITES_PER_TENANT_TARGET)} ({per_tenant:.4f}/{REST_WRITES_PER_TENANT_TARGET})",
            ]
        )
    out.append(
        table(
            [
                "tenants",
                "controller peak RSS",
                "label change p99 (worst row)",
                "label change max (worst row)",
                "controller writes/s per tenant at rest",
            ],
            rows,
        )
    )
    return "\n".join(out)


def load(raw: dict[str, Any]) -> Result:
    """A Result back from its --json form."""
    uses = {k: ProcessUse(**raw[k]) for k in ("sync_use", "rest_use", "end_use")}
    latencies = {
        name: {key: Summary(**summary) for key, summary in row.items()}
        for name, row in raw["latencies"].items()
    }
    return Result(**{**raw, **uses, "latencies": latencies})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.tenants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="10,100,1000", help="comma-separated tenant counts")
    parser.add_argument("--namespaces", type=int, default=10, help="namespaces per tenant")
    parser.add_argument("--sample", type=int, default=20, help="tenants with a stand-in operator")
    parser.add_argument("--rest-s", type=float, default=60.0, help="the at-rest window")
    parser.add_argument("--single-gap-s", type=float, default=0.5, help="quiet before each change")
    parser.add_argument("--sync-timeout-s", type=float, default=600.0)
    parser.add_argument("--burst-timeout-s", type=float, default=180.0)
    parser.add_argument("--threads", type=int, default=16, help="parallel API calls of the bench")
    parser.add_argument(
        "--controller-flag", action="append", default=[], help="extra controller flag (repeat)"
    )
    parser.add_argument("--workdir", default=None, help="where each N's stack lives")
    parser.add_argument("--keep", action="store_true", help="keep each N's logs and etcd")
    parser.add_argument("--json", default="", help="also write the figures here")
    parser.add_argument("--report", default="", help="print the tables of a --json file and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report([load(r) for r in json.loads(Path(args.report).read_text())]))
        return 0
    counts = [int(n) for n in args.tenants.split(",") if n]
    binaries = build_binaries()
    docs = tenant_chart_docs()
    results = []
    for n in counts:
        results.append(run_one(n, args, binaries, docs))
        print(report(results[-1:]), flush=True)
    if len(results) > 1:
        print("\n" + report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
