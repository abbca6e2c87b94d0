"""Domain names as types, and the one DNS-1123 label check everything uses.

Namespace and tenant names end up in URLs and environment variables, so they are
validated once, here, and carried as distinct types afterwards.
"""

from __future__ import annotations

import re
from typing import NewType

NamespaceName = NewType("NamespaceName", str)
TenantName = NewType("TenantName", str)

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_dns1123_label(value: str) -> bool:
    """True for a valid Kubernetes namespace name (RFC 1123 label, at most 63 chars)."""
    return _DNS1123_LABEL.fullmatch(value) is not None
