"""Tenancy configuration: the command-line flags both binaries share, the rule document and
the tenancy file.

The rule document is the router chart's `tenancy:` values, published by the router release as
one ConfigMap; the router reads it as a file and every tenant's reloader reads the same object
through the API, so all of them evaluate one rule (docs/reloader.md, "One ownership decision"):

    labelKeys: [keda-tenancy.io/tenant]
    hnc: {roots: [team-a, team-b], rootLabel: ""}
    namespaceNamePattern: ""
    tenants: {tenant-a: {namespaces: [legacy-a]}}

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

    def has_namespaces(self) -> bool:
        return any(spec.namespaces for spec in self.tenants.values())

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
        "--tenancy-rule-file",
        default="",
        metavar="PATH",
        help="the whole rule as one YAML document (labelKeys, hnc, namespaceNamePattern, "
        "tenants.<t>.namespaces): the router chart's published rule; excludes the flags above",
    )
    group.add_argument(
        "--tenancy-file",
        default="",
        metavar="PATH",
        help="YAML/JSON file of tenants: static namespace lists and per-tenant upstreams",
    )


RULE_FLAGS = ("tenant_label_key", "hnc_roots", "hnc_root_label", "namespace_name_pattern")


def tenancy_from_flags(
    args: argparse.Namespace,
) -> tuple[TenancyRule, TenancyFile]:
    """Build the rule from parsed flags; raises ConfigError when none or a bad one is given."""
    tenancy_file = TenancyFile.load(args.tenancy_file) if args.tenancy_file else TenancyFile()
    if getattr(args, "tenancy_rule_file", ""):
        if any(getattr(args, flag) for flag in RULE_FLAGS):
            raise ConfigError(
                "--tenancy-rule-file is the whole rule: drop --tenant-label-key, --hnc-roots, "
                "--hnc-root-label and --namespace-name-pattern"
            )
        if tenancy_file.has_namespaces():
            raise ConfigError(
                "with --tenancy-rule-file, namespace lists belong in the rule document's "
                "tenants, not in --tenancy-file"
            )
        rule = load_rule_document(args.tenancy_rule_file)
        for tenant in tenancy_file.tenants:
            problem = rule.never_owns(tenant)
            if problem is not None:
                raise ConfigError(f"{args.tenancy_file}: {problem}")
        return rule, tenancy_file
    roots = frozenset(name for name in args.hnc_roots.split(",") if name)
    return build_rule(
        label_keys=[key for key in args.tenant_label_key if key],
        hnc_roots=roots,
        hnc_root_label=args.hnc_root_label,
        name_pattern=args.namespace_name_pattern,
        tenancy_file=tenancy_file,
        source="flags",
        pattern_source="--namespace-name-pattern",
    ), tenancy_file


def build_rule(
    *,
    label_keys: list[str],
    hnc_roots: frozenset[str],
    hnc_root_label: str,
    name_pattern: str,
    tenancy_file: TenancyFile,
    source: str,
    pattern_source: str = "",
) -> TenancyRule:
    rules: list[Rule] = [LabelValueRule(key) for key in label_keys]
    if hnc_roots or hnc_root_label:
        key, sep, value = hnc_root_label.partition("=")
        rules.append(
            HncTreeRule(
                roots=hnc_roots, root_label_key=key or None, root_label_value=value if sep else None
            )
        )
    if name_pattern:
        try:
            rules.append(NamePatternRule(re.compile(name_pattern)))
        except (re.error, ValueError) as exc:
            where = pattern_source or f"{source}: namespaceNamePattern"
            raise ConfigError(f"{where}: {exc}") from exc
    static = tenancy_file.static_rule()
    if static is not None:
        rules.append(static)
    if not rules:
        raise ConfigError(
            f"{source}: no tenancy rule: give label keys, HNC roots or a root label, a "
            "namespace name pattern, or tenants with namespaces"
        )
    rule = TenancyRule(tuple(rules))
    for tenant in tenancy_file.tenants:
        problem = rule.never_owns(tenant)
        if problem is not None:
            raise ConfigError(f"{source}: {problem}")
    return rule


def load_rule_document(path: str | Path) -> TenancyRule:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"tenancy rule file {path}: {exc}") from exc
    return parse_rule_document(raw, source=str(path))


def parse_rule_document(raw: Any, *, source: str) -> TenancyRule:
    """The rule from its document (the router chart's `tenancy:` values)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping")
    unknown = set(raw) - {"labelKeys", "hnc", "namespaceNamePattern", "tenants"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}")
    label_keys = raw.get("labelKeys") or []
    hnc = raw.get("hnc") or {}
    pattern = raw.get("namespaceNamePattern") or ""
    if not isinstance(hnc, dict) or set(hnc) - {"roots", "rootLabel"}:
        raise ConfigError(f"{source}: hnc takes roots and rootLabel")
    roots = hnc.get("roots") or []
    root_label = hnc.get("rootLabel") or ""
    if not (
        isinstance(label_keys, list)
        and all(isinstance(key, str) and key for key in label_keys)
        and isinstance(roots, list)
        and all(isinstance(root, str) and is_dns1123_label(root) for root in roots)
        and isinstance(root_label, str)
        and isinstance(pattern, str)
    ):
        raise ConfigError(
            f"{source}: labelKeys and hnc.roots are lists of names, hnc.rootLabel and "
            "namespaceNamePattern strings"
        )
    return build_rule(
        label_keys=label_keys,
        hnc_roots=frozenset(roots),
        hnc_root_label=root_label,
        name_pattern=pattern,
        tenancy_file=TenancyFile.parse({"tenants": raw.get("tenants") or {}}, source=source),
        source=source,
    )
