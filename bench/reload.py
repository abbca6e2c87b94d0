"""Namespace-change benchmark: `python -m bench.reload` (or `make bench-reload`).

The real stack of tests/e2e on loopback (etcd, kube-apiserver with the aggregator, the router,
KEDA 2.20.2, kube-controller-manager's HPA controller), with the tenant chart's own KEDA
configuration: the operator container as the chart renders it (the reloader in process mode
running /keda with --leader-elect and the chart's leader-election id, the chart's reloader
timing), each component under the chart's ServiceAccount and RBAC (a TokenRequest token each;
the chart's RoleBinding manager binds the operator in the tenant's namespaces; `--admin` runs
them with the admin kubeconfig instead), and the metrics adapter with a fixed WATCH_NAMESPACE. One tenant, one ScaledObject in
an existing namespace. While the tenant's namespaces change --changes times (a namespace
added, then removed again, alternately), that namespace's metric is read --rate times a second
through kube-apiserver. Prints the failed reads, the longest read, the p99 added over a quiet
baseline, and the HPA controller's FailedGetExternalMetric / FailedComputeMetricsReplicas
events, and exits 1 when a target is missed (0 failed reads, longest read <= 1 s, 0 events).

`--mode deployment` runs the chart's deployment mode: kube-controller-manager's Deployment and
ReplicaSet controllers roll the operator's Deployment, and tests/e2e/pod_runner.py runs its pods
(the chart's keda-tenancy-supervise running /keda) as local processes in place of a kubelet (an
emulation: the kubelet-backed cluster is where deployment mode really runs). `--no-release-lease` runs the reloader without --release-lease (what the chart did before):
the restarted operator then waits out its predecessor's Lease.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.metric_source import MetricSource  # noqa: E402
from tests.e2e.stack import Stack, running_stack, wait_for  # noqa: E402

TENANT = "alpha"
APPS = "alpha-apps"
VALUE = 7
HPA_FAILURES = ("FailedGetExternalMetric", "FailedComputeMetricsReplicas")
LONGEST_TARGET_S = 1.0
READ_TIMEOUT_S = 60.0


def metric_path(namespace: str) -> str:
    return (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/s0-metric-api-value"
        "?labelSelector=scaledobject.keda.sh%2Fname%3Dapp"
    )


@dataclass
class Read:
    started: float
    took_s: float
    ok: bool
    detail: str = ""


@dataclass
class Reader:
    """Reads the metric through kube-apiserver at a fixed rate, one read at a time (a read
    that stalls shows as one long read, as the HPA controller's worker would see it)."""

    stack: Stack
    rate_hz: float
    reads: list[Read] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _context(self) -> ssl.SSLContext:
        certs = self.stack.certs
        context = ssl.create_default_context(cafile=str(certs / "cluster-ca.crt"))
        context.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))
        return context

    def _run(self) -> None:
        context = self._context()
        connection: http.client.HTTPSConnection | None = None
        interval = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
                continue
            next_at = max(next_at + interval, time.monotonic())
            if connection is None:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.stack.apiserver_port, context=context, timeout=READ_TIMEOUT_S
                )
            started = time.monotonic()
            try:
                connection.request("GET", metric_path(APPS))
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and _value(body) == str(VALUE)
                detail = "" if ok else f"{response.status} {body[:160]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = None
            self.reads.append(Read(started, time.monotonic() - started, ok, detail))
        if connection is not None:
            connection.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> list[Read]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S + 5)
        return self.reads


def _value(body: bytes) -> str | None:
    try:
        items = json.loads(body).get("items") or []
    except ValueError:
        return None
    return str(items[0]["value"]) if items else None


def hpa_failure_events(stack: Stack) -> int:
    done = stack.kubectl("get", "events", "-n", APPS, "-o", "json")
    return sum(
        int(event.get("count") or 1)
        for event in json.loads(done.stdout)["items"]
        if event.get("reason") in HPA_FAILURES
    )


def restarts(stack: Stack) -> float:
    port = stack.tenants[TENANT].operator_ports["reloader"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("keda_tenancy_reloader_restarts_total{")
            and 'reason="namespaces"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def bring_up(stack: Stack, source: MetricSource, mode: str) -> None:
    stack.start_control_plane()
    stack.install_keda_crds()
    stack.tenant_namespace(TENANT, APPS)
    stack.add_tenant(TENANT, mode)
    stack.register_apiservice()
    stack.start_router()
    stack.start_hpa_controller(deployments=mode == "deployment")
    wait_for(stack.apiservice_available, "APIService Available", 120)
    stack.scaled_app(APPS, source.url)
    streak = 0

    def steady() -> bool:
        nonlocal streak
        code, body = stack.get_raw(metric_path(APPS))
        ok = code == 200 and str((body.get("items") or [{}])[0].get("value")) == str(VALUE)
        streak = streak + 1 if ok else 0
        return streak >= 5

    wait_for(steady, "the metric steadily served", 240, 0.5)


def run(args: argparse.Namespace) -> int:
    flags: tuple[str, ...] = ("--release-lease=",) if args.no_release_lease else ()
    source = MetricSource(VALUE)
    workdir = Path(tempfile.mkdtemp(prefix="bench-reload-"))
    env = [dict(zip(("name", "value"), e.split("=", 1), strict=True)) for e in args.operator_env]
    values: dict[str, dict[str, object]] = {"operator": {"env": env}} if env else {}
    if args.retry_period:
        values.setdefault("operator", {})["leaderElectionRetryPeriod"] = args.retry_period
    with running_stack(workdir, flags, values, chart_rbac=not args.admin) as stack:
        bring_up(stack, source, args.mode)
        quiet = Reader(stack, args.rate)
        quiet.start()
        time.sleep(args.baseline)
        baseline = quiet.stop()
        events_before = hpa_failure_events(stack)
        reader = Reader(stack, args.rate)
        reader.start()
        changes: list[tuple[str, float]] = []
        for i in range(args.changes):
            before = restarts(stack)
            name = f"{TENANT}-preview-{i // 2}"
            if i % 2 == 0:
                stack.tenant_namespace(TENANT, name)
                what = f"added {name}"
            else:
                stack.kubectl("delete", "namespace", name, "--wait=false")
                what = f"removed {name}"
            started = time.monotonic()
            wait_for(lambda b=before: restarts(stack) > b, f"the restart for {what}", 120, 0.2)
            restarted = time.monotonic()
            # Served again by the new operator (a read that began after the restart), then quiet.
            wait_for(
                lambda t=restarted: any(r.ok and r.started > t for r in reader.reads[-50:]),
                f"the metric served after {what}",
                120,
                0.1,
            )
            changes.append((what, restarted - started))
            time.sleep(args.gap)
        reads = reader.stop()
        time.sleep(3)  # the HPA controller's last sync
        events = hpa_failure_events(stack) - events_before
        log = stack.logs
        return report(args, baseline, reads, changes, events, log)


def report(
    args: argparse.Namespace,
    baseline: list[Read],
    reads: list[Read],
    changes: list[tuple[str, float]],
    events: int,
    logs: Path,
) -> int:
    failed = [r for r in reads if not r.ok]
    longest = max((r.took_s for r in reads), default=0.0)
    base_p99 = p99([r.took_s for r in baseline if r.ok])
    load_p99 = p99([r.took_s for r in reads])
    mode = f"{args.mode} mode" + (", no --release-lease" if args.no_release_lease else "")
    mode += ", admin kubeconfig" if args.admin else ", the chart's ServiceAccounts and RBAC"
    if args.mode == "deployment":
        mode += "; pods run by tests/e2e/pod_runner.py, a stand-in kubelet"
    for extra in args.operator_env:
        mode += f"; {extra}"
    if args.retry_period:
        mode += f"; operator.leaderElectionRetryPeriod={args.retry_period}"
    print(f"reload benchmark ({mode}; chart's KEDA flags, --leader-elect)")
    for what, took in changes:
        print(f"  {what}: operator restarted {took:.1f} s after the change")
    print(f"reads: {len(reads)} at {args.rate:g} Hz over {len(changes)} changes")
    print(f"failed reads: {len(failed)}")
    for read in failed[:10]:
        print(f"  {read.took_s:.2f} s {read.detail}")
    print(f"longest read: {longest:.2f} s (target <= {LONGEST_TARGET_S:g} s)")
    print(
        f"p99: {load_p99 * 1000:.0f} ms with changes, {base_p99 * 1000:.0f} ms quiet "
        f"({len(baseline)} reads): added {(load_p99 - base_p99) * 1000:+.0f} ms"
    )
    print(f"HPA controller events {'/'.join(HPA_FAILURES)}: {events}")
    met = not failed and longest <= LONGEST_TARGET_S and events == 0
    print("targets met" if met else "targets NOT met", f"(logs were in {logs})")
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__)
    parser.add_argument("--changes", type=int, default=6, help="namespace changes (>= 6)")
    parser.add_argument("--rate", type=float, default=10.0, help="metric reads per second")
    parser.add_argument(
        "--gap", type=float, default=6.0, help="seconds of quiet after the metric is served again"
    )
    parser.add_argument("--baseline", type=float, default=10.0, help="quiet reads, seconds")
    parser.add_argument(
        "--mode",
        choices=("process", "deployment"),
        default="process",
        help="the reloader mode (deployment: kube-controller-manager rolls the chart's "
        "Deployment and tests/e2e/pod_runner.py stands in for the kubelet)",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra operator env (the chart's operator.env), e.g. "
        "KEDA_OPERATOR_LEADER_ELECTION_RETRY_PERIOD=1s",
    )
    parser.add_argument(
        "--retry-period",
        default="",
        metavar="DURATION",
        help="the chart's operator.leaderElectionRetryPeriod (default: the chart's own)",
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="run the tenant's components with the admin kubeconfig instead of the chart's "
        "ServiceAccounts and RBAC",
    )
    parser.add_argument(
        "--no-release-lease",
        action="store_true",
        help="run the reloader without --release-lease (the behaviour before)",
    )
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
