"""The reloader's Prometheus metrics, built against an injected registry.

The namespace watch adds its own (`keda_tenancy_namespace_watch_reconnects_total`,
`..._relists_total{reason}`, `..._namespaces`, `..._staleness_seconds`,
`..._last_current_timestamp_seconds`) to the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "keda_tenancy_reloader_"


class ReloaderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.namespaces = Gauge(
            PREFIX + "namespaces", "Namespaces in the desired WATCH_NAMESPACE.", registry=registry
        )
        self.restarts = Counter(
            PREFIX + "restarts",
            "Operator (re)starts or Deployment patches, by reason "
            "(initial, namespaces, crash, empty, resync).",
            ["reason"],
            registry=registry,
        )
        self.last_restart = Gauge(
            PREFIX + "last_restart_timestamp_seconds",
            "Unix time of the last (re)start or patch.",
            registry=registry,
        )
        self.child_up = Gauge(
            PREFIX + "child_up", "1 while the operator process runs.", registry=registry
        )
        self.child_exits = Counter(
            PREFIX + "child_exits",
            "Operator process exits (on its own or stopped by us), by exit status.",
            ["code"],
            registry=registry,
        )
        self.consecutive_failures = Gauge(
            PREFIX + "consecutive_failures",
            "Operator exits on its own (or failed starts) since its last healthy run.",
            registry=registry,
        )
        self.empty = Gauge(
            PREFIX + "empty_namespace_set",
            "1 while no namespace is selected (the operator is kept stopped / scaled to zero).",
            registry=registry,
        )
        self.refused = Counter(
            PREFIX + "refused_values",
            "Desired values refused (too large for one environment string).",
            registry=registry,
        )
        self.lease_releases = Counter(
            PREFIX + "lease_releases",
            "Leader-election Leases released from an operator that had died "
            "(its successor took over at once instead of waiting the Lease out).",
            registry=registry,
        )
        self.grpc_forward_connections = Gauge(
            PREFIX + "grpc_forward_connections",
            "Process mode (--forward-grpc): adapter connections held or spliced.",
            registry=registry,
        )
        self.grpc_forward_refused = Counter(
            PREFIX + "grpc_forward_refused_connections",
            "Process mode: connections closed at once, --forward-grpc-max-connections being open.",
            registry=registry,
        )
        self.unproven_deletions = Counter(
            PREFIX + "operator_pods_deleted_unproven",
            "Operator pods deleted while no report said their operator had stopped "
            "(force-deleted, node lost): a Lease such a pod holds is left to expire.",
            registry=registry,
        )
        self.apply_errors = Counter(
            PREFIX + "apply_errors",
            "Failed attempts to put a value in force (API errors in deployment mode).",
            registry=registry,
        )
