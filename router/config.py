"""Router configuration: flags named like kube-apiserver's, parsed once into a frozen value.

`RouterConfig.from_args(argv, environ)` is pure so tests pass plain values; environment
variables (`KEDA_TENANCY_ROUTER_<FLAG>`) supply in-cluster defaults for any flag.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.backends import DEFAULT_UPSTREAM_TEMPLATE
from router.health_probes import ProbeSettings, add_health_probe_flags, health_probe_settings
from router.requestheader import DEFAULT_HEADER_NAMES, HeaderNames, split_names
from router.upstream_rules import RoutingRules, add_routing_flags, routing_from_flags
from router.upstreams import UpstreamSettings
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.namespace_cache import DEFAULT_MAX_STALENESS
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import (
    ConfigError,
    TenancyFile,
    add_tenancy_flags,
    tenancy_from_flags,
)

ENV_PREFIX = "KEDA_TENANCY_ROUTER_"
EXTENSION_AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    bind_address: str
    secure_port: int
    tls_cert_file: str
    tls_private_key_file: str
    health_bind_address: str
    health_port: int

    requestheader_client_ca_file: str | None
    """None: read the CA (and allowed names) from kube-system/extension-apiserver-authentication."""
    requestheader_allowed_names: frozenset[str]
    header_names: HeaderNames

    kubeconfig: str | None
    upstream_url_template: str
    upstream_client_cert_file: str | None
    upstream_client_key_file: str | None
    upstream_ca_file: str | None
    upstream_extra_ca_file: str | None
    """More CAs trusted beside --upstream-ca-file's, never instead of them (issue 22)."""
    default_upstream: str | None
    upstream: UpstreamSettings
    health_probes: ProbeSettings

    tenancy: TenancyRule
    tenancy_file: TenancyFile
    routing: RoutingRules

    cert_reload_interval_s: float
    shutdown_delay_s: float
    shutdown_grace_period_s: float
    tenant_namespace_template: str
    """Where a tenant's KEDA runs (`keda-{tenant}`): read only by the explain command."""
    max_namespace_staleness_s: float
    """/readyz warns (never fails) when the namespace cache was not confirmed current for
    longer; 0: never."""
    log_level: str
    log_format: str

    @property
    def needs_cluster(self) -> bool:
        return (
            self.tenancy.needs_cluster
            or self.requestheader_client_ca_file is None
            or bool(self.routing.registration_namespaces)
        )

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> RouterConfig:
        parser = build_parser()
        apply_env_defaults(parser, environ, ENV_PREFIX)
        args = parser.parse_args(argv)
        try:
            return cls._from_namespace(args)
        except (ValueError, ConfigError) as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits

    @classmethod
    def _from_namespace(cls, args: argparse.Namespace) -> RouterConfig:
        if not args.tls_cert_file or not args.tls_private_key_file:
            raise ConfigError("--tls-cert-file and --tls-private-key-file are required")
        if bool(args.upstream_client_cert_file) != bool(args.upstream_client_key_file):
            raise ConfigError(
                "--upstream-client-cert-file and --upstream-client-key-file go together"
            )
        tenancy, tenancy_file = tenancy_from_flags(args)
        return cls(
            bind_address=args.bind_address,
            secure_port=args.secure_port,
            tls_cert_file=args.tls_cert_file,
            tls_private_key_file=args.tls_private_key_file,
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            requestheader_client_ca_file=args.requestheader_client_ca_file or None,
            requestheader_allowed_names=frozenset(split_names(args.requestheader_allowed_names)),
            header_names=HeaderNames(
                username=split_names(args.requestheader_username_headers)
                or DEFAULT_HEADER_NAMES.username,
                group=split_names(args.requestheader_group_headers) or DEFAULT_HEADER_NAMES.group,
                extra_prefixes=split_names(args.requestheader_extra_headers_prefix)
                or DEFAULT_HEADER_NAMES.extra_prefixes,
                uid=split_names(args.requestheader_uid_headers) or DEFAULT_HEADER_NAMES.uid,
            ),
            kubeconfig=args.kubeconfig or None,
            upstream_url_template=args.upstream_url_template,
            upstream_client_cert_file=args.upstream_client_cert_file or None,
            upstream_client_key_file=args.upstream_client_key_file or None,
            upstream_ca_file=args.upstream_ca_file or None,
            upstream_extra_ca_file=_extra_ca_file(args),
            default_upstream=args.default_upstream or None,
            upstream=UpstreamSettings(
                timeout_s=_positive(args.upstream_timeout, "--upstream-timeout"),
                connect_timeout_s=_positive(
                    args.upstream_connect_timeout, "--upstream-connect-timeout"
                ),
                max_connections=_at_least_one(
                    args.upstream_max_connections, "--upstream-max-connections"
                ),
                max_concurrent=_at_least_one(
                    args.upstream_max_concurrent, "--upstream-max-concurrent"
                ),
                max_response_bytes=_at_least_one(
                    parse_bytes(args.upstream_max_response_bytes),
                    "--upstream-max-response-bytes",
                ),
            ),
            health_probes=health_probe_settings(args),
            tenancy=tenancy,
            tenancy_file=tenancy_file,
            routing=routing_from_flags(args, tenancy),
            cert_reload_interval_s=_positive(args.cert_reload_interval, "--cert-reload-interval"),
            shutdown_delay_s=parse_duration(args.shutdown_delay),
            shutdown_grace_period_s=_positive(
                args.shutdown_grace_period, "--shutdown-grace-period"
            ),
            tenant_namespace_template=_tenant_namespace_template(args.tenant_namespace_template),
            max_namespace_staleness_s=parse_duration(args.max_namespace_staleness),
            log_level=args.log_level,
            log_format=args.log_format,
        )


_BYTE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1000, "M": 10**6}


def parse_bytes(text: str) -> int:
    """A size as Kubernetes quantities spell it: `1048576`, `512Ki`, `1Mi`."""
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", text.strip())
    number, unit = match.groups() if match else ("", "")
    if not number or unit not in _BYTE_UNITS:
        raise ConfigError(f"invalid size {text!r} (examples: 262144, 256Ki, 1Mi)")
    return int(number) * _BYTE_UNITS[unit]


def _tenant_namespace_template(template: str) -> str:
    probe = template.replace("{tenant}", "t")
    if "{tenant}" not in template or "{" in probe or "}" in probe:
        raise ConfigError(
            "--tenant-namespace-template must contain {tenant} and nothing else in {}"
        )
    return template


def _extra_ca_file(args: argparse.Namespace) -> str | None:
    """Extra CAs add to --upstream-ca-file: alone they would replace the system roots with
    themselves, which is --upstream-ca-file's job."""
    if args.upstream_extra_ca_file and not args.upstream_ca_file:
        raise ConfigError("--upstream-extra-ca-file adds to --upstream-ca-file: give both")
    return args.upstream_extra_ca_file or None


def _positive(text: str, flag: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ConfigError(f"{flag} must be positive")
    return value


def _at_least_one(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-router",
        description="The external.metrics.k8s.io APIService backend that forwards each request "
        "to the KEDA metrics server of the tenant owning the namespace.",
        epilog=f"Every flag can also be set by the environment variable {ENV_PREFIX}<FLAG> "
        "(upper case, '-' as '_'), e.g. KEDA_TENANCY_ROUTER_UPSTREAM_URL_TEMPLATE.",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument(
        "--bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of the HTTPS listener",
    )
    serving.add_argument("--secure-port", type=int, default=6443, help="HTTPS port")
    serving.add_argument(
        "--tls-cert-file", default="", help="serving certificate (PEM, may hold the chain)"
    )
    serving.add_argument("--tls-private-key-file", default="", help="serving private key (PEM)")
    serving.add_argument(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of the plain health/metrics listener",
    )
    serving.add_argument(
        "--health-port", type=int, default=8080, help="port of /healthz /livez /readyz /metrics"
    )
    serving.add_argument(
        "--cert-reload-interval", default="10s", help="how often certificate files are re-read"
    )

    auth = parser.add_argument_group("requestheader authentication (the aggregator)")
    auth.add_argument(
        "--requestheader-client-ca-file",
        default="",
        help="CA that signs the aggregator's front-proxy client certificate; when empty, read "
        "from the kube-system/extension-apiserver-authentication ConfigMap",
    )
    auth.add_argument(
        "--requestheader-allowed-names",
        action="append",
        default=[],
        help="client certificate CNs allowed to assert identities (comma-separated or repeated; empty: any CN the CA signed)",
    )
    auth.add_argument(
        "--requestheader-username-headers",
        action="append",
        default=[],
        help="default X-Remote-User",
    )
    auth.add_argument(
        "--requestheader-group-headers", action="append", default=[], help="default X-Remote-Group"
    )
    auth.add_argument(
        "--requestheader-extra-headers-prefix",
        action="append",
        default=[],
        help="default X-Remote-Extra-",
    )
    auth.add_argument(
        "--requestheader-uid-headers", action="append", default=[], help="default X-Remote-Uid"
    )

    upstream = parser.add_argument_group("upstreams (the tenants' KEDA metrics servers)")
    upstream.add_argument(
        "--upstream-url-template",
        default=DEFAULT_UPSTREAM_TEMPLATE,
        help="https URL of a tenant's metrics server; {tenant} is replaced by the tenant name",
    )
    upstream.add_argument(
        "--upstream-client-cert-file",
        default="",
        help="client certificate the router presents upstream",
    )
    upstream.add_argument("--upstream-client-key-file", default="", help="its private key")
    upstream.add_argument(
        "--upstream-ca-file",
        default="",
        help="CA that verifies upstream serving certificates (default: system roots)",
    )
    upstream.add_argument(
        "--upstream-extra-ca-file",
        default="",
        help="PEM bundle of CAs trusted in addition to --upstream-ca-file (never instead)",
    )
    upstream.add_argument(
        "--upstream-timeout",
        default="5s",
        help="whole-request deadline (504 past it); well below the HPA sync period (15s)",
    )
    upstream.add_argument(
        "--upstream-connect-timeout", default="3s", help="TCP+TLS connect timeout (503 past it)"
    )
    upstream.add_argument(
        "--upstream-max-connections",
        type=int,
        default=64,
        help="connections per tenant (as many as --upstream-max-concurrent: no admitted request waits for another)",
    )
    upstream.add_argument(
        "--upstream-max-concurrent",
        type=int,
        default=64,
        help="requests in flight per tenant before 429",
    )
    upstream.add_argument(
        "--upstream-max-response-bytes",
        default="1Mi",
        help="largest answer passed on (502 past it); a tenant may have 8 such answers "
        "in the router's memory at once",
    )
    upstream.add_argument(
        "--default-upstream",
        default="",
        help="https origin for namespaces no tenant owns (opt-in; default: answer 404)",
    )

    add_health_probe_flags(parser)
    add_tenancy_flags(parser)
    add_routing_flags(parser)

    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--kubeconfig", default="", help="kubeconfig path (default: in-cluster config)"
    )
    ops.add_argument(
        "--shutdown-delay",
        default="0s",
        help="on SIGTERM, keep serving (not ready) this long before draining",
    )
    ops.add_argument(
        "--shutdown-grace-period",
        default="25s",
        help="how long in-flight requests may take to finish on SIGTERM",
    )
    ops.add_argument(
        "--max-namespace-staleness",
        default=DEFAULT_MAX_STALENESS,
        help="/readyz warns (without failing: the APIService serves every tenant) when the "
        "namespace list was not confirmed current (LIST, event, verified watch) for longer; 0s: never",
    )
    ops.add_argument(
        "--tenant-namespace-template",
        default="keda-{tenant}",
        help="namespace of a tenant's KEDA, where `explain` reads what its operator watches",
    )
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ops.add_argument("--log-format", default="json", choices=["json", "text"])
    return parser
