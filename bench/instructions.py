"""Instructions per forwarded request: `python -m bench.instructions` (or `make bench-instructions`).

Requests/s on a shared 2-core machine vary by 10-20% from one run to the next; the number of
instructions the router executes per request hardly does. This runs the router of
`python -m bench` (3 tenants, the NGINX tenant backend, the same load generator) under
valgrind's callgrind, which counts every instruction in the process (about 50 times slower,
so no time is read from it). After warm-up passes it counts three windows: idle for a few
seconds (timers), one request per load-generator connection (their TLS handshakes), and
--passes requests per connection; the difference of the last two, less the idle rate over
the extra time, divided by the extra requests, is what one request costs, user space only
(the kernel's share of each send and receive is not counted). At the default concurrency 1
every request takes the same path (no waits for a busy connection, no new upstream
connections, one request per event-loop turn), so two runs agree within a fraction of a
percent; at higher concurrency how requests batch depends on timing, and runs vary by 5%.

`--baseline REV` measures a worktree of that git revision the same way (same venv, same
load), alternately with this tree, and prints both and their ratio.

`--rules` measures this tree also with a realistic routing rules file (RULES: per-tenant
rules by metric name, platform rules by metric name and labelSelector, 9 in all, none of
which takes the KEDA request sent, so every one is evaluated) and prints the ratio with /
without rules. Both send the KEDA request an HPA sends (`?labelSelector=...`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.__main__ import (
    ROOT,
    Nginx,
    Pki,
    backend_block,
    free_port,
    measure,
    namespace_count,
    router_process,
    wait_port,
)

TENANTS = 3
IDLE_S = 5.0
KEDA_PATH = (
    "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-metric"
    "?labelSelector=scaledobject.keda.sh%2Fname%3Dweb"
)


def rules_file(workdir: Path, pki: Pki, backend_port: int) -> Path:
    """Routing rules as a platform with a shared Datadog-style adapter, a shared KEDA by
    ScaledObject name and a prometheus-adapter per tenant would write them."""
    upstream = (
        f"    url: https://127.0.0.1:{backend_port}\n    serverName: localhost\n"
        f"    caFile: {pki.path('backend-ca.crt')}\n"
    )
    lines = ["upstreams:", "  datadog:", upstream, "  shared-keda:", upstream]
    rules = ["rules:"]
    for i in range(TENANTS):
        lines += [f"  t{i}-prometheus:", upstream + f"    tenant: t{i}\n"]
        rules += [
            f"  - {{name: t{i}-prometheus, tenant: t{i}, metricName: 'prometheus-.*', "
            f"upstream: t{i}-prometheus}}",
            f"  - {{name: t{i}-custom, tenant: t{i}, metricName: 'custom\\.t{i}\\..+', "
            f"upstream: t{i}-prometheus}}",
        ]
    rules += [
        "  - {name: shared-keda, labelSelector: {values: "
        "{scaledobject.keda.sh/name: 'legacy-.*'}}, upstream: shared-keda}",
        "  - {name: datadog-by-name, metricName: 'datadog\\.[a-z0-9_.]+', upstream: datadog}",
        "  - {name: not-keda, labelSelector: {absent: [scaledobject.keda.sh/name]}, "
        "upstream: datadog}",
    ]
    path = workdir / "rules.yaml"
    path.write_text("\n".join(lines + rules) + "\n")
    return path


def _totals(directory: Path, dump: int) -> int:
    (found,) = directory.glob(f"callgrind.*.{dump}")
    match = re.search(rb"^(?:summary|totals): (\d+)", found.read_bytes(), re.M)
    assert match is not None, f"no totals in {found}"
    return int(match[1])


def per_request(
    pki: Pki,
    workdir: Path,
    backend_port: int,
    root: Path,
    passes: int,
    concurrency: int,
    aggregator_headers: bool,
    extra_args: tuple[str, ...] = (),
    path: str = "",
) -> float:
    """Instructions per request of the router in `root` (see the module docstring)."""
    out = Path(tempfile.mkdtemp(prefix="callgrind-", dir=workdir))
    namespaces = [f"t{i}--ns0" for i in range(TENANTS)]
    port = free_port()
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p"]

    def control(option: str, pid: int) -> None:
        subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)

    def load(n: int) -> float:
        started = time.monotonic()
        measure(
            pki,
            port,
            namespaces,
            concurrency,
            0,
            [],
            False,
            passes=n,
            aggregator_headers=aggregator_headers,
            path=path,
        )
        return time.monotonic() - started

    with router_process(
        pki,
        workdir,
        port,
        backend_port,
        TENANTS,
        namespace_count(TENANTS),
        wrapper=wrapper,
        root=root,
        extra_args=extra_args,
    ) as router:
        load(60)  # pools and caches warm, as in every cell of `python -m bench`
        control("--zero", router.pid)
        time.sleep(IDLE_S)
        control("--dump", router.pid)  # 1: idle
        few_s = load(1)
        control("--dump", router.pid)  # 2: a request per connection, handshakes included
        many_s = load(passes + 1)
        control("--dump", router.pid)  # 3: the same plus `passes` requests per connection
    idle_per_s = _totals(out, 1) / IDLE_S
    extra = _totals(out, 3) - _totals(out, 2) - idle_per_s * max(many_s - few_s, 0.0)
    # -passes: every worker makes `passes` rounds over ceil(tenants / concurrency) namespaces.
    return extra / (passes * concurrency * -(-TENANTS // concurrency))


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached worktree of `revision`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="keda-tenancy-baseline-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--passes", type=int, default=1000, help="rounds over the tenants")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--aggregator-headers",
        action="store_true",
        help="requests as kube-apiserver's aggregator sends them for an HPA (about 1 KiB of "
        "headers: Audit-Id, X-Forwarded-*, three groups, the service account's extras)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per tree (median)")
    parser.add_argument("--baseline", help="a git revision to compare with (its worktree)")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="this tree also with a routing rules file; both with the KEDA labelSelector",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the callgrind files (callgrind_annotate them)"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install valgrind")
    workdir = Path(tempfile.mkdtemp(prefix="keda-tenancy-instructions-"))
    pki = Pki(workdir)
    backend_port = free_port()
    backend = Nginx("backend", workdir, backend_block(pki, backend_port), cpu=1)
    results: dict[str, list[float]] = {"this tree": [], args.baseline or "": []}
    variants: dict[str, tuple[tuple[str, ...], str]] = {"this tree": ((), "")}
    if args.rules:
        rules = rules_file(workdir, pki, backend_port)
        variants = {
            "this tree": ((), KEDA_PATH),
            "with rules": ((f"--routing-rules-file={rules}",), KEDA_PATH),
        }
        results["with rules"] = []
    try:
        wait_port(backend_port)
        with contextlib.ExitStack() as stack:
            trees = {"this tree": ROOT}
            if args.baseline:
                trees[args.baseline] = stack.enter_context(worktree(args.baseline))
            runs = [(name, root, variants.get(name, ((), ""))) for name, root in trees.items()]
            if args.rules:
                runs.append(("with rules", ROOT, variants["with rules"]))
            for _ in range(args.repeat):
                for name, root, (extra, path) in runs:  # alternately, as the A/B does
                    value = per_request(
                        pki,
                        workdir,
                        backend_port,
                        root,
                        args.passes,
                        args.concurrency,
                        args.aggregator_headers,
                        extra,
                        path,
                    )
                    results[name].append(value)
                    print(f"{name}: {value:,.0f} instructions per request", flush=True)
                    if args.keep:
                        print(f"  {sorted(workdir.glob('callgrind-*'))[-1]}", flush=True)
    finally:
        backend.stop()
        if args.keep:
            print(f"callgrind files (window 3 is the measured one): {workdir}/callgrind-*")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    medians = {name: sorted(v)[len(v) // 2] for name, v in results.items() if v}
    print(
        f"\ninstructions per forwarded request ({TENANTS} tenants, c={args.concurrency}, "
        f"{args.passes} rounds, median of {args.repeat}"
        f"{', aggregator headers' if args.aggregator_headers else ''}):"
    )
    for name, value in medians.items():
        print(f"  {name:>12}: {value:,.0f}")
    if args.baseline:
        ratio = medians["this tree"] / medians[args.baseline]
        print(f"  this tree / {args.baseline}: {ratio:.3f}x")
    if args.rules:
        ratio = medians["with rules"] / medians["this tree"]
        print(f"  with rules / without: {ratio:.3f}x (target: at most 1.050x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
