"""The tenancy rule decides who owns a namespace; every mode, and failing closed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import (
    HncTreeRule,
    LabelValueRule,
    NamePatternRule,
    StaticRule,
    TenancyRule,
    Verdict,
)
from tenancy_common.tenancy_config import (
    ConfigError,
    TenancyFile,
    add_tenancy_flags,
    tenancy_from_flags,
)


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(NamespaceName(name), labels)


def hnc(name: str, *ancestors: str, **labels: str) -> Namespace:
    depth = {
        f"{a}.tree.hnc.x-k8s.io/depth": str(i) for i, a in enumerate(reversed((*ancestors, name)))
    }
    return Namespace(NamespaceName(name), {**depth, **labels})


def lookup(*namespaces: Namespace) -> dict[NamespaceName, Namespace]:
    return {n.name: n for n in namespaces}


CAPSULE = LabelValueRule("capsule.clastix.io/tenant")
OURS = LabelValueRule("keda-tenancy.io/tenant")
PFN = NamePatternRule(re.compile(r"(?P<tenant>[a-z0-9]([-a-z0-9]*[a-z0-9])?)--.+"))


@pytest.mark.parametrize(
    ("rules", "namespace", "verdict", "tenant"),
    [
        ((CAPSULE,), ns("a1", **{"capsule.clastix.io/tenant": "alpha"}), Verdict.OWNED, "alpha"),
        ((CAPSULE,), ns("a1", other="alpha"), Verdict.UNMAPPED, None),
        ((CAPSULE,), ns("a1", **{"capsule.clastix.io/tenant": ""}), Verdict.UNMAPPED, None),
        # A tenant name is spliced into a URL: a value with dots would change the host.
        (
            (CAPSULE,),
            ns("a1", **{"capsule.clastix.io/tenant": "evil.example.com"}),
            Verdict.INVALID_TENANT,
            None,
        ),
        ((PFN,), ns("tenant-b--dev"), Verdict.OWNED, "tenant-b"),
        ((PFN,), ns("tenant-b"), Verdict.UNMAPPED, None),
        ((PFN,), ns("tenant-b--"), Verdict.UNMAPPED, None),
        # Two rules that agree are fine; two that disagree own nothing.
        (
            (CAPSULE, OURS),
            ns("x", **{"capsule.clastix.io/tenant": "a", "keda-tenancy.io/tenant": "a"}),
            Verdict.OWNED,
            "a",
        ),
        (
            (CAPSULE, OURS),
            ns("x", **{"capsule.clastix.io/tenant": "a", "keda-tenancy.io/tenant": "b"}),
            Verdict.CONFLICT,
            None,
        ),
        ((PFN, OURS), ns("a--x", **{"keda-tenancy.io/tenant": "b"}), Verdict.CONFLICT, None),
        (
            (StaticRule.from_lists({"a": ["shared"], "b": ["shared"]}),),
            ns("shared"),
            Verdict.CONFLICT,
            None,
        ),
        ((StaticRule.from_lists({"a": ["one"], "b": ["two"]}),), ns("two"), Verdict.OWNED, "b"),
    ],
)
def test_decide(
    rules: tuple[object, ...], namespace: Namespace, verdict: Verdict, tenant: str | None
) -> None:
    decision = TenancyRule(rules).decide(namespace, {})  # type: ignore[arg-type]
    assert decision.verdict is verdict
    assert decision.tenant == tenant


def test_hnc_listed_roots() -> None:
    rule = TenancyRule((HncTreeRule(roots=frozenset({"org-a", "org-b"})),))
    child = hnc("team-x", "org-a")
    grandchild = hnc("team-x-dev", "org-a", "team-x")
    root = hnc("org-a")
    assert rule.decide(child, {}).tenant == "org-a"
    assert rule.decide(grandchild, {}).tenant == "org-a"
    assert rule.decide(root, {}).tenant == "org-a"
    assert rule.decide(hnc("stray", "elsewhere"), {}).verdict is Verdict.UNMAPPED


def test_hnc_roots_marked_by_label_need_the_root_object() -> None:
    rule = TenancyRule(
        (HncTreeRule(root_label_key="keda-tenancy.io/root", root_label_value="true"),)
    )
    root = hnc("org-a", **{"keda-tenancy.io/root": "true"})
    child = hnc("team-x", "org-a")
    assert rule.decide(child, lookup(root, child)).tenant == "org-a"
    # Without the root in the cache, or with the wrong value, nobody owns it.
    assert rule.decide(child, lookup(child)).verdict is Verdict.UNMAPPED
    wrong = hnc("org-a", **{"keda-tenancy.io/root": "false"})
    assert rule.decide(child, lookup(wrong, child)).verdict is Verdict.UNMAPPED


def test_hnc_nested_roots_fail_closed() -> None:
    rule = TenancyRule((HncTreeRule(roots=frozenset({"org-a", "team-x"})),))
    decision = rule.decide(hnc("team-x-dev", "org-a", "team-x"), {})
    assert decision.verdict is Verdict.CONFLICT
    assert decision.candidates == {"org-a", "team-x"}


def test_label_selectors_for_one_tenant() -> None:
    tenant = TenantName("alpha")
    assert TenancyRule((CAPSULE,)).label_selector(tenant) == "capsule.clastix.io/tenant=alpha"
    assert TenancyRule((HncTreeRule(roots=frozenset({"alpha"})),)).label_selector(tenant) == (
        "alpha.tree.hnc.x-k8s.io/depth"
    )
    assert TenancyRule((PFN,)).label_selector(tenant) is None
    assert TenancyRule((CAPSULE, OURS)).label_selector(tenant) is None


def test_namespace_from_api_object() -> None:
    obj = {
        "metadata": {
            "name": "a",
            "labels": {"k": "v"},
            "resourceVersion": "7",
            "deletionTimestamp": "x",
        },
        "status": {"phase": "Active"},
    }
    namespace = Namespace.from_object(obj)
    assert (
        namespace.name,
        dict(namespace.labels),
        namespace.terminating,
        namespace.resource_version,
    ) == (
        "a",
        {"k": "v"},
        True,
        "7",
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tenancy_flags(parser)
    return parser.parse_args(argv)


def test_flags_build_rules(tmp_path: Path) -> None:
    path = tmp_path / "tenancy.yaml"
    path.write_text(
        "tenants:\n  alpha:\n    namespaces: [static-ns]\n    upstream: https://a.example:8443\n  beta: {}\n"
    )
    rule, tenancy_file = tenancy_from_flags(
        parse(
            [
                "--tenant-label-key",
                "keda-tenancy.io/tenant",
                "--namespace-name-pattern",
                r"(?P<tenant>[a-z]+)--.*",
                "--tenancy-file",
                str(path),
            ]
        )
    )
    assert rule.decide(ns("static-ns"), {}).tenant == "alpha"
    assert rule.decide(ns("beta--x"), {}).tenant == "beta"
    assert tenancy_file.tenants[TenantName("alpha")].upstream == "https://a.example:8443"
    assert rule.needs_cluster


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no tenancy rule"),
        (["--namespace-name-pattern", "([a-z]+)--"], "tenant"),
        (["--namespace-name-pattern", "(?P<tenant>"], "--namespace-name-pattern"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        tenancy_from_flags(parse(argv))


@pytest.mark.parametrize(
    "raw",
    [
        {"tenants": {"Bad_Name": {}}},
        {"tenants": {"a": {"namespaces": ["UPPER"]}}},
        {"tenants": {"a": {"upstrem": "typo"}}},
        {"tenants": ["a"]},
    ],
)
def test_bad_tenancy_file_is_refused(raw: object) -> None:
    with pytest.raises(ConfigError):
        TenancyFile.parse(raw)
