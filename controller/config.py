"""Controller configuration, parsed once: `keda-tenancy-controller [flags]`.

`ControllerConfig.from_args(argv, environ)` is pure; `KEDA_TENANCY_CONTROLLER_<FLAG>`
environment variables give in-cluster defaults, and flags win over them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.namespace_cache import DEFAULT_MAX_STALENESS
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import add_tenancy_flags, tenancy_from_flags

ENV_PREFIX = "KEDA_TENANCY_CONTROLLER_"
DEFAULT_TENANT_NAMESPACE_PATTERN = "keda-(?P<tenant>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
DEFAULT_OPERATOR_POD_SELECTOR = (
    "app.kubernetes.io/component=operator,app.kubernetes.io/part-of=keda-tenancy"
)


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    rule: TenancyRule
    tenant_namespace_pattern: re.Pattern[str]
    """A tenant's KEDA namespace, with a (?P<tenant>...) group: grants count only there."""
    cluster_role_template: str
    """The only ClusterRole a tenant's grant may name (`{tenant}` replaced); "" = any it can bind."""
    operator_pod_selector: str
    operator_container: str
    workers: int
    """Tenants reconciled at once."""
    backoff_initial_s: float
    backoff_max_s: float
    terminating_recheck_s: float
    """A Terminating namespace whose binding waits for KEDA's objects is looked at this often."""
    kubeconfig: str | None
    health_bind_address: str
    health_port: int
    max_namespace_staleness_s: float
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> ControllerConfig:
        parser = build_parser()
        apply_env_defaults(parser, environ, ENV_PREFIX)
        args = parser.parse_args(list(argv))
        try:
            rule, _ = tenancy_from_flags(args)
            pattern = re.compile(args.tenant_namespace_pattern)
            if "tenant" not in pattern.groupindex:
                raise ValueError("--tenant-namespace-pattern needs a (?P<tenant>...) group")
            if args.workers < 1:
                raise ValueError("--workers must be at least 1")
            if (
                args.operator_clusterrole_template
                and "{tenant}" not in args.operator_clusterrole_template
            ):
                raise ValueError("--operator-clusterrole-template needs {tenant}")
            return cls(
                rule=rule,
                tenant_namespace_pattern=pattern,
                cluster_role_template=args.operator_clusterrole_template,
                operator_pod_selector=args.operator_pod_selector,
                operator_container=args.operator_container,
                workers=args.workers,
                backoff_initial_s=parse_duration(args.backoff_initial),
                backoff_max_s=parse_duration(args.backoff_max),
                terminating_recheck_s=parse_duration(args.terminating_recheck),
                kubeconfig=args.kubeconfig or None,
                health_bind_address=args.health_bind_address,
                health_port=args.health_port,
                max_namespace_staleness_s=parse_duration(args.max_namespace_staleness),
                log_level=args.log_level,
                log_format=args.log_format,
            )
        except (ValueError, re.error) as exc:  # ConfigError, bad durations, bad patterns
            parser.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-controller",
        description="The platform controller: every tenant's operator RoleBindings, namespace "
        "sets, deployment-mode patches and Lease releases (docs/controller.md). Every flag "
        f"has a {ENV_PREFIX}<FLAG> environment default.",
    )
    add_tenancy_flags(parser)
    tenants = parser.add_argument_group("tenants")
    tenants.add_argument(
        "--tenant-namespace-pattern",
        default=DEFAULT_TENANT_NAMESPACE_PATTERN,
        metavar="REGEX",
        help="a tenant's KEDA namespace, with a (?P<tenant>...) group (the router chart's "
        "certificates.tenants.namespacePattern); grants elsewhere are ignored",
    )
    tenants.add_argument(
        "--operator-clusterrole-template",
        dest="operator_clusterrole_template",
        default="keda-tenancy-{tenant}-operator",
        metavar="NAME",
        help="the only ClusterRole a grant may name for its operator ({tenant} replaced); "
        "'' accepts any the tenant let the controller bind",
    )
    tenants.add_argument(
        "--operator-pod-selector",
        default=DEFAULT_OPERATOR_POD_SELECTOR,
        metavar="SELECTOR",
        help="label selector of operator pods (one cluster-wide watch, for Lease release)",
    )
    tenants.add_argument(
        "--operator-container",
        default="keda-operator",
        help="the operator container whose termination releases its Lease",
    )
    work = parser.add_argument_group("reconciling")
    work.add_argument("--workers", type=int, default=16, help="tenants reconciled at once")
    work.add_argument("--backoff-initial", default="500ms", help="first retry of a failed tenant")
    work.add_argument("--backoff-max", default="2m", help="longest retry delay of a tenant")
    work.add_argument(
        "--terminating-recheck",
        default="2s",
        help="how often a Terminating namespace's binding is checked for KEDA objects left",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster)")
    ops.add_argument("--health-bind-address", default="0.0.0.0")  # noqa: S104 - pod network
    ops.add_argument("--health-port", type=int, default=8080, help="/healthz /readyz /metrics")
    ops.add_argument(
        "--max-namespace-staleness",
        default=DEFAULT_MAX_STALENESS,
        help="/readyz fails when the namespace list was not confirmed current for longer "
        "(0: never)",
    )
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ops.add_argument("--log-format", default="json", choices=["json", "text"])
    return parser
