"""What the router answers itself: discovery, independent of every tenant.

The aggregator marks the APIService Available from these, so they must never depend on
a tenant backend: one tenant's KEDA being down must not take the API away from all.
"""

from __future__ import annotations

import json

from router.paths import GROUP, VERSION, LocalKind
from router.status import StatusError

_GROUP_VERSION = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
_GROUP = {"name": GROUP, "versions": [_GROUP_VERSION], "preferredVersion": _GROUP_VERSION}

BODIES: dict[LocalKind, bytes] = {
    "apis": json.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_GROUP]}).encode(),
    "group": json.dumps({"kind": "APIGroup", "apiVersion": "v1", **_GROUP}).encode(),
    "resources": json.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{VERSION}",
            "resources": [
                {
                    "name": "externalmetrics",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "ExternalMetricValueList",
                    "verbs": ["get"],
                }
            ],
        }
    ).encode(),
}


def local_body(kind: LocalKind) -> bytes:
    body = BODIES.get(kind)
    if body is None:  # OpenAPI: the aggregator treats 404 as "no spec", never as unavailable
        raise StatusError(404, "the router serves no OpenAPI document")
    return body
