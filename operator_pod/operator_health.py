"""KEDA's own /healthz and /readyz (its `--health-probe-bind-address`, :8081), asked through
this process (the idea of reloader/operator_health.py, with a stdlib HTTP client).

Why not a kubelet probe on :8081: KEDA is stopped on purpose (a namespace change, an undecided
set, a Lease not yet free), and a probe of its port would count those windows as failures and
kill a pod doing what it should. This process knows when KEDA is meant to answer: while it runs
and has run for `start_grace_s`. Then each kubelet probe of our /livez (/readyz) asks KEDA's
/healthz (/readyz) once: the chart's probe (`failureThreshold` x `periodSeconds`) alone decides
when a KEDA that is alive but does not answer is restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from operator_pod.prometheus import Counter, Registry
from tenancy_common.durations import parse_duration

DEFAULT_PROBE_ADDRESS = ":8081"
"""KEDA's default `--health-probe-bind-address`."""


@dataclass(frozen=True, slots=True)
class OperatorHealthSettings:
    host: str
    port: int
    start_grace_s: float = 30.0
    """After KEDA starts, how long its probes go unasked (it builds its clients first)."""
    timeout_s: float = 3.0
    """Per question; keep it below the chart probe's timeoutSeconds."""


def probe_address(command: Sequence[str]) -> tuple[str, int] | None:
    """Where the operator in `command` serves its probes, read from the argument KEDA reads
    (one decision, never a second flag to keep in step); None when it serves none."""
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
    return host, int(port)


class OperatorHealth:
    def __init__(
        self,
        settings: OperatorHealthSettings,
        running_for_s: Callable[[], float | None],
        *,
        registry: Registry,
        prefix: str,
    ) -> None:
        """`running_for_s`: how long KEDA has run, None while it does not run."""
        self._settings = settings
        self._running_for_s = running_for_s
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
        if ran_s is None or ran_s < self._settings.start_grace_s:
            return None  # not meant to answer yet: our own checks say why
        reason = await self._get(path)
        if reason is not None:
            self.failures.labels(endpoint=path).inc()
        return reason

    async def _get(self, path: str) -> str | None:
        host, port = self._settings.host, self._settings.port
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
                    await writer.drain()
                    answer = b""
                    while len(answer) < 8192 and (more := await reader.read(4096)):
                        answer += more
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            return f"KEDA's {path} did not answer in {self._settings.timeout_s:g}s"
        except OSError as exc:
            return f"KEDA's {path}: {exc.strerror or type(exc).__name__}"
        head, _, body = answer.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status == [b"200"]:
            return None
        text = body[:200].decode("utf-8", "replace").strip()
        return f"KEDA's {path} answered {b''.join(status).decode() or '?'}: {text}"


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--check-operator-health",
        default="false",
        metavar="BOOL",
        help="fail /livez (/readyz) while KEDA runs but its own /healthz (/readyz) fails, at "
        "the address of its --health-probe-bind-address",
    )
    parser.add_argument(
        "--operator-start-grace",
        default="30s",
        help="after KEDA starts, do not ask its probes for this long",
    )
    parser.add_argument(
        "--operator-probe-timeout",
        default="3s",
        help="how long one question to KEDA's probes may take",
    )


def settings_from(
    args: argparse.Namespace, command: Sequence[str]
) -> OperatorHealthSettings | None:
    """None when not asked for, or when KEDA serves no probes; ValueError on a bad flag."""
    value = args.check_operator_health.strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise ValueError(f"--check-operator-health is true or false, not {value!r}")
    if value not in ("true", "1"):
        return None
    address = probe_address(command)
    if address is None:
        return None
    return OperatorHealthSettings(
        host=address[0],
        port=address[1],
        start_grace_s=parse_duration(args.operator_start_grace),
        timeout_s=parse_duration(args.operator_probe_timeout),
    )
