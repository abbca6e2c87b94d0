"""The slice of a Namespace object that tenancy decisions read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tenancy_common.names import NamespaceName

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Namespace:
    """An immutable view of one Namespace: name, labels, and whether it is going away."""

    name: NamespaceName
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    terminating: bool = False
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Namespace:
        """Build from a Namespace as the API returns it (a JSON dict)."""
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        terminating = bool(meta.get("deletionTimestamp")) or status.get("phase") == "Terminating"
        return cls(
            name=NamespaceName(str(meta.get("name", ""))),
            labels=MappingProxyType(dict(meta.get("labels") or {})),
            terminating=terminating,
            resource_version=str(meta.get("resourceVersion", "")),
        )
