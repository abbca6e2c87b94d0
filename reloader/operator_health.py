"""KEDA's own /healthz and /readyz (its `--health-probe-bind-address`, :8081), asked through
the wrapper that runs it (the reloader in process mode, keda-tenancy-supervise in deployment
mode).

Why not a kubelet probe on :8081: KEDA is stopped on purpose (process mode: on a namespace
change; deployment mode: it starts only once its Lease is free), and a probe of its port would
count those windows as failures and kill a pod doing what it should. The wrapper knows when
KEDA is meant to answer: while its process runs and has run for `start_grace_s`. Then each
kubelet probe of the wrapper's /livez (/readyz) asks KEDA's /healthz (/readyz) once, at that
moment: no second counter, so the chart's probe (`failureThreshold` x `periodSeconds`) alone
decides when a KEDA that is alive but does not answer is restarted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from tenancy_common.durations import parse_duration

DEFAULT_PROBE_ADDRESS = ":8081"
"""KEDA's default `--health-probe-bind-address`."""


def probe_url(command: Sequence[str]) -> str | None:
    """Where the operator in `command` serves its probes, read from the same argument KEDA
    reads (one decision, never a second flag to keep in step); None when it serves none
    (`--health-probe-bind-address=0`)."""
    address = DEFAULT_PROBE_ADDRESS
    args = list(command[1:])
    for i, arg in enumerate(args):
        flag, sep, value = arg.partition("=")
        if flag.lstrip("-") == "health-probe-bind-address":
            if sep:
                address = value
            elif i + 1 < len(args):
                address = args[i + 1]
    if address in ("0", ""):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"cannot read the operator's probe address {address!r}")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - listening everywhere: ask over loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class OperatorHealth:
    def __init__(
        self,
        settings: OperatorHealthSettings,
        running_for_s: Callable[[], float | None],
        *,
        registry: CollectorRegistry,
        prefix: str,
    ) -> None:
        """`running_for_s`: how long the operator's process has run, None while none runs
        (stopped for a restart, waiting for its Lease)."""
        self._base_url = settings.url.rstrip("/")
        self._running_for_s = running_for_s
        self._start_grace_s = settings.start_grace_s
        self._timeout_s = settings.timeout_s
        self.failures = Counter(
            prefix + "operator_probe_failures",
            "Probes of KEDA's own /healthz or /readyz that failed while it was meant to answer.",
            ["endpoint"],
            registry=registry,
        )

    async def healthz(self) -> str | None:
        return await self._ask("/healthz")

    async def readyz(self) -> str | None:
        return await self._ask("/readyz")

    async def _ask(self, path: str) -> str | None:
        ran_s = self._running_for_s()
        if ran_s is None or ran_s < self._start_grace_s:
            return None  # not meant to answer yet: the wrapper's own checks say why
        reason = await self._get(path)
        if reason is not None:
            self.failures.labels(endpoint=path).inc()
        return reason

    async def _get(self, path: str) -> str | None:
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._base_url + path) as response,
            ):
                if response.status == 200:
                    return None
                body = (await response.text())[:200].strip()
                return f"KEDA's {path} answered {response.status}: {body}"
        except TimeoutError:
            return f"KEDA's {path} did not answer in {self._timeout_s:g}s"
        except aiohttp.ClientError as exc:
            return f"KEDA's {path}: {exc}"


@dataclass(frozen=True, slots=True)
class OperatorHealthSettings:
    url: str
    """Where KEDA serves /healthz and /readyz, read from its own command line."""
    start_grace_s: float = 30.0
    """After KEDA starts, how long its probes go unasked (it builds its clients first)."""
    timeout_s: float = 3.0
    """Per question; keep it below the chart probe's timeoutSeconds."""


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--check-operator-health",
        default="false",
        metavar="BOOL",
        help="fail /livez and /healthz (/readyz) while the operator runs but its own /healthz "
        "(/readyz) fails, at the address of its --health-probe-bind-address",
    )
    parser.add_argument(
        "--operator-start-grace",
        default="30s",
        help="after the operator starts, do not ask its probes for this long",
    )
    parser.add_argument(
        "--operator-probe-timeout",
        default="3s",
        help="how long one question to the operator's probes may take",
    )


def settings_from(
    args: argparse.Namespace, command: Sequence[str]
) -> OperatorHealthSettings | None:
    """None when not asked for, or when the operator serves no probes; ValueError on a bad
    flag."""
    value = args.check_operator_health.strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise ValueError(f"--check-operator-health is true or false, not {value!r}")
    if value not in ("true", "1"):
        return None
    if not command:
        raise ValueError("--check-operator-health needs the operator command after '--'")
    url = probe_url(command)
    if url is None:
        return None
    return OperatorHealthSettings(
        url=url,
        start_grace_s=parse_duration(args.operator_start_grace),
        timeout_s=parse_duration(args.operator_probe_timeout),
    )
