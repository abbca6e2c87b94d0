"""Which request headers cross the router, and which response headers come back.

An allow-list, not a deny-list: identity headers are forwarded only under the
configured names, byte for byte and one line per value, because joining or renaming
them changes who the tenant's KEDA thinks is calling. Everything else a caller might
send (Authorization, Impersonate-*, hop-by-hop headers) stays behind.

Both directions work on header lines exactly as received (validated by router.http1,
each ending in CRLF): one compiled expression cuts the other lines out, so the kept ones
cross unchanged and no per-header Python runs on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from router.http1 import field_entries, first_value, lowered
from router.requestheader import HeaderNames

_PLAIN = ("audit-id", "accept", "accept-encoding", "user-agent")
_TOKEN_CHARS = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"


def _alternatives(names: Iterable[str], prefixes: Iterable[str] = ()) -> bytes:
    """A regex alternation matching exactly these header names (and names with these
    prefixes), case-insensitively; matches nothing when there are none."""
    parts = [re.escape(name.encode("latin-1")) for name in names]
    parts += [re.escape(prefix.encode("latin-1")) + _TOKEN_CHARS + b"*" for prefix in prefixes]
    return b"|".join(parts) if parts else b"(?!)"


class HeaderPolicy:
    """Compiled once from the configured header names; applied per request."""

    def __init__(self, names: HeaderNames) -> None:
        kept = _alternatives(
            (*names.username, *names.group, *names.uid, *_PLAIN), names.extra_prefixes
        )
        # On LF + lines: from the LF before each line not kept up to its CR. The name must be
        # followed by ':' at once, so "X-Remote-Userx" is not "X-Remote-User". Kept lines
        # are skipped at the name, not scanned: only the few dropped ones are read through.
        self._dropped = re.compile(rb"\n(?!(?i:" + kept + rb"):)[^\n]+")
        self._username_names = tuple(n.lower().encode("latin-1") for n in names.username)

    def forwarded(self, lines: bytes) -> bytes:
        """The header lines to send upstream, in their original order, bytes unchanged."""
        return self._dropped.sub(b"", b"\n" + lines)[1:]

    def username(self, lines: bytes, low: bytes | None = None) -> bytes:
        """The asserted user: the first non-empty value among the username headers.

        `low` is `router.http1.lowered(lines)` when the caller has it already."""
        low = lowered(lines) if low is None else low
        if len(self._username_names) == 1:  # the usual configuration: no sorting across names
            return first_value(lines, low, self._username_names[0])
        entries = sorted(
            entry for name in self._username_names for entry in field_entries(lines, low, name)
        )
        return next((value for _, value in entries if value), b"")
