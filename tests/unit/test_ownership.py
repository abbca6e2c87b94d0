"""Issue 20, item 2: the router and the reloaders decide ownership the same way.

(b) no server-side narrowing that hides what the decision reads; (c) a name a pattern can
read as two tenants is a conflict, and tenant names must round-trip, checked at start.
(a), the rule published once, is in tests/integration/test_reloader_published_rule.py and
tests/deploy; the property over random trees is test_ownership_property.py.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reloader.config import ReloaderConfig
from reloader.desired import desired_namespaces
from router.backends import BackendResolver
from router.metrics import RouterMetrics
from router.status import StatusError
from router.tenants import TenantDirectory
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import HncTreeRule, NamePatternRule, TenancyRule, Verdict

ROOT_LABEL = "keda-tenancy.io/tenant-root"
LAZY = "(?P<tenant>[a-z0-9-]+?)--.+"
"""The example the README gave: `a--b--prod` reads as tenant `a` or `a--b`."""
FIRST_SEPARATOR = "(?P<tenant>[a-z0-9]+(-[a-z0-9]+)*)--.+"
"""A tenant name without `--`: the first `--` ends it, one reading per name."""


def hnc(name: str, *ancestors: str, **labels: str) -> Namespace:
    depth = {
        f"{a}.tree.hnc.x-k8s.io/depth": str(i) for i, a in enumerate(reversed((*ancestors, name)))
    }
    return Namespace(NamespaceName(name), {**depth, **labels})


def cache(*namespaces: Namespace) -> dict[NamespaceName, Namespace]:
    return {n.name: n for n in namespaces}


def config(*flags: str) -> ReloaderConfig:
    return ReloaderConfig.from_args([*flags, "--", "/keda"], {})


def router_verdicts(rule: TenancyRule, view: dict[NamespaceName, Namespace]) -> dict[str, str]:
    directory = TenantDirectory(
        rule,
        BackendResolver("https://keda.{tenant}.svc", {}, None),
        lambda: view,
        RouterMetrics(CollectorRegistry()),
    )
    return {name: directory.decide(name).verdict.value for name in view}


# -- (b) the narrowed watch --------------------------------------------------------------

NESTED_LABELLED_ROOTS = cache(
    hnc("a", **{ROOT_LABEL: "true"}),
    hnc("a-dev", "a"),
    hnc("b", "a", **{ROOT_LABEL: "true"}),  # a root inside root a
    hnc("b-dev", "a", "b"),
)


def test_a_root_label_rule_never_narrows_the_watch_to_the_tenants_tree() -> None:
    """Tenant b's tree label would hide root a, which decides that b and b-dev are conflicts."""
    b = config("--tenant=b", f"--hnc-root-label={ROOT_LABEL}")
    assert b.label_selector is None
    assert b.rule is not None
    # What a reloader sees is what its watch asks for: all of it, so it agrees with the router.
    assert desired_namespaces(NESTED_LABELLED_ROOTS, rule=b.rule, tenant=b.tenant).names == ()
    assert router_verdicts(b.rule, NESTED_LABELLED_ROOTS) == {
        "a": "owned",
        "a-dev": "owned",
        "b": "conflict",
        "b-dev": "conflict",
    }


def test_listed_roots_still_narrow_the_watch_where_that_hides_nothing() -> None:
    """With listed roots the candidates read only the namespace's own labels."""
    a = config("--tenant=a", "--hnc-roots=a,b")
    assert a.label_selector == "a.tree.hnc.x-k8s.io/depth"
    assert a.rule is not None
    in_tree = {
        n: ns for n, ns in NESTED_LABELLED_ROOTS.items() if "a.tree.hnc.x-k8s.io/depth" in ns.labels
    }
    assert desired_namespaces(in_tree, rule=a.rule, tenant=a.tenant).names == ("a", "a-dev")


# -- (c) names a pattern reads two ways ------------------------------------------------------


def test_a_name_the_pattern_reads_as_two_tenants_is_a_conflict() -> None:
    rule = TenancyRule((NamePatternRule(re.compile(LAZY)),))
    view = cache(
        Namespace(NamespaceName("a--prod")),
        Namespace(NamespaceName("a--b--prod")),
        Namespace(NamespaceName("a--b")),
    )
    decision = rule.decide(view[NamespaceName("a--b--prod")], view)
    assert decision.verdict is Verdict.CONFLICT
    assert decision.candidates == {"a", "a--b"}
    assert router_verdicts(rule, view) == {
        "a--prod": "owned",
        "a--b--prod": "conflict",
        "a--b": "owned",  # only one reading: tenant a
    }
    # Neither tenant's reloader takes it, and tenant a's sees it as contested.
    desired_a = desired_namespaces(view, rule=rule, tenant=TenantName("a"))
    assert desired_a.names == ("a--b", "a--prod")
    assert NamespaceName("a--b--prod") in desired_a.contested
    assert desired_namespaces(view, rule=rule, tenant=TenantName("a--b")).names == ()


def test_the_router_answers_404_for_an_ambiguous_name() -> None:
    rule = TenancyRule((NamePatternRule(re.compile(LAZY)),))
    view = cache(Namespace(NamespaceName("a--b--prod")))
    directory = TenantDirectory(
        rule,
        BackendResolver("https://keda.{tenant}.svc", {}, None),
        lambda: view,
        RouterMetrics(CollectorRegistry()),
    )
    with pytest.raises(StatusError, match="conflict"):
        directory.backend_for(NamespaceName("a--b--prod"))


@pytest.mark.parametrize(
    ("pattern", "name", "tenants"),
    [
        (LAZY, "x--y--z--w", {"x", "x--y", "x--y--z"}),
        (FIRST_SEPARATOR, "a--b--prod", {"a"}),
        (FIRST_SEPARATOR, "tenant-b--dev", {"tenant-b"}),
        (FIRST_SEPARATOR, "kube-system", set()),
        ("team-(?P<tenant>[a-z]+)(-[a-z]+)?", "team-a-b", {"a"}),
        ("(?P<tenant>[a-z]+)-(?P<env>[a-z]+)", "ab-cd", {"ab"}),
        ("(?P<tenant>[a-z]+|[a-z]+-[a-z]+)(-prod)?", "ab-prod", {"ab", "ab-prod"}),
    ],
)
def test_every_reading_of_a_name_is_a_candidate(pattern: str, name: str, tenants: set[str]) -> None:
    assert NamePatternRule(re.compile(pattern)).parses(name) == tenants


@pytest.mark.parametrize(
    "pattern", [r"(?P<tenant>\w+)\b.*", "(?=a)(?P<tenant>a+)", "(?P<tenant>a)(?!b)"]
)
def test_patterns_the_check_cannot_evaluate_are_refused(pattern: str) -> None:
    with pytest.raises(SystemExit):
        config("--tenant=a", f"--namespace-name-pattern={pattern}")


def test_a_tenant_name_that_does_not_round_trip_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under the one-reading pattern no name ever yields tenant a--b: refuse, saying why."""
    with pytest.raises(SystemExit) as exit_info:
        config("--tenant=a--b", f"--namespace-name-pattern={FIRST_SEPARATOR}")
    assert exit_info.value.code == 2
    assert "round-trip" in capsys.readouterr().err
    assert config("--tenant=a-b", f"--namespace-name-pattern={FIRST_SEPARATOR}").rule is not None


def test_a_tenant_no_rule_can_yield_is_refused() -> None:
    with pytest.raises(SystemExit):
        config("--tenant=c", "--hnc-roots=a,b")  # a typo'd or missing root
    assert config("--tenant=c", "--hnc-roots=a,b", "--tenant-label-key=k").rule is not None


def test_the_routers_tenants_must_round_trip_too(tmp_path: Path) -> None:
    """An upstream override for a tenant the published rule can never yield is a typo."""
    from tenancy_common.tenancy_config import (  # noqa: PLC0415 - new in this change
        ConfigError,
        add_tenancy_flags,
        parse_rule_document,
        tenancy_from_flags,
    )

    (tmp_path / "rule.yaml").write_text("hnc: {roots: [a, b]}\n")
    (tmp_path / "tenancy.yaml").write_text("tenants: {c: {upstream: 'https://c.example'}}\n")
    parser = argparse.ArgumentParser()
    add_tenancy_flags(parser)
    args = parser.parse_args(
        [
            f"--tenancy-rule-file={tmp_path / 'rule.yaml'}",
            f"--tenancy-file={tmp_path / 'tenancy.yaml'}",
        ]
    )
    with pytest.raises(ConfigError, match="HNC roots"):
        tenancy_from_flags(args)
    with pytest.raises(ConfigError, match="round-trip"):
        parse_rule_document(
            {"namespaceNamePattern": FIRST_SEPARATOR, "tenants": {"a--b": {}}}, source="rule"
        )


def test_a_pattern_group_inside_a_class_or_escape_is_found() -> None:
    rule = NamePatternRule(re.compile(r"[(]?x\((?P<tenant>[a-z)]+)\)"))
    assert rule.parses("x(ab)") == {"ab"}
    assert rule.never_yields("ab") is None
    assert HncTreeRule(roots=frozenset({"a"})).never_yields("b") is not None
