"""What the namespace-set ConfigMap decides for KEDA's WATCH_NAMESPACE (pure, no I/O).

The platform controller alone writes `data.namespaces` ("a,b,c", sorted; "" = decided empty);
no such key (or no ConfigMap) = not decided yet. KEDA reads an empty WATCH_NAMESPACE as "every
namespace", and an empty item in the list as the cluster scope too, so neither ever reaches it:
undecided and empty both mean KEDA is not running, and a value that is not a list of namespace
names is refused (the one in force stays) and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from operator_pod.kube import Obj

KEY = "namespaces"
MAX_ENV_STRING_BYTES = 128 * 1024
"""execve's limit on one `NAME=value` environment string (MAX_ARG_STRLEN)."""
_DNS1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Decision:
    value: str | None
    """WATCH_NAMESPACE to run KEDA with; None: KEDA not running (undecided or empty)."""
    reason: str
    """Why, for logs and readiness: "decided", "empty", "undecided" or "refused: ..."."""

    @property
    def refused(self) -> bool:
        return self.reason.startswith("refused")


def decide(configmap: Obj | None, env_name: str) -> Decision:
    """The decision in `configmap` (None: it does not exist)."""
    data = (configmap or {}).get("data") or {}
    if not isinstance(data, dict) or KEY not in data:
        return Decision(None, "undecided")
    raw = data[KEY]
    if not isinstance(raw, str):
        return Decision(None, "refused: data.namespaces is not a string")
    if raw == "":
        return Decision(None, "empty")
    names = raw.split(",")
    bad = [name for name in names if not _DNS1123_LABEL.fullmatch(name)]
    if bad:
        return Decision(None, f"refused: not namespace names: {', '.join(map(repr, bad[:3]))}")
    value = ",".join(sorted(set(names)))
    size = len(env_name.encode()) + 1 + len(value.encode()) + 1
    if size > MAX_ENV_STRING_BYTES:
        return Decision(
            None,
            f"refused: {env_name} would be {size} bytes ({len(names)} namespaces), over the "
            f"{MAX_ENV_STRING_BYTES}-byte limit execve puts on one environment string",
        )
    return Decision(value, "decided")
