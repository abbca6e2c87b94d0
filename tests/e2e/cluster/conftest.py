"""One cluster per session, with the router and two tenant charts installed; always torn down."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.charts import versions
from tests.e2e.cluster.cluster import Cluster, host_network, running_cluster
from tests.e2e.cluster.install import Installed
from tests.e2e.cluster.network import SYSCTLS, HostNetwork, read_sysctl
from tests.e2e.images.build import Builder, Images
from tests.e2e.stack import build_binaries


@pytest.fixture(scope="session")
def images() -> Images:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the kubelet-backed cluster needs root, and CI must run it")
        pytest.skip("the kubelet-backed cluster needs root")
    return Builder(build_binaries(), versions()["KEDA_VERSION"]).all()


@pytest.fixture(scope="session")
def cluster(images: Images) -> Iterator[Cluster]:
    # A run that died (a CI job killed mid-suite) left its sysctls set: the machine's own
    # values are the ones it saved, which this teardown must put back.
    machine = host_network().machine_sysctls()
    with running_cluster(build_binaries(), images) as cluster:
        yield cluster
        print(f"\ncluster logs: {cluster.logs}")
    # The teardown put the machine back: an error here fails the session.
    assert HostNetwork.leftovers() == []
    assert {name: read_sysctl(name) for name in SYSCTLS} == machine
    mounts = Path("/proc/self/mounts").read_text()
    assert f" {cluster.dir}/" not in mounts
    assert sorted(p.name for p in cluster.dir.iterdir()) == ["logs"]


@pytest.fixture(scope="session")
def installed(cluster: Cluster, images: Images) -> Installed:
    installed = Installed(cluster, images)
    installed.everything()
    return installed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_migration starts from a cluster without the router (a shared KEDA owns the
    APIService), so it runs before `installed` installs one; it removes what it installed."""
    first = [
        i
        for i in items
        if getattr(i, "module", None) and i.module.__name__.endswith(".test_migration")
    ]
    items[:] = first + [i for i in items if i not in first]
