"""Active health against the real KEDA (issue 24, item 4; KEDA issue #8211): a tenant whose
metrics server stays up while its operator is gone is found by the router's probe and failed
fast, the other tenant untouched, and served again once its operator is back."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, wait_for
from tests.e2e.test_stack import metric_path, metric_value, settled
from tests.e2e.test_third_party_adapter import restart_router

pytestmark = pytest.mark.e2e

PROBE_FLAGS = ("--health-probe-interval=1s", "--health-probe-timeout=500ms")


def backend_healthy(stack: Stack, tenant: str) -> str | None:
    url = f"http://127.0.0.1:{stack.router_health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = f'keda_tenancy_router_backend_healthy{{tenant="{tenant}"}} '
    return next(
        (line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)), None
    )


@pytest.fixture(scope="module")
def probing(stack: Stack) -> Iterator[None]:
    # What the router chart grants the probe's identity (router.healthProbes.grantMetricRead).
    stack.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "keda-tenancy-router-health-probe"},
            "rules": [
                {
                    "apiGroups": ["external.metrics.k8s.io"],
                    "resources": ["keda-tenancy-health-probe"],
                    "verbs": ["get", "list"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "keda-tenancy-router-health-probe"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "keda-tenancy-router-health-probe",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "keda-tenancy:health-probe",
                }
            ],
        },
    )
    restart_router(stack, *PROBE_FLAGS)
    try:
        yield
    finally:
        restart_router(stack)


def test_a_keda_that_lost_its_operator_fails_fast_and_comes_back(
    stack: Stack, probing: None
) -> None:
    settled(stack)
    settled(stack, "beta-apps", "42")
    wait_for(lambda: backend_healthy(stack, "alpha") == "1.0", "alpha probed healthy", 60)
    alpha = stack.tenants["alpha"]
    assert alpha.operator is not None
    assert alpha.adapter is not None
    alpha.operator.stop()  # KEDA's metrics server keeps running, and Ready
    try:
        wait_for(lambda: backend_healthy(stack, "alpha") == "0.0", "alpha found unhealthy", 60)
        assert alpha.adapter.running
        code, body = stack.get_raw(metric_path("alpha-apps"))
        assert code == 503, body
        assert "health probe" in body["message"]
        assert metric_value(stack, "beta-apps") == "42"
        assert backend_healthy(stack, "beta") == "1.0"
    finally:
        stack.start_operator(alpha, *stack.reloader_flags)
    wait_for(lambda: backend_healthy(stack, "alpha") == "1.0", "alpha healthy again", 120)
    wait_for(lambda: metric_value(stack, "alpha-apps") == "7", "alpha served again", 90, 1)
