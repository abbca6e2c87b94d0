"""Front-proxy certificates issued through intermediate CAs, accepted and refused as
kube-apiserver's x509 authenticator does: a path from the leaf through the intermediates
the client sent to a root in --requestheader-client-ca-file, every certificate on it a
valid CA for client authentication."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from router.app import Router
from tenancy_common import tls
from tests.fakes.tenant_backend import TenantBackend
from tests.pki import NOW, CertificateAuthority, Issued
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
TARGET = METRIC_PATH.format(ns="alpha-ns", metric="m")


def intermediate(
    parent: CertificateAuthority,
    name: str,
    *,
    ca: bool = True,
    usages: tuple[x509.ObjectIdentifier, ...] = (),
    not_after: datetime.datetime | None = None,
) -> CertificateAuthority:
    """A CA whose certificate `parent` signed (its leaves then chain through it)."""
    child = CertificateAuthority(name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(child.name)
        .issuer_name(parent.name)
        .public_key(child.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(child.key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    child.cert = builder.sign(parent.key, hashes.SHA256())
    child.cert_pem = child.cert.public_bytes(serialization.Encoding.PEM)
    return child


def chain(leaf_ca: CertificateAuthority, *sent: CertificateAuthority, cn: str = "") -> Issued:
    """A front-proxy-client leaf from `leaf_ca`, presented with the `sent` CA certificates."""
    leaf = leaf_ca.issue(cn or "front-proxy-client", client=True)
    return Issued(leaf.cert_pem + b"".join(ca.cert_pem for ca in sent), leaf.key_pem)


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with running_router(router_args(pki, tenancy_file())) as router:
        yield router


async def answer(router: Router, pki: Pki, cert: Issued) -> int:
    assert router.secure_port
    response = await raw_request(router.secure_port, pki.client_context(cert), TARGET, (USER,))
    return response.status


async def test_a_leaf_from_an_intermediate_of_the_requestheader_ca_is_accepted(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    middle = intermediate(pki.front_proxy_ca, "front-proxy-intermediate")
    assert await answer(router, pki, chain(middle, middle)) == 200
    lower = intermediate(middle, "front-proxy-issuing")
    assert await answer(router, pki, chain(lower, lower, middle)) == 200
    assert await answer(router, pki, chain(lower, middle, lower)) == 200  # any order, as Go
    assert len(backends["alpha"].received) == 3


def _refused_chains(pki: Pki) -> dict[str, Issued]:
    root = pki.front_proxy_ca
    middle = intermediate(root, "front-proxy-intermediate")
    not_a_ca = intermediate(root, "not-a-ca", ca=False)
    server_only = intermediate(root, "server-only", usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    expired = intermediate(
        root, "expired-intermediate", not_after=NOW - datetime.timedelta(minutes=1)
    )
    foreign = intermediate(pki.other_ca, "foreign-intermediate")
    return {
        "intermediate-not-sent": chain(middle),
        "intermediate-not-a-ca": chain(not_a_ca, not_a_ca),
        "intermediate-for-servers-only": chain(server_only, server_only),
        "intermediate-expired": chain(expired, expired),
        "intermediate-of-another-root": chain(foreign, foreign),
        "cn-not-allowed": chain(middle, middle, cn="someone"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "intermediate-not-sent",
        "intermediate-not-a-ca",
        "intermediate-for-servers-only",
        "intermediate-expired",
        "intermediate-of-another-root",
        "cn-not-allowed",
    ],
)
async def test_chains_kube_apiserver_refuses_are_refused(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], case: str
) -> None:
    assert await answer(router, pki, _refused_chains(pki)[case]) == 401
    assert not backends["alpha"].received


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_reconnecting_client_keeps_being_accepted(
    router: Router, pki: Pki, version: ssl.TLSVersion
) -> None:
    # A session resumed from a ticket would have lost the intermediates: an aggregator
    # that reconnects (and offers its last session) must not turn into 401s.
    middle = intermediate(pki.front_proxy_ca, "front-proxy-intermediate")
    issued = chain(middle, middle)
    context = tls.client_context(
        issued.cert_pem, issued.key_pem, Path(pki.path("serving_ca.crt")).read_bytes()
    )
    context.maximum_version = version
    assert router.secure_port
    for _ in range(3):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", router.secure_port, ssl=context, server_hostname="localhost"
        )
        try:
            writer.write(
                f"GET {TARGET} HTTP/1.1\r\nHost: x\r\n{USER[0]}: {USER[1]}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            raw = await reader.read()
            assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]
            tls_object = writer.get_extra_info("ssl_object")
            context.keep_session("localhost", tls_object)
            resumed = tls_object.session_reused
        finally:
            writer.close()
    print(f"{version.name}: resumed={resumed}")
