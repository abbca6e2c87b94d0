"""Reloader configuration, parsed once: `keda-tenancy-reloader [flags] -- /keda [args]`.

`ReloaderConfig.from_args(argv, environ)` is pure; `KEDA_TENANCY_RELOADER_<FLAG>`
environment variables give in-cluster defaults (e.g. `KEDA_TENANCY_RELOADER_TENANT`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reloader.schedule import SchedulePolicy
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.names import TenantName, is_dns1123_label
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import ConfigError, add_tenancy_flags, tenancy_from_flags

ENV_PREFIX = "KEDA_TENANCY_RELOADER_"


@dataclass(frozen=True, slots=True)
class ReloaderConfig:
    mode: str  # "process" | "deployment"
    tenant: TenantName | None
    rule: TenancyRule | None  # None with a raw --namespace-selector
    label_selector: str | None
    target_env: str
    command: tuple[str, ...]
    target_deployment: tuple[str, str] | None  # (namespace, name)
    container: str | None
    kubeconfig: str | None
    schedule: SchedulePolicy
    grace_period_s: float
    kill_wait_s: float
    max_restarts: int
    backoff_initial_s: float
    backoff_max_s: float
    healthy_after_s: float
    health_bind_address: str
    health_port: int
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> ReloaderConfig:
        argv = list(argv)
        command: list[str] = []
        if "--" in argv:
            split = argv.index("--")
            argv, command = argv[:split], argv[split + 1 :]
        parser = build_parser()
        apply_env_defaults(parser, environ, ENV_PREFIX)
        args = parser.parse_args(argv)
        try:
            return cls._from_namespace(args, tuple(command))
        except (ConfigError, ValueError) as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits

    @classmethod
    def _from_namespace(cls, args: argparse.Namespace, command: tuple[str, ...]) -> ReloaderConfig:
        tenant: TenantName | None = None
        rule: TenancyRule | None = None
        if args.tenant:
            if not is_dns1123_label(args.tenant):
                raise ConfigError(f"--tenant {args.tenant!r} is not a DNS-1123 label")
            if args.namespace_selector:
                raise ConfigError(
                    "give --tenant (with a tenancy rule) or --namespace-selector, not both"
                )
            tenant = TenantName(args.tenant)
            rule, _ = tenancy_from_flags(args)
            selector = rule.label_selector(tenant)
        else:
            selector = args.namespace_selector.strip()
            if not selector:
                # An empty selector selects every namespace: that is KEDA's own default,
                # exactly what a per-tenant operator must never do.
                raise ConfigError("--tenant or a non-empty --namespace-selector is required")
        deployment: tuple[str, str] | None = None
        if args.mode == "process":
            if not command:
                raise ConfigError("process mode needs the operator command after '--'")
        else:
            namespace, _, name = args.target_deployment.partition("/")
            if not (namespace and name and args.container):
                raise ConfigError(
                    "deployment mode needs --target-deployment NAMESPACE/NAME and --container"
                )
            deployment = (namespace, name)
        if not args.target_env or "=" in args.target_env:
            raise ConfigError("--target-env must be an environment variable name")
        if args.max_restarts < 1:
            raise ConfigError("--max-restarts must be at least 1")
        return cls(
            mode=args.mode,
            tenant=tenant,
            rule=rule,
            label_selector=selector,
            target_env=args.target_env,
            command=command,
            target_deployment=deployment,
            container=args.container or None,
            kubeconfig=args.kubeconfig or None,
            schedule=SchedulePolicy(
                debounce_s=parse_duration(args.debounce),
                max_wait_s=parse_duration(args.max_wait),
                min_interval_s=parse_duration(args.min_restart_interval),
                removal_delay_s=parse_duration(args.removal_delay),
            ),
            grace_period_s=parse_duration(args.grace_period),
            kill_wait_s=parse_duration(args.kill_wait),
            max_restarts=args.max_restarts,
            backoff_initial_s=parse_duration(args.backoff_initial),
            backoff_max_s=parse_duration(args.backoff_max),
            healthy_after_s=parse_duration(args.healthy_after),
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            log_level=args.log_level,
            log_format=args.log_format,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-reloader",
        usage="%(prog)s [flags] -- COMMAND [ARGS...]",
        description="Keep a tenant's KEDA operator watching exactly that tenant's namespaces: "
        "restart it (process mode) or patch its Deployment when the set changes.",
    )
    select = parser.add_argument_group("which namespaces")
    select.add_argument(
        "--tenant", default="", help="the tenant whose namespaces to watch (needs a tenancy rule)"
    )
    select.add_argument(
        "--namespace-selector",
        default="",
        help="a raw label selector instead of --tenant; never empty",
    )
    add_tenancy_flags(parser)
    select.add_argument(
        "--kubeconfig", default="", help="kubeconfig path (default: in-cluster config)"
    )

    target = parser.add_argument_group("what to update")
    target.add_argument("--mode", choices=["process", "deployment"], default="process")
    target.add_argument(
        "--target-env",
        default="WATCH_NAMESPACE",
        help="the variable set to the comma-separated namespaces",
    )
    target.add_argument(
        "--target-deployment",
        default="",
        metavar="NAMESPACE/NAME",
        help="deployment mode: the operator's Deployment",
    )
    target.add_argument(
        "--container", default="", help="deployment mode: the container whose env is patched"
    )

    timing = parser.add_argument_group("restarts")
    timing.add_argument(
        "--debounce", default="2s", help="quiet period after the last change before restarting"
    )
    timing.add_argument(
        "--max-wait",
        default="30s",
        help="restart at most this long after the first change, even under churn",
    )
    timing.add_argument(
        "--min-restart-interval", default="5s", help="minimum time between two restarts"
    )
    timing.add_argument(
        "--removal-delay", default="0s", help="hold changes that only remove namespaces this long"
    )
    timing.add_argument(
        "--grace-period",
        default="30s",
        help="after SIGTERM, how long the child may take before SIGKILL",
    )
    timing.add_argument(
        "--kill-wait", default="10s", help="how long to wait for the child to die after SIGKILL"
    )
    timing.add_argument(
        "--max-restarts",
        type=int,
        default=10,
        help="consecutive crashes before the reloader exits non-zero",
    )
    timing.add_argument(
        "--backoff-initial", default="1s", help="first delay before restarting a crashed child"
    )
    timing.add_argument("--backoff-max", default="1m", help="longest delay between crash restarts")
    timing.add_argument(
        "--healthy-after", default="1m", help="a run this long resets the crash count"
    )

    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of /healthz /readyz /metrics",
    )
    ops.add_argument(
        "--health-port",
        type=int,
        default=8090,
        help="port of /healthz /readyz /metrics (KEDA keeps 8081)",
    )
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ops.add_argument("--log-format", default="json", choices=["json", "text"])
    return parser
