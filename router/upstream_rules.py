"""Named upstreams with their own trust, and the routing rules that send requests to them.

The rules file (`--routing-rules-file`, YAML or JSON; the router chart's `routing:` values):

    upstreams:
      datadog:                                  # a shared adapter, usable by every rule
        url: https://datadog-cluster-agent-metrics-api.datadog.svc:8443
        caFile: /etc/keda-tenancy/upstreams/datadog/ca.crt
        serverName: datadog-cluster-agent-metrics-api.datadog.svc
        clientCertFile: ...                     # default: --upstream-client-cert-file
        clientKeyFile: ...
      team-a-prometheus:
        url: https://prometheus-adapter.team-a.svc:443
        tenant: team-a                          # only team-a's rules (and platform rules) name it
    rules:
      - name: team-a-prometheus-metrics
        tenant: team-a                          # matches team-a's namespaces only
        metricName: "prometheus-.*"             # regular expression over the whole name
        upstream: team-a-prometheus
      - name: datadog-metrics                   # no tenant: platform-wide
        labelSelector: {absent: [scaledobject.keda.sh/name]}
        upstream: datadog

Evaluation order for a request in namespace N (first match wins, file order within a step):
the rules of the tenant owning N, then that tenant's registered `metricName` backends
(router.registration), then the platform rules, then the tenant's own upstream (a `default`
registration, else the tenancy file or URL template); for a namespace no tenant owns the
platform rules, then --default-upstream, then 404. A namespace several tenants claim is never
routed.

An upstream's CA, server name and client certificate are used for that upstream only: each
has its own client TLS context (`trust_key`), never the template's --upstream-ca-file.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import yaml

from router.backends import Backend, origin
from router.label_selectors import SelectorError, positive_requirements
from router.paths import MetricRoute
from router.status import StatusError
from tenancy_common.names import TenantName, is_dns1123_label
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import ConfigError

TRUST_PREFIX = "\0upstream/"
"""Trust keys of named upstreams: a NUL can be in no file path, so none equals a tenant's
caFile (the key of a per-tenant CA)."""
DEFAULT_UPSTREAM_NAME = "_default"  # no DNS-1123 label: never a named upstream's


@dataclass(frozen=True, slots=True)
class UpstreamDefinition:
    """One upstream and everything that verifies it and identifies the router to it."""

    name: str
    url: str
    ca_file: str | None = None
    """None: system roots (never the template's --upstream-ca-file)."""
    server_name: str | None = None
    client_cert_file: str | None = None
    """None: the router's own --upstream-client-cert-file (who the router is, not whom it
    trusts)."""
    client_key_file: str | None = None
    tenant: TenantName | None = None
    """Owned by this tenant: other tenants' rules may not name it."""

    @property
    def trust_key(self) -> str:
        return TRUST_PREFIX + self.name

    def backend(self, name: str | None = None) -> Backend:
        return Backend(
            # never a tenant name (DNS-1123 labels have no '/'), so never a tenant's pool
            name=name or f"upstream/{self.name}",
            origin=origin(self.url, f"upstream {self.name}"),
            server_name=self.server_name,
            ca_file=self.trust_key,
        )


@dataclass(frozen=True, slots=True)
class RoutingRule:
    name: str
    upstream: str
    tenant: TenantName | None = None
    """None: platform-wide; else matches only namespaces this tenant owns."""
    metric: re.Pattern[str] | None = None
    """Matched against the whole metric name (fullmatch)."""
    present: frozenset[str] = frozenset()
    """Label keys the request's labelSelector requires (key, key=v, key==v, key in (...))."""
    absent: frozenset[str] = frozenset()
    """Label keys the request's labelSelector does not require."""
    values: tuple[tuple[str, re.Pattern[str]], ...] = ()
    """Label keys the selector sets to one value (key=v, key==v) matching the pattern."""

    def matches(self, metric: str, required: Mapping[str, str | None]) -> bool:
        if self.metric is not None and self.metric.fullmatch(metric) is None:
            return False
        for key in self.present:
            if key not in required:
                return False
        for key in self.absent:
            if key in required:
                return False
        for key, pattern in self.values:
            value = required.get(key)
            if value is None or pattern.fullmatch(value) is None:
                return False
        return True

    @property
    def uses_selector(self) -> bool:
        return bool(self.present or self.absent or self.values)

    def shadows(self, later: RoutingRule) -> bool:
        """Every request `later` matches, this one (evaluated first) matches too."""
        if self.metric is not None and (
            later.metric is None or later.metric.pattern != self.metric.pattern
        ):
            return False
        later_values = dict(later.values)
        if not self.present <= later.present | later_values.keys():
            return False
        if not self.absent <= later.absent:
            return False
        return all(
            key in later_values and later_values[key].pattern == pattern.pattern
            for key, pattern in self.values
        )


@dataclass(frozen=True, slots=True)
class RoutingRules:
    """The validated rules file, and the default upstream's own trust."""

    upstreams: Mapping[str, UpstreamDefinition] = field(default_factory=dict)
    rules: tuple[RoutingRule, ...] = ()
    default: UpstreamDefinition | None = None
    """--default-upstream with its own --default-upstream-* trust; None when it has none of
    its own (then the template's trust verifies it, as before) or is not set."""
    registration_namespaces: frozenset[str] = frozenset()
    """Where backends may register themselves (router.registration)."""

    def tenant_rules(self, tenant: TenantName | None) -> tuple[RoutingRule, ...]:
        return tuple(rule for rule in self.rules if tenant is not None and rule.tenant == tenant)

    def platform_rules(self) -> tuple[RoutingRule, ...]:
        return tuple(rule for rule in self.rules if rule.tenant is None)

    def validate(self, tenancy: TenancyRule, source: str) -> None:
        for rule in self.rules:
            upstream = self.upstreams.get(rule.upstream)
            if upstream is None:
                raise ConfigError(f"{source}: rule {rule.name}: unknown upstream {rule.upstream!r}")
            if rule.tenant is not None:
                problem = tenancy.never_owns(rule.tenant)
                if problem is not None:
                    raise ConfigError(f"{source}: rule {rule.name}: unknown tenant: {problem}")
                if upstream.tenant is not None and upstream.tenant != rule.tenant:
                    raise ConfigError(
                        f"{source}: rule {rule.name} of tenant {rule.tenant} names upstream "
                        f"{upstream.name} of tenant {upstream.tenant}: only a platform rule "
                        "may send one tenant's requests to another's upstream"
                    )
        for index, later in enumerate(self.rules):
            for earlier in self.rules[:index]:
                if earlier.tenant == later.tenant and earlier.shadows(later):
                    raise ConfigError(
                        f"{source}: rule {later.name} can never match: rule {earlier.name} "
                        "before it takes every request it would"
                    )


def add_routing_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("routing rules and the default upstream's own trust")
    group.add_argument(
        "--routing-rules-file",
        default="",
        metavar="PATH",
        help="YAML/JSON file of named upstreams (each with its own CA, server name and client "
        "certificate) and rules by metric name, labelSelector and tenant (deploy/README.md); "
        "read at start",
    )
    group.add_argument(
        "--default-upstream-ca-file",
        default="",
        help="CA that verifies --default-upstream, and nothing else (without any "
        "--default-upstream-* flag, --upstream-ca-file verifies it, as before)",
    )
    group.add_argument(
        "--default-upstream-server-name", default="", help="TLS name of --default-upstream"
    )
    group.add_argument(
        "--default-upstream-client-cert-file",
        default="",
        help="client certificate presented to --default-upstream (default: "
        "--upstream-client-cert-file)",
    )
    group.add_argument("--default-upstream-client-key-file", default="", help="its private key")
    group.add_argument(
        "--registration-namespaces",
        default="",
        metavar="NS[,NS...]",
        help="namespaces whose ConfigMaps labelled keda-tenancy.io/backend-registration=true "
        "register backends (deploy/README.md); watched with a Role in each",
    )


def routing_from_flags(args: argparse.Namespace, tenancy: TenancyRule) -> RoutingRules:
    path = args.routing_rules_file
    rules = load_rules(path) if path else RoutingRules()
    rules.validate(tenancy, path or "flags")
    own = (
        args.default_upstream_ca_file,
        args.default_upstream_server_name,
        args.default_upstream_client_cert_file,
        args.default_upstream_client_key_file,
    )
    if any(own) and not args.default_upstream:
        raise ConfigError("--default-upstream-* flags need --default-upstream")
    if bool(args.default_upstream_client_cert_file) != bool(args.default_upstream_client_key_file):
        raise ConfigError(
            "--default-upstream-client-cert-file and --default-upstream-client-key-file go together"
        )
    declared = frozenset(ns for ns in args.registration_namespaces.split(",") if ns)
    bad = sorted(ns for ns in declared if not is_dns1123_label(ns))
    if bad:
        raise ConfigError(f"--registration-namespaces: not namespace names: {bad}")
    if not any(own):
        return RoutingRules(rules.upstreams, rules.rules, None, declared)
    default = UpstreamDefinition(
        name=DEFAULT_UPSTREAM_NAME,
        url=args.default_upstream,
        ca_file=args.default_upstream_ca_file or None,
        server_name=args.default_upstream_server_name or None,
        client_cert_file=args.default_upstream_client_cert_file or None,
        client_key_file=args.default_upstream_client_key_file or None,
    )
    default.backend()  # the URL checked at start
    return RoutingRules(rules.upstreams, rules.rules, default, declared)


def load_rules(path: str | Path) -> RoutingRules:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"routing rules file {path}: {exc}") from exc
    return parse_rules(raw or {}, source=str(path))


def parse_rules(raw: Any, *, source: str) -> RoutingRules:
    if not isinstance(raw, dict) or set(raw) - {"upstreams", "rules"}:
        raise ConfigError(f"{source}: expected a mapping of 'upstreams' and 'rules'")
    given = raw.get("upstreams") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: upstreams must be a mapping of name to upstream")
    upstreams = {name: _upstream(name, spec, source) for name, spec in given.items()}
    listed = raw.get("rules") or []
    if not isinstance(listed, list):
        raise ConfigError(f"{source}: rules must be a list")
    rules = tuple(_rule(index, spec, source) for index, spec in enumerate(listed))
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{source}: rule names used twice: {duplicates}")
    return RoutingRules(upstreams, rules)


_UPSTREAM_KEYS = {"url", "caFile", "serverName", "clientCertFile", "clientKeyFile", "tenant"}
_RULE_KEYS = {"name", "tenant", "metricName", "labelSelector", "upstream"}
_SELECTOR_KEYS = {"present", "absent", "values"}


def _upstream(name: Any, spec: Any, source: str) -> UpstreamDefinition:
    if not isinstance(name, str) or not is_dns1123_label(name):
        raise ConfigError(f"{source}: upstream name {name!r} is not a DNS-1123 label")
    where = f"{source}: upstream {name}"
    if not isinstance(spec, dict) or set(spec) - _UPSTREAM_KEYS or "url" not in spec:
        raise ConfigError(f"{where}: expected url and optionally {sorted(_UPSTREAM_KEYS)}")
    text = {key: _string(spec, key, where) for key in _UPSTREAM_KEYS}
    if bool(text["clientCertFile"]) != bool(text["clientKeyFile"]):
        raise ConfigError(f"{where}: clientCertFile and clientKeyFile go together")
    tenant = text["tenant"]
    if tenant is not None and not is_dns1123_label(tenant):
        raise ConfigError(f"{where}: tenant {tenant!r} is not a DNS-1123 label")
    definition = UpstreamDefinition(
        name=name,
        url=str(text["url"]),
        ca_file=text["caFile"],
        server_name=text["serverName"],
        client_cert_file=text["clientCertFile"],
        client_key_file=text["clientKeyFile"],
        tenant=TenantName(tenant) if tenant else None,
    )
    definition.backend()  # the URL checked at start
    return definition


def _rule(index: int, spec: Any, source: str) -> RoutingRule:
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: rule {index}: expected a mapping")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: rule {index}: needs a name")
    where = f"{source}: rule {name}"
    unknown = set(spec) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    upstream = _string(spec, "upstream", where)
    if not upstream:
        raise ConfigError(f"{where}: needs an upstream")
    tenant = _string(spec, "tenant", where)
    if tenant is not None and not is_dns1123_label(tenant):
        raise ConfigError(f"{where}: tenant {tenant!r} is not a DNS-1123 label")
    pattern = _string(spec, "metricName", where)
    metric = _compile(pattern, f"{where}: metricName") if pattern is not None else None
    present, absent, values = _selector(spec.get("labelSelector"), where)
    rule = RoutingRule(
        name=name,
        upstream=upstream,
        tenant=TenantName(tenant) if tenant else None,
        metric=metric,
        present=present,
        absent=absent,
        values=values,
    )
    if rule.metric is None and not rule.uses_selector:
        raise ConfigError(
            f"{where}: has neither metricName nor labelSelector, so it would take every "
            "request (use --default-upstream for namespaces no tenant owns)"
        )
    clash = (present | {key for key, _ in values}) & absent
    if clash:
        raise ConfigError(
            f"{where}: can never match: labels {sorted(clash)} both required and absent"
        )
    return rule


def _selector(
    spec: Any, where: str
) -> tuple[frozenset[str], frozenset[str], tuple[tuple[str, re.Pattern[str]], ...]]:
    if spec is None:
        return frozenset(), frozenset(), ()
    if not isinstance(spec, dict) or set(spec) - _SELECTOR_KEYS:
        raise ConfigError(f"{where}: labelSelector takes {sorted(_SELECTOR_KEYS)}")
    keys: dict[str, frozenset[str]] = {}
    for part in ("present", "absent"):
        listed = spec.get(part) or []
        if not isinstance(listed, list) or not all(isinstance(k, str) and k for k in listed):
            raise ConfigError(f"{where}: labelSelector.{part} must be a list of label keys")
        keys[part] = frozenset(listed)
    given = spec.get("values") or {}
    if not isinstance(given, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in given.items()
    ):
        raise ConfigError(f"{where}: labelSelector.values maps label keys to patterns")
    values = tuple(
        (key, _compile(text, f"{where}: labelSelector.values[{key}]"))
        for key, text in sorted(given.items())
    )
    if not (keys["present"] or keys["absent"] or values):
        raise ConfigError(f"{where}: labelSelector is empty (drop it or say what it needs)")
    return keys["present"], keys["absent"], values


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc


def _string(spec: Mapping[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value or None


def selector_of(route: MetricRoute) -> dict[str, str | None]:
    """The request's positive label requirements: key -> its one value, or None."""
    if not route.query:
        return {}
    selectors = parse_qs(route.query, keep_blank_values=True).get("labelSelector", [])
    if len(selectors) > 1:
        raise StatusError(400, "more than one labelSelector")
    try:
        return positive_requirements(selectors[0]) if selectors else {}
    except SelectorError as exc:
        raise StatusError(400, f"invalid labelSelector: {exc}") from exc


def rule_upstream(
    rules: Sequence[RoutingRule], route: MetricRoute, upstreams: Mapping[str, Backend]
) -> Backend | None:
    """The backend of the first rule `route` matches, in order; None: no rule does."""
    required: dict[str, str | None] | None = None
    for rule in rules:
        if rule.uses_selector and required is None:
            required = selector_of(route)
        if rule.matches(route.metric, required or {}):
            return upstreams[rule.upstream]
    return None
