"""The figures of `bench.tenants`: percentiles, request counts from kube-apiserver's /metrics,
a process's RSS and CPU from /proc, and the printed table. Pure apart from the /proc readers;
tests/unit/test_bench_tenants.py checks them."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024
# issue 21's targets
CONTROLLER_RSS_TARGET_MIB = 512.0
LABEL_CHANGE_TARGET_S = 2.0
REST_WRITES_PER_TENANT_TARGET = 0.1
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Summary:
    count: int
    missing: int
    """Changes whose effect was not seen before the wait ended."""
    p50: float
    p99: float
    max: float

    def cell(self) -> str:
        if not self.count:
            return f"- ({self.missing} unseen)" if self.missing else "-"
        text = f"{self.p50:.2f}/{self.p99:.2f}/{self.max:.2f}"
        return f"{text} ({self.missing} unseen)" if self.missing else text


def summarize(values: Sequence[float | None]) -> Summary:
    seen = [v for v in values if v is not None]
    return Summary(
        count=len(seen),
        missing=len(values) - len(seen),
        p50=percentile(seen, 50),
        p99=percentile(seen, 99),
        max=max(seen, default=math.nan),
    )


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """apiserver_request_total by (verb, resource), summed over codes, scopes and the rest."""
    out: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total"):
            continue
        match = _SAMPLE.match(line)
        if not match or match["name"] != "apiserver_request_total":
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        key = (labels.get("verb", ""), labels.get("resource", ""))
        out[key] = out.get(key, 0.0) + float(match["value"])
    return out


def authorization_seconds(metrics_text: str) -> tuple[float, float]:
    """kube-apiserver's authorization_duration_seconds (sum, count) over every result: what
    the authorizers (RBAC walks every ClusterRoleBinding for a user outside system:masters)
    cost per request."""
    total, count = 0.0, 0.0
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        if match["name"] == "authorization_duration_seconds_sum":
            total += float(match["value"])
        elif match["name"] == "authorization_duration_seconds_count":
            count += float(match["value"])
    return total, count


def mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return (after[0] - before[0]) / count * 1000 if count > 0 else math.nan


def rates_by_verb(
    before: Mapping[tuple[str, str], float], after: Mapping[tuple[str, str], float], seconds: float
) -> dict[str, float]:
    """Requests per second by verb between two request_counts readings (WATCH counts opened
    watches, as the API server counts them)."""
    out: dict[str, float] = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta > 0:
            out[key[0]] = out.get(key[0], 0.0) + delta / seconds
    return dict(sorted(out.items()))


def writes_per_second(rates: Mapping[str, float]) -> float:
    return sum(v for verb, v in rates.items() if verb in WRITE_VERBS)


def format_rates(rates: Mapping[str, float]) -> str:
    shown = {verb: rate for verb, rate in rates.items() if rate >= 0.005}
    return " ".join(f"{verb}={rate:.2f}" for verb, rate in shown.items()) or "0"


# -- a process, from /proc ---------------------------------------------------------------------


def parse_status_kib(status_text: str, field: str) -> int:
    for line in status_text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def parse_cpu_ticks(stat_text: str) -> int:
    """utime + stime of /proc/<pid>/stat (fields 14 and 15; the command may hold spaces)."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True)
class ProcessUse:
    rss_mib: float
    peak_rss_mib: float
    cpu_s: float

    @classmethod
    def read(cls, pid: int) -> ProcessUse:
        status = open(f"/proc/{pid}/status", encoding="ascii").read()  # noqa: SIM115
        stat = open(f"/proc/{pid}/stat", encoding="ascii").read()  # noqa: SIM115
        return cls(
            rss_mib=parse_status_kib(status, "VmRSS") / 1024,
            peak_rss_mib=parse_status_kib(status, "VmHWM") / 1024,
            cpu_s=parse_cpu_ticks(stat) / os.sysconf("SC_CLK_TCK"),
        )


# -- the printed table -------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def ratio(value: float, target: float) -> str:
    """value / target, as the issue's targets are read (<= 1.00 meets it)."""
    if math.isnan(value):
        return "-"
    return f"{value / target:.2f}"
