"""TLS contexts built from PEM bytes, and reloading them when the bytes change.

Kubernetes updates Secret volumes by swapping a symlink, so changes are detected by a
digest of the content, never by mtime. Contexts are always built anew, because
`load_verify_locations` can only add CAs and a removed CA must stop being trusted. A
broken new file keeps the last good context in service.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from cryptography import x509

from tenancy_common.client_verification import defer_client_verification, release_idle_buffers

logger = logging.getLogger(__name__)

T = TypeVar("T")

Source = Callable[[], bytes]
"""Returns the current PEM bytes of one input (a file, a ConfigMap key)."""


def file_source(path: str) -> Source:
    return lambda: Path(path).read_bytes()


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path that holds `data`, for ssl APIs that only read files.

    An anonymous memory file keeps key material off disk and works on a read-only root.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pem", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile() as handle:  # pragma: no cover - non-Linux
        handle.write(data)
        handle.flush()
        yield handle.name


def parse_certificates(pem: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle; ValueError when there are none."""
    return x509.load_pem_x509_certificates(pem)


def not_after(pem: bytes) -> datetime.datetime:
    """Expiry of the first (leaf) certificate in a PEM chain."""
    return parse_certificates(pem)[0].not_valid_after_utc


class DirectSSLObject(ssl.SSLObject):
    """An ssl.SSLObject whose read, write and pending are the `_ssl` methods themselves.

    uvloop calls them several times per request and connection; ssl.py's wrappers only pass
    their arguments on (read's `len` is always given by uvloop), at the cost of a Python call
    each. Everything else (handshake, certificates, shutdown) is ssl.SSLObject's own.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj = super()._create(*args, **kwargs)  # type: ignore[misc]
        native = obj._sslobj
        obj.read = native.read
        obj.write = native.write
        obj.pending = native.pending
        return cast(DirectSSLObject, obj)


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None) -> ssl.SSLContext:
    """TLS 1.2+ server; asks for a client certificate and verifies it against `client_ca_pem`.

    The certificate is optional at the TLS layer, and a failed verification does not abort
    the handshake, so that an untrusted caller gets a Kubernetes 401 Status rather than a
    bare TLS alert (see client_verification).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    with _pem_path(cert_pem) as cert, _pem_path(key_pem) as key:
        context.load_cert_chain(cert, key)
    if client_ca_pem:
        parse_certificates(client_ca_pem)  # a clear error for a file with no certificate
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_OPTIONAL
        # OpenSSL still verifies the chain; its verdict is read per request (401, not an alert).
        defer_client_verification(context)
        # A session resumed from a ticket has lost the client's intermediates, which the
        # per-request check needs: no tickets (the in-memory session cache keeps them).
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    release_idle_buffers(context)
    context.sslobject_class = DirectSSLObject
    return context


class ResumingClientContext(ssl.SSLContext):
    """A client context that offers, for a new connection, the last TLS session it kept
    for the same server name: an abbreviated handshake instead of a full one, as Go's
    ClientSessionCache and NGINX's proxy_ssl_session_reuse do.

    asyncio and uvloop open TLS connections through `wrap_bio` without a session; this
    is the one place to supply it. The cache lives and dies with the context, so new
    certificates or CAs never resume an old session.
    """

    sessions: dict[str, ssl.SSLSession]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and isinstance(server_hostname, str):
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def keep_session(self, server_hostname: str, tls: ssl.SSLObject) -> None:
        """Remember `tls`'s session once it has been used (TLS 1.3 tickets arrive after
        the handshake). Only after a full handshake: reading a session out is not cheap,
        and a resumed one's is already here."""
        if tls.session_reused and server_hostname in self.sessions:
            return
        session = tls.session
        if session is not None and session.has_ticket:
            self.sessions[server_hostname] = session


def client_context(
    cert_pem: bytes | None, key_pem: bytes | None, ca_pem: bytes | None
) -> ResumingClientContext:
    """TLS 1.2+ client presenting `cert_pem`, verifying the server against `ca_pem`
    (the system roots when None), hostname checked."""
    context = ResumingClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sessions = {}
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if ca_pem:
        parse_certificates(ca_pem)
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_pem and key_pem:
        with _pem_path(cert_pem) as cert, _pem_path(key_pem) as key:
            context.load_cert_chain(cert, key)
    release_idle_buffers(context)
    context.sslobject_class = DirectSSLObject
    return context


class NotYetAvailableError(OSError):
    """An input that is not there yet by design (read from the cluster after start): waited
    for, not reported as a failure."""


class Reloadable(Generic[T]):
    """A value built from some PEM inputs, rebuilt whenever their content changes.

    `poll()` is cheap when nothing changed (read + hash) and never raises: a missing
    or broken input keeps the last good value and is reported through `on_error`.
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[Source],
        build: Callable[[Sequence[bytes]], T],
        *,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.name = name
        self._sources = tuple(sources)
        self._build = build
        self._on_error = on_error
        self._digest: bytes | None = None
        self._value: T | None = None
        self.inputs: tuple[bytes, ...] = ()
        self.generation = 0
        self.last_error: str | None = None
        self.waiting = False
        """Not loaded yet only because an input is not there yet (NotYetAvailableError)."""

    @property
    def loaded(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> T:
        if self._value is None:
            raise RuntimeError(f"{self.name}: not loaded: {self.last_error}")
        return self._value

    def poll(self) -> bool:
        """Reload if the inputs changed; True when a new value was built."""
        try:
            inputs = tuple(source() for source in self._sources)
        except NotYetAvailableError as exc:
            if self._value is None:
                message = f"waiting: {exc}"
                if message != self.last_error:
                    logger.info("waiting for %s: %s", self.name, exc, extra={"tls": self.name})
                self.last_error, self.waiting = message, True
            return False
        except OSError as exc:
            self._fail(exc)
            return False
        digest = hashlib.sha256(b"".join(len(i).to_bytes(8, "big") + i for i in inputs)).digest()
        if digest == self._digest:
            return False
        try:
            value = self._build(inputs)
        except (ssl.SSLError, ValueError, OSError) as exc:
            self._fail(exc)
            return False
        self._value, self._digest, self.inputs = value, digest, inputs
        self.generation += 1
        self.last_error = None
        self.waiting = False
        logger.info("loaded %s", self.name, extra={"tls": self.name, "generation": self.generation})
        return True

    def _fail(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.last_error:
            logger.error(
                "cannot load %s, keeping the last good one",
                self.name,
                extra={"tls": self.name, "error": message},
            )
        self.last_error, self.waiting = message, False
        if self._on_error is not None:
            self._on_error(self.name, exc)
