"""Tenancy configuration: the command-line flags both binaries share and the tenancy file.

The tenancy file (YAML or JSON) lists tenants, optionally with their namespaces (the
static rule) and per-tenant upstream overrides used by the router:

    tenants:
      tenant-a:
        namespaces: [tenant-a, tenant-a--dev]
        upstream: https://keda-metrics.tenant-a.svc:443
        caFile: /etc/keda-tenancy/tenant-a-ca.crt
        serverName: keda-metrics.tenant-a.svc
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tenancy_common.names import TenantName, is_dns1123_label
from tenancy_common.tenancy import (
    HncTreeRule,
    LabelValueRule,
    NamePatternRule,
    Rule,
    StaticRule,
    TenancyRule,
)


class ConfigError(ValueError):
    """Configuration that cannot work; reported at start, before anything listens."""


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """What the tenancy file says about one tenant."""

    namespaces: frozenset[str] = frozenset()
    upstream: str | None = None
    ca_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class TenancyFile:
    tenants: Mapping[TenantName, TenantSpec] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> TenancyFile:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"tenancy file {path}: {exc}") from exc
        return cls.parse(raw or {}, source=str(path))

    @classmethod
    def parse(cls, raw: Any, *, source: str = "tenancy file") -> TenancyFile:
        if not isinstance(raw, dict) or not isinstance(raw.get("tenants") or {}, dict):
            raise ConfigError(f"{source}: expected a mapping with a 'tenants' mapping")
        tenants: dict[TenantName, TenantSpec] = {}
        for name, given in (raw.get("tenants") or {}).items():
            if not isinstance(name, str) or not is_dns1123_label(name):
                raise ConfigError(f"{source}: tenant name {name!r} is not a DNS-1123 label")
            spec = given or {}
            if not isinstance(spec, dict):
                raise ConfigError(f"{source}: tenant {name}: expected a mapping")
            unknown = set(spec) - {"namespaces", "upstream", "caFile", "serverName"}
            if unknown:
                raise ConfigError(f"{source}: tenant {name}: unknown keys {sorted(unknown)}")
            namespaces = spec.get("namespaces") or []
            if not isinstance(namespaces, list) or not all(
                isinstance(ns, str) and is_dns1123_label(ns) for ns in namespaces
            ):
                raise ConfigError(f"{source}: tenant {name}: namespaces must be DNS-1123 labels")
            tenants[TenantName(name)] = TenantSpec(
                namespaces=frozenset(namespaces),
                upstream=_optional_str(spec, "upstream", source, name),
                ca_file=_optional_str(spec, "caFile", source, name),
                server_name=_optional_str(spec, "serverName", source, name),
            )
        return cls(tenants)

    def static_rule(self) -> StaticRule | None:
        listed = {tenant: spec.namespaces for tenant, spec in self.tenants.items()}
        if not any(listed.values()):
            return None
        return StaticRule.from_lists(listed)


def _optional_str(spec: Mapping[str, Any], key: str, source: str, tenant: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{source}: tenant {tenant}: {key} must be a string")
    return value


def add_tenancy_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tenancy rule (at least one)")
    group.add_argument(
        "--tenant-label-key",
        action="append",
        default=[],
        metavar="KEY",
        help="namespace label whose value is the tenant (repeatable), e.g. "
        "capsule.clastix.io/tenant or keda-tenancy.io/tenant",
    )
    group.add_argument(
        "--hnc-roots",
        default="",
        metavar="NS[,NS...]",
        help="HNC root namespaces that are tenants (comma-separated)",
    )
    group.add_argument(
        "--hnc-root-label",
        default="",
        metavar="KEY[=VALUE]",
        help="label that marks an HNC root namespace as a tenant",
    )
    group.add_argument(
        "--namespace-name-pattern",
        default="",
        metavar="REGEX",
        help="regular expression over the namespace name with a (?P<tenant>...) group, "
        "matched in full, e.g. '(?P<tenant>[a-z0-9-]+?)--.+'",
    )
    group.add_argument(
        "--tenancy-file",
        default="",
        metavar="PATH",
        help="YAML/JSON file of tenants: static namespace lists and per-tenant upstreams",
    )


def tenancy_from_flags(
    args: argparse.Namespace,
) -> tuple[TenancyRule, TenancyFile]:
    """Build the rule from parsed flags; raises ConfigError when none or a bad one is given."""
    rules: list[Rule] = [LabelValueRule(key) for key in args.tenant_label_key if key]
    roots = frozenset(name for name in args.hnc_roots.split(",") if name)
    if roots or args.hnc_root_label:
        key, sep, value = args.hnc_root_label.partition("=")
        rules.append(
            HncTreeRule(
                roots=roots, root_label_key=key or None, root_label_value=value if sep else None
            )
        )
    if args.namespace_name_pattern:
        try:
            rules.append(NamePatternRule(re.compile(args.namespace_name_pattern)))
        except (re.error, ValueError) as exc:
            raise ConfigError(f"--namespace-name-pattern: {exc}") from exc
    tenancy_file = TenancyFile.load(args.tenancy_file) if args.tenancy_file else TenancyFile()
    static = tenancy_file.static_rule()
    if static is not None:
        rules.append(static)
    if not rules:
        raise ConfigError(
            "no tenancy rule: give --tenant-label-key, --hnc-roots/--hnc-root-label, "
            "--namespace-name-pattern or a --tenancy-file with namespaces"
        )
    return TenancyRule(tuple(rules)), tenancy_file
