"""The TLS objects the router's contexts hand to uvloop: ssl.SSLObject with its per-record
methods bound straight to `_ssl` (tenancy_common.tls.DirectSSLObject)."""

from __future__ import annotations

import ssl

import pytest

from tenancy_common import tls
from tests.pki import CertificateAuthority


def _pump(client: ssl.SSLObject, server: ssl.SSLObject, bios: dict[str, ssl.MemoryBIO]) -> None:
    """Carry bytes both ways until neither side has any left to send."""
    while bios["c_out"].pending or bios["s_out"].pending:
        bios["s_in"].write(bios["c_out"].read())
        bios["c_in"].write(bios["s_out"].read())
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass


def test_a_tls_exchange_through_the_contexts_objects() -> None:
    ca = CertificateAuthority("ca")
    server_cert = ca.issue("server", dns=("server.test",), server=True)
    client_cert = ca.issue("client", client=True)
    server_context = tls.server_context(server_cert.cert_pem, server_cert.key_pem, ca.cert_pem)
    client_context = tls.client_context(client_cert.cert_pem, client_cert.key_pem, ca.cert_pem)
    bios = {name: ssl.MemoryBIO() for name in ("c_in", "c_out", "s_in", "s_out")}
    client = client_context.wrap_bio(bios["c_in"], bios["c_out"], server_hostname="server.test")
    server = server_context.wrap_bio(bios["s_in"], bios["s_out"], server_side=True)
    assert isinstance(client, tls.DirectSSLObject)
    assert isinstance(server, tls.DirectSSLObject)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    _pump(client, server, bios)
    assert server.getpeercert(binary_form=True)  # the client's certificate arrived
    assert client.write(b"GET / HTTP/1.1\r\n\r\n") == 18
    bios["s_in"].write(bios["c_out"].read())
    buffer = bytearray(64)
    assert server.read(64, buffer) == 18  # as uvloop reads: into its buffer
    assert bytes(buffer[:18]) == b"GET / HTTP/1.1\r\n\r\n"
    assert server.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        server.read(64)  # nothing more: the same error as ssl.SSLObject's
