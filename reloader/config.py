"""Reloader configuration, parsed once: `keda-tenancy-reloader [flags] -- /keda [args]`.

`ReloaderConfig.from_args(argv, environ)` is pure; `KEDA_TENANCY_RELOADER_<FLAG>`
environment variables give in-cluster defaults (e.g. `KEDA_TENANCY_RELOADER_TENANT`),
and flags win over them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reloader import operator_health
from reloader.forward import parse_address
from reloader.operator_health import OperatorHealthSettings
from reloader.schedule import CrashPolicy, SchedulePolicy
from reloader.uninstall import UninstallSettings, parse_refs
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.names import TenantName, is_dns1123_label
from tenancy_common.namespace_cache import DEFAULT_MAX_STALENESS
from tenancy_common.platform_objects import binding_name
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import (
    RULE_FLAGS,
    ConfigError,
    add_tenancy_flags,
    tenancy_from_flags,
)

ENV_PREFIX = "KEDA_TENANCY_RELOADER_"
MODES = ("process", "deployment", "bindings", "uninstall")


@dataclass(frozen=True, slots=True)
class ReloaderConfig:
    mode: str
    """"process" (run the operator as our child) or "deployment" (patch its Deployment)."""
    tenant: TenantName | None
    rule: TenancyRule | None
    """None with a raw --namespace-selector: every selected namespace is the tenant's."""
    label_selector: str | None
    """What the namespace watch asks the API server for; None: every namespace."""
    target_env: str
    command: tuple[str, ...]
    target_deployment: tuple[str, str] | None
    """(namespace, name) in deployment mode."""
    container: str | None
    replicas: int
    """Deployment mode: the operator's replicas while the tenant has a namespace."""
    kubeconfig: str | None
    schedule: SchedulePolicy
    crash: CrashPolicy
    grace_period_s: float
    """SIGTERM to SIGKILL."""
    kill_wait_s: float
    """How long to wait for the operator after SIGKILL."""
    resync_period_s: float
    """Deployment mode: re-check the Deployment this often (0: never)."""
    forward_grpc: tuple[tuple[str, int], tuple[str, int]] | None
    """Process mode: (listen, target) — hold the operator's gRPC port and splice it to the
    operator's own address; None: the operator listens itself."""
    release_lease: tuple[str, str] | None
    """(namespace, name) of the operator's leader-election Lease, released when the operator
    holding it is proven dead (its process exited; in deployment mode, its pod's operator
    container reported terminated); None: never touched."""
    lease_wait_s: float
    """Process mode with release_lease: before the first start, wait at most this long for the
    Lease to be free (a rolling update's old pod still leading); 0: start at once."""
    health_bind_address: str
    health_port: int
    log_level: str
    log_format: str
    bindings: BindingSettings | None = None
    """Manage the operator's RoleBindings (deployment and bindings modes)."""
    watched_configmap: tuple[str, str] | None = None
    """(namespace, name): process mode publishes what the operator watches there; bindings
    mode reads it."""
    check_operator_access: bool = False
    """Process mode: admit a namespace only once the operator may read it."""
    forward_grpc_max_connections: int = 32
    """Process mode: adapter connections held or spliced at once; more are refused."""
    max_namespace_staleness_s: float = 300.0
    """The namespace list not confirmed current for longer: /readyz fails in deployment and
    bindings modes, warns in process mode (the operator's pod serves the adapter); 0: never."""
    rule_configmap: tuple[str, str] | None = None
    """(namespace, name) of the router's published rule: `rule` and `label_selector` are
    filled in from it at start (both None until then)."""
    rule_check_interval_s: float = 30.0
    """How often the published rule is re-read; a change ends the process."""
    operator_health: OperatorHealthSettings | None = None
    """Process mode: ask KEDA's own probes from /livez and /readyz (None: never)."""
    uninstall: UninstallSettings | None = None
    """Uninstall mode: what to remove once the release's pods are gone (reloader/uninstall.py)."""

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> ReloaderConfig:
        """Parse `[flags] -- COMMAND...`; a bad configuration exits with status 2."""
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
        except ValueError as exc:  # ConfigError, bad durations
            parser.error(str(exc))

    @classmethod
    def _from_namespace(cls, args: argparse.Namespace, command: tuple[str, ...]) -> ReloaderConfig:
        schedule = SchedulePolicy(
            debounce_s=_duration("--debounce", args.debounce),
            max_wait_s=_duration("--max-wait", args.max_wait),
            min_interval_s=_duration("--min-restart-interval", args.min_restart_interval),
            removal_delay_s=_duration("--removal-delay", args.removal_delay),
        )
        crash = CrashPolicy(
            max_restarts=args.max_restarts,
            backoff_initial_s=_duration("--backoff-initial", args.backoff_initial),
            backoff_max_s=_duration("--backoff-max", args.backoff_max),
            healthy_after_s=_duration("--healthy-after", args.healthy_after),
        )
        if crash.max_restarts < 1:
            raise ConfigError("--max-restarts must be at least 1")
        if crash.backoff_initial_s > crash.backoff_max_s:
            raise ConfigError("--backoff-initial must not exceed --backoff-max")

        tenant: TenantName | None = None
        rule: TenancyRule | None = None
        rule_configmap: tuple[str, str] | None = None
        if args.tenant:
            if not is_dns1123_label(args.tenant):
                raise ConfigError(f"--tenant {args.tenant!r} is not a DNS-1123 label")
            if args.namespace_selector.strip():
                raise ConfigError(
                    "give --tenant (with a tenancy rule) or --namespace-selector, not both"
                )
            tenant = TenantName(args.tenant)
            rule_configmap = _object_ref("--tenancy-rule-configmap", args.tenancy_rule_configmap)
            if args.mode == "uninstall":
                # Reads no rule: what it removes is found by its labels and names.
                selector = None
                rule_configmap = None
            elif rule_configmap is not None:
                if any(getattr(args, flag) for flag in (*RULE_FLAGS, "tenancy_rule_file")) or (
                    args.tenancy_file
                ):
                    raise ConfigError(
                        "--tenancy-rule-configmap is the whole rule: drop the other tenancy flags"
                    )
                selector = None
            else:
                rule, _ = tenancy_from_flags(args)
                problem = rule.never_owns(tenant)
                if problem is not None:
                    raise ConfigError(problem)
                selector = watch_selector(rule, tenant, schedule)
        else:
            if args.tenancy_rule_configmap.strip():
                raise ConfigError("--tenancy-rule-configmap needs --tenant")
            selector = args.namespace_selector.strip()
            if not selector:
                # An empty selector selects every namespace: that is KEDA's own default,
                # exactly what a per-tenant operator must never do.
                raise ConfigError("--tenant or a non-empty --namespace-selector is required")
            validate_label_selector(selector)

        grace_period_s = _duration("--grace-period", args.grace_period)
        bindings = _binding_settings(args, tenant, schedule)
        watched = _object_ref("--watched-configmap", args.watched_configmap)
        check_access = _boolean("--check-operator-access", args.check_operator_access)
        deployment: tuple[str, str] | None = None
        uninstall: UninstallSettings | None = None
        if args.mode == "uninstall":
            uninstall = _uninstall_settings(args, tenant, bindings, command)
        elif args.mode == "bindings":
            if command:
                raise ConfigError("bindings mode runs no command: drop what follows '--'")
            if bindings is None or watched is None:
                raise ConfigError(
                    "bindings mode needs --bind-cluster-role, --bind-service-account and "
                    "--watched-configmap"
                )
        elif args.mode == "process":
            if not command:
                raise ConfigError("process mode needs the operator command after '--'")
            if args.target_deployment or args.container:
                raise ConfigError("--target-deployment and --container are for --mode=deployment")
            if bindings is not None:
                # The operator's own pod must never be able to bind: that is what the
                # separate bindings-mode Deployment is for.
                raise ConfigError("--bind-* flags are for --mode=deployment or --mode=bindings")
        else:
            if command:
                raise ConfigError("deployment mode runs no command: drop what follows '--'")
            namespace, _, name = args.target_deployment.partition("/")
            if not (is_dns1123_label(namespace) and name and "/" not in name and args.container):
                raise ConfigError(
                    "deployment mode needs --target-deployment NAMESPACE/NAME and --container"
                )
            if watched is not None:
                raise ConfigError("deployment mode reads what the operator watches from its pods")
            deployment = (namespace, name)
        if args.mode != "process" and check_access:
            raise ConfigError("--check-operator-access is for --mode=process")
        operator_probes = operator_health.settings_from(args, command)
        if args.mode != "process" and operator_probes is not None:
            raise ConfigError("--check-operator-health is for --mode=process")
        forward_grpc = None
        if args.forward_grpc:
            if args.mode != "process":
                raise ConfigError("--forward-grpc is for --mode=process")
            listen, sep, target = args.forward_grpc.partition("=")
            try:
                if not sep:
                    raise ValueError("no '='")
                host, port = parse_address(listen)
                forward_grpc = (
                    (host or args.forward_grpc_bind_address, port),
                    parse_address(target),
                )
            except ValueError as exc:
                raise ConfigError(f"--forward-grpc needs LISTEN=TARGET addresses: {exc}") from exc
        if args.forward_grpc_max_connections < 1:
            raise ConfigError("--forward-grpc-max-connections must be at least 1")
        release_lease: tuple[str, str] | None = None
        if args.release_lease:
            lease_ns, _, lease_name = args.release_lease.partition("/")
            if not (is_dns1123_label(lease_ns) and is_dns1123_subdomain(lease_name)):
                raise ConfigError("--release-lease needs NAMESPACE/NAME of a Lease")
            release_lease = (lease_ns, lease_name)
        rule_interval = _duration("--tenancy-rule-interval", args.tenancy_rule_interval)
        if rule_interval <= 0:
            raise ConfigError("--tenancy-rule-interval must be positive")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.target_env):
            raise ConfigError(
                f"--target-env {args.target_env!r} is not an environment variable name"
            )
        if args.replicas < 1:
            raise ConfigError("--replicas must be at least 1 (an empty namespace set scales to 0)")
        if not 0 <= args.health_port <= 65535:
            raise ConfigError("--health-port must be a port number (0 picks a free one)")
        return cls(
            mode=args.mode,
            tenant=tenant,
            rule=rule,
            label_selector=selector,
            target_env=args.target_env,
            command=command,
            target_deployment=deployment,
            container=args.container or None,
            replicas=args.replicas,
            kubeconfig=args.kubeconfig or None,
            schedule=schedule,
            crash=crash,
            grace_period_s=grace_period_s,
            kill_wait_s=_duration("--kill-wait", args.kill_wait),
            resync_period_s=_duration("--resync-period", args.resync_period),
            forward_grpc=forward_grpc,
            release_lease=release_lease,
            lease_wait_s=_duration("--lease-wait", args.lease_wait),
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            log_level=args.log_level,
            log_format=args.log_format,
            bindings=bindings,
            watched_configmap=watched,
            check_operator_access=check_access,
            operator_health=operator_probes,
            forward_grpc_max_connections=args.forward_grpc_max_connections,
            max_namespace_staleness_s=_duration(
                "--max-namespace-staleness", args.max_namespace_staleness
            ),
            rule_configmap=rule_configmap,
            rule_check_interval_s=rule_interval,
            uninstall=uninstall,
        )


def watch_selector(rule: TenancyRule, tenant: TenantName, schedule: SchedulePolicy) -> str | None:
    """The namespace watch's server-side selector: only where it hides nothing the decision
    reads. With a removal delay the watch must also see namespaces that moved to another
    tenant (they leave at once, unlike one that merely lost its label), so it is only
    narrowed when there is no delay to bypass; the rule narrows only where that is safe."""
    return rule.label_selector(tenant) if schedule.removal_delay_s == 0 else None


@dataclass(frozen=True, slots=True)
class BindingSettings:
    cluster_role: str
    """The tenant operator's ClusterRole, bound in each of its namespaces."""
    subject: tuple[str, str]
    """(namespace, name) of the operator's ServiceAccount."""
    name: str
    """Name of each RoleBinding."""
    interval_s: float
    """Reconcile at least this often (and after every namespace event)."""
    unbind_timeout_s: float
    """Longest a namespace that left keeps its binding, whatever the operator reports."""


def _binding_settings(
    args: argparse.Namespace,
    tenant: TenantName | None,
    schedule: SchedulePolicy,
) -> BindingSettings | None:
    role = args.bind_cluster_role.strip()
    subject = _object_ref("--bind-service-account", args.bind_service_account)
    if not role and subject is None:
        return None
    if not role or subject is None:
        raise ConfigError("--bind-cluster-role and --bind-service-account go together")
    if tenant is None:
        raise ConfigError("--bind-* flags need --tenant (bindings are labelled with it)")
    name = args.binding_name.strip() or f"{role}-managed"
    for flag, value in (("--bind-cluster-role", role), ("--binding-name", name)):
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
            raise ConfigError(f"{flag} {value!r} is not a valid object name")
    # The security bound, whatever the operator's pod reports. An honest reloader stops the old
    # operator `--debounce` after a namespace leaves (`--removal-delay` for a namespace that
    # merely lost its label), well within it; with a longer hold KEDA would be refused first.
    unbind_timeout_s = _duration("--unbind-timeout", args.unbind_timeout)
    hold_s = max(schedule.debounce_s, schedule.removal_delay_s)
    if unbind_timeout_s <= hold_s:
        raise ConfigError(
            f"--unbind-timeout ({args.unbind_timeout}) must exceed --debounce and "
            f"--removal-delay ({hold_s:g}s): the operator would lose a namespace's "
            "RoleBinding before its restart without it"
        )
    return BindingSettings(
        cluster_role=role,
        subject=subject,
        name=name,
        interval_s=_duration("--bindings-interval", args.bindings_interval),
        unbind_timeout_s=unbind_timeout_s,
    )


def _uninstall_settings(
    args: argparse.Namespace,
    tenant: TenantName | None,
    bindings: BindingSettings | None,
    command: tuple[str, ...],
) -> UninstallSettings:
    if command:
        raise ConfigError("uninstall mode runs no command: drop what follows '--'")
    platform = _boolean("--uninstall-platform-layout", args.uninstall_platform_layout)
    if platform:
        if tenant is None:
            raise ConfigError("uninstall mode needs --tenant")
        if bindings is not None:
            raise ConfigError(
                "--uninstall-platform-layout: the bindings are the platform controller's, "
                "drop the --bind-* flags"
            )
        name = binding_name(tenant)
    elif tenant is None or bindings is None:
        raise ConfigError(
            "uninstall mode needs --tenant, --bind-cluster-role and --bind-service-account "
            "(which RoleBindings are the tenant's)"
        )
    else:
        name = bindings.name
    pods = args.uninstall_wait_for_pods.strip()
    namespace, _, selector = pods.partition("/")
    if not (is_dns1123_label(namespace) and selector.strip()):
        raise ConfigError(
            "uninstall mode needs --uninstall-wait-for-pods NAMESPACE/SELECTOR (the release's pods)"
        )
    validate_label_selector(selector)
    lease = _object_ref("--release-lease", args.release_lease)
    stop_deployment = _object_ref("--uninstall-stop-deployment", args.uninstall_stop_deployment)
    try:
        secrets = parse_refs("--uninstall-delete-secrets", args.uninstall_delete_secrets)
        revoke = parse_refs("--uninstall-revoke-rolebindings", args.uninstall_revoke_rolebindings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    timeout_s = _duration("--uninstall-timeout", args.uninstall_timeout)
    if timeout_s <= 0:
        raise ConfigError("--uninstall-timeout must be positive")
    return UninstallSettings(
        tenant=tenant,
        binding_name=name,
        pods=(namespace, selector.strip()),
        lease=lease,
        secrets=secrets,
        timeout_s=timeout_s,
        platform=platform,
        stop_deployment=stop_deployment,
        revoke_rolebindings=revoke,
    )


def _object_ref(flag: str, text: str) -> tuple[str, str] | None:
    if not text.strip():
        return None
    namespace, _, name = text.strip().partition("/")
    if not (is_dns1123_label(namespace) and name and "/" not in name):
        raise ConfigError(f"{flag} wants NAMESPACE/NAME, not {text!r}")
    return namespace, name


def _boolean(flag: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise ConfigError(f"{flag} is true or false, not {text!r}")
    return value in ("true", "1")


def is_dns1123_subdomain(value: str) -> bool:
    """A Lease name: dot-separated DNS-1123 labels, at most 253 characters."""
    return len(value) <= 253 and all(is_dns1123_label(part) for part in value.split("."))


def _duration(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from exc


# Label selector grammar as kube-apiserver parses it (k8s.io/apimachinery/pkg/labels).
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
_KEY = rf"(?:{_PREFIX}/)?{_NAME}"
_REQUIREMENT = re.compile(
    rf"!\s*(?P<absent>{_KEY})"
    rf"|(?P<key>{_KEY})(?:"
    rf"\s*(?:==|=|!=)\s*(?P<value>{_NAME})?"
    rf"|\s+(?:in|notin)\s*\((?P<values>[^()]*)\)"
    rf"|\s*[<>]\s*-?[0-9]+"
    rf")?"
)


def validate_label_selector(selector: str) -> None:
    """ConfigError unless the API server would accept `selector` (so a typo fails at
    start instead of retrying forever)."""
    for raw in _split_requirements(selector):
        part = raw.strip()
        match = _REQUIREMENT.fullmatch(part)
        key = match and (match["absent"] or match["key"])
        if match is None or not key or len(key.partition("/")[0]) > 253:
            raise ConfigError(f"--namespace-selector: cannot parse {part!r} in {selector!r}")
        if match["values"] is not None:
            values = [value.strip() for value in match["values"].split(",")]
            if not all(re.fullmatch(_NAME, value) for value in values):
                raise ConfigError(f"--namespace-selector: bad value list in {part!r}")


def _split_requirements(selector: str) -> list[str]:
    """Split at the commas that are not inside a `(...)` value list."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if depth != 0:
        raise ConfigError(f"--namespace-selector: unbalanced parentheses in {selector!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-reloader",
        usage="%(prog)s [flags] -- COMMAND [ARGS...]",
        description="Keep a tenant's KEDA operator watching exactly that tenant's namespaces: "
        "restart it (process mode) or patch its Deployment when the set changes.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> (upper case, '_' for '-'). "
        "Durations are Go-style: 500ms, 2s, 1m30s.",
    )
    select = parser.add_argument_group("which namespaces")
    select.add_argument(
        "--tenant", default="", help="the tenant whose namespaces to watch (needs a tenancy rule)"
    )
    select.add_argument(
        "--namespace-selector",
        default="",
        metavar="SELECTOR",
        help="a raw label selector instead of --tenant; every namespace it selects is "
        "watched; never empty",
    )
    select.add_argument(
        "--kubeconfig", default="", help="kubeconfig path (default: in-cluster config)"
    )
    add_tenancy_flags(parser)
    select.add_argument(
        "--tenancy-rule-configmap",
        default="",
        metavar="NAMESPACE/NAME",
        help="read the tenancy rule from this ConfigMap (key rule.yaml), the one the router "
        "release publishes and the router itself reads, instead of the tenancy flags",
    )
    select.add_argument(
        "--tenancy-rule-interval",
        default="30s",
        help="re-read the published rule this often; when it changed the reloader exits to "
        "start again with it",
    )

    target = parser.add_argument_group("what to update")
    target.add_argument("--mode", choices=MODES, default="process")
    operator_health.add_flags(parser.add_argument_group("the operator's own probes (process mode)"))
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
    target.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="deployment mode: the operator's replicas while the tenant has a namespace "
        "(the reloader owns spec.replicas; 0 while it has none)",
    )
    target.add_argument(
        "--resync-period",
        default="5m",
        help="deployment mode: re-check the Deployment this often, undoing drift (0: never)",
    )

    target.add_argument(
        "--forward-grpc",
        default="",
        metavar="HOST:PORT=HOST:PORT",
        help="process mode: listen on the first address (the operator's gRPC port; ':PORT' "
        "for --forward-grpc-bind-address) and splice each connection to the second (where the "
        "operator listens), holding it while the operator restarts",
    )
    target.add_argument(
        "--forward-grpc-bind-address",
        default="127.0.0.1",
        help="process mode: the address --forward-grpc listens on when its LISTEN has no host; "
        "the chart sets the pod IP (the adapter dials the operator's Service from its own pod); "
        "0.0.0.0 or :: listens on every address",
    )
    target.add_argument(
        "--forward-grpc-max-connections",
        type=int,
        default=32,
        help="process mode: adapter connections held or spliced at once (the adapter keeps one "
        "per replica); further ones are closed at once, logged and counted",
    )
    target.add_argument(
        "--release-lease",
        default="",
        metavar="NAMESPACE/NAME",
        help="the operator's leader-election Lease: released once the operator holding it is "
        "proven dead (its process exited; in deployment mode, its pod's operator container "
        "reported terminated), never a live holder's, so its successor need not wait it out; "
        "without proof it expires; in process mode "
        "also waited for before the first start (see --lease-wait)",
    )
    target.add_argument(
        "--lease-wait",
        default="30s",
        help="process mode with --release-lease: start the first operator once the Lease is "
        "free (another pod's operator stopped), or after this long; 0s: at once",
    )
    bind = parser.add_argument_group(
        "operator access",
        "RoleBindings that follow the tenant's namespaces (deployment and bindings modes), "
        "and what the operator may read (process mode)",
    )
    bind.add_argument(
        "--bind-cluster-role",
        default="",
        metavar="NAME",
        help="bind this ClusterRole to the operator in each of the tenant's namespaces",
    )
    bind.add_argument(
        "--bind-service-account",
        default="",
        metavar="NAMESPACE/NAME",
        help="the operator's ServiceAccount, the subject of those RoleBindings",
    )
    bind.add_argument(
        "--binding-name", default="", help="name of each RoleBinding (default: ROLE-managed)"
    )
    bind.add_argument(
        "--bindings-interval", default="10s", help="reconcile the RoleBindings at least this often"
    )
    bind.add_argument(
        "--unbind-timeout",
        default="5s",
        help="a namespace that left the tenant loses its RoleBinding at most this long after "
        "this component saw it leave, whatever the operator is reported to watch (sooner once "
        "the operator runs without it); must exceed --debounce and --removal-delay",
    )
    bind.add_argument(
        "--watched-configmap",
        default="",
        metavar="NAMESPACE/NAME",
        help="process mode: publish the namespaces the operator runs with here; bindings "
        "mode: read them from here",
    )
    bind.add_argument(
        "--check-operator-access",
        default="false",
        metavar="BOOL",
        help="process mode: add a namespace to the operator's list only once it may read "
        "it there (SelfSubjectRulesReview); until then it waits and is retried",
    )

    gone = parser.add_argument_group(
        "uninstall (one-shot, the tenant chart's post-delete hook)",
        "--mode=uninstall: once no pod of the release is left, remove the tenant's RoleBindings "
        "(and their finalizer), KEDA's finalizer in its namespaces, the operator's Lease "
        "(--release-lease) and the certificate Secrets; exit 0 when nothing is left",
    )
    gone.add_argument(
        "--uninstall-wait-for-pods",
        default="",
        metavar="NAMESPACE/SELECTOR",
        help="the release's pods: nothing is removed while one of them exists",
    )
    gone.add_argument(
        "--uninstall-delete-secrets",
        default="",
        metavar="NAMESPACE/NAME[,...]",
        help="Secrets to delete, each only if keda-tenancy-certs made it (its label)",
    )
    gone.add_argument(
        "--uninstall-platform-layout",
        default="false",
        metavar="BOOL",
        help="the platform layout's pre-delete hook: find the tenant's namespaces by the "
        "platform controller's bindings and leave those bindings to it",
    )
    gone.add_argument(
        "--uninstall-stop-deployment",
        default="",
        metavar="NAMESPACE/NAME",
        help="delete this Deployment (the operator) first, then wait for the pods",
    )
    gone.add_argument(
        "--uninstall-revoke-rolebindings",
        default="",
        metavar="NAMESPACE/NAME[,...]",
        help="RoleBindings deleted before the Secrets (their writer's access to them)",
    )
    gone.add_argument(
        "--uninstall-timeout",
        default="3m",
        help="give up (exit 1, what is left in the log) after this long",
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
        "--removal-delay",
        default="0s",
        help="hold changes that only remove namespaces this long (not moves to another tenant)",
    )
    timing.add_argument(
        "--grace-period",
        default="30s",
        help="after SIGTERM, how long the operator may take before SIGKILL",
    )
    timing.add_argument(
        "--kill-wait", default="10s", help="how long to wait for the operator after SIGKILL"
    )
    timing.add_argument(
        "--max-restarts",
        type=int,
        default=10,
        help="consecutive failures (exits on its own) before the reloader exits non-zero",
    )
    timing.add_argument(
        "--backoff-initial", default="1s", help="first delay before restarting a crashed operator"
    )
    timing.add_argument("--backoff-max", default="1m", help="longest delay between crash restarts")
    timing.add_argument(
        "--healthy-after", default="1m", help="a run this long resets the failure count"
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
        default=8090,  # KEDA's operator keeps 8081 for its own probes
        help="port of /healthz /readyz /metrics (not 8081: KEDA's operator probes use it)",
    )
    ops.add_argument(
        "--max-namespace-staleness",
        default=DEFAULT_MAX_STALENESS,
        help="the namespace list not confirmed current (LIST, event, verified watch) for longer: "
        "/readyz fails in deployment and bindings modes and warns in process mode (where the "
        "pod is the operator's, which the adapter reaches through its Service); 0s: never",
    )
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ops.add_argument("--log-format", default="json", choices=["json", "text"])
    return parser
