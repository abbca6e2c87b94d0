"""keda-tenancy-grpc-forward's Prometheus metrics: the adapter's connections to the operator,
the bytes spliced, and what went wrong (a connection given up because the operator did not
listen in time, or refused beyond the maximum)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "keda_tenancy_grpc_forward_"


class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.open_connections = Gauge(
            PREFIX + "open_connections",
            "Adapter connections accepted and not yet closed (held or spliced).",
            registry=registry,
        )
        self.connections = Counter(
            PREFIX + "connections", "Adapter connections accepted.", registry=registry
        )
        self.bytes = Counter(
            PREFIX + "bytes",
            "Bytes copied, by direction (to_operator, to_adapter).",
            ["direction"],
            registry=registry,
        )
        self.errors = Counter(
            PREFIX + "errors",
            "Adapter connections closed unserved, by reason (operator_not_listening: it did "
            "not accept within --dial-wait; refused: beyond the maximum held at once).",
            ["reason"],
            registry=registry,
        )
        for direction in ("to_operator", "to_adapter"):
            self.bytes.labels(direction=direction)
        for reason in ("operator_not_listening", "refused"):
            self.errors.labels(reason=reason)
