"""keda-tenancy-certs without I/O: the CAs and leaves it makes, when it reissues, its spec."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes_asyncio.client.exceptions import ApiException

from controller.certs.bootstrap import TENANT_AUTHORITY, CertsConfig, Spec
from controller.certs.failures import (
    EVENT_REPEAT,
    FailingKeys,
    SecretFailedError,
    classify,
    event_reason,
)
from controller.certs.pki import (
    Authority,
    AuthorityError,
    LeafRequest,
    common_name,
    dns_names,
    issue,
    new_authority,
    reissue_reason,
)
from tenancy_common import tls

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
SERVING = LeafRequest(
    common_name="keda-operator-metrics-apiserver.keda-a.svc",
    dns_names=("keda-operator-metrics-apiserver.keda-a.svc", "keda-operator-metrics-apiserver"),
    server=True,
    validity=90 * DAY,
    renew_before=45 * DAY,
)


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.from_data(new_authority("test CA", 3650 * DAY, NOW))


def test_a_leaf_chains_to_its_ca_with_the_requested_names_and_usage(ca: Authority) -> None:
    data = issue(ca, SERVING, NOW)
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    assert ca.signed(cert)
    assert common_name(cert) == SERVING.common_name
    assert dns_names(cert) == list(SERVING.dns_names)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + 90 * DAY
    client = issue(ca, LeafRequest(common_name="keda-tenancy-router", client=True), NOW)
    usages = (
        x509.load_pem_x509_certificate(client["tls.crt"])
        .extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        .value
    )
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_leaf_never_outlives_its_ca() -> None:
    short = Authority.from_data(new_authority("short CA", 10 * DAY, NOW))
    cert = x509.load_pem_x509_certificate(issue(short, SERVING, NOW)["tls.crt"])
    assert cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_a_kept_leaf_is_renewed_before_it_expires(ca: Authority) -> None:
    data = issue(ca, SERVING, NOW)
    assert reissue_reason(data, SERVING, ca, NOW) is None
    assert reissue_reason(data, SERVING, ca, NOW + 44 * DAY) is None
    # 45 days ahead of expiry (renewBefore), well before any consumer sees it lapse.
    assert reissue_reason(data, SERVING, ca, NOW + 45 * DAY) == "renewal-due"
    assert reissue_reason(data, SERVING, ca, NOW + 100 * DAY) == "renewal-due"


def test_a_leaf_is_reissued_when_missing_foreign_or_for_other_names(ca: Authority) -> None:
    data = issue(ca, SERVING, NOW)
    assert reissue_reason(None, SERVING, ca, NOW) == "missing"
    assert reissue_reason({"tls.crt": data["tls.crt"]}, SERVING, ca, NOW) == "missing"
    assert reissue_reason({**data, "tls.crt": b"junk"}, SERVING, ca, NOW) == "unreadable"
    other = Authority.from_data(new_authority("another CA", 3650 * DAY, NOW))
    assert reissue_reason(issue(other, SERVING, NOW), SERVING, ca, NOW) == "other-authority"
    # Same subject, another key: a CA of the same name does not pass for this one.
    lookalike = Authority.from_data(new_authority("test CA", 3650 * DAY, NOW))
    assert reissue_reason(issue(lookalike, SERVING, NOW), SERVING, ca, NOW) == "other-authority"
    renamed = LeafRequest(
        common_name=SERVING.common_name,
        dns_names=("elsewhere.svc",),
        server=True,
        validity=SERVING.validity,
        renew_before=SERVING.renew_before,
    )
    assert reissue_reason(data, renamed, ca, NOW) == "names-changed"
    shorter = LeafRequest(
        common_name=SERVING.common_name,
        dns_names=SERVING.dns_names,
        server=True,
        validity=10 * DAY,
        renew_before=5 * DAY,
    )
    assert reissue_reason(data, shorter, ca, NOW) == "validity-changed"
    assert reissue_reason(issue(ca, shorter, NOW), shorter, ca, NOW) is None
    second = issue(ca, SERVING, NOW)
    assert reissue_reason({**data, "tls.key": second["tls.key"]}, SERVING, ca, NOW) == (
        "key-mismatch"
    )


def test_a_ca_secret_must_hold_a_matching_ca_key(ca: Authority) -> None:
    data = new_authority("x", DAY, NOW)
    leaf = issue(ca, SERVING, NOW)
    with pytest.raises(ValueError, match="does not match"):
        Authority.from_data({"tls.crt": data["tls.crt"], "tls.key": leaf["tls.key"]})
    with pytest.raises(ValueError, match="not a CA"):
        Authority.from_data(leaf)


SPEC: dict[str, Any] = {
    "namespace": "keda-tenancy-system",
    "authorities": {
        "apiService": {"secret": "r-apiservice-ca", "commonName": "apiservice CA"},
        "upstreamClient": {"secret": "r-client-ca", "commonName": "client CA"},
        "tenantServing": {"secret": "r-tenant-ca", "commonName": "tenant CA"},
    },
    "certificates": [
        {
            "secret": "r-serving-tls",
            "authority": "apiService",
            "commonName": "r.keda-tenancy-system.svc",
            "dnsNames": ["r.keda-tenancy-system.svc"],
            "usages": ["server"],
            "trust": {"ca.crt": "apiService"},
        }
    ],
    "trustConfigMap": {"name": "r-trust", "keys": {"client-ca.crt": "upstreamClient"}},
    "apiServices": [{"name": "v1beta1.external.metrics.k8s.io", "authority": "apiService"}],
    "tenants": {
        "namespacePattern": "keda-(?P<tenant>[a-z0-9-]+)",
        "authority": {"secret": "internal-ca", "commonName": "{tenant} internal CA"},
        "certificates": [
            {
                "secret": "keda-metrics-apiserver-tls",
                "authority": "tenantServing",
                "commonName": "m.{namespace}.svc",
                "dnsNames": ["m.{namespace}.svc"],
                "usages": ["server"],
                "validity": "48h",
                "renewBefore": "24h",
                "trust": {"client-ca.crt": "upstreamClient"},
            },
            {
                "secret": "kedaorg-certs",
                "authority": TENANT_AUTHORITY,
                "commonName": "keda-operator",
                "usages": ["server", "client"],
                "trust": {"ca.crt": TENANT_AUTHORITY},
            },
        ],
        "webhookConfiguration": "keda-tenancy-{tenant}-admission",
    },
}


def test_the_spec_parses_and_fills_tenant_placeholders() -> None:
    spec = Spec.parse(SPEC)
    assert spec.apiservices == {"v1beta1.external.metrics.k8s.io": "apiService"}
    assert spec.trust_keys == {"client-ca.crt": "upstreamClient"}
    assert spec.tenants is not None
    match = spec.tenants.namespace_pattern.fullmatch("keda-alpha")
    assert match is not None
    assert match["tenant"] == "alpha"
    serving = spec.tenants.certificates[0].for_tenant("alpha", "keda-alpha")
    assert serving.request.common_name == "m.keda-alpha.svc"
    assert serving.request.dns_names == ("m.keda-alpha.svc",)
    assert serving.request.validity == 2 * DAY
    assert serving.request.server
    assert not serving.request.client
    internal = spec.tenants.certificates[1]
    assert internal.request.server
    assert internal.request.client


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"certificates": [{**SPEC["certificates"][0], "authority": "nope"}]}, "unknown"),
        ({"certificates": [{**SPEC["certificates"][0], "usages": ["ca"]}]}, "usages"),
        (
            {"certificates": [{**SPEC["certificates"][0], "trust": {"ca.crt": "nope"}}]},
            "unknown",
        ),
        (
            {
                "certificates": [
                    {**SPEC["certificates"][0], "validity": "24h", "renewBefore": "24h"}
                ]
            },
            "shorter",
        ),
        ({"tenants": {**SPEC["tenants"], "namespacePattern": "keda-(.+)"}}, "tenant"),
        ({"apiServices": [{"name": "x", "authority": "nope"}]}, "unknown"),
        ({"namespace": None, "authorities": {"a": {"secret": "s"}}}, "invalid"),
        ({"certificates": [{**SPEC["certificates"][0], "validity": "a year"}]}, "validity"),
    ],
)
def test_a_bad_spec_is_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Spec.parse({**SPEC, **change})


def test_flags() -> None:
    config = CertsConfig.from_args(
        ["--spec-file=/etc/spec.yaml", "--resync-interval=30s"],
        {"KEDA_TENANCY_CERTS_HEALTH_PORT": "9090"},
    )
    assert config.resync_interval_s == 30
    assert config.health_port == 9090
    assert config.kubeconfig is None
    assert not config.once
    with pytest.raises(SystemExit):
        CertsConfig.from_args(["--spec-file=x", "--resync-interval=soon"], {})


def test_an_input_not_there_yet_is_waited_for_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The router's serving context waits for the requestheader CA it reads from the cluster:
    # every start goes through this, so it is no error and no reload failure.
    errors: list[str] = []
    available: list[bytes] = []

    def source() -> bytes:
        if not available:
            raise tls.NotYetAvailableError("requestheader CA not read from the cluster yet")
        return available[0]

    reloadable = tls.Reloadable(
        "serving certificate", [source], lambda pem: pem[0], on_error=lambda n, e: errors.append(n)
    )
    with caplog.at_level(logging.INFO, logger="tenancy_common.tls"):
        assert not reloadable.poll()
        assert not reloadable.poll()
    assert errors == []
    assert reloadable.waiting
    assert [r.levelname for r in caplog.records] == ["INFO"]  # said once, as a wait
    available.append(b"pem")
    assert reloadable.poll()
    assert reloadable.value == b"pem"
    assert not reloadable.waiting


def test_a_ca_is_published_re_encoded_alone() -> None:
    data = new_authority("x", DAY, NOW)
    ca = Authority.from_data({**data, "tls.crt": data["tls.key"] + data["tls.crt"] + b"junk\n"})
    assert ca.cert_pem == data["tls.crt"]  # what new_authority stored: the certificate alone
    assert b"PRIVATE KEY" not in ca.cert_pem


def test_an_unusable_ca_secret_says_why_with_a_fixed_reason(ca: Authority) -> None:
    data = new_authority("x", DAY, NOW)
    leaf = issue(ca, SERVING, NOW)
    cases = {
        "ca-certificate-missing": {"tls.key": data["tls.key"]},
        "ca-key-missing": {"tls.crt": data["tls.crt"]},
        "ca-certificate-unreadable": {**data, "tls.crt": b"junk"},
        "ca-key-unreadable": {**data, "tls.key": b"junk"},
        "ca-key-mismatch": {**data, "tls.key": leaf["tls.key"]},
        "ca-not-a-ca": leaf,
    }
    for reason, broken in cases.items():
        with pytest.raises(AuthorityError) as raised:
            Authority.from_data(broken)
        assert raised.value.reason == reason


def test_a_stored_leaf_with_an_encrypted_key_is_reissued_not_a_crash(ca: Authority) -> None:
    data = issue(ca, SERVING, NOW)
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert reissue_reason({**data, "tls.key": encrypted}, SERVING, ca, NOW) == "unreadable"


def test_a_failing_key_backs_off_on_its_own_and_says_so_sparingly() -> None:
    failing = FailingKeys(datetime.timedelta(seconds=1), datetime.timedelta(seconds=8))
    delays, events = [], []
    now = NOW
    for _ in range(6):
        state, emit = failing.failed("keda-a", "ca", "ca-not-a-ca", "m", now)
        delays.append((state.retry_at - now).total_seconds())
        events.append(emit)
        now = state.retry_at
    assert delays == [1, 2, 4, 8, 8, 8]
    assert events == [True, False, False, False, False, False]
    assert failing.due(now) == ["keda-a"]
    assert failing.waiting("keda-a", now - datetime.timedelta(seconds=1))
    # Another reason, or the last Event about to expire: said again.
    assert failing.failed("keda-a", "ca", "api-conflict", "m", now)[1]
    assert not failing.failed("keda-a", "ca", "api-conflict", "m", now)[1]
    assert failing.failed("keda-a", "ca", "api-conflict", "m", now + EVENT_REPEAT)[1]
    # Another key is unaffected; success starts over.
    assert failing.get("keda-b") is None
    failing.forget("keda-a")
    assert failing.failed("keda-a", "ca", "api-conflict", "m", now)[0].failures == 1


def test_failures_have_reasons_of_bounded_cardinality() -> None:
    assert classify(ApiException(status=409, reason='{"message": "modified"}')) == (
        "api-conflict",
        "409: modified",
    )
    assert classify(ApiException(status=422, reason="x"))[0] == "api-invalid"
    assert classify(ApiException(status=503, reason="x"))[0] == "api-error"
    assert classify(SecretFailedError("s", TimeoutError()))[0] == "api-unreachable"
    assert classify(SecretFailedError("s", KeyError("x"))) == (
        "internal",
        "Secret s: KeyError: 'x'",
    )
    assert event_reason("ca-key-encrypted") == "CaKeyEncrypted"
