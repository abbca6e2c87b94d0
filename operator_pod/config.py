"""Flags (kube-apiserver style, each with a KEDA_TENANCY_OPERATOR_POD_<FLAG> environment
default) parsed once into a frozen Config; `Config.from_args(argv, environ)` is pure."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from operator_pod import operator_health
from operator_pod.forward import parse_address
from operator_pod.operator_health import OperatorHealthSettings
from tenancy_common.durations import parse_duration

ENV_PREFIX = "KEDA_TENANCY_OPERATOR_POD_"
Mode = Literal["process", "deployment"]
Ref = tuple[str, str]
Address = tuple[str, int]


class ConfigError(ValueError):
    """A flag value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode
    command: tuple[str, ...]
    """KEDA's command line (after `--`)."""
    kubeconfig: str | None = None
    """A JSON kubeconfig (tests); None: in-cluster."""
    request_timeout_s: float = 10.0
    watch_timeout_s: int = 300
    namespaces_configmap: Ref | None = None
    """Process mode: the ConfigMap whose data.namespaces is KEDA's WATCH_NAMESPACE."""
    target_env: str = "WATCH_NAMESPACE"
    lease: Ref | None = None
    """KEDA's leader-election Lease: released after KEDA exits (both modes), and in deployment
    mode waited for before KEDA starts."""
    lease_wait_s: float = 30.0
    forward_grpc: tuple[Address, Address] | None = None
    forward_grpc_max_connections: int = 32
    debounce_s: float = 0.2
    max_wait_s: float = 2.0
    grace_period_s: float = 30.0
    kill_wait_s: float = 10.0
    max_restarts: int = 10
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 60.0
    health_bind_address: str = "0.0.0.0"  # noqa: S104 - a pod listens on all its addresses
    health_port: int = 8090
    operator_health: OperatorHealthSettings | None = None
    log_level: str = "info"
    log_format: str = "json"

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Config:
        """ConfigError (argparse exits with usage in `main`) for anything unusable."""
        parser = build_parser()
        apply_env_defaults(parser, environ, ENV_PREFIX)
        argv = list(argv)
        command: list[str] = []
        if "--" in argv:
            split = argv.index("--")
            argv, command = argv[:split], argv[split + 1 :]
        args = parser.parse_args(argv)
        if not command:
            raise ConfigError("KEDA's command goes after '--'")
        try:
            durations = {
                name: parse_duration(getattr(args, name))
                for name in (
                    "request_timeout",
                    "watch_timeout",
                    "lease_wait",
                    "debounce",
                    "max_wait",
                    "grace_period",
                    "kill_wait",
                    "backoff_initial",
                    "backoff_max",
                    "healthy_after",
                )
            }
            probes = operator_health.settings_from(args, command)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        mode: Mode = args.mode
        configmap = _ref(args.namespaces_configmap, "--namespaces-configmap")
        lease = _ref(args.lease or args.release_lease, "--lease")
        if args.lease and args.release_lease and args.lease != args.release_lease:
            raise ConfigError("--lease and --release-lease name the same Lease: give one")
        if mode == "process" and configmap is None:
            raise ConfigError("--mode=process needs --namespaces-configmap NAMESPACE/NAME")
        if mode == "deployment":
            if configmap is not None:
                raise ConfigError(
                    "--namespaces-configmap is for --mode=process (in deployment mode the "
                    "controller applies WATCH_NAMESPACE to the Deployment)"
                )
            if lease is None:
                raise ConfigError("--mode=deployment needs --lease NAMESPACE/NAME")
            if args.forward_grpc:
                raise ConfigError("--forward-grpc is for --mode=process")
        if not args.target_env or "=" in args.target_env:
            raise ConfigError("--target-env must be an environment variable name")
        if durations["watch_timeout"] < 1:
            raise ConfigError("--watch-timeout must be at least 1s")
        if args.forward_grpc_max_connections < 1:
            raise ConfigError("--forward-grpc-max-connections must be at least 1")
        return cls(
            mode=mode,
            command=tuple(command),
            kubeconfig=args.kubeconfig or None,
            request_timeout_s=durations["request_timeout"],
            watch_timeout_s=int(durations["watch_timeout"]),
            namespaces_configmap=configmap,
            target_env=args.target_env,
            lease=lease,
            lease_wait_s=durations["lease_wait"],
            forward_grpc=_forward(args.forward_grpc, args.forward_grpc_bind_address),
            forward_grpc_max_connections=args.forward_grpc_max_connections,
            debounce_s=durations["debounce"],
            max_wait_s=durations["max_wait"],
            grace_period_s=durations["grace_period"],
            kill_wait_s=durations["kill_wait"],
            max_restarts=args.max_restarts,
            backoff_initial_s=durations["backoff_initial"],
            backoff_max_s=durations["backoff_max"],
            healthy_after_s=durations["healthy_after"],
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            operator_health=probes,
            log_level=args.log_level,
            log_format=args.log_format,
        )


def _ref(text: str, flag: str) -> Ref | None:
    if not text:
        return None
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise ConfigError(f"{flag} is NAMESPACE/NAME, not {text!r}")
    return namespace, name


def _forward(text: str, bind_address: str) -> tuple[Address, Address] | None:
    if not text:
        return None
    listen, sep, target = text.partition("=")
    try:
        if not sep:
            raise ValueError("no '='")
        host, port = parse_address(listen)
        return (host or bind_address, port), parse_address(target)
    except ValueError as exc:
        raise ConfigError(f"--forward-grpc needs LISTEN=TARGET addresses: {exc}") from exc


def apply_env_defaults(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], prefix: str
) -> None:
    """`<PREFIX><FLAG>` environment variables (upper case, '_' for '-') set flag defaults, the
    way in-cluster defaults come from a Deployment's env; flags still win."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = environ.get(prefix + action.dest.upper())
        if value is None:
            continue
        action.default = int(value) if action.type is int else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-operator-pod",
        usage="%(prog)s --mode=process|deployment [flags] -- /keda [ARGS...]",
        description="The process in a tenant's KEDA operator pod: runs KEDA on the namespace "
        "set the platform controller publishes (process mode), or gates its start on its "
        "Lease (deployment mode); docs/operator-pod.md.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> (upper case, '_' for '-').",
    )
    add = parser.add_argument
    add("--mode", choices=["process", "deployment"], default="process")
    add("--kubeconfig", default="", help="a JSON kubeconfig (default: in-cluster)")
    add("--request-timeout", default="10s", help="deadline of one API request")
    add(
        "--watch-timeout",
        default="5m",
        help="timeoutSeconds of one watch (jittered up to 1.2x); a watch silent this long "
        "plus 30s is taken as dead",
    )
    add(
        "--namespaces-configmap",
        default="",
        metavar="NAMESPACE/NAME",
        help="process mode: the ConfigMap whose data.namespaces is KEDA's namespace set "
        '(no key: undecided; "": empty; both keep KEDA stopped)',
    )
    add("--target-env", default="WATCH_NAMESPACE", help="the variable KEDA reads the set from")
    add(
        "--lease",
        default="",
        metavar="NAMESPACE/NAME",
        help="KEDA's leader-election Lease: released after KEDA exits when this pod's KEDA "
        "still holds it; deployment mode also starts KEDA only once it is free or expired",
    )
    add("--release-lease", default="", metavar="NAMESPACE/NAME", help="the same as --lease")
    add(
        "--lease-wait",
        default="30s",
        help="deployment mode: start KEDA after this long even if the Lease is still held",
    )
    add(
        "--forward-grpc",
        default="",
        metavar="HOST:PORT=HOST:PORT",
        help="process mode: hold the first address (KEDA's gRPC port; ':PORT' for "
        "--forward-grpc-bind-address) across KEDA's restarts and splice each connection to "
        "the second (where KEDA listens)",
    )
    add(
        "--forward-grpc-bind-address",
        default="127.0.0.1",
        help="the address --forward-grpc listens on when its LISTEN has no host (the pod IP)",
    )
    add(
        "--forward-grpc-max-connections",
        type=int,
        default=32,
        help="adapter connections held or spliced at once; more are closed, logged, counted",
    )
    add("--debounce", default="200ms", help="quiet period after a change before restarting KEDA")
    add("--max-wait", default="2s", help="restart at most this long after the first change")
    add("--grace-period", default="30s", help="after SIGTERM, how long KEDA may take")
    add("--kill-wait", default="10s", help="how long to wait for KEDA after SIGKILL")
    add(
        "--max-restarts",
        type=int,
        default=10,
        help="process mode: KEDA's consecutive exits on its own before this process exits 1",
    )
    add("--backoff-initial", default="1s", help="first delay before restarting a crashed KEDA")
    add("--backoff-max", default="1m", help="longest delay between crash restarts")
    add("--healthy-after", default="1m", help="a run this long resets the crash count")
    add(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of /healthz /livez /readyz /metrics",
    )
    add(
        "--health-port",
        type=int,
        default=8090,
        help="port of /healthz /livez /readyz /metrics (not 8081: KEDA's own probes use it)",
    )
    operator_health.add_flags(parser)
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("--log-format", default="json", choices=["json", "text"])
    return parser
