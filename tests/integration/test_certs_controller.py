"""keda-tenancy-certs against a fake API server on loopback (real kubernetes-asyncio, real HTTP):
what it creates the first time, that a second pass writes nothing, that renewal reissues the
leaves and keeps the CAs, and that it never touches a namespace that did not grant it."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from router.certs_bootstrap import (
    FIELD_MANAGER,
    CertsConfig,
    CertsController,
    CertsMetrics,
    Spec,
    run,
)
from tenancy_common.kube import make_api_client
from tests.fakes.cert_objects_api import CertObjectsAPI
from tests.unit.test_certs import SPEC

START = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
async def fake_api() -> AsyncIterator[CertObjectsAPI]:
    api = CertObjectsAPI(
        granted={"keda-tenancy-system", "keda-alpha"},
        namespaces=["default", "keda-tenancy-system", "keda-alpha", "keda-beta", "alpha-apps"],
        apiservices={"v1beta1.external.metrics.k8s.io": {"metadata": {}, "spec": {}}},
        webhooks={
            "keda-tenancy-alpha-admission": {
                "webhooks": [{"name": "a", "clientConfig": {}}, {"name": "b", "clientConfig": {}}]
            }
        },
    )
    await api.start()
    yield api
    await api.stop()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
async def controller(
    fake_api: CertObjectsAPI, tmp_path: Path
) -> AsyncIterator[tuple[CertsController, Clock, CollectorRegistry]]:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(fake_api.kubeconfig()))
    clock = Clock()
    registry = CollectorRegistry()
    async with await make_api_client(str(path)) as api:
        yield CertsController(api, Spec.parse(SPEC), CertsMetrics(registry), clock), clock, registry


def pem(data: dict[str, str], key: str) -> bytes:
    return base64.b64decode(data[key])


def cert(data: dict[str, str], key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem(data, key))


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


Controller = tuple[CertsController, Clock, CollectorRegistry]


async def test_first_pass_makes_every_certificate_where_it_belongs(
    fake_api: CertObjectsAPI, controller: Controller
) -> None:
    certs, _, registry = controller
    await certs.reconcile()

    def data(namespace: str, name: str) -> dict[str, str]:
        return fake_api.data("secrets", namespace, name)

    system = "keda-tenancy-system"
    cas = {name: cert(data(system, f"r-{name}-ca")) for name in ("apiservice", "client", "tenant")}
    assert len({c.public_bytes(serialization.Encoding.DER) for c in cas.values()}) == 3
    serving = data(system, "r-serving-tls")
    assert issued_by(cert(serving), cas["apiservice"])
    assert not issued_by(cert(serving), cas["client"])
    assert pem(serving, "ca.crt") == pem(data(system, "r-apiservice-ca"), "tls.crt")
    # The APIService's caBundle, by server-side apply with our field manager.
    bundle = fake_api.apiservices["v1beta1.external.metrics.k8s.io"]["spec"]["caBundle"]
    assert base64.b64decode(bundle) == pem(data(system, "r-apiservice-ca"), "tls.crt")
    assert fake_api.applies[0] == (
        "v1beta1.external.metrics.k8s.io",
        "application/apply-patch+yaml",
        FIELD_MANAGER,
        True,
    )
    # Public certificates only in the trust ConfigMap.
    trust = fake_api.data("configmaps", system, "r-trust")
    assert trust == {"client-ca.crt": pem(data(system, "r-client-ca"), "tls.crt").decode()}
    # The granted tenant: its own internal CA, a serving certificate for its name only, the
    # client CA's public certificate, and its webhook caBundle.
    internal = data("keda-alpha", "internal-ca")
    assert cert(internal).subject.rfc4514_string() == "CN=alpha internal CA"
    metrics = data("keda-alpha", "keda-metrics-apiserver-tls")
    assert issued_by(cert(metrics), cas["tenant"])
    names = cert(metrics).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["m.keda-alpha.svc"]
    assert pem(metrics, "client-ca.crt") == pem(data(system, "r-client-ca"), "tls.crt")
    assert set(metrics) == {"tls.crt", "tls.key", "client-ca.crt"}
    keda = data("keda-alpha", "kedaorg-certs")
    assert issued_by(cert(keda), cert(internal))
    assert pem(keda, "ca.crt") == pem(internal, "tls.crt")
    hooks = fake_api.webhooks["keda-tenancy-alpha-admission"]["webhooks"]
    assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks} == {
        pem(internal, "tls.crt")
    }
    # keda-beta did not grant it (403): nothing written there; its own namespace is no tenant.
    assert not [k for k in fake_api.objects if k[1] in ("keda-beta", "alpha-apps", "default")]
    assert not [k for k in fake_api.objects if k[2] == "internal-ca" and k[1] == system]
    assert registry.get_sample_value("keda_tenancy_certs_tenants") == 1
    assert (
        registry.get_sample_value(
            "keda_tenancy_certs_certificate_expiry_timestamp_seconds",
            {"secret_namespace": "keda-alpha", "secret": "keda-metrics-apiserver-tls"},
        )
        == (START + datetime.timedelta(days=2)).timestamp()
    )
    assert certs.last_error is None


async def test_a_second_pass_writes_nothing(
    fake_api: CertObjectsAPI, controller: Controller
) -> None:
    certs, _, _ = controller
    await certs.reconcile()
    writes, applies = sum(fake_api.writes.values()), len(fake_api.applies)
    await certs.reconcile()
    assert sum(fake_api.writes.values()) == writes
    assert len(fake_api.applies) == applies


async def test_renewal_reissues_leaves_ahead_of_expiry_and_keeps_every_ca(
    fake_api: CertObjectsAPI, controller: Controller
) -> None:
    certs, clock, registry = controller
    await certs.reconcile()
    before = {k: v["metadata"]["resourceVersion"] for k, v in fake_api.objects.items()}
    # The tenant serving certificate lasts 48h and renews 24h ahead; the others 90d / 45d.
    clock.now = START + datetime.timedelta(hours=25)
    await certs.reconcile()
    changed = {
        k for k, v in fake_api.objects.items() if v["metadata"]["resourceVersion"] != before[k]
    }
    assert changed == {("secrets", "keda-alpha", "keda-metrics-apiserver-tls")}
    renewed = fake_api.data("secrets", "keda-alpha", "keda-metrics-apiserver-tls")
    assert cert(renewed).not_valid_after_utc == clock.now + datetime.timedelta(days=2)
    assert (
        registry.get_sample_value("keda_tenancy_certs_issued_total", {"reason": "renewal-due"}) == 1
    )
    clock.now = START + datetime.timedelta(days=46)
    await certs.reconcile()
    changed = {
        k for k, v in fake_api.objects.items() if v["metadata"]["resourceVersion"] != before[k]
    }
    assert changed == {
        ("secrets", "keda-tenancy-system", "r-serving-tls"),
        ("secrets", "keda-alpha", "keda-metrics-apiserver-tls"),
        ("secrets", "keda-alpha", "kedaorg-certs"),
    }
    # Nothing trusted changed: no new caBundle, no new trust ConfigMap.
    assert len(fake_api.applies) == 2  # the APIService and the webhook, once each


async def test_a_concurrent_writer_is_a_conflict_and_the_next_pass_converges(
    fake_api: CertObjectsAPI, controller: Controller
) -> None:
    certs, clock, _ = controller
    await certs.reconcile()
    clock.now = START + datetime.timedelta(days=46)
    # Someone else replaced the serving Secret after we read it: our stale replace is a 409.
    key = ("secrets", "keda-tenancy-system", "r-serving-tls")
    fake_api.conflict_next.add("r-serving-tls")
    with pytest.raises(ApiException) as raised:
        await certs.reconcile()
    assert raised.value.status == 409
    await certs.reconcile()
    assert cert(fake_api.data(*key)).not_valid_after_utc > START + datetime.timedelta(days=90)


async def test_the_loop_resyncs_heals_a_deleted_ca_and_stops_on_request(
    fake_api: CertObjectsAPI, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(fake_api.kubeconfig()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    config = CertsConfig.from_args(
        [
            f"--spec-file={spec}",
            f"--kubeconfig={kubeconfig}",
            "--resync-interval=50ms",
            "--health-bind-address=127.0.0.1",
            "--health-port=0",
        ],
        {},
    )
    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(run(config, stop, registry))
    serving = ("secrets", "keda-tenancy-system", "r-serving-tls")

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                await asyncio.sleep(0.02)

    await until(lambda: serving in fake_api.objects)
    old_leaf = fake_api.data(*serving)["tls.crt"]
    # Someone deletes the APIService CA: the next pass makes a new one, reissues the leaf from
    # it and points the caBundle at it.
    del fake_api.objects[("secrets", "keda-tenancy-system", "r-apiservice-ca")]
    await until(lambda: fake_api.data(*serving)["tls.crt"] != old_leaf)
    new_ca = fake_api.data("secrets", "keda-tenancy-system", "r-apiservice-ca")["tls.crt"]
    await until(
        lambda: (
            fake_api.apiservices["v1beta1.external.metrics.k8s.io"]["spec"]["caBundle"] == new_ca
        )
    )
    assert issued_by(cert(fake_api.data(*serving)), cert({"tls.crt": new_ca}))
    assert (
        registry.get_sample_value("keda_tenancy_certs_issued_total", {"reason": "other-authority"})
        == 1
    )
    stop.set()
    async with asyncio.timeout(5):
        await task
