"""Requestheader authentication: only the aggregator may assert who the caller is.

The TLS layer already verified any client certificate against the requestheader CA;
here the router checks what kube-apiserver checks next (the CN allow-list, that the
certificate is still valid and still issued by a CA we trust now, which matters after
a CA was removed) and that a user was asserted. The verdict is cached per connection
and per CA generation until the certificate's notAfter, so a keep-alive connection is
checked once and still refused from the moment its certificate expires.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from router.status import StatusError


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """Which headers carry the identity (kube-apiserver's --requestheader-* flags)."""

    username: tuple[str, ...] = ("X-Remote-User",)
    group: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)
    uid: tuple[str, ...] = ("X-Remote-Uid",)


DEFAULT_HEADER_NAMES = HeaderNames()


@dataclass(frozen=True, slots=True)
class RequestHeaderAuth:
    """The requestheader CA bundle in force and the CNs it may vouch for."""

    client_cas: tuple[x509.Certificate, ...]
    allowed_names: frozenset[str]  # empty: any CN from the CA
    headers: HeaderNames

    def verify_peer(
        self, der: bytes | None, now: datetime.datetime, chain_verdict: tuple[int, str] = (0, "")
    ) -> float:
        """When (POSIX seconds) the certificate stops being valid, or StatusError(401)
        for any certificate we must not trust.

        `chain_verdict` is OpenSSL's verification of the chain presented in the handshake
        (0: trusted); the checks here add the CN allow-list and the CAs trusted *now*.
        """
        if not der:
            raise StatusError(401, "Unauthorized: a client certificate is required")
        code, reason = chain_verdict
        if code != 0:
            raise StatusError(401, f"Unauthorized: client certificate not trusted: {reason}")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise StatusError(401, "Unauthorized: unreadable client certificate") from exc
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise StatusError(401, "Unauthorized: client certificate is not valid now")
        if not any(_issued_by(cert, ca) for ca in self.client_cas):
            raise StatusError(
                401, "Unauthorized: client certificate is not from the requestheader CA"
            )
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        if self.allowed_names and common_name not in self.allowed_names:
            raise StatusError(
                401, f"Unauthorized: client certificate CN {common_name!r} is not allowed"
            )
        return cert.not_valid_after_utc.timestamp()


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def split_names(values: Sequence[str]) -> tuple[str, ...]:
    """Flag values may be repeated or comma-separated; empty items are dropped."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())
