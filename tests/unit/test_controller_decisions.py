"""The platform controller's pure parts: grants, ownership changes, the work queue."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

import pytest

from controller.objects import (
    CLUSTER_ROLE_ANNOTATION,
    LEASE_ANNOTATION,
    MODE_ANNOTATION,
    REPLICAS_ANNOTATION,
    SERVICE_ACCOUNT_ANNOTATION,
    GrantError,
    parse_grant,
    tenant_of_namespace,
)
from controller.ownership import OwnershipIndex, TrackedNamespaces
from controller.workqueue import WorkQueue
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import HncTreeRule, LabelValueRule, TenancyRule

PATTERN = re.compile("keda-(?P<tenant>[a-z0-9]([-a-z0-9]*[a-z0-9])?)")
TEMPLATE = "keda-tenancy-{tenant}-operator"
GOOD = {
    MODE_ANNOTATION: "process",
    SERVICE_ACCOUNT_ANNOTATION: "keda-operator",
    CLUSTER_ROLE_ANNOTATION: "keda-tenancy-alpha-operator",
    LEASE_ANNOTATION: "alpha.operator.keda-tenancy.io",
}


def grant(**annotations: str | None) -> dict[str, Any]:
    merged = {k: v for k, v in {**GOOD, **annotations}.items() if v is not None}
    return {"metadata": {"name": "g", "namespace": "keda-alpha", "annotations": merged}}


@pytest.mark.parametrize(
    ("namespace", "tenant"),
    [("keda-alpha", "alpha"), ("keda-a-b", "a-b"), ("alpha", None), ("keda-", None)],
)
def test_the_tenant_comes_from_the_namespace_name(namespace: str, tenant: str | None) -> None:
    assert tenant_of_namespace(PATTERN, namespace) == tenant


def test_a_good_grant() -> None:
    parsed = parse_grant(grant(), TenantName("alpha"), cluster_role_template=TEMPLATE)
    assert (parsed.mode, parsed.service_account, parsed.replicas) == ("process", "keda-operator", 1)
    assert parsed.binding_name == "keda-tenancy-operator-alpha"
    assert parsed.lease == "alpha.operator.keda-tenancy.io"


@pytest.mark.parametrize(
    ("annotations", "complaint"),
    [
        ({MODE_ANNOTATION: "bogus"}, "keda-tenancy.io/mode"),
        ({MODE_ANNOTATION: None}, "keda-tenancy.io/mode"),
        ({SERVICE_ACCOUNT_ANNOTATION: "Not_A_Name"}, "operator-service-account"),
        # Another tenant's operator role (which that tenant let the controller bind) or any
        # other: refused before the API server is asked.
        ({CLUSTER_ROLE_ANNOTATION: "keda-tenancy-beta-operator"}, "operator-clusterrole"),
        ({CLUSTER_ROLE_ANNOTATION: "cluster-admin"}, "operator-clusterrole"),
        ({LEASE_ANNOTATION: "Bad Lease"}, "keda-tenancy.io/lease"),
        ({REPLICAS_ANNOTATION: "0"}, "replicas"),
    ],
)
def test_a_bad_grant_says_what_is_wrong(annotations: dict[str, str | None], complaint: str) -> None:
    with pytest.raises(GrantError, match=complaint):
        parse_grant(grant(**annotations), TenantName("alpha"), cluster_role_template=TEMPLATE)


def ns(name: str, terminating: bool = False, **labels: str) -> Namespace:
    return Namespace(NamespaceName(name), MappingProxyType(dict(labels)), terminating)


def test_a_moving_namespace_reports_both_tenants_and_only_them() -> None:
    cache = TrackedNamespaces()
    index = OwnershipIndex(TenancyRule((LabelValueRule("t"),)), cache)
    cache.replace([ns("a1", t="alpha"), ns("b1", t="beta"), ns("c1", t="gamma")])
    assert index.refresh() == {"alpha", "beta", "gamma"}
    assert index.refresh() == set()
    cache.apply("MODIFIED", ns("a1", t="beta"))
    assert index.refresh() == {"alpha", "beta"}
    assert index.namespaces_of(TenantName("beta")) == ({"a1", "b1"}, set())
    assert index.namespaces_of(TenantName("alpha")) == (set(), set())
    cache.apply("MODIFIED", ns("b1", terminating=True, t="beta"))
    assert index.refresh() == {"beta"}
    assert index.namespaces_of(TenantName("beta")) == ({"a1"}, {"b1"})
    cache.apply("MODIFIED", ns("c1", t="gamma", other="label"))
    assert index.refresh() == set()  # nothing the tenant is served by changed
    cache.apply("DELETED", ns("b1"))
    assert index.refresh() == {"beta"}
    assert index.owner(NamespaceName("b1")) is None


def test_a_rule_that_reads_other_namespaces_is_decided_again_for_all() -> None:
    """HNC roots marked by a label: relabelling the root moves its whole tree."""
    cache = TrackedNamespaces()
    rule = TenancyRule((HncTreeRule(root_label_key="tenant-root"),))
    index = OwnershipIndex(rule, cache)
    depth = "team.tree.hnc.x-k8s.io/depth"
    cache.replace([ns("team", **{"tenant-root": "", depth: "0"}), ns("team-a", **{depth: "1"})])
    assert index.refresh() == {"team"}
    assert index.owner(NamespaceName("team-a")) == "team"
    cache.apply("MODIFIED", ns("team", **{depth: "0"}))
    assert index.refresh() == {"team"}
    assert index.owner(NamespaceName("team-a")) is None


async def test_the_queue_coalesces_and_never_runs_a_key_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue(backoff_initial_s=1.0, backoff_max_s=8.0)
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert len(queue) == 2
    assert await queue.get() == "a"
    queue.add("a")  # while held: queued again only once done
    assert len(queue) == 1
    assert await queue.get() == "b"
    queue.done("a")
    assert await queue.get() == "a"
    queue.done("a")
    queue.done("b")
    assert [queue.retry("x") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    queue.forget("x")
    assert queue.retry("x") == 1.0
    queue.shut_down()
    assert await queue.get() is None
