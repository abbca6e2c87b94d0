"""The router's HTTP/1.1 wire layer: strict request heads, upstream response framing."""

from __future__ import annotations

import pytest

from router.http1 import (
    ProtocolError,
    ResponseReader,
    encode_response,
    header_list,
    parse_request_head,
)

GO_HEAD = (
    b"GET /apis/external.metrics.k8s.io/v1beta1/namespaces/a/m?labelSelector=x%3Dy HTTP/1.1\r\n"
    b"Host: router:443\r\nUser-Agent: Go-http-client/1.1\r\nX-Remote-User: jane\r\n"
    b"X-Remote-Group: g1\r\nX-Remote-Group: g2\r\nAccept-Encoding: gzip"
)


def test_request_head_keeps_lines_as_sent() -> None:
    head = parse_request_head(GO_HEAD)
    assert (head.method, head.keep_alive) == (b"GET", True)
    assert (
        head.target == b"/apis/external.metrics.k8s.io/v1beta1/namespaces/a/m?labelSelector=x%3Dy"
    )
    assert header_list(head.lines)[2:4] == [(b"X-Remote-User", b"jane"), (b"X-Remote-Group", b"g1")]
    assert head.header(b"x-remote-user") == b"jane"
    assert head.header(b"audit-id") == b""


@pytest.mark.parametrize(
    ("extra", "keep_alive"),
    [
        (b"\r\nConnection: close", False),
        (b"\r\nConnection: Keep-Alive, Close", False),
        (b"\r\nConnection: keep-alive", True),
        (b"\r\nContent-Length: 0", True),
    ],
)
def test_connection_header_decides_keep_alive(extra: bytes, keep_alive: bool) -> None:
    assert parse_request_head(GO_HEAD + extra).keep_alive is keep_alive


def test_http10_closes_unless_asked() -> None:
    head10 = GO_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    assert parse_request_head(head10).keep_alive is False
    assert parse_request_head(head10 + b"\r\nConnection: keep-alive").keep_alive is True


@pytest.mark.parametrize(
    "head",
    [
        GO_HEAD + b"\r\n folded: continuation",  # obs-fold
        GO_HEAD + b"\r\nBad Name: x",
        GO_HEAD + b"\r\nX-Remote-User : x",  # space before the colon
        GO_HEAD + b"\r\nX-Remote-Group: a\nX-Remote-User: admin",  # bare LF smuggles a line
        GO_HEAD + b"\r\nX-Remote-Group: a\rX-Remote-User: admin",  # bare CR
        GO_HEAD + b"\r\nX-A: \x00",
        GO_HEAD + b"\r\nnocolon",
        GO_HEAD + b"\r\nTransfer-Encoding: chunked",
        GO_HEAD + b"\r\nContent-Length: 5",
        GO_HEAD.replace(b"HTTP/1.1", b"HTTP/2.0", 1),
        GO_HEAD.replace(b"GET /apis", b"GET  /apis", 1),
        b"GET /a\x7fb HTTP/1.1\r\nX: y",
        b"GET /a HTTP/1.1 extra\r\nX: y",
    ],
)
def test_ambiguous_heads_are_refused(head: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request_head(head)
    assert caught.value.code == 400


def _read(*parts: bytes, limit: int = 1 << 20) -> ResponseReader:
    reader = ResponseReader(limit)
    done = False
    for part in parts:
        assert not done
        done = reader.feed(part)
    assert done
    return reader


def test_content_length_response_in_pieces() -> None:
    whole = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"value":1}'
    for cut in range(1, len(whole)):
        reader = _read(whole[:cut], whole[cut:])
        assert (reader.status, bytes(reader.body), reader.keep_alive) == (200, b'{"value":1}', True)
        assert reader.lines == b"Content-Type: application/json\r\nContent-Length: 11\r\n"


def test_chunked_response_with_extensions_and_trailer() -> None:
    reader = _read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n",
        b"2\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    assert bytes(reader.body) == b"abcdef"
    assert reader.keep_alive
    assert not reader.leftover


def test_interim_response_is_skipped() -> None:
    reader = _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert reader.status == 204


def test_close_delimited_body_ends_at_eof() -> None:
    reader = ResponseReader(1 << 20)
    assert not reader.feed(b"HTTP/1.1 200 OK\r\n\r\nab")
    assert not reader.feed(b"cd")
    assert reader.eof()
    assert (bytes(reader.body), reader.keep_alive) == (b"abcd", False)


def test_extra_bytes_after_a_response_are_left_over() -> None:
    reader = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK")
    assert reader.leftover == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Injected: a\rSet-Cookie: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",  # over the limit below
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",  # status codes are 100-599
        b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_bad_upstream_responses_are_502(response: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        ResponseReader(50).feed(response)
    assert caught.value.code == 502


@pytest.mark.parametrize(
    ("head", "forwarded", "framed"),
    [
        (  # Go's usual answer: nothing to drop, its Content-Length frames the body we pass on
            b"Content-Type: application/json\r\nAudit-Id: a\r\nContent-Length: 2\r\n",
            b"Content-Type: application/json\r\nAudit-Id: a\r\nContent-Length: 2\r\n",
            True,
        ),
        (  # NGINX: Connection and Keep-Alive are about the upstream hop only
            b"connection: keep-alive\r\nContent-Type: x\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 2\r\nUpgrade: h2c\r\nTE: trailers\r\nProxy-Connection: k\r\n",
            b"Content-Type: x\r\nContent-Length: 2\r\n",
            True,
        ),
        (  # a body we re-frame: every length and transfer coding goes
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n",
            b"Content-Encoding: gzip\r\n",
            False,
        ),
        (  # the same length twice is tolerated but recomputed, not doubled
            b"Content-Length: 2\r\nContent-Length: 2\r\n",
            b"",
            False,
        ),
        (  # transfer codings are case-insensitive
            b"Transfer-Encoding: Chunked\r\nX: y\r\n",
            b"X: y\r\n",
            False,
        ),
        (  # what the Connection header names is hop-by-hop too, in any case
            b"Connection: X-Hop, close\r\nx-hop: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n",
            b"X-Kept: 2\r\nContent-Length: 2\r\n",
            True,
        ),
    ],
)
def test_hop_by_hop_response_headers_are_dropped(
    head: bytes, forwarded: bytes, framed: bool
) -> None:
    body = b"2\r\nok\r\n0\r\n\r\n" if b"chunked" in head.lower() else b"ok"
    reader = _read(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + body)
    assert bytes(reader.body) == b"ok"
    assert (reader.forward_lines, reader.framed) == (forwarded, framed)
    assert reader.lines == head  # what the upstream said, for nobody but the parser


def test_encoded_response_is_framed_by_us() -> None:
    encoded = encode_response(200, b"Content-Type: application/json\r\n", b"{}", close=True)
    head, _, body = encoded.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 2" in lines
    assert b"Connection: close" in lines
    assert sum(line.lower().startswith(b"date:") for line in lines) == 1
    assert body == b"{}"
    # An upstream's Date and Content-Length are kept, not doubled.
    upstream = encode_response(
        200, b"Date: Mon, 23 Nov 2026\r\nContent-Length: 1\r\n", b"x", date=False, framed=True
    )
    assert upstream.lower().count(b"date:") == 1
    assert upstream.lower().count(b"content-length:") == 1


@pytest.mark.parametrize(
    ("response", "status", "forwarded", "redirect"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX: y\r\n\r\n", 204, b"X: y\r\n", False),
        (
            b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\nContent-Length: 9\r\n\r\n',
            304,
            b'ETag: "1"\r\n',
            False,
        ),
        (
            b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
            302,
            b"Location: /x\r\nContent-Length: 0\r\n",
            True,
        ),
        (
            b"HTTP/1.1 300 Multiple\r\nContent-Length: 0\r\n\r\n",
            300,
            b"Content-Length: 0\r\n",
            False,
        ),
    ],
)
def test_bodiless_and_redirecting_responses(
    response: bytes, status: int, forwarded: bytes, redirect: bool
) -> None:
    reader = ResponseReader(1 << 20)
    assert reader.feed(response)
    assert (reader.status, reader.forward_lines, reader.redirect) == (status, forwarded, redirect)
    assert reader.body == b""
    assert not reader.leftover
    if status in (204, 304):  # no length added downstream either
        assert reader.framed
        assert (
            b"content-length"
            not in encode_response(status, reader.forward_lines, b"", framed=reader.framed).lower()
        )
