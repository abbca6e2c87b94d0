"""The router's Prometheus metrics, built against an injected registry."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "keda_tenancy_router_"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Durations:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0


class RequestStats(Collector):
    """Per-request counters kept as plain numbers and turned into metrics when scraped.

    Counting is on the request path; prometheus_client's labelled children take a lock and
    walk the buckets in Python for every observation, which costs more than the rest of the
    bookkeeping together. The event loop is the only writer and the only reader.
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, int, str], int] = {}
        self._durations: dict[str, _Durations] = {}
        self.in_flight: Callable[[], Mapping[str, int]] = dict

    def observe(self, tenant: str, code: int, outcome: str, elapsed_s: float) -> None:
        key = (tenant, code, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1
        durations = self._durations.get(tenant)
        if durations is None:
            durations = self._durations[tenant] = _Durations()
        durations.buckets[bisect.bisect_left(DURATION_BUCKETS, elapsed_s)] += 1
        durations.count += 1
        durations.total += elapsed_s

    def count(self, tenant: str, code: int, outcome: str) -> int:
        return self._requests.get((tenant, code, outcome), 0)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Requests answered, by tenant (empty when unrouted), HTTP code and outcome.",
            labels=["tenant", "code", "outcome"],
        )
        for (tenant, code, outcome), value in sorted(self._requests.items()):
            requests.add_metric([tenant, str(code), outcome], value)
        yield requests
        duration = HistogramMetricFamily(
            PREFIX + "request_duration_seconds",
            "Time from request to response, by tenant.",
            labels=["tenant"],
        )
        bounds = [*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf"]
        for tenant, durations in sorted(self._durations.items()):
            cumulative, running = [], 0
            for bound, value in zip(bounds, durations.buckets, strict=True):
                running += value
                cumulative.append((bound, running))
            duration.add_metric([tenant], cumulative, durations.total)
        yield duration
        in_flight = GaugeMetricFamily(
            PREFIX + "requests_in_flight",
            "Requests being forwarded, by tenant.",
            labels=["tenant"],
        )
        for tenant, value in sorted(self.in_flight().items()):
            in_flight.add_metric([tenant], value)
        yield in_flight

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only; names are not reserved up front


class UpstreamStats(Collector):
    """Per-tenant pool state and failure counts, read from the pools when scraped."""

    def __init__(self) -> None:
        self.timeouts: Callable[[], Mapping[str, int]] = dict
        self.fast_failed: Callable[[], Mapping[str, int]] = dict
        self.transient_retries: Callable[[], Mapping[tuple[str, str], int]] = dict
        self.pools: Callable[[], Mapping[str, tuple[int, int]]] = dict

    def collect(self) -> Iterator[Metric]:
        timeouts = CounterMetricFamily(
            PREFIX + "upstream_timeouts",
            "Requests answered 504 because the tenant did not answer within --upstream-timeout.",
            labels=["tenant"],
        )
        for tenant, value in sorted(self.timeouts().items()):
            timeouts.add_metric([tenant], value)
        yield timeouts
        fast_failed = CounterMetricFamily(
            PREFIX + "upstream_fast_failed",
            "Requests answered 503 at once because the tenant was down (unreachable or hung).",
            labels=["tenant"],
        )
        for tenant, value in sorted(self.fast_failed().items()):
            fast_failed.add_metric([tenant], value)
        yield fast_failed
        retries = CounterMetricFamily(
            PREFIX + "upstream_transient_retries",
            "Requests sent to the tenant again, once, because its KEDA adapter answered 500 with "
            "a transient error, by reason: unavailable (the operator's gRPC went away under the "
            "request), scalers-cache (KEDA replaced the scalers cache the request was reading).",
            labels=["tenant", "reason"],
        )
        for (tenant, reason), value in sorted(self.transient_retries().items()):
            retries.add_metric([tenant, reason], value)
        yield retries
        connections = GaugeMetricFamily(
            PREFIX + "upstream_connections",
            "Open connections to the tenant's metrics server (busy and idle).",
            labels=["tenant"],
        )
        queued = GaugeMetricFamily(
            PREFIX + "upstream_queued_requests",
            "Requests waiting for a connection to the tenant's metrics server.",
            labels=["tenant"],
        )
        for tenant, (open_now, waiting) in sorted(self.pools().items()):
            connections.add_metric([tenant], open_now)
            queued.add_metric([tenant], waiting)
        yield connections
        yield queued

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = RequestStats()
        registry.register(self.requests)
        self.upstream = UpstreamStats()
        registry.register(self.upstream)
        self.upstream_errors = Counter(
            PREFIX + "upstream_errors",
            "Failed upstream requests, by tenant and HTTP code given to the caller.",
            ["tenant", "code"],
            registry=registry,
        )
        self.unroutable = Counter(
            PREFIX + "unroutable_requests",
            "Requests for namespaces no single tenant owns, by reason (unmapped, conflict, invalid_tenant).",
            ["reason"],
            registry=registry,
        )
        self.open_connections = Gauge(
            PREFIX + "open_connections",
            "Open client connections on the secure port.",
            registry=registry,
        )
        self.cert_expiry = Gauge(
            PREFIX + "certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of each certificate in use.",
            ["certificate"],
            registry=registry,
        )
        self.cert_reload_errors = Counter(
            PREFIX + "certificate_reload_errors",
            "Failed certificate reloads (the last good one stays in use).",
            ["certificate"],
            registry=registry,
        )
        self.auth_failures = Counter(
            PREFIX + "authentication_failures",
            "Requests refused with 401 before any routing.",
            registry=registry,
        )
