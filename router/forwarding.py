"""Which request headers cross the router, and which response headers come back.

An allow-list, not a deny-list: identity headers are forwarded only under the
configured names, byte for byte and one line per value, because joining or renaming
them changes who the tenant's KEDA thinks is calling. Everything else a caller might
send (Authorization, Impersonate-*, hop-by-hop headers) stays behind.
"""

from __future__ import annotations

from collections.abc import Iterable

from router.requestheader import HeaderNames

_PLAIN = ("audit-id", "accept", "accept-encoding", "user-agent")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # recomputed for the body we send
    }
)


class HeaderPolicy:
    """Compiled once from the configured header names; applied per request."""

    def __init__(self, names: HeaderNames) -> None:
        self._exact = frozenset(
            name.lower().encode("latin-1")
            for name in (*names.username, *names.group, *names.uid, *_PLAIN)
        )
        self._prefixes = tuple(p.lower().encode("latin-1") for p in names.extra_prefixes)
        self._username = tuple(n.lower().encode("latin-1") for n in names.username)

    def forwarded(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers to send upstream, in their original order, names unchanged."""
        kept = []
        for name, value in raw_headers:
            lower = name.lower()
            if lower in self._exact or lower.startswith(self._prefixes):
                kept.append((name, value))
        return kept

    def username(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The asserted user: the first non-empty value among the username headers."""
        for name, value in raw_headers:
            if value and name.lower() in self._username:
                return value
        return b""


def response_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones; Content-Encoding passes untouched."""
    return [(name, value) for name, value in raw_headers if name.lower() not in HOP_BY_HOP]
