"""Prometheus counters and gauges (with labels) and the text exposition format 0.0.4, stdlib only.

Why not prometheus_client: importing it costs this process 4.5 MiB of its 32 MiB budget (its
package pulls in http.server, wsgiref, urllib.request and email for exposition servers we do
not use), about a sixth of the whole process. What this process needs is small: a few counters
and gauges, the process's own memory and CPU, and one text page for /metrics.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Registry:
    def __init__(self) -> None:
        self._families: list[_Family] = []
        self._names: set[str] = set()

    def register(self, family: _Family) -> None:
        if family.name in self._names:
            raise ValueError(f"duplicate metric {family.name}")
        self._names.add(family.name)
        self._families.append(family)

    def expose(self) -> bytes:
        """Every metric in the text exposition format."""
        lines: list[str] = []
        for family in self._families:
            lines += family.lines()
        return ("\n".join(lines) + "\n").encode()


class Value:
    """One series: a number, or a function read at each scrape."""

    def __init__(self) -> None:
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._value += amount

    def set(self, value: float) -> None:
        self._value = float(value)

    def set_to_current_time(self) -> None:
        self._value = time.time()

    def set_function(self, function: Callable[[], float]) -> None:
        self._function = function

    @property
    def value(self) -> float:
        return float(self._function()) if self._function is not None else self._value


class _Family(Value):
    kind = "untyped"
    suffix = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] | list[str] = (),
        *,
        registry: Registry,
    ) -> None:
        super().__init__()
        if not _NAME.fullmatch(name) or not all(_LABEL.fullmatch(n) for n in labelnames):
            raise ValueError(f"not a metric or label name: {name} {labelnames}")
        self.name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Value] = {}
        registry.register(self)

    def labels(self, *values: str, **named: str) -> Value:
        """The series with these label values (made on first use)."""
        key = tuple(str(v) for v in values) or tuple(str(named[n]) for n in self._labelnames)
        if len(key) != len(self._labelnames):
            raise ValueError(f"{self.name} has labels {self._labelnames}")
        if key not in self._children:
            self._children[key] = Value()
        return self._children[key]

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name}{self.suffix} {_escape_help(self._documentation)}"
        yield f"# TYPE {self.name}{self.suffix} {self.kind}"
        if not self._labelnames:
            yield f"{self.name}{self.suffix} {_number(self.value)}"
            return
        for key, child in sorted(self._children.items()):
            pairs = ",".join(
                f'{name}="{_escape_label(value)}"'
                for name, value in zip(self._labelnames, key, strict=True)
            )
            yield f"{self.name}{self.suffix}{{{pairs}}} {_number(child.value)}"


class Counter(_Family):
    """Exposed as `<name>_total`, as prometheus_client does."""

    kind = "counter"
    suffix = "_total"


class Gauge(_Family):
    kind = "gauge"


def process_metrics(registry: Registry) -> None:
    """process_resident_memory_bytes and friends, read from /proc at each scrape (Linux)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def statm(field: int) -> float:
        try:
            return float(Path("/proc/self/statm").read_text().split()[field]) * page
        except (OSError, IndexError, ValueError):
            return math.nan

    def open_fds() -> float:
        try:
            return float(len(os.listdir("/proc/self/fd")))
        except OSError:
            return math.nan

    started = time.time()
    Gauge(
        "process_resident_memory_bytes", "Resident memory size in bytes.", registry=registry
    ).set_function(lambda: statm(1))
    Gauge(
        "process_virtual_memory_bytes", "Virtual memory size in bytes.", registry=registry
    ).set_function(lambda: statm(0))
    Gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        registry=registry,
    ).set(started)
    Counter(
        "process_cpu_seconds", "Total user and system CPU time spent in seconds.", registry=registry
    ).set_function(lambda: sum(os.times()[:2]))
    Gauge("process_open_fds", "Number of open file descriptors.", registry=registry).set_function(
        open_fds
    )


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
