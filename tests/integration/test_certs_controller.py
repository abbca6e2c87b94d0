"""keda-tenancy-certs against a fake API server on loopback (real kubernetes-asyncio, real HTTP):
what it creates the first time, that a second pass writes nothing, that renewal reissues the
leaves and keeps the CAs, and that it never touches a namespace that did not grant it."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from controller.certs.bootstrap import (
    FIELD_MANAGER,
    CertsConfig,
    CertsController,
    CertsFailedError,
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
    await certs.reconcile()
    assert certs.last_error is not None
    assert certs.last_error.startswith("api-conflict: Secret r-serving-tls: 409")
    # Retried with its backoff, from what that writer stored.
    assert certs.next_retry_in_s() == 1.0
    clock.now += datetime.timedelta(seconds=1)
    await certs.retry_due()
    assert certs.last_error is None
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


# --- one namespace's failure stays in that namespace -------------------------------------------

SYSTEM = "keda-tenancy-system"
TENANT_SECRETS = ("internal-ca", "keda-metrics-apiserver-tls", "kedaorg-certs")


@pytest.fixture
async def two_tenants() -> AsyncIterator[CertObjectsAPI]:
    api = CertObjectsAPI(
        granted={SYSTEM, "keda-alpha", "keda-gamma"},
        namespaces=["default", SYSTEM, "keda-alpha", "keda-beta", "keda-gamma"],
        apiservices={"v1beta1.external.metrics.k8s.io": {"metadata": {}, "spec": {}}},
        webhooks={
            "keda-tenancy-gamma-admission": {"webhooks": [{"name": "a", "clientConfig": {}}]}
        },
    )
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def controller2(
    two_tenants: CertObjectsAPI, tmp_path: Path
) -> AsyncIterator[tuple[CertsController, Clock, CollectorRegistry]]:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(two_tenants.kubeconfig()))
    clock = Clock()
    registry = CollectorRegistry()
    async with await make_api_client(str(path)) as api:
        yield CertsController(api, Spec.parse(SPEC), CertsMetrics(registry), clock), clock, registry


def _self_signed(key: Any, *, ca: bool | None, common_name: str = "broken CA") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START - datetime.timedelta(days=1))
        .not_valid_after(START + datetime.timedelta(days=3650))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def malformed_ca(case: str) -> tuple[dict[str, bytes], str]:
    """A CA Secret's data that keda-tenancy-certs cannot use, and the reason it reports."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    if case == "rsa-key":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(rsa_key, ca=True)
        return {"tls.crt": _pem(cert), "tls.key": _key_pem(rsa_key)}, "ca-key-not-ecdsa"
    good = {"tls.crt": _pem(_self_signed(ec_key, ca=True)), "tls.key": _key_pem(ec_key)}
    return {
        "missing-tls-crt": ({"tls.key": good["tls.key"]}, "ca-certificate-missing"),
        "missing-tls-key": ({"tls.crt": good["tls.crt"]}, "ca-key-missing"),
        "no-basic-constraints": (
            {"tls.crt": _pem(_self_signed(ec_key, ca=None)), "tls.key": good["tls.key"]},
            "ca-not-a-ca",
        ),
        "ca-false": (
            {"tls.crt": _pem(_self_signed(ec_key, ca=False)), "tls.key": good["tls.key"]},
            "ca-not-a-ca",
        ),
        "encrypted-key": (
            {"tls.crt": good["tls.crt"], "tls.key": _key_pem(ec_key, b"secret")},
            "ca-key-encrypted",
        ),
        "garbage-pem": (
            {
                "tls.crt": b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
                "tls.key": good["tls.key"],
            },
            "ca-certificate-unreadable",
        ),
        "garbage-key": ({**good, "tls.key": b"not a key"}, "ca-key-unreadable"),
        "other-key": (
            {**good, "tls.key": _key_pem(ec.generate_private_key(ec.SECP256R1()))},
            "ca-key-mismatch",
        ),
    }[case]


def put_secret(
    api: CertObjectsAPI,
    namespace: str,
    name: str,
    data: dict[str, bytes],
    kind: str = "kubernetes.io/tls",
) -> None:
    api.objects[("secrets", namespace, name)] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "type": kind,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def assert_tenant_served(api: CertObjectsAPI, namespace: str) -> None:
    """Its own CA, and both leaves chained to the right CAs."""
    internal = cert(api.data("secrets", namespace, "internal-ca"))
    keda = api.data("secrets", namespace, "kedaorg-certs")
    assert issued_by(cert(keda), internal)
    tenant_ca = cert(api.data("secrets", SYSTEM, "r-tenant-ca"))
    assert issued_by(cert(api.data("secrets", namespace, "keda-metrics-apiserver-tls")), tenant_ca)


def errors(registry: CollectorRegistry, namespace: str, reason: str) -> float:
    value = registry.get_sample_value(
        "keda_tenancy_certs_namespace_errors_total",
        {"secret_namespace": namespace, "reason": reason},
    )
    return value or 0.0


async def assert_isolated_and_recovers(
    api: CertObjectsAPI,
    controller: Controller,
    *,
    reason: str,
    secret: str,
    repair: Callable[[], None],
) -> None:
    """keda-alpha fails with `reason` on `secret`; keda-gamma is kept and renewed meanwhile;
    after `repair`, alpha's own retry makes its certificates."""
    certs, clock, registry = controller
    gamma_before = {n: api.data("secrets", "keda-gamma", n) for n in TENANT_SECRETS}
    assert errors(registry, "keda-alpha", reason) == 1
    assert list(certs.failing) == ["keda-alpha"]
    assert certs.last_error is None  # the router's own certificates are fine: still ready
    assert certs.tenant_failures() == f"keda-alpha: {reason}"
    assert registry.get_sample_value("keda_tenancy_certs_failing_namespaces") == 1
    assert registry.get_sample_value("keda_tenancy_certs_tenants") == 2
    (event,) = api.events_in("keda-alpha")
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Secret",
        "name": secret,
        "namespace": "keda-alpha",
    }
    assert event["reason"] == "".join(p.capitalize() for p in reason.split("-"))
    assert secret in event["message"]
    assert not api.events_in("keda-gamma")
    # A day later: gamma's 48h serving certificate is renewed; alpha, retried, fails again,
    # and says so no more often than the Events would expire.
    clock.now = START + datetime.timedelta(hours=25)
    await certs.reconcile()
    renewed = api.data("secrets", "keda-gamma", "keda-metrics-apiserver-tls")
    assert renewed != gamma_before["keda-metrics-apiserver-tls"]
    assert cert(renewed).not_valid_after_utc == clock.now + datetime.timedelta(days=2)
    assert errors(registry, "keda-alpha", reason) == 2
    assert len(api.events_in("keda-alpha")) == 2
    # Repaired: alpha's retry (its backoff, not the next full pass) makes what it lacks.
    repair()
    clock.now += datetime.timedelta(minutes=10)
    await certs.retry_due()
    assert_tenant_served(api, "keda-alpha")
    assert list(certs.failing) == []
    assert registry.get_sample_value("keda_tenancy_certs_failing_namespaces") == 0


@pytest.mark.parametrize(
    "case",
    [
        "rsa-key",
        "missing-tls-crt",
        "missing-tls-key",
        "no-basic-constraints",
        "ca-false",
        "encrypted-key",
        "garbage-pem",
        "garbage-key",
        "other-key",
    ],
)
async def test_a_malformed_ca_secret_fails_only_its_tenant(
    two_tenants: CertObjectsAPI, controller2: Controller, case: str
) -> None:
    certs, _, _ = controller2
    data, reason = malformed_ca(case)
    put_secret(two_tenants, "keda-alpha", "internal-ca", data)
    bad = copy.deepcopy(two_tenants.objects[("secrets", "keda-alpha", "internal-ca")])
    await certs.reconcile()
    assert_tenant_served(two_tenants, "keda-gamma")
    # The CA is never overwritten (everything in that namespace trusts it) and nothing is
    # issued from it.
    assert two_tenants.objects[("secrets", "keda-alpha", "internal-ca")] == bad
    assert not [k for k in two_tenants.objects if k[1] == "keda-alpha" and k[2] != "internal-ca"]

    def repair() -> None:  # as the Event says: delete it, it is made anew
        del two_tenants.objects[("secrets", "keda-alpha", "internal-ca")]

    await assert_isolated_and_recovers(
        two_tenants, controller2, reason=reason, secret="internal-ca", repair=repair
    )


async def test_a_secret_of_another_type_is_reported_not_rewritten(
    two_tenants: CertObjectsAPI, controller2: Controller
) -> None:
    certs, _, _ = controller2
    await certs.reconcile()
    token = {"token": b"a ServiceAccount's token", "ca.crt": b"", "namespace": b"keda-alpha"}
    put_secret(
        two_tenants, "keda-alpha", "kedaorg-certs", token, "kubernetes.io/service-account-token"
    )
    two_tenants.events.clear()
    certs.failing.forget("keda-alpha")
    await certs.reconcile()
    stored = two_tenants.objects[("secrets", "keda-alpha", "kedaorg-certs")]
    assert stored["type"] == "kubernetes.io/service-account-token"
    assert base64.b64decode(stored["data"]["token"]) == token["token"]

    def repair() -> None:
        del two_tenants.objects[("secrets", "keda-alpha", "kedaorg-certs")]

    await assert_isolated_and_recovers(
        two_tenants, controller2, reason="secret-wrong-type", secret="kedaorg-certs", repair=repair
    )


@pytest.mark.parametrize(
    ("failure", "reason", "secret"),
    [
        (("POST", "internal-ca", 409, "AlreadyExists"), "api-conflict", "internal-ca"),
        (("POST", "internal-ca", 422, "Invalid"), "api-invalid", "internal-ca"),
        (("GET", "*", 500, "InternalError"), "api-error", "internal-ca"),
        (("GET", "*", 429, "TooManyRequests"), "api-error", "internal-ca"),
        (("POST", "kedaorg-certs", 422, "Invalid"), "api-invalid", "kedaorg-certs"),
        (("POST", "keda-metrics-apiserver-tls", 404, "NotFound"), "api-not-found",
         "keda-metrics-apiserver-tls"),
        (("GET", "kedaorg-certs", 403, "Forbidden"), "api-forbidden", "kedaorg-certs"),
    ],
)  # fmt: skip
async def test_an_api_error_in_one_namespace_fails_only_that_tenant(
    two_tenants: CertObjectsAPI,
    controller2: Controller,
    failure: tuple[str, str, int, str],
    reason: str,
    secret: str,
) -> None:
    certs, _, _ = controller2
    method, name, code, status_reason = failure
    key = (method, "keda-alpha", name)
    two_tenants.failures[key] = (code, status_reason)
    await certs.reconcile()
    assert_tenant_served(two_tenants, "keda-gamma")
    await assert_isolated_and_recovers(
        two_tenants,
        controller2,
        reason=reason,
        secret=secret,
        repair=lambda: two_tenants.failures.pop(key) and None,
    )


async def test_a_conflict_on_renewal_fails_only_that_tenant(
    two_tenants: CertObjectsAPI, controller2: Controller
) -> None:
    certs, clock, registry = controller2
    await certs.reconcile()
    clock.now = START + datetime.timedelta(days=46)  # everything's leaves are due
    two_tenants.failures[("PUT", "keda-alpha", "kedaorg-certs")] = (409, "Conflict")
    await certs.reconcile()
    assert errors(registry, "keda-alpha", "api-conflict") == 1
    gamma = cert(two_tenants.data("secrets", "keda-gamma", "kedaorg-certs"))
    assert gamma.not_valid_after_utc > START + datetime.timedelta(days=90)
    del two_tenants.failures[("PUT", "keda-alpha", "kedaorg-certs")]
    clock.now += datetime.timedelta(seconds=1)
    await certs.retry_due()
    alpha = cert(two_tenants.data("secrets", "keda-alpha", "kedaorg-certs"))
    assert alpha.not_valid_after_utc > START + datetime.timedelta(days=90)


async def test_the_router_namespace_failing_is_retried_and_not_ready(
    two_tenants: CertObjectsAPI, controller2: Controller
) -> None:
    certs, clock, registry = controller2
    two_tenants.failures[("GET", SYSTEM, "r-client-ca")] = (500, "InternalError")
    await certs.reconcile()
    # The tenants' serving certificates need the router's CAs: they wait for its retry.
    assert not [k for k in two_tenants.objects if k[1] in ("keda-alpha", "keda-gamma")]
    assert certs.last_error is not None
    assert "api-error" in certs.last_error
    assert errors(registry, SYSTEM, "api-error") == 1
    assert certs.next_retry_in_s() == 1.0
    del two_tenants.failures[("GET", SYSTEM, "r-client-ca")]
    clock.now += datetime.timedelta(seconds=1)
    await certs.retry_due()  # nothing of the tenants' failed: they come with the next pass
    assert certs.last_error is None
    await certs.reconcile()
    assert_tenant_served(two_tenants, "keda-alpha")
    assert_tenant_served(two_tenants, "keda-gamma")


async def test_a_failed_namespace_waits_for_its_backoff_and_a_gone_one_is_forgotten(
    two_tenants: CertObjectsAPI, controller2: Controller
) -> None:
    certs, clock, registry = controller2
    two_tenants.failures[("GET", "keda-alpha", "*")] = (500, "InternalError")
    await certs.reconcile()
    requests = errors(registry, "keda-alpha", "api-error")
    # Full passes inside its backoff leave it alone: one failing tenant is not hammered.
    await certs.reconcile()
    assert errors(registry, "keda-alpha", "api-error") == requests == 1
    clock.now += datetime.timedelta(seconds=1)
    await certs.retry_due()
    assert errors(registry, "keda-alpha", "api-error") == 2
    assert certs.next_retry_in_s() == 2.0  # doubled
    # The namespace goes: no retry, and no metric series kept for it.
    two_tenants.namespace_store.finalize("keda-alpha")
    await certs.reconcile()
    assert list(certs.failing) == []
    assert (
        registry.get_sample_value(
            "keda_tenancy_certs_namespace_errors_total",
            {"secret_namespace": "keda-alpha", "reason": "api-error"},
        )
        is None
    )


async def test_published_ca_certificates_are_re_encoded_never_copied(
    two_tenants: CertObjectsAPI, controller2: Controller
) -> None:
    """A CA Secret whose tls.crt also holds its key (and more PEM blocks): only the
    certificate, parsed and serialized alone, reaches any trust bundle."""
    certs, _, _ = controller2
    keys = {}
    for namespace, name in ((SYSTEM, "r-client-ca"), ("keda-gamma", "internal-ca")):
        key = ec.generate_private_key(ec.SECP256R1())
        ca = _self_signed(key, ca=True, common_name=f"{name} CA")
        extra = _pem(_self_signed(ec.generate_private_key(ec.SECP256R1()), ca=True))
        # The key first: the certificate is still found, the key must not travel with it.
        put_secret(
            two_tenants,
            namespace,
            name,
            {"tls.crt": _key_pem(key) + _pem(ca) + extra, "tls.key": _key_pem(key)},
        )
        keys[name] = _pem(ca)
    await certs.reconcile()
    published = [
        two_tenants.data("configmaps", SYSTEM, "r-trust")["client-ca.crt"].encode(),
        pem(
            two_tenants.data("secrets", "keda-gamma", "keda-metrics-apiserver-tls"), "client-ca.crt"
        ),
        pem(
            two_tenants.data("secrets", "keda-alpha", "keda-metrics-apiserver-tls"), "client-ca.crt"
        ),
    ]
    assert published == [keys["r-client-ca"]] * 3
    internal = [
        pem(two_tenants.data("secrets", "keda-gamma", "kedaorg-certs"), "ca.crt"),
        base64.b64decode(
            two_tenants.webhooks["keda-tenancy-gamma-admission"]["webhooks"][0]["clientConfig"][
                "caBundle"
            ]
        ),
    ]
    assert internal == [keys["internal-ca"]] * 2
    for bundle in published + internal:
        assert b"PRIVATE KEY" not in bundle
        assert bundle.count(b"BEGIN CERTIFICATE") == 1
    assert list(certs.failing) == []


async def test_the_process_keeps_running_past_a_broken_tenant_and_retries_it(
    two_tenants: CertObjectsAPI, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(two_tenants.kubeconfig()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    config = CertsConfig.from_args(
        [
            f"--spec-file={spec}",
            f"--kubeconfig={kubeconfig}",
            "--resync-interval=50ms",
            "--retry-initial=10ms",
            "--retry-max=40ms",
            "--health-bind-address=127.0.0.1",
            "--health-port=0",
        ],
        {},
    )
    # Each case that ended the process (or the pass) before: a KeyError, a TypeError, an
    # ExtensionNotFound, a ValueError.
    data, _ = malformed_ca("missing-tls-crt")
    put_secret(two_tenants, "keda-alpha", "internal-ca", data)
    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(run(config, stop, registry))

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                assert not task.done(), task
                await asyncio.sleep(0.02)

    def made(namespace: str) -> bool:
        return all(("secrets", namespace, n) in two_tenants.objects for n in TENANT_SECRETS)

    await until(lambda: made("keda-gamma"))
    for case in ("encrypted-key", "no-basic-constraints", "rsa-key"):
        data, reason = malformed_ca(case)
        put_secret(two_tenants, "keda-alpha", "internal-ca", data)
        await until(lambda reason=reason: errors(registry, "keda-alpha", reason) >= 1)  # type: ignore[misc]
    del two_tenants.objects[("secrets", "keda-alpha", "internal-ca")]
    await until(lambda: made("keda-alpha"))
    assert not task.done()
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_once_exits_with_an_error_when_a_tenant_failed(
    two_tenants: CertObjectsAPI, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(two_tenants.kubeconfig()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC))
    config = CertsConfig.from_args(
        [f"--spec-file={spec}", f"--kubeconfig={kubeconfig}", "--once"], {}
    )
    put_secret(two_tenants, "keda-alpha", "internal-ca", malformed_ca("rsa-key")[0])
    with pytest.raises(CertsFailedError, match="keda-alpha"):
        await run(config, asyncio.Event(), CollectorRegistry())
    assert_tenant_served(two_tenants, "keda-gamma")
