"""HTTP/1.1 on the wire, for the one exchange the router forwards.

Strict on input: the router stands between the aggregator and many tenants, so anything
two parsers could read differently (obs-fold, bare CR/LF, a body framed two ways) is
refused, not interpreted. The forwarded API is read-only: a GET that carries a body is
refused (400), a write is answered 405 like any other, and either connection is closed
after its answer, since no request body is ever parsed.

A head is validated by one regular expression over all its header lines, and headers
are then found by substring search in a lower-cased copy: on the request path, Python
work per header line is what costs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from email.utils import formatdate

from router.status import REASONS

Headers = list[tuple[bytes, bytes]]

MAX_HEAD_BYTES = 1 << 20
"""Go's http.DefaultMaxHeaderBytes: large enough for users with many groups and extras."""

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
# Every header line is `token:value\r\n`, the value free of control characters (tab
# aside): no obs-fold, no bare CR or LF, no space before ':'. One pass checks them all.
_HEADER_LINES = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
# 100-599 (RFC 9110 15): anything else would reach the caller as an invalid status line.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [^\r\n]*)?")
_HEADER = re.compile(rb"^(" + _TOKEN + rb"):[ \t]*([^\r\n]*?)[ \t]*\r\n", re.M)
# On `lowered` lines: one match per header line the response's framing or forwarding
# depends on (the hop-by-hop ones, Date and Location), from its leading LF to its CR, which
# is exactly that line's span (CRLF included) in the original lines; group 2 is the value
# with its blanks (a lazy match to strip them costs more than the strip).
_SPECIAL = re.compile(
    rb"\n(connection|keep-alive|proxy-authenticate|proxy-authorization|proxy-connection"
    rb"|te|trailer|transfer-encoding|upgrade|content-length|date|location):([^\r]*)\r"
)
_NOT_HOP_BY_HOP = (b"date", b"location")

PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; the connection cannot be trusted any further."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


def lowered(lines: bytes) -> bytes:
    """Header lines in lower case behind a LF, so that `b"\\nname:" in lowered(lines)`
    finds a header by name at C speed (offsets run one ahead of those in `lines`)."""
    return b"\n" + lines.lower()


def without_lines(lines: bytes, found: Iterable[re.Match[bytes]]) -> bytes:
    """`lines` without the header lines that `found` (matches on `lowered(lines)`, in order,
    each from a line's leading LF to its CR) cover; `lines` itself when there are none."""
    parts, position = [], 0
    for match in found:
        start, end = match.span()
        parts.append(lines[position:start])
        position = end
    if not position:
        return lines
    parts.append(lines[position:])
    return b"".join(parts)


def field_entries(lines: bytes, low: bytes, name: bytes) -> list[tuple[int, bytes]]:
    """(offset, value) of every header called `name` (lower case), in order, the value
    without surrounding blanks; `low` is `lowered(lines)`."""
    key = b"\n" + name + b":"
    entries = []
    found = low.find(key)
    while found >= 0:
        start = found + len(key) - 1
        entries.append((found, lines[start : lines.index(b"\r\n", start)].strip(b" \t")))
        found = low.find(key, found + 1)
    return entries


def first_value(lines: bytes, low: bytes, name: bytes) -> bytes:
    """The first non-empty value of header `name` (lower case), or b"": `field_entries`
    without building the list, for the one lookup every request makes."""
    key = b"\n" + name + b":"
    found = low.find(key)
    while found >= 0:
        start = found + len(key) - 1
        value = lines[start : lines.index(b"\r\n", start)].strip(b" \t")
        if value:
            return value
        found = low.find(key, found + 1)
    return b""


def field_values(lines: bytes, low: bytes, name: bytes) -> list[bytes]:
    """Every value of header `name` (lower case), in order."""
    return [value for _, value in field_entries(lines, low, name)]


def header_list(lines: bytes) -> Headers:
    """(name, value) pairs of validated header lines."""
    return _HEADER.findall(lines)


def _header_lines(block: bytes, code: int) -> bytes:
    """The header block (between the first line and the blank line) as CRLF-ended lines,
    validated; raises ProtocolError with `code`."""
    lines = block + b"\r\n" if block else b""
    if _HEADER_LINES.fullmatch(lines) is None:
        raise ProtocolError("malformed header line or control character in a header", code)
    return lines


class RequestHead:
    """A parsed request head (a plain class: built once per request, on the hot path).

    `lines` holds the header lines as received, each ending in CRLF, already validated;
    `low` is `lowered(lines)`, for finding headers by name.
    """

    __slots__ = ("keep_alive", "lines", "low", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, lines: bytes, keep_alive: bool, low: bytes = b""
    ) -> None:
        self.method = method
        self.target = target
        self.lines = lines
        self.low = low or lowered(lines)
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> bytes:
        """The first value of a header (lower-case name), or b""."""
        values = field_values(self.lines, self.low, name)
        return values[0] if values else b""


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (without the final blank line); raises ProtocolError."""
    request_line, _, block = head.partition(b"\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise ProtocolError("malformed request line (only HTTP/1.1 is served)")
    method, target, minor = match.groups()
    keep_alive = minor == b"1"
    lines = _header_lines(block, 400)
    low = lowered(lines)
    if b"\ntransfer-encoding:" in low or (
        b"\ncontent-length:" in low
        and any(value != b"0" for value in field_values(lines, low, b"content-length"))
    ):
        if method in (b"GET", b"HEAD"):
            raise ProtocolError("request bodies are not accepted: this API is read-only")
        # A write is answered 405 like any other; its body is never read, so the
        # connection closes after the answer.
        return RequestHead(method, target, lines, False, low)
    if b"\nconnection:" in low:
        for value in field_values(lines, low, b"connection"):
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens and minor == b"0":
                keep_alive = True
    return RequestHead(method, target, lines, keep_alive, low)


class ResponseReader:
    """Incremental parser for one upstream response: head, then a body framed by
    Content-Length, chunked encoding or the end of the connection.

    `feed` returns True once the response is complete; leftover bytes mean the upstream
    sent more than it was asked for, so the connection must not be reused.
    """

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_length",
        "_limit",
        "_mode",
        "body",
        "done",
        "forward_lines",
        "framed",
        "has_date",
        "keep_alive",
        "leftover",
        "lines",
        "redirect",
        "status",
    )

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = b""
        self._mode = "head"  # head | length | chunk-size | chunk-data | chunk-crlf | trailer | eof
        self._length = 0
        self._chunk_left = 0
        self.body: bytes | bytearray = b""
        self.status = 0
        self.lines = b""
        """The response's header lines as received, each ending in CRLF."""
        self.forward_lines = b""
        """`lines` without hop-by-hop headers, for the caller."""
        self.framed = False
        """`forward_lines` carry a Content-Length that frames `body`."""
        self.has_date = False
        self.redirect = False
        """A 3xx with a Location: kube-apiserver's aggregator refuses to pass it on."""
        self.keep_alive = True
        self.done = False
        self.leftover = b""

    @property
    def started(self) -> bool:
        return bool(self._buffer) or self._mode != "head"

    def feed(self, data: bytes) -> bool:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        while not self.done:
            if self._mode == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("response head too large", 502)
                    self._buffer = buffer
                    return False
                self._start(buffer[:end])
                buffer = buffer[end + 4 :]
            elif self._mode == "length":
                if not self.body and len(buffer) == self._length:  # the usual: one read
                    self.body, buffer, self._length = buffer, b"", 0
                else:
                    take = buffer[: self._length]
                    self._append(take)
                    self._length -= len(take)
                    buffer = buffer[len(take) :]
                if self._length:
                    return False
                self.done = True
            elif self._mode == "eof":
                self._append(buffer)
                return False
            elif self._mode == "chunk-data":
                take = buffer[: self._chunk_left]
                self._append(take)
                self._chunk_left -= len(take)
                buffer = buffer[len(take) :]
                if self._chunk_left:
                    return False
                self._mode = "chunk-crlf"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 4096:
                        raise ProtocolError("malformed chunked encoding", 502)
                    self._buffer = buffer
                    return False
                line, buffer = buffer[:end], buffer[end + 2 :]
                self._line(line)
        self.leftover = buffer
        return True

    def eof(self) -> bool:
        """The upstream closed: True when that completes the response."""
        if self._mode == "eof":
            self.done = True
            self.keep_alive = False
        return self.done

    def _append(self, data: bytes) -> None:
        if not isinstance(self.body, bytearray):
            self.body = bytearray(self.body)  # grows in place: no quadratic copying
        self.body += data
        if len(self.body) > self._limit:
            raise ProtocolError("response too large", 502)

    def _start(self, head: bytes) -> None:
        status_line, _, block = head.partition(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise ProtocolError("malformed status line", 502)
        status = self.status = int(match[2])
        self.keep_alive = match[1] == b"1"
        lines = _header_lines(block, 502)
        low = lowered(lines)
        # One pass over the few headers that matter here (on the hot path: most answers
        # have just Content-Length and Date among them), instead of a lookup per name.
        lengths: list[bytes] = []
        codings: list[bytes] = []
        listed: list[bytes] = []
        hops: list[re.Match[bytes]] = []
        has_date = redirect = False
        for special in _SPECIAL.finditer(low):
            name = special[1]
            if name in _NOT_HOP_BY_HOP:
                if name == b"date":
                    has_date = True
                elif special[2].strip(b" \t"):
                    redirect = 300 <= status < 400
                continue
            hops.append(special)
            if name == b"content-length":
                lengths.append(special[2].strip(b" \t"))
            elif name == b"transfer-encoding":
                codings.append(special[2].strip(b" \t"))
            elif name == b"connection":
                value = special[2].strip(b" \t")
                if value == b"keep-alive":  # the usual one: nothing to do
                    continue
                tokens = [token.strip(b" \t") for token in value.split(b",")]
                if b"close" in tokens:
                    self.keep_alive = False
                listed += [t for t in tokens if t and t not in (b"close", b"keep-alive")]
        length: int | None = None
        if lengths:
            if not lengths[0].isdigit() or (
                len(lengths) > 1 and any(value != lengths[0] for value in lengths)
            ):
                raise ProtocolError("bad Content-Length in the response", 502)
            length = int(lengths[0])
        chunked = bool(codings)
        if chunked and codings != [b"chunked"]:  # compared lower-cased: case-insensitive
            raise ProtocolError("unsupported Transfer-Encoding in the response", 502)
        # 204 and 304 never have a body (RFC 9112 6.3), so no length goes downstream:
        # a 204 may not carry one, a 304's would describe another representation.
        bodiless = status in (204, 304) or status < 200
        # What goes downstream: the same lines minus hop-by-hop ones. One Content-Length
        # that frames the body we pass on unchanged may stay; any other is recomputed.
        keep_length = len(lengths) == 1 and not chunked and not bodiless
        self.framed = keep_length or bodiless  # nothing to add for a response with no body
        if keep_length:
            hops = [hop for hop in hops if hop[1] != b"content-length"]
        forward = without_lines(lines, hops)
        if listed:  # headers the Connection header names are hop-by-hop too (RFC 9110 7.6.1)
            forward = b"".join(
                line + b"\r\n"
                for line in forward.split(b"\r\n")[:-1]
                if line.partition(b":")[0].lower() not in listed
            )
        self.forward_lines = forward
        self.lines = lines
        self.has_date = has_date
        self.redirect = redirect
        if status < 200:  # interim (100 Continue): the real response follows
            if status == 101:
                raise ProtocolError("the upstream switched protocols", 502)
            self.lines, self.forward_lines, self.status = b"", b"", 0
            return
        if bodiless:
            self.done = True
        elif chunked:
            if length is not None:
                raise ProtocolError("response framed by both length and chunks", 502)
            self._mode = "chunk-size"
        elif length is not None:
            if length > self._limit:
                raise ProtocolError("response too large", 502)
            self._mode, self._length = "length", length
            self.done = length == 0
        else:
            self._mode, self.keep_alive = "eof", False

    def _line(self, line: bytes) -> None:
        if self._mode == "chunk-crlf":
            if line:
                raise ProtocolError("malformed chunked encoding", 502)
            self._mode = "chunk-size"
        elif self._mode == "chunk-size":
            size = line.split(b";", 1)[0].strip(b" \t")
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                raise ProtocolError("malformed chunk size", 502)
            self._chunk_left = int(size, 16)
            self._mode = "chunk-data" if self._chunk_left else "trailer"
        elif not line:  # the blank line that ends the trailer section
            self.done = True


class DateHeader:
    """The Date header line, formatted at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


_DATE = DateHeader()
_STATUS_LINES = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode()) for code, phrase in PHRASES.items()
}


def encode_head(
    status: int, lines: bytes, length: int, *, close: bool, date: bool, framed: bool
) -> bytes:
    """The head of `encode_response`, for a body written separately (a large one, not
    copied once more into one buffer with its head)."""
    status_line = _STATUS_LINES.get(status)
    if status_line is None:
        status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "").encode())
    return b"".join(
        (
            status_line,
            _DATE.line() if date else b"",
            lines,
            b"" if framed else b"Content-Length: %d\r\n" % length,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        )
    )


def encode_response(
    status: int,
    lines: bytes,
    body: bytes | bytearray,
    *,
    close: bool = False,
    date: bool = True,
    framed: bool = False,
) -> bytes:
    """A complete response. `lines` are header lines ending in CRLF, without hop-by-hop
    headers; they carry a Content-Length for `body` only when `framed`. `date`: add one."""
    status_line = _STATUS_LINES.get(status)
    if status_line is None:
        status_line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "").encode())
    return b"".join(
        (
            status_line,
            _DATE.line() if date else b"",
            lines,
            b"" if framed else b"Content-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )
