"""keda-tenancy-certs serves a new tenant namespace when the namespace watch brings it, not at
its next full pass (issue 21): here the full pass runs once an hour, so each certificate below
was issued on the watch. Against the fake API server (list + watch with resourceVersions and
bookmarks, Secrets only where granted)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.certs.bootstrap import CertsConfig, run
from tests.fakes.cert_objects_api import CertObjectsAPI
from tests.integration.test_certs_controller import (
    SYSTEM,
    TENANT_SECRETS,
    assert_tenant_served,
    errors,
)
from tests.unit.test_certs import SPEC


@pytest.fixture
async def fake_api() -> AsyncIterator[CertObjectsAPI]:
    api = CertObjectsAPI(
        granted={SYSTEM, "keda-alpha"},
        namespaces=["default", SYSTEM, "keda-alpha"],
        apiservices={"v1beta1.external.metrics.k8s.io": {"metadata": {}, "spec": {}}},
    )
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def running(
    fake_api: CertObjectsAPI, tmp_path: Path
) -> AsyncIterator[
    tuple[CertObjectsAPI, CollectorRegistry, Callable[[Callable[[], bool]], object]]
]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(fake_api.kubeconfig()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    config = CertsConfig.from_args(
        [
            f"--spec-file={spec}",
            f"--kubeconfig={kubeconfig}",
            "--resync-interval=1h",  # no full pass during the test but the first
            "--retry-initial=10ms",
            "--retry-max=40ms",
            "--health-bind-address=127.0.0.1",
            "--health-port=0",
        ],
        {},
    )
    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(run(config, stop, registry))

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not check():
                assert not task.done(), task
                await asyncio.sleep(0.02)

    await until(lambda: made(fake_api, "keda-alpha"))  # the first full pass
    yield fake_api, registry, until
    assert not task.done()
    stop.set()
    async with asyncio.timeout(5):
        await task


def made(api: CertObjectsAPI, namespace: str) -> bool:
    return all(("secrets", namespace, n) in api.objects for n in TENANT_SECRETS)


async def test_a_new_tenant_namespace_gets_its_certificates_from_the_watch(
    running: tuple[CertObjectsAPI, CollectorRegistry, Callable[..., object]],
) -> None:
    api, registry, until = running
    api.granted.add("keda-delta")
    api.namespace_store.create("keda-delta")
    await until(lambda: made(api, "keda-delta"))  # type: ignore[misc]
    assert_tenant_served(api, "keda-delta")
    # The tenants gauge counts it now, not at the next full pass (an hour away here); it is
    # set once the namespace's last object is written, so wait for it.
    await until(lambda: registry.get_sample_value("keda_tenancy_certs_tenants") == 2)  # type: ignore[misc]
    # A namespace outside the pattern is none of its business.
    api.namespace_store.create("apps")
    await asyncio.sleep(0.2)
    assert not any(ns == "apps" for _, ns, _ in api.objects)


async def test_a_namespace_whose_grant_comes_after_it_is_served_when_the_grant_lands(
    running: tuple[CertObjectsAPI, CollectorRegistry, Callable[..., object]],
) -> None:
    """`kubectl create namespace`, then `helm install`: the grant (a Role there) comes later."""
    api, registry, until = running
    api.namespace_store.create("keda-epsilon")
    await asyncio.sleep(0.3)  # seen and refused (403): no grant yet
    assert not made(api, "keda-epsilon")
    api.granted.add("keda-epsilon")
    await until(lambda: made(api, "keda-epsilon"))  # type: ignore[misc]
    assert_tenant_served(api, "keda-epsilon")
    # Not granted is no failure: no error counted, no Event.
    assert errors(registry, "keda-epsilon", "forbidden") == 0
    assert api.events_in("keda-epsilon") == []


async def test_a_new_namespace_failing_stays_with_it_and_recovers(
    running: tuple[CertObjectsAPI, CollectorRegistry, Callable[..., object]],
) -> None:
    api, registry, until = running
    api.granted |= {"keda-zeta", "keda-eta"}
    api.failures[("POST", "keda-zeta", "*")] = (500, "InternalError")
    api.namespace_store.create("keda-zeta")
    api.namespace_store.create("keda-eta")
    await until(lambda: made(api, "keda-eta"))  # type: ignore[misc]
    await until(lambda: errors(registry, "keda-zeta", "api-error") >= 2)  # type: ignore[misc]
    assert not made(api, "keda-zeta")
    del api.failures[("POST", "keda-zeta", "*")]
    await until(lambda: made(api, "keda-zeta"))  # type: ignore[misc]  # its own retry


async def test_a_namespace_deleted_while_failing_is_forgotten(
    running: tuple[CertObjectsAPI, CollectorRegistry, Callable[..., object]],
) -> None:
    api, registry, until = running
    api.granted.add("keda-theta")
    api.failures[("POST", "keda-theta", "*")] = (500, "InternalError")
    api.namespace_store.create("keda-theta")
    await until(lambda: errors(registry, "keda-theta", "api-error") >= 1)  # type: ignore[misc]
    api.namespace_store.finalize("keda-theta")

    def forgotten() -> bool:
        return (
            registry.get_sample_value("keda_tenancy_certs_failing_namespaces") == 0
            and errors(registry, "keda-theta", "api-error") == 0
        )

    await until(forgotten)  # type: ignore[misc]
    # Gone: no longer counted among the tenants (the first pass's keda-alpha still is).
    assert registry.get_sample_value("keda_tenancy_certs_tenants") == 1
