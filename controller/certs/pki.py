"""Certificates for `keda-tenancy-certs`, with no I/O: make a CA, issue a leaf from it, and
decide whether a stored leaf must be (re)issued. Stored forms are Secret `data` mappings
(`tls.crt`, `tls.key`, and public CA certificates such as `ca.crt`), as bytes.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SecretData = dict[str, bytes]

# Issued certificates start a little in the past: clocks of the nodes that verify them differ.
BACKDATE = datetime.timedelta(minutes=5)


class AuthorityError(ValueError):
    """A CA Secret that cannot be used; `reason` is one of a fixed set (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA whose key we hold: it signs leaves; its certificate is what others trust.
    `cert_pem` is the certificate re-encoded on its own: whatever else the Secret's `tls.crt`
    holds (a key, more certificates) is never published."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes

    @classmethod
    def from_data(cls, data: Mapping[str, bytes]) -> Authority:
        """From a CA Secret's data; AuthorityError when it is not a usable CA."""
        if "tls.crt" not in data:
            raise AuthorityError("ca-certificate-missing", "the CA Secret has no tls.crt")
        if "tls.key" not in data:
            raise AuthorityError("ca-key-missing", "the CA Secret has no tls.key")
        try:
            cert = x509.load_pem_x509_certificate(data["tls.crt"])
        except ValueError as exc:
            raise AuthorityError(
                "ca-certificate-unreadable", f"tls.crt is no PEM certificate: {exc}"
            ) from exc
        try:
            key = serialization.load_pem_private_key(data["tls.key"], password=None)
        except TypeError as exc:  # cryptography: "Password was not given but ... encrypted"
            raise AuthorityError("ca-key-encrypted", "tls.key is encrypted") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise AuthorityError("ca-key-unreadable", f"tls.key is no PEM key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthorityError(
                "ca-key-not-ecdsa", f"the CA key is {type(key).__name__}, not an ECDSA key"
            )
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise AuthorityError("ca-key-mismatch", "the CA key does not match its certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise AuthorityError(
                "ca-not-a-ca", "the certificate is not a CA (no BasicConstraints)"
            ) from exc
        except ValueError as exc:  # a malformed extension
            raise AuthorityError(
                "ca-certificate-unreadable", f"tls.crt has a malformed extension: {exc}"
            ) from exc
        if not constraints.ca:
            raise AuthorityError("ca-not-a-ca", "the certificate is not a CA (CA:false)")
        return cls(cert, key, cert.public_bytes(serialization.Encoding.PEM))

    def signed(self, cert: x509.Certificate) -> bool:
        if cert.issuer != self.cert.subject:
            return False
        assert cert.signature_hash_algorithm is not None
        try:
            self.cert.public_key().verify(  # type: ignore[call-arg, union-attr]
                cert.signature,
                cert.tbs_certificate_bytes,
                ec.ECDSA(cert.signature_hash_algorithm),  # type: ignore[arg-type]
            )
        except (InvalidSignature, TypeError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class LeafRequest:
    """What a leaf must say. `trust` names the public CA certificates stored next to it
    (Secret key -> PEM), e.g. `ca.crt` for whoever verifies peers with this Secret."""

    common_name: str
    dns_names: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    validity: datetime.timedelta = datetime.timedelta(days=90)
    renew_before: datetime.timedelta = datetime.timedelta(days=45)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_authority(
    common_name: str, validity: datetime.timedelta, now: datetime.datetime
) -> SecretData:
    """A self-signed ECDSA P-256 CA, as CA Secret data (tls.crt = ca.crt, tls.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return {"tls.crt": pem, "tls.key": _pem_key(key), "ca.crt": pem}


def issue(authority: Authority, request: LeafRequest, now: datetime.datetime) -> SecretData:
    """A new key and a certificate for it, signed by `authority` (tls.crt, tls.key)."""
    if not (request.server or request.client):
        raise ValueError("a leaf needs a server or client usage")
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * request.server + [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ] * request.client
    # Never past the CA's own expiry: a chain is only as valid as its root.
    not_after = min(now + request.validity, authority.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.common_name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if request.dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in request.dns_names]),
            critical=False,
        )
    cert = builder.sign(authority.key, hashes.SHA256())
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": _pem_key(key)}


def reissue_reason(
    data: Mapping[str, bytes] | None,
    request: LeafRequest,
    authority: Authority,
    now: datetime.datetime,
) -> str | None:
    """Why the stored leaf must be issued again (None: keep it). Renewal is due
    `renew_before` ahead of expiry, so consumers reloading from disk never see it lapse."""
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: an encrypted key
        return "unreadable"
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return "key-mismatch"
    if not authority.signed(cert):
        return "other-authority"
    if common_name(cert) != request.common_name or set(dns_names(cert)) != set(request.dns_names):
        return "names-changed"
    # Shortened validity (e.g. a new duration value): reissue now rather than in months.
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > request.validity + BACKDATE + datetime.timedelta(minutes=1):
        return "validity-changed"
    if cert.not_valid_after_utc - now <= request.renew_before:
        return "renewal-due"
    return None


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def not_after(pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc
