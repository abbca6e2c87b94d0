"""The chart tests' shared fixtures: a real helm, and the router release rendered with defaults."""

from __future__ import annotations

import os

import pytest

from tests.deploy.charts import (
    ROUTER_CHART,
    ROUTER_NAMESPACE,
    ROUTER_RELEASE,
    Doc,
    Helm,
    HelmNotFound,
    find_helm,
)


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"helm is required in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def router_docs(helm: Helm) -> list[Doc]:
    return helm.template(ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE)
