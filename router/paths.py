"""Parse the raw request target into a route, rejecting anything ambiguous.

The raw path is parsed, never a decoded or normalised one: the namespace decides which
tenant receives the caller's identity, so `..`, empty segments, percent-encoding and
backslashes are refused rather than interpreted. The HPA API validates metric names as
path segments without `/` or `%`, so no legitimate request needs any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from router.status import StatusError
from tenancy_common.names import NamespaceName, is_dns1123_label

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION_PATH = f"/apis/{GROUP}/{VERSION}"

# Visible ASCII that needs no escaping in a path segment, minus '%' and '/'.
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=-]+")

LocalKind = Literal["apis", "group", "resources", "openapi"]


@dataclass(frozen=True, slots=True)
class MetricRoute:
    """A request to forward: which namespace, which metric, and the untouched query."""

    namespace: NamespaceName
    metric: str
    query: str  # without the '?', exactly as received


@dataclass(frozen=True, slots=True)
class LocalRoute:
    """A request the router answers itself (discovery), whatever the tenants' state."""

    kind: LocalKind


Route = MetricRoute | LocalRoute

_LOCAL: dict[str, LocalKind] = {
    "/apis": "apis",
    f"/apis/{GROUP}": "group",
    GROUP_VERSION_PATH: "resources",
    "/openapi/v2": "openapi",
    "/openapi/v3": "openapi",
}


def parse_target(target: str) -> Route:
    """Route for a raw request target (path and query as sent); raises StatusError."""
    path, _, query = target.partition("?")
    if "#" in target or not path.startswith("/"):
        raise StatusError(400, "malformed request target")
    if "%" in path or "\\" in path:
        raise StatusError(
            400, "percent-encoded or backslash characters are not allowed in the path"
        )
    if path == "/":
        raise StatusError(404, "the server could not find the requested resource (/)")
    segments = path[1:].split("/")
    if segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()  # one trailing slash, as the API server tolerates
    if any(segment in ("", ".", "..") for segment in segments):
        raise StatusError(400, "empty, '.' or '..' path segments are not allowed")
    canonical = "/" + "/".join(segments)
    local = _LOCAL.get(canonical)
    if local is not None:
        return LocalRoute(local)
    if canonical.startswith("/openapi/"):
        return LocalRoute("openapi")
    prefix = ["apis", GROUP, VERSION, "namespaces"]
    if segments[:4] != prefix or len(segments) != 6:
        raise StatusError(404, f"the server could not find the requested resource ({path})")
    namespace, metric = segments[4], segments[5]
    if not is_dns1123_label(namespace):
        raise StatusError(400, f"invalid namespace {namespace!r}: must be a DNS-1123 label")
    if _SEGMENT.fullmatch(metric) is None:
        raise StatusError(400, f"invalid metric name {metric!r}")
    return MetricRoute(NamespaceName(namespace), metric, query)
