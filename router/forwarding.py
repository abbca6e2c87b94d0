"""Which request headers cross the router, and which response headers come back.

An allow-list, not a deny-list: identity headers are forwarded only under the
configured names, byte for byte and one line per value, because joining or renaming
them changes who the tenant's KEDA thinks is calling. Everything else a caller might
send (Authorization, Impersonate-*, hop-by-hop headers) stays behind.

Both directions work on header lines exactly as received (validated by router.http1,
each ending in CRLF): one compiled expression finds the lines not kept, on the lower-cased
copy the request already has (case-insensitive matching costs sre several times more), and
only those are cut out; the kept ones cross unchanged, with no Python per kept line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from router.http1 import field_entries, first_value, lowered, without_lines
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
            (n.lower() for n in (*names.username, *names.group, *names.uid, *_PLAIN)),
            (prefix.lower() for prefix in names.extra_prefixes),
        )
        # On `lowered` lines: from the LF before each line not kept up to its CR, which is that
        # line's span (CRLF included) in the original lines. The name must be followed by ':'
        # at once, so "X-Remote-Userx" is not "X-Remote-User". Kept lines are passed over at
        # their name, not read through: only the few dropped ones are.
        self._dropped = re.compile(rb"\n(?!(?:" + kept + rb"):)[^\n]+")
        self._username_names = tuple(n.lower().encode("latin-1") for n in names.username)

    def forwarded(self, lines: bytes, low: bytes | None = None) -> bytes:
        """The header lines to send upstream, in their original order, bytes unchanged.

        `low` is `router.http1.lowered(lines)` when the caller has it already."""
        low = lowered(lines) if low is None else low
        return without_lines(lines, self._dropped.finditer(low))

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
