"""Routing rules over the tenant directory: selectors as HPAs send them, fail-closed conflicts,
and decisions that follow ownership changes."""

from __future__ import annotations

import pytest

from router.label_selectors import SelectorError, positive_requirements
from router.paths import MetricRoute
from router.routing import RuleRouter
from router.status import StatusError
from router.upstream_rules import parse_rules
from tenancy_common.names import NamespaceName
from tenancy_common.tenancy import LabelValueRule, TenancyRule
from tests.unit.test_router_tenants import directory, ns


@pytest.mark.parametrize(
    ("selector", "required"),
    [
        ("", {}),
        ("scaledobject.keda.sh/name=web", {"scaledobject.keda.sh/name": "web"}),
        ("scaledobject.keda.sh/name==web", {"scaledobject.keda.sh/name": "web"}),
        ("a in (x),b in (x, y),c", {"a": "x", "b": None, "c": None}),
        ("!a,b!=x,c notin (y),d", {"d": None}),
        (" a = x , b ", {"a": "x", "b": None}),
        ("a=x,a=y", {"a": None}),
    ],
)
def test_positive_requirements(selector: str, required: dict[str, str | None]) -> None:
    assert positive_requirements(selector) == required


@pytest.mark.parametrize("selector", ["a in (x", "a)", "!a=b", "a b", "a=(x)"])
def test_malformed_selectors(selector: str) -> None:
    with pytest.raises(SelectorError):
        positive_requirements(selector)


RULES = parse_rules(
    {
        "upstreams": {"datadog": {"url": "https://datadog.example:8443"}},
        "rules": [
            {
                "name": "not-keda",
                "labelSelector": {"absent": ["scaledobject.keda.sh/name"]},
                "upstream": "datadog",
            }
        ],
    },
    source="test",
)


def route(namespace: str, query: str = "") -> MetricRoute:
    return MetricRoute(NamespaceName(namespace), "s0-x", query)


def test_platform_rules_never_take_a_namespace_several_tenants_claim() -> None:
    rule = TenancyRule((LabelValueRule("a"), LabelValueRule("b")))
    d = directory(rule, ns("both", a="x", b="y"), ns("free"), ns("mine", a="x"))
    router = RuleRouter(d, RULES)
    assert router.backend_for(route("free")).name == "upstream/datadog"
    # tenant x's own share of the platform upstream (its own pool and limit)
    assert router.backend_for(route("mine")).name == "upstream/datadog@x"
    with pytest.raises(StatusError) as caught:
        router.backend_for(route("both"))
    assert caught.value.code == 404
    assert '"both"' in caught.value.message
    assert '"s0-x"' in caught.value.message


def test_decisions_follow_ownership_after_invalidate() -> None:
    tenant_only = parse_rules(
        {
            "upstreams": {"own": {"url": "https://own.example", "tenant": "one"}},
            "rules": [{"name": "own", "tenant": "one", "metricName": "s0-.*", "upstream": "own"}],
        },
        source="test",
    )
    view = {NamespaceName("web"): ns("web", t="one")}
    d = directory(TenancyRule((LabelValueRule("t"),)), *view.values())
    d._namespaces = lambda: view
    router = RuleRouter(d, tenant_only)
    assert router.backend_for(route("web")).name == "upstream/own"
    view[NamespaceName("web")] = ns("web", t="two")
    router.invalidate()
    # tenant one's rule never follows the namespace to tenant two
    assert router.backend_for(route("web")).name == "two"
