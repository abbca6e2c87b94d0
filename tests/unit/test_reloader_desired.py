"""The desired namespace set, its diff and the env size limit: pure, table-driven."""

from __future__ import annotations

import re

import pytest

from reloader.desired import (
    MAX_ENV_STRING_BYTES,
    Desired,
    EnvTooLargeError,
    changes,
    check_env_size,
    desired_namespaces,
    env_string_bytes,
    moved_away,
)
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import (
    HncTreeRule,
    LabelValueRule,
    NamePatternRule,
    TenancyRule,
)

T = "keda-tenancy.io/tenant"
CAPSULE = "capsule.clastix.io/tenant"


def ns(name: str, *, terminating: bool = False, **labels: str) -> Namespace:
    return Namespace(NamespaceName(name), labels, terminating)


def labelled(
    name: str, tenant: str | None, *, key: str = T, terminating: bool = False
) -> Namespace:
    return Namespace(NamespaceName(name), {key: tenant} if tenant else {}, terminating)


LABEL = TenancyRule((LabelValueRule(T),))
TWO_LABELS = TenancyRule((LabelValueRule(T), LabelValueRule(CAPSULE)))
PATTERN = TenancyRule((NamePatternRule(re.compile(r"(?P<tenant>[a-z0-9]+?)--.+")),))
HNC = TenancyRule((HncTreeRule(roots=frozenset({"alpha"})),))

CASES = [
    pytest.param(
        LABEL,
        [
            labelled("b", "alpha"),
            labelled("a", "alpha"),
            labelled("c", "beta"),
            labelled("d", None),
        ],
        ("a", "b"),
        {"c"},
        id="label value: sorted, other tenants contested, unlabelled ignored",
    ),
    pytest.param(
        LABEL,
        [labelled("a", "alpha"), labelled("gone", "alpha", terminating=True)],
        ("a", "gone"),
        set(),
        id="terminating namespaces stay",
    ),
    pytest.param(
        LABEL,
        [labelled("Bad_Name", "alpha"), labelled("", "alpha"), labelled("ok", "alpha")],
        ("ok",),
        set(),
        id="invalid and empty names dropped",
    ),
    pytest.param(
        TWO_LABELS,
        [
            Namespace(NamespaceName("both"), {T: "alpha", CAPSULE: "beta"}),
            Namespace(NamespaceName("agree"), {T: "alpha", CAPSULE: "alpha"}),
            Namespace(NamespaceName("capsule"), {CAPSULE: "alpha"}),
        ],
        ("agree", "capsule"),
        {"both"},
        id="conflicting rules: nobody's, and contested",
    ),
    pytest.param(
        PATTERN,
        [ns("alpha--dev"), ns("alpha--prod"), ns("beta--dev"), ns("alpha")],
        ("alpha--dev", "alpha--prod"),
        {"beta--dev"},
        id="name pattern",
    ),
    pytest.param(
        HNC,
        [
            Namespace(NamespaceName("alpha"), {"alpha.tree.hnc.x-k8s.io/depth": "0"}),
            Namespace(
                NamespaceName("team"),
                {"alpha.tree.hnc.x-k8s.io/depth": "1", "team.tree.hnc.x-k8s.io/depth": "0"},
            ),
            Namespace(NamespaceName("other"), {"other.tree.hnc.x-k8s.io/depth": "0"}),
        ],
        ("alpha", "team"),
        set(),
        id="hnc tree",
    ),
    pytest.param(LABEL, [], (), set(), id="nothing"),
]


@pytest.mark.parametrize(("rule", "namespaces", "names", "contested"), CASES)
def test_desired_for_a_tenant(
    rule: TenancyRule, namespaces: list[Namespace], names: tuple[str, ...], contested: set[str]
) -> None:
    cache = {n.name: n for n in namespaces}
    desired = desired_namespaces(cache, rule=rule, tenant=TenantName("alpha"))
    assert desired.names == names
    assert desired.contested == contested
    assert desired.value == ",".join(names)


def test_raw_selector_takes_every_selected_namespace() -> None:
    cache = {n.name: n for n in (ns("b"), ns("a"), ns("Not-Valid"), labelled("c", "beta"))}
    assert desired_namespaces(cache, rule=None, tenant=None) == Desired(
        (NamespaceName("a"), NamespaceName("b"), NamespaceName("c"))
    )


def test_an_empty_set_has_an_empty_value() -> None:
    assert Desired().value == ""


@pytest.mark.parametrize(
    ("old", "new", "added", "removed"),
    [
        (None, "a,b", ["a", "b"], []),
        ("", "a", ["a"], []),
        ("a,b", "b,c", ["c"], ["a"]),
        ("a", "", [], ["a"]),
        ("a,b", "a,b", [], []),
    ],
)
def test_changes_for_the_log(
    old: str | None, new: str, added: list[str], removed: list[str]
) -> None:
    assert changes(old, new) == (added, removed)


@pytest.mark.parametrize(
    ("running", "contested", "moved"),
    [
        ("a,b", {"b"}, ["b"]),
        ("a,b", {"c"}, []),
        (None, {"b"}, []),
        ("", {"b"}, []),
    ],
)
def test_moved_away(running: str | None, contested: set[str], moved: list[str]) -> None:
    desired = Desired((NamespaceName("a"),), frozenset(NamespaceName(n) for n in contested))
    assert moved_away(running, desired) == moved


NAME = "WATCH_NAMESPACE"
ROOM = MAX_ENV_STRING_BYTES - len(NAME) - 2  # "NAME=" and the NUL


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        ("a", True),
        ("x" * ROOM, True),
        ("x" * (ROOM + 1), False),
        ("é" * (ROOM // 2), True),  # bytes count, not characters
        ("é" * (ROOM // 2 + 1), False),
    ],
)
def test_env_size_limit(value: str, fits: bool) -> None:
    assert (env_string_bytes(NAME, value) <= MAX_ENV_STRING_BYTES) is fits
    if fits:
        check_env_size(NAME, value)
    else:
        with pytest.raises(EnvTooLargeError, match="over the 131072-byte limit"):
            check_env_size(NAME, value)
