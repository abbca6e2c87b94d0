"""What WATCH_NAMESPACE should be: pure functions from the namespace cache.

Level-triggered: the whole cache is read after every event, never patched by deltas,
so a missed or reordered event can't leave a stale namespace behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import TenancyRule

MAX_ENV_STRING_BYTES = 131072
"""execve(2) rejects one argument or environment string longer than MAX_ARG_STRLEN
(32 pages) with E2BIG, counting "NAME=value" and its NUL. 32 x 4 KiB is the smallest
value any Linux has, so it is safe wherever the operator runs."""


class EnvTooLargeError(ValueError):
    """The value would make execve fail: refused, and the running operator is kept."""


@dataclass(frozen=True, slots=True)
class Desired:
    """The tenant's namespaces as the cache says now."""

    names: tuple[NamespaceName, ...] = ()
    """Sorted, unique, valid DNS-1123 names; Terminating namespaces included."""
    contested: frozenset[NamespaceName] = frozenset()
    """Namespaces in the cache that another tenant claims (moved away, or in conflict):
    these must leave at once, never held by the removal delay."""

    @property
    def value(self) -> str:
        """The canonical environment value: names joined by commas, "" when none."""
        return ",".join(self.names)


def desired_namespaces(
    namespaces: Mapping[NamespaceName, Namespace],
    *,
    rule: TenancyRule | None,
    tenant: TenantName | None,
) -> Desired:
    """The tenant's own namespaces (per the rule), or every selected one (raw selector).

    Terminating namespaces stay until they are gone, so KEDA can remove its finalizers.
    A namespace claimed by two tenants belongs to neither (the rule fails closed).
    """
    if rule is None or tenant is None:
        return Desired(_valid(namespaces))
    chosen: list[NamespaceName] = []
    contested: set[NamespaceName] = set()
    for name, namespace in namespaces.items():
        decision = rule.decide(namespace, namespaces)
        if decision.tenant == tenant:
            chosen.append(name)
        elif decision.candidates - {tenant}:
            contested.add(name)
    return Desired(_valid(chosen), frozenset(contested))


def _valid(names: Iterable[NamespaceName]) -> tuple[NamespaceName, ...]:
    return tuple(sorted({name for name in names if is_dns1123_label(name)}))


def split(value: str | None) -> frozenset[str]:
    """The names in a canonical value (None and "" are both no names)."""
    return frozenset(name for name in (value or "").split(",") if name)


def changes(old: str | None, new: str) -> tuple[list[str], list[str]]:
    """(added, removed) between two canonical values, for the restart log line."""
    before, after = split(old), split(new)
    return sorted(after - before), sorted(before - after)


def moved_away(running: str | None, desired: Desired) -> list[str]:
    """Namespaces the running value has that now belong to someone else."""
    return sorted(split(running) & desired.contested)


def env_string_bytes(name: str, value: str) -> int:
    """What one `NAME=value` environment string costs execve, NUL included."""
    return len(name.encode()) + 1 + len(value.encode()) + 1


def check_env_size(name: str, value: str) -> None:
    size = env_string_bytes(name, value)
    if size > MAX_ENV_STRING_BYTES:
        raise EnvTooLargeError(
            f"{name} would be {size} bytes ({value.count(',') + 1} namespaces), over the "
            f"{MAX_ENV_STRING_BYTES}-byte limit execve puts on one environment string; "
            "keeping the operator as it is"
        )
