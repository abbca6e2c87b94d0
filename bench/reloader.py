"""Reloader benchmark: `python -m bench.reloader` (or `make bench-reloader`).

On loopback, in one process: the fake Kubernetes API (list/watch of namespaces with
resourceVersions and bookmarks, tests/fakes/kube_api.py) and the reloader running in-process
as the integration tests run it, each spawning the real stand-in operator process
(tests/fakes/operator_child.py), which records the WATCH_NAMESPACE it started with and the
CLOCK_MONOTONIC time it started at (that clock is system-wide, so its times compare with
ours). Measures the reloader targets of the performance issue:

  burst     a burst of --burst namespace events for the tenant (half new namespaces created
            with the tenant label, half existing ones newly labelled, interleaved, --burst-gap
            apart) gives exactly one restart, with every namespace in the new WATCH_NAMESPACE
  latency   from the moment the fake API applies a label change to the moment the new operator
            process reports it started with the changed WATCH_NAMESPACE: within --debounce
            plus 1 s; --repeat times a namespace newly labelled, and as many times one
            unlabelled (with --removal-delay=0s)

Exits 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tenancy_common.durations import parse_duration  # noqa: E402
from tests.fakes.kube_api import FakeKubeAPI  # noqa: E402
from tests.reloader_harness import (  # noqa: E402
    ChildLog,
    eventually,
    label,
    reloader_args,
    running_reloader,
)

TENANT = "alpha"  # reloader_args: --tenant=alpha --tenant-label-key=keda-tenancy.io/tenant
TENANT_LABEL = "keda-tenancy.io/tenant"
SLACK_S = 1.0  # the target: running with the new environment within the debounce plus 1 s
MAX_WAIT = "30s"  # the reloader's default; far longer than the burst


@dataclass
class BurstResult:
    events: int
    spread_s: float
    restarts: int
    complete: bool
    running: bool
    after_last_event_s: float | None
    """From the last event to the restart, when there was exactly one."""
    max_wait: str

    @property
    def met(self) -> bool:
        return self.restarts == 1 and self.complete and self.running


@dataclass
class Latencies:
    what: str
    bound_s: float
    values: list[float] = field(default_factory=list)
    failures: int = 0
    """Changes after which no operator with the new value started within the timeout."""

    @property
    def met(self) -> bool:
        return bool(self.values) and not self.failures and max(self.values) <= self.bound_s

    def summary(self) -> str:
        if not self.values:
            return "no measurement"
        text = f"median {statistics.median(self.values):.3f} s, max {max(self.values):.3f} s"
        if self.failures:
            text += f", {self.failures} never applied"
        return text


def child_environ() -> dict[str, str]:
    """The operator's environment: ours, with the checkout importable from any directory."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p
    )
    return environ


def flags(debounce: str, max_wait: str) -> list[str]:
    return [
        f"--debounce={debounce}",
        f"--max-wait={max_wait}",
        "--min-restart-interval=0s",
        "--removal-delay=0s",
    ]


async def fake_api(workdir: Path) -> tuple[FakeKubeAPI, str]:
    api = FakeKubeAPI()
    await api.start()
    return api, api.write_kubeconfig(workdir / "kubeconfig")


async def burst(
    workdir: Path, debounce: str, debounce_s: float, size: int, gap_s: float
) -> BurstResult:
    api, kubeconfig = await fake_api(workdir)
    log = ChildLog(workdir / "burst-child.log")
    names = [f"burst-{i:03d}" for i in range(size)]
    relabelled = set(names[1::2])  # exist before, unlabelled; get the tenant label in the burst
    for name in relabelled:
        api.create(name)
    api.relabel_new("base", label(TENANT))
    argv = reloader_args(kubeconfig, log.path, *flags(debounce, MAX_WAIT))
    try:
        async with running_reloader(argv, environ=child_environ()) as reloader:
            await eventually(lambda: log.starts() == ["base"], timeout_s=20)
            first_event = time.monotonic()
            for name in names:
                if name in relabelled:
                    api.relabel(name, {TENANT_LABEL: TENANT})
                else:
                    api.relabel_new(name, label(TENANT))
                await asyncio.sleep(gap_s)
            last_event = time.monotonic()
            with contextlib.suppress(TimeoutError):  # counted below: zero restarts
                await eventually(
                    lambda: len(log.starts()) >= 2,
                    timeout_s=parse_duration(MAX_WAIT) + debounce_s + 10,
                )
            # Anything still to come would come within the debounce: wait it out, twice.
            await asyncio.sleep(2 * debounce_s + SLACK_S)
            starts = log.events("start")
            final = str(starts[-1]["watch_namespace"] or "").split(",")
            running = reloader.child is not None and reloader.child.running
    finally:
        await api.stop()
    return BurstResult(
        events=size,
        spread_s=last_event - first_event,
        restarts=len(starts) - 1,
        complete=set(names) <= set(final),
        running=running,
        after_last_event_s=starts[1]["t"] - last_event if len(starts) == 2 else None,
        max_wait=MAX_WAIT,
    )


async def time_change(
    log: ChildLog, apply: Callable[[], None], applied: Callable[[str], bool], timeout_s: float
) -> float | None:
    """Seconds from `apply` (the fake API's change) to the start of an operator whose
    WATCH_NAMESPACE satisfies `applied`; None if none started within `timeout_s`."""
    before = len(log.events("start"))

    def started() -> float | None:
        for event in log.events("start")[before:]:
            if applied(str(event["watch_namespace"] or "")):
                return float(event["t"])
        return None

    changed_at = time.monotonic()
    apply()
    try:
        await eventually(lambda: started() is not None, timeout_s=timeout_s)
    except TimeoutError:
        return None
    at = started()
    assert at is not None
    return at - changed_at


async def latency(
    workdir: Path, debounce: str, debounce_s: float, repeat: int
) -> tuple[Latencies, Latencies]:
    bound_s = debounce_s + SLACK_S
    added = Latencies("label added", bound_s)
    removed = Latencies("label removed", bound_s)
    api, kubeconfig = await fake_api(workdir)
    log = ChildLog(workdir / "latency-child.log")
    names = [f"lat-{i}" for i in range(repeat)]
    for name in names:
        api.create(name)  # unlabelled: not the tenant's yet
    api.relabel_new("base", label(TENANT))
    argv = reloader_args(kubeconfig, log.path, *flags(debounce, MAX_WAIT))
    timeout_s = bound_s + 10
    try:
        async with running_reloader(argv, environ=child_environ()):
            await eventually(lambda: log.starts() == ["base"], timeout_s=20)
            for i, name in enumerate(names, 1):
                for result, value in ((added, TENANT), (removed, None)):
                    await asyncio.sleep(0.3)  # the previous operator settles
                    present = value is not None

                    def applied(watch: str, name: str = name, present: bool = present) -> bool:
                        return (name in watch.split(",")) == present

                    def change(name: str = name, value: str | None = value) -> None:
                        api.relabel(name, {TENANT_LABEL: value})

                    seconds = await time_change(log, change, applied, timeout_s)
                    if seconds is None:
                        result.failures += 1
                        print(f"  {result.what:<14} {i}/{repeat}: not applied in {timeout_s:.0f} s")
                    else:
                        result.values.append(seconds)
                        print(f"  {result.what:<14} {i}/{repeat}: {seconds:.3f} s")
    finally:
        await api.stop()
    return added, removed


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def report(burst_result: BurstResult, added: Latencies, removed: Latencies, debounce: str) -> None:
    b = burst_result
    events = f"burst of {b.events} namespace events"
    rows = [
        (
            f"{events}: exactly 1 restart",
            f"{b.restarts} restart(s), all {b.events} in WATCH_NAMESPACE: "
            f"{'yes' if b.complete else 'NO'}",
            verdict(b.met),
        )
    ]
    for result, flag in ((added, ""), (removed, " (--removal-delay=0s)")):
        rows.append(
            (
                f"{result.what}{flag}: new env <= {result.bound_s:.3f} s",
                result.summary(),
                verdict(result.met),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print(f"\ntargets (--debounce={debounce}, target: debounce + {SLACK_S:.0f} s):")
    print(f"{'target':<{widths[0]}}  {'measured':<{widths[1]}}  result")
    for target, measured, outcome in rows:
        print(f"{target:<{widths[0]}}  {measured:<{widths[1]}}  {outcome}")


async def run(args: argparse.Namespace, debounce_s: float, gap_s: float) -> int:
    with tempfile.TemporaryDirectory(prefix="keda-tenancy-bench-reloader-") as tmp:
        workdir = Path(tmp)
        print(
            f"burst: {args.burst} namespace events {gap_s * 1000:g} ms apart; "
            f"--debounce={args.debounce} --max-wait={MAX_WAIT} --min-restart-interval=0s"
        )
        b = await burst(workdir, args.debounce, debounce_s, args.burst, gap_s)
        print(f"  events spread over {b.spread_s:.3f} s")
        print(f"  restarts (operator starts after the first): {b.restarts}")
        if b.after_last_event_s is not None:
            print(f"  restart came {b.after_last_event_s:.3f} s after the last event")
        print(
            f"  final WATCH_NAMESPACE holds all {b.events} namespaces: "
            f"{'yes' if b.complete else 'NO'}; operator running: {'yes' if b.running else 'NO'}"
        )
        print(
            f"  {verdict(b.met)}: exactly one restart, with every namespace"
            f" (max-wait {b.max_wait} is far longer than the burst)"
        )

        print(
            f"\nlatency: label change -> new operator running with it, {args.repeat} times each; "
            f"--debounce={args.debounce} --min-restart-interval=0s --removal-delay=0s"
        )
        added, removed = await latency(workdir, args.debounce, debounce_s, args.repeat)
        for result in (added, removed):
            print(
                f"  {verdict(result.met)}: {result.what}: {result.summary()} "
                f"(target: debounce {debounce_s:.3f} s + {SLACK_S:.0f} s = {result.bound_s:.3f} s)"
            )
        print(
            "  note: with --removal-delay=D an unlabelled namespace waits max(debounce, D) "
            "instead; with --min-restart-interval=I (default 5s) a change within I of the "
            "previous restart waits for I"
        )
    report(b, added, removed, args.debounce)
    return 0 if b.met and added.met and removed.met else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reloader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--debounce", default="500ms", help="the reloader's --debounce")
    parser.add_argument("--repeat", type=int, default=5, help="label changes measured (each way)")
    parser.add_argument("--burst", type=int, default=200, help="namespace events in the burst")
    parser.add_argument("--burst-gap", default="2ms", help="time between two burst events")
    args = parser.parse_args()
    try:
        debounce_s = parse_duration(args.debounce)
        gap_s = parse_duration(args.burst_gap)
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat < 1 or args.burst < 2:
        parser.error("--repeat must be at least 1 and --burst at least 2")
    return asyncio.run(run(args, debounce_s, gap_s))


if __name__ == "__main__":
    sys.exit(main())
