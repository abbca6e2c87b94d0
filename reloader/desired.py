"""What WATCH_NAMESPACE should be: pure functions from the namespace cache.

Level-triggered: the whole cache is read after every event, never patched by deltas,
so a missed or reordered event can't leave a stale namespace behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import TenancyRule

# execve(2) rejects any single argument or environment string longer than
# MAX_ARG_STRLEN (32 pages): "NAME=value" plus its terminating NUL must fit.
MAX_ENV_STRING_BYTES = 131072


class EnvTooLargeError(ValueError):
    """The value would make execve fail: refused, and the running child is kept."""


def desired_namespaces(
    namespaces: Mapping[NamespaceName, Namespace],
    *,
    rule: TenancyRule | None,
    tenant: TenantName | None,
) -> tuple[str, ...]:
    """Sorted, unique, valid names: the tenant's own (per the rule), or every selected one.

    Terminating namespaces stay until they are gone, so KEDA can remove its finalizers.
    """
    if rule is None or tenant is None:
        chosen: Iterable[str] = namespaces
    else:
        chosen = (
            name for name, ns in namespaces.items() if rule.decide(ns, namespaces).tenant == tenant
        )
    return tuple(sorted({name for name in chosen if is_dns1123_label(name)}))


def canonical(names: Iterable[str]) -> str:
    return ",".join(names)


def changes(old: str | None, new: str) -> tuple[list[str], list[str]]:
    """(added, removed) between two canonical values, for the restart log line."""
    before = set(old.split(",")) - {""} if old else set()
    after = set(new.split(",")) - {""}
    return sorted(after - before), sorted(before - after)


def check_env_size(name: str, value: str) -> None:
    size = len(name.encode()) + 1 + len(value.encode()) + 1
    if size > MAX_ENV_STRING_BYTES:
        raise EnvTooLargeError(
            f"{name} would be {size} bytes, over the {MAX_ENV_STRING_BYTES}-byte limit of one "
            "environment string; keeping the current child"
        )
