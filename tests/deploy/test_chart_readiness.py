"""What gates a new tenant's first metric (issue 22, item 1): the metrics server is the router's
upstream only once its pod is Ready, and the operator the metrics server's gRPC peer only once
its pod is Ready (both reached through their Services). KEDA's adapter, refused meanwhile,
backs off 1 s, 1.6 s, 2.6 s, ... so every second the operator's pod turns Ready late can cost
more than a second. The default probes therefore find both Ready within 2 s of it being true,
and take as long as before to find them unready (a KEDA restart must not drop the operator
from its Service)."""

from __future__ import annotations

import pytest

from tests.deploy.charts import Doc, Helm, container, deep_merge, find
from tests.deploy.test_charts import render_tenant, tenant_values

GATING = ("keda-operator", "keda-operator-metrics-apiserver")
READY_WITHIN_S = 2
UNREADY_AFTER_S = 30  # the previous defaults: 3 failures, 10 s apart


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_the_pods_a_first_read_waits_for_are_found_ready_within_two_seconds(
    helm: Helm, router_docs: list[Doc], mode: str
) -> None:
    values = deep_merge(
        tenant_values("label-process", "tenant-a", router_docs), {"reloader": {"mode": mode}}
    )
    docs = render_tenant(helm, values)
    for deployment in GATING:
        probe = container(find(docs, "Deployment", deployment))["readinessProbe"]
        assert probe.get("initialDelaySeconds", 0) == 0, deployment
        assert probe["periodSeconds"] <= READY_WITHIN_S, deployment
        assert probe["periodSeconds"] * probe["failureThreshold"] >= UNREADY_AFTER_S, deployment
