"""One real stack per session: two tenants, each with its own KEDA, behind the router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.metric_source import MetricSource
from tests.e2e.stack import Stack, running_stack, wait_for

TENANT_APPS = {"alpha": "alpha-apps", "beta": "beta-apps"}
VALUES = {"alpha": 7, "beta": 42}
SUITE_RELOADER_FLAGS = ("--debounce=1s", "--min-restart-interval=1s", "--grace-period=10s")


@pytest.fixture(autouse=True)
def no_leaked_tasks() -> None:
    """The e2e tests are synchronous; this overrides the async leak check of tests/."""


@pytest.fixture(scope="session")
def sources() -> Iterator[dict[str, MetricSource]]:
    made = {tenant: MetricSource(value) for tenant, value in VALUES.items()}
    yield made
    for source in made.values():
        source.close()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, sources: dict[str, MetricSource]
) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("e2e")
    # The chart's reloader and KEDA flags; only the restart timing is shortened here.
    with running_stack(workdir, SUITE_RELOADER_FLAGS) as stack:
        stack.start_control_plane()
        stack.install_keda_crds()
        for tenant, namespace in TENANT_APPS.items():
            stack.tenant_namespace(tenant, namespace)
            stack.add_tenant(tenant)
        stack.register_apiservice()
        stack.start_router()
        stack.start_hpa_controller()
        wait_for(stack.apiservice_available, "APIService Available", 60)
        for tenant, namespace in TENANT_APPS.items():
            stack.scaled_app(namespace, sources[tenant].url)
        yield stack
        print(f"\ne2e logs: {stack.logs}")
