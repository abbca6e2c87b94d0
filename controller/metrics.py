"""The controller's Prometheus metrics, built against an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "keda_tenancy_controller_"


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconcile_duration = Histogram(
            PREFIX + "reconcile_duration_seconds",
            "Time of one tenant's reconcile (successful or not).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            PREFIX + "reconcile_errors",
            "Failed reconciles, by tenant (the grant's Events and the log say why).",
            ["tenant"],
            registry=registry,
        )
        self.tenants = Gauge(
            PREFIX + "tenants", "Tenants with a grant (in a tenant namespace).", registry=registry
        )
        self.bindings = Gauge(
            PREFIX + "bindings",
            "Operator RoleBindings of this controller in the cluster (as watched).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth", "Tenants waiting for a reconcile.", registry=registry
        )
        self.change_to_published = Histogram(
            PREFIX + "namespace_change_to_published_seconds",
            "From a namespace change that moved a tenant's namespaces (seen on the watch) to "
            "that tenant's namespace set published with it.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )
        self.lease_releases = Counter(
            PREFIX + "lease_releases",
            "Leases released from an operator pod whose operator container was reported stopped.",
            registry=registry,
        )
        self.unproven_deletions = Counter(
            PREFIX + "unproven_pod_deletions",
            "Operator pods deleted without a report that the operator stopped: their Lease "
            "was left to expire.",
            registry=registry,
        )
        self.waiting = Gauge(
            PREFIX + "namespaces_waiting",
            "Namespaces a tenant owns but cannot be given yet (another tenant's binding is "
            "still there, or its binding cannot be created).",
            registry=registry,
        )
