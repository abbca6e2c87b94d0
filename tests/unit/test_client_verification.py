"""Reading OpenSSL's client-certificate verdict fails closed when it cannot be read."""

from __future__ import annotations

import ssl

from tenancy_common.client_verification import (
    defer_client_verification,
    peer_intermediates,
    release_idle_buffers,
    verify_result,
)


def test_unreadable_verdicts_are_failures() -> None:
    class NotTls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    code, reason = verify_result(NotTls())  # type: ignore[arg-type]
    assert code != 0
    assert "unavailable" in reason
    assert peer_intermediates(NotTls()) == []  # type: ignore[arg-type]


def test_a_fresh_connection_reports_trusted_only_when_nothing_failed() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_OPTIONAL
    assert defer_client_verification(context)
    connection = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert verify_result(connection) == (0, "ok")


def test_idle_connections_release_their_buffers_and_keep_their_settings() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert release_idle_buffers(context)
    # Setting the mode went through the same checked pointer and changed nothing else.
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert release_idle_buffers(context)  # idempotent: the bit reads back set
