"""The server-side apply configuration of an operator Deployment's WATCH_NAMESPACE and replicas.

Pure: the reloader's deployment mode and the platform controller both apply it, each with its
own field manager. An empty namespace set is never written (KEDA reads an empty WATCH_NAMESPACE
as *all namespaces*): the Deployment is scaled to zero instead, its old value kept unused.
"""

from __future__ import annotations

from typing import Any


def apply_configuration(
    deployment: dict[str, Any], *, container: str, env_name: str, value: str | None, replicas: int
) -> dict[str, Any] | None:
    """The server-side apply configuration (only the fields its caller owns) that gets
    `deployment` to run `replicas` operators with `value` (None: scaled to zero); None when
    it already does. LookupError when the container is missing, ValueError when the variable
    comes from a `valueFrom` (someone else's field: an apply cannot remove it)."""
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    found = next((c for c in containers if c.get("name") == container), None)
    if found is None:
        raise LookupError(
            f"deployment {metadata.get('namespace')}/{metadata.get('name')} "
            f"has no container {container!r}"
        )
    current = next((e for e in found.get("env") or [] if e.get("name") == env_name), None)
    if current is not None and current.get("valueFrom") is not None:
        raise ValueError(
            f"{env_name} of container {container!r} comes from valueFrom: remove it, "
            "its value is set by server-side apply"
        )
    live_value = current.get("value") if current is not None else None
    # Scaled to zero, the old value stays (and stays ours): nothing runs with it.
    want_value = value if value is not None else live_value
    want_replicas = replicas if value is not None else 0
    if spec.get("replicas", 1) == want_replicas and live_value == want_value:
        return None
    configuration: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace")},
        "spec": {"replicas": want_replicas},
    }
    if want_value:
        env = [{"name": env_name, "value": want_value}]
        configuration["spec"]["template"] = {
            "spec": {"containers": [{"name": container, "env": env}]}
        }
    return configuration
