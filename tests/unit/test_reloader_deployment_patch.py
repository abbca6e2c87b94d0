"""Deployment mode's patch decision: pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from reloader.deployment import REPLICAS_ANNOTATION, deployment_patch

ENV = "WATCH_NAMESPACE"


def deployment(
    env: list[dict[str, Any]] | None,
    *,
    replicas: int | None = 1,
    annotations: dict[str, str] | None = None,
    container: str = "op",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "sidecar"}, {"name": container, "env": env}]}}
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "metadata": {"name": "keda", "namespace": "ns", "annotations": annotations},
        "spec": spec,
    }


def env_patch(value: str) -> dict[str, Any]:
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "op", "env": [{"name": ENV, "value": value, "valueFrom": None}]}
                    ]
                }
            }
        }
    }


SCALE_DOWN = {"metadata": {"annotations": {REPLICAS_ANNOTATION: "3"}}, "spec": {"replicas": 0}}

CASES: list[tuple[str, dict[str, Any], str | None, dict[str, Any] | None]] = [
    ("already right: no PATCH", deployment([{"name": ENV, "value": "a,b"}]), "a,b", None),
    (
        "a new value",
        deployment([{"name": ENV, "value": "a,b"}, {"name": "KEEP", "value": "1"}]),
        "a",
        env_patch("a"),
    ),
    ("no env yet", deployment(None), "a", env_patch("a")),
    ("the variable missing", deployment([{"name": "OTHER", "value": "x"}]), "a", env_patch("a")),
    (
        "from a ConfigMap: replaced by a value",
        deployment([{"name": ENV, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
        "a",
        env_patch("a"),
    ),
    (
        "empty: scale to zero, remember replicas",
        deployment([{"name": ENV, "value": "a"}], replicas=3),
        None,
        SCALE_DOWN,
    ),
    (
        "empty, replicas unset (1)",
        deployment([{"name": ENV, "value": "a"}], replicas=None),
        None,
        {"metadata": {"annotations": {REPLICAS_ANNOTATION: "1"}}, "spec": {"replicas": 0}},
    ),
    (
        "empty and already at zero",
        deployment([{"name": ENV, "value": "a"}], replicas=0),
        None,
        None,
    ),
    (
        "back from zero with the same value: replicas only",
        deployment(
            [{"name": ENV, "value": "a"}], replicas=0, annotations={REPLICAS_ANNOTATION: "3"}
        ),
        "a",
        {"spec": {"replicas": 3}, "metadata": {"annotations": {REPLICAS_ANNOTATION: None}}},
    ),
    (
        "back from zero with a new value: one PATCH",
        deployment(
            [{"name": ENV, "value": "a"}], replicas=0, annotations={REPLICAS_ANNOTATION: "3"}
        ),
        "b",
        {
            "spec": {**env_patch("b")["spec"], "replicas": 3},
            "metadata": {"annotations": {REPLICAS_ANNOTATION: None}},
        },
    ),
    (
        "a garbled annotation restores one replica",
        deployment(
            [{"name": ENV, "value": "a"}], replicas=0, annotations={REPLICAS_ANNOTATION: "x"}
        ),
        "a",
        {"spec": {"replicas": 1}, "metadata": {"annotations": {REPLICAS_ANNOTATION: None}}},
    ),
    (
        "scaled to zero by someone else: left alone",
        deployment([{"name": ENV, "value": "a"}], replicas=0),
        "a",
        None,
    ),
]


@pytest.mark.parametrize(
    ("current", "value", "patch"), [pytest.param(c, v, p, id=i) for i, c, v, p in CASES]
)
def test_patch(current: dict[str, Any], value: str | None, patch: dict[str, Any] | None) -> None:
    assert deployment_patch(current, container="op", env_name=ENV, value=value) == patch


def test_a_missing_container_is_an_error() -> None:
    with pytest.raises(LookupError, match="ns/keda has no container 'op'"):
        deployment_patch(deployment([], container="other"), container="op", env_name=ENV, value="a")
