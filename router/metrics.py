"""The router's Prometheus metrics, built against an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "keda_tenancy_router_"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by tenant (empty when unrouted), HTTP code and outcome.",
            ["tenant", "code", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request to response, by tenant.",
            ["tenant"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
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
        self.in_flight = Gauge(
            PREFIX + "requests_in_flight",
            "Requests being forwarded, by tenant.",
            ["tenant"],
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
