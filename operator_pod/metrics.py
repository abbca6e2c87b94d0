"""This process's Prometheus metrics (prefix keda_tenancy_operator_pod_), on an injected
registry; the process metrics give its own RSS (process_resident_memory_bytes)."""

from __future__ import annotations

from operator_pod.prometheus import Counter, Gauge, Registry, process_metrics

PREFIX = "keda_tenancy_operator_pod_"


class Metrics:
    def __init__(self, registry: Registry) -> None:
        process_metrics(registry)
        self.operator_up = Gauge(
            PREFIX + "operator_up", "1 while KEDA's process runs.", registry=registry
        )
        self.operator_starts = Counter(
            PREFIX + "operator_starts",
            "KEDA started, by why (namespaces: a new set; crash: after it exited on its own; "
            "lease: deployment mode, once its Lease was free).",
            ["reason"],
            registry=registry,
        )
        self.operator_exits = Counter(
            PREFIX + "operator_exits",
            "KEDA exiting on its own (not stopped by us), by exit status.",
            ["code"],
            registry=registry,
        )
        self.namespaces = Gauge(
            PREFIX + "namespaces", "Namespaces in KEDA's WATCH_NAMESPACE now.", registry=registry
        )
        # The alerts tell a tenant with no namespace (KEDA stopped on purpose) from one whose set
        # was never published (undecided): `namespaces` is 0 for both.
        self.namespace_set_empty = Gauge(
            PREFIX + "namespace_set_empty",
            "Process mode: 1 while the namespace set read is decided empty (KEDA kept stopped "
            "on purpose); 0 while it is undecided or lists namespaces.",
            registry=registry,
        )
        self.refused = Counter(
            PREFIX + "namespace_set_refused",
            "Namespace sets refused (not namespace names, or too large); KEDA kept the last.",
            registry=registry,
        )
        self.lease_releases = Counter(
            PREFIX + "lease_releases",
            "Leases released after KEDA exited (KEDA does not release its own).",
            registry=registry,
        )
        self.lease_wait = Gauge(
            PREFIX + "lease_wait_seconds",
            "Deployment mode: how long KEDA's start waited for its Lease.",
            registry=registry,
        )
