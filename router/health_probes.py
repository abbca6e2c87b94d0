"""Active health of each backend, probed on a schedule off the request path.

KEDA's metrics server stays Ready while it cannot reach its operator (KEDA issue #8211), so
an HPA request to it waits the whole --upstream-timeout. The router asks each known backend
(every one requests went to since start, and the default upstream) for an external metric
that does not exist, with no label selector: KEDA's adapter then waits for its gRPC
connection to the operator (`WaitForConnectionReady`) and, connected, answers at once "scaledObject
name is not specified" (a 500) without asking the operator or any scaler. So:

- any answer (200, 403, 404, that 500) proves TLS, the client certificate and the adapter
  and, for KEDA, its operator connection: healthy;
- no answer within --health-probe-timeout, a refused or failed connection, a 502/503/504,
  or KEDA's "Unavailable" / gRPC-timeout answer: unhealthy. Refused connections only once
  they have gone on for REFUSED_GRACE_S (probed again every REFUSED_RETRY_S meanwhile), as
  on the request path: a metrics server being rolled refuses for a moment, and a refusal
  holds no request anyway.

An unhealthy backend is held down (`Upstreams.hold_down`): its requests fail fast with 503
until a probe finds it healthy again, and it is probed again UNHEALTHY_RETRY_S after each
failed probe, not only at its next round: a tenant coming up (a new one, or its KEDA that
reached its operator again) is served within about a second of answering, not an interval
later. A probe's failure touches only its own backend. At most
one probe per backend is in flight, each on one kept-alive connection of its own (a probe
never takes a request's connection), and probes are spread over the interval and capped at
--health-probe-max-rate per second: 1,000 backends at 10s and 20/s take 50s a round.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.backends import Backend
from router.http1 import ProtocolError, ResponseReader
from router.metrics import PREFIX
from router.paths import GROUP_VERSION_PATH
from router.transient import transient_reason
from router.upstreams import REFUSED_GRACE_S
from tenancy_common.durations import parse_duration
from tenancy_common.lifecycle import wait_stopped
from tenancy_common.tenancy_config import ConfigError

logger = logging.getLogger(__name__)

PROBE_METRIC = "keda-tenancy-health-probe"
PROBE_NAMESPACE = "default"
PROBE_USER = "keda-tenancy:health-probe"
PROBE_TARGET = f"{GROUP_VERSION_PATH}/namespaces/{PROBE_NAMESPACE}/{PROBE_METRIC}"
_GRPC_TIMEOUT = b"timeout while waiting to establish gRPC connection"
_MAX_ANSWER = 64 * 1024  # of a body searched for KEDA's messages (a Status: a few hundred bytes)
_MAX_READ = 1024 * 1024  # an answer larger than this is not the adapter's: unhealthy

REFUSED_RETRY_S = 0.2
UNHEALTHY_RETRY_S = 1.0
"""A backend found unhealthy is probed again this long after, until it answers. With more than
--health-probe-max-rate backends down, later: their re-probes together stay at that rate."""

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval_s: float = 10.0
    """Between two probes of one backend; 0 turns probing off."""
    timeout_s: float = 2.0
    max_rate: float = 20.0
    """Probes started per second, all backends together."""


class DownHolder(Protocol):
    """What the prober tells the request path (router.upstreams.Upstreams)."""

    def hold_down(self, backend: Backend, reason: str, since: float) -> None: ...

    def release_down(self, backend: Backend) -> None: ...


def spacing_s(backends: int, settings: ProbeSettings) -> float:
    """Time between two probe starts: a round spread over the interval, never faster than
    `max_rate` (so a round of N backends takes max(interval, N / max_rate))."""
    return max(settings.interval_s / max(backends, 1), 1 / settings.max_rate)


def judge(status: int, body: bytes | bytearray) -> str | None:
    """None when an answer shows the backend healthy, else why not."""
    if status in (502, 503, 504):
        return f"answered {status}"
    if status == 500:
        if _GRPC_TIMEOUT in body[:_MAX_ANSWER]:
            return "its KEDA cannot reach the operator"
        if transient_reason(body) == "unavailable":
            return "its KEDA's operator is unavailable"
    return None


class _Connection:
    """The prober's own kept-alive connection to one backend."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


class HealthProbes:
    def __init__(
        self,
        settings: ProbeSettings,
        backends: Callable[[], Iterable[Backend]],
        context_for: Callable[[str], ssl.SSLContext],
        holder: DownHolder,
        *,
        user_header: str = "X-Remote-User",
        group_header: str = "X-Remote-Group",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._backends = backends
        self._context_for = context_for
        self._holder = holder
        self._identity = (
            f"{user_header}: {PROBE_USER}\r\n{group_header}: system:authenticated\r\n"
        ).encode("latin-1")
        self._clock = clock
        self.health: dict[str, str] = {}
        """Backend name -> healthy/unhealthy (absent: not probed yet); read per request."""
        self.reasons: dict[str, str] = {}
        self.probes: dict[tuple[str, str], int] = {}
        """(backend, result) -> probes counted."""
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._connections: dict[str, _Connection] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        """Backend name -> its re-probe, while it is unhealthy or refusing."""
        self._refused_since: dict[str, float] = {}
        """Backend name -> the first of the refused probes in a row, not yet a verdict."""

    def state_of(self, name: str) -> str:
        return self.health.get(name, UNKNOWN)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every known backend once per interval, spread out, until `stop`."""
        if self._settings.interval_s <= 0:
            await stop.wait()  # off; a root task that ended would stop the router
            return
        try:
            while not stop.is_set():
                backends = {backend.name: backend for backend in self._backends()}
                spacing = spacing_s(len(backends), self._settings)
                started = self._clock()
                for backend in backends.values():
                    self.start(backend)
                    if await wait_stopped(stop, spacing):
                        return
                rest = self._settings.interval_s - (self._clock() - started)
                if rest > 0 and await wait_stopped(stop, rest):
                    return
                self._forget(backends)
        finally:
            self.close()

    def close(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for task in list(self._in_flight.values()):
            task.cancel()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def start(self, backend: Backend) -> asyncio.Task[None] | None:
        """Probe `backend` unless a probe of it is still in flight."""
        if backend.name in self._in_flight:
            return None
        task = asyncio.get_running_loop().create_task(self._probe(backend))
        self._in_flight[backend.name] = task
        task.add_done_callback(lambda _: self._in_flight.pop(backend.name, None))
        return task

    def _forget(self, known: dict[str, Backend]) -> None:
        for name in [name for name in self._retries if name not in known]:
            self._retries.pop(name).cancel()
        for name in [name for name in self._connections if name not in known]:
            self._connections.pop(name).close()
            self._refused_since.pop(name, None)
            self.health.pop(name, None)
            self.reasons.pop(name, None)

    async def _probe(self, backend: Backend) -> None:
        connection = self._connections.setdefault(backend.name, _Connection())
        started = self._clock()
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                status, body = await self._exchange(backend, connection)
            reason = judge(status, body)
        except TimeoutError:
            connection.close()
            reason = "no answer in time"
        except ConnectionRefusedError as exc:
            connection.close()
            first = self._refused_since.setdefault(backend.name, started)
            if self._clock() - first < REFUSED_GRACE_S:
                self._retry_later(backend, REFUSED_RETRY_S)  # no verdict yet
                return
            self._record(backend, exc.strerror or "connection refused", started, refused=True)
            return
        except (OSError, ssl.SSLError, ProtocolError, asyncio.IncompleteReadError) as exc:
            connection.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        except Exception as exc:  # the router's side (its client TLS not loaded): no verdict
            connection.close()
            logger.warning(
                "cannot probe a backend", extra={"tenant": backend.name, "error": str(exc)}
            )
            return
        self._record(backend, reason, started)

    async def _exchange(
        self, backend: Backend, connection: _Connection
    ) -> tuple[int, bytes | bytearray]:
        for attempt in (1, 2):
            fresh = connection.writer is None or connection.writer.is_closing()
            if fresh:
                connection.close()
                host = backend.origin.raw_host or ""
                connection.reader, connection.writer = await asyncio.open_connection(
                    host,
                    backend.origin.port or 443,
                    ssl=self._context_for(backend.ca_file),
                    server_hostname=backend.server_name or host,
                )
            assert connection.reader is not None
            assert connection.writer is not None
            host_header = backend.origin.raw_host or ""
            connection.writer.write(
                f"GET {PROBE_TARGET} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Accept: application/json\r\nUser-Agent: keda-tenancy-router-health-probe\r\n".encode(
                    "latin-1"
                )
                + self._identity
                + b"\r\n"
            )
            reader = ResponseReader(_MAX_READ)
            while True:
                data = await connection.reader.read(65536)
                if not data:
                    if reader.eof():
                        break
                    if attempt == 1 and not fresh and not reader.status:
                        break  # a kept-alive connection the backend had closed: once more
                    raise ConnectionResetError("closed the connection before answering")
                if reader.feed(data):
                    break
            if not reader.done:
                connection.close()
                continue
            if not reader.keep_alive or reader.leftover:
                connection.close()
            return reader.status, reader.body
        raise ConnectionResetError("closed the connection before answering")

    def _record(
        self, backend: Backend, reason: str | None, started: float, *, refused: bool = False
    ) -> None:
        name = backend.name
        if not refused:
            self._refused_since.pop(name, None)
        before = self.health.get(name)
        result = HEALTHY if reason is None else UNHEALTHY
        key = (name, result)
        self.probes[key] = self.probes.get(key, 0) + 1
        self.health[name] = result
        if reason is None:
            self.reasons.pop(name, None)
            if (retry := self._retries.pop(name, None)) is not None:
                retry.cancel()
            self._holder.release_down(backend)
            if before == UNHEALTHY:
                logger.info("backend healthy again", extra={"tenant": name})
            return
        self.reasons[name] = reason
        self._holder.hold_down(backend, f"health probe: {reason}", started)
        if before != UNHEALTHY:
            logger.warning("backend unhealthy", extra={"tenant": name, "reason": reason})
        self._retry_later(backend)

    def _retry_later(self, backend: Backend, soonest_s: float = UNHEALTHY_RETRY_S) -> None:
        """Probe an unhealthy or refusing `backend` again soon (requests to an unhealthy one
        fail fast meanwhile)."""
        down = sum(1 for state in self.health.values() if state == UNHEALTHY)
        delay = max(soonest_s, down / self._settings.max_rate)
        if (previous := self._retries.pop(backend.name, None)) is not None:
            previous.cancel()
        self._retries[backend.name] = asyncio.get_running_loop().call_later(
            delay, self._retry, backend
        )

    def _retry(self, backend: Backend) -> None:
        self._retries.pop(backend.name, None)
        again = self.health.get(backend.name) == UNHEALTHY or backend.name in self._refused_since
        if again and backend.name in self._connections:
            self.start(backend)


class HealthStats(Collector):
    """The probes' results as metrics, read when scraped."""

    def __init__(self, probes: HealthProbes) -> None:
        self._probes = probes

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            PREFIX + "backend_healthy",
            "1 when the last health probe of the backend (tenant, or _default) was answered, "
            "0 when not (its requests fail fast until a probe is answered); absent: not probed.",
            labels=["tenant"],
        )
        for name, state in sorted(self._probes.health.items()):
            healthy.add_metric([name], 1 if state == HEALTHY else 0)
        yield healthy
        probes = CounterMetricFamily(
            PREFIX + "health_probes",
            "Health probes by backend and result (healthy, unhealthy).",
            labels=["tenant", "result"],
        )
        for (name, result), value in sorted(self._probes.probes.items()):
            probes.add_metric([name, result], value)
        yield probes

    def describe(self) -> Iterator[Metric]:
        return iter(())


def add_health_probe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("active health of the backends")
    group.add_argument(
        "--health-probe-interval",
        default="10s",
        help="how often each known backend is probed (its KEDA's operator connection "
        "included); an unhealthy one fails fast until a probe is answered; 0s: never",
    )
    group.add_argument(
        "--health-probe-timeout", default="2s", help="how long a probe waits for its answer"
    )
    group.add_argument(
        "--health-probe-max-rate",
        type=float,
        default=20.0,
        help="probes started per second, all backends together (a round of N backends "
        "takes max(interval, N / rate))",
    )


def health_probe_settings(args: argparse.Namespace) -> ProbeSettings:
    interval_s = parse_duration(args.health_probe_interval)
    timeout_s = parse_duration(args.health_probe_timeout)
    if interval_s < 0:
        raise ConfigError("--health-probe-interval must not be negative")
    if timeout_s <= 0:
        raise ConfigError("--health-probe-timeout must be positive")
    if interval_s and timeout_s >= interval_s:
        raise ConfigError("--health-probe-timeout must be shorter than --health-probe-interval")
    if not args.health_probe_max_rate > 0:
        raise ConfigError("--health-probe-max-rate must be positive")
    return ProbeSettings(interval_s, timeout_s, args.health_probe_max_rate)
