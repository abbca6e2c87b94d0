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
        self,
        der: bytes | None,
        now: datetime.datetime,
        chain_verdict: tuple[int, str] = (0, ""),
        intermediates: Sequence[bytes] = (),
    ) -> float:
        """When (POSIX seconds) the certificate, or a CA on its path, stops being valid,
        or StatusError(401) for any certificate we must not trust.

        `chain_verdict` is OpenSSL's verification of the chain presented in the handshake
        (0: trusted; it checked the CA constraints and the client-auth usage of every
        certificate on the path, as Go's x509 does for kube-apiserver); the checks here
        add the CN allow-list, a path to a CA trusted *now* through the `intermediates`
        the client sent, and the validity of each certificate on that path now.
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
        path = self._path_to_a_ca(cert, intermediates)
        if path is None:
            raise StatusError(
                401, "Unauthorized: client certificate is not from the requestheader CA"
            )
        if not all(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in path):
            raise StatusError(401, "Unauthorized: a CA of the client certificate is not valid now")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        if self.allowed_names and common_name not in self.allowed_names:
            raise StatusError(
                401, f"Unauthorized: client certificate CN {common_name!r} is not allowed"
            )
        return min(c.not_valid_after_utc for c in (cert, *path)).timestamp()

    def _path_to_a_ca(
        self, cert: x509.Certificate, intermediates: Sequence[bytes]
    ) -> list[x509.Certificate] | None:
        """The issuers from `cert` up to a CA in the bundle (that CA last), through the
        client's intermediates, or None."""
        pool = []
        for der in intermediates[:_MAX_INTERMEDIATES]:
            try:
                pool.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue
        path: list[x509.Certificate] = []
        current = cert
        for _ in range(len(pool) + 1):
            root = next((ca for ca in self.client_cas if _issued_by(current, ca)), None)
            if root is not None:
                return [*path, root]
            issuer = next(
                (c for c in pool if c not in path and c != current and _issued_by(current, c)),
                None,
            )
            if issuer is None or not _is_ca(issuer):
                return None
            path.append(issuer)
            current = issuer
        return None


_MAX_INTERMEDIATES = 8


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


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
