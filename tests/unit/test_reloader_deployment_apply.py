"""Deployment mode's server-side apply decision: pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from tenancy_common.deployment_apply import apply_configuration

ENV = "WATCH_NAMESPACE"


def deployment(
    env: list[dict[str, Any]] | None, *, replicas: int | None = 2, container: str = "op"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "sidecar"}, {"name": container, "env": env}]}}
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"metadata": {"name": "keda", "namespace": "ns"}, "spec": spec}


def owned(replicas: int, value: str | None) -> dict[str, Any]:
    """What the reloader applies: only its two fields, nothing of anyone else's."""
    spec: dict[str, Any] = {"replicas": replicas}
    if value is not None:
        env = [{"name": ENV, "value": value}]
        spec["template"] = {"spec": {"containers": [{"name": "op", "env": env}]}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "keda", "namespace": "ns"},
        "spec": spec,
    }


CASES: list[tuple[str, dict[str, Any], str | None, dict[str, Any] | None]] = [
    ("already right: nothing sent", deployment([{"name": ENV, "value": "a,b"}]), "a,b", None),
    (
        "a new value",
        deployment([{"name": ENV, "value": "a,b"}, {"name": "KEEP", "value": "1"}]),
        "a",
        owned(2, "a"),
    ),
    (
        "as the chart installs it: no env, replicas defaulted",
        deployment(None, replicas=None),
        "a",
        owned(2, "a"),
    ),
    ("the variable missing", deployment([{"name": "OTHER", "value": "x"}]), "a", owned(2, "a")),
    ("replicas drifted", deployment([{"name": ENV, "value": "a"}], replicas=5), "a", owned(2, "a")),
    (
        "empty: scale to zero, the old value kept (unused)",
        deployment([{"name": ENV, "value": "a"}], replicas=3),
        None,
        owned(0, "a"),
    ),
    ("empty, never had a value", deployment(None, replicas=1), None, owned(0, None)),
    (
        "empty and already at zero",
        deployment([{"name": ENV, "value": "a"}], replicas=0),
        None,
        None,
    ),
    (
        "back from zero with the same value: replicas only change",
        deployment([{"name": ENV, "value": "a"}], replicas=0),
        "a",
        owned(2, "a"),
    ),
    (
        "back from zero with a new value: one apply",
        deployment([{"name": ENV, "value": "a"}], replicas=0),
        "b",
        owned(2, "b"),
    ),
]


@pytest.mark.parametrize(
    ("current", "value", "expected"), [pytest.param(c, v, e, id=i) for i, c, v, e in CASES]
)
def test_apply(current: dict[str, Any], value: str | None, expected: dict[str, Any] | None) -> None:
    got = apply_configuration(current, container="op", env_name=ENV, value=value, replicas=2)
    assert got == expected


def test_a_missing_container_is_an_error() -> None:
    with pytest.raises(LookupError, match="ns/keda has no container 'op'"):
        apply_configuration(
            deployment([], container="other"), container="op", env_name=ENV, value="a", replicas=1
        )


def test_a_value_from_someone_else_is_an_error_not_a_fight() -> None:
    current = deployment(
        [{"name": ENV, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    )
    with pytest.raises(ValueError, match="valueFrom"):
        apply_configuration(current, container="op", env_name=ENV, value="a", replicas=1)
