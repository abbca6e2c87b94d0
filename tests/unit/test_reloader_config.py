"""Command line and environment into ReloaderConfig; bad configurations refused at start."""

from __future__ import annotations

from typing import Any

import pytest

from reloader.config import ReloaderConfig, build_parser, validate_label_selector
from reloader.schedule import CrashPolicy, SchedulePolicy
from tenancy_common.tenancy_config import ConfigError

BASE = ["--tenant=tenant-a", "--tenant-label-key=keda-tenancy.io/tenant"]
CMD = ["--", "/keda", "--leader-elect"]


def test_defaults() -> None:
    config = ReloaderConfig.from_args([*BASE, *CMD], {})
    assert config.mode == "process"
    assert config.tenant == "tenant-a"
    assert config.label_selector == "keda-tenancy.io/tenant=tenant-a"
    assert config.command == ("/keda", "--leader-elect")
    assert config.target_env == "WATCH_NAMESPACE"
    assert config.schedule == SchedulePolicy(
        debounce_s=2, max_wait_s=30, min_interval_s=5, removal_delay_s=0
    )
    assert config.crash == CrashPolicy(
        max_restarts=10, backoff_initial_s=1, backoff_max_s=60, healthy_after_s=60
    )
    assert (config.grace_period_s, config.kill_wait_s, config.resync_period_s) == (30, 10, 300)
    assert (config.health_bind_address, config.health_port) == ("0.0.0.0", 8090)
    assert (config.log_level, config.log_format) == ("info", "json")
    assert config.kubeconfig is None
    assert config.target_deployment is None


GOOD: list[tuple[str, list[str], dict[str, str], dict[str, Any]]] = [
    (
        "durations are Go-style",
        [*BASE, "--debounce=500ms", "--max-wait=1m", "--grace-period=1m30s", *CMD],
        {},
        {"schedule.debounce_s": 0.5, "schedule.max_wait_s": 60, "grace_period_s": 90},
    ),
    (
        "the environment gives defaults",
        ["--tenant-label-key=t", *CMD],
        {"KEDA_TENANCY_RELOADER_TENANT": "org-a", "KEDA_TENANCY_RELOADER_MAX_RESTARTS": "3"},
        {"tenant": "org-a", "crash.max_restarts": 3, "label_selector": "t=org-a"},
    ),
    (
        "flags win over the environment",
        [*BASE, *CMD],
        {"KEDA_TENANCY_RELOADER_TENANT": "other"},
        {"tenant": "tenant-a"},
    ),
    (
        "hnc roots narrow the watch to the tree",
        ["--tenant=org-a", "--hnc-roots=org-a", *CMD],
        {},
        {"label_selector": "org-a.tree.hnc.x-k8s.io/depth"},
    ),
    (
        "a name pattern watches every namespace",
        ["--tenant=a", "--namespace-name-pattern=(?P<tenant>[a-z]+)--.+", *CMD],
        {},
        {"label_selector": None},
    ),
    (
        "with a removal delay the watch sees moves to other tenants",
        [*BASE, "--removal-delay=30s", *CMD],
        {},
        {"label_selector": None, "schedule.removal_delay_s": 30},
    ),
    (
        "a raw selector",
        ["--namespace-selector=team in (a, b),!excluded", *CMD],
        {},
        {"rule": None, "tenant": None, "label_selector": "team in (a, b),!excluded"},
    ),
    (
        "deployment mode",
        [
            *BASE,
            "--mode=deployment",
            "--target-deployment=keda-a/keda-operator",
            "--container=keda-operator",
        ],
        {},
        {
            "target_deployment": ("keda-a", "keda-operator"),
            "container": "keda-operator",
            "command": (),
        },
    ),
    (
        "another variable, a kubeconfig, text logs",
        [*BASE, "--target-env=KEDA_WATCH", "--kubeconfig=/k", "--log-format=text", *CMD],
        {},
        {"target_env": "KEDA_WATCH", "kubeconfig": "/k", "log_format": "text"},
    ),
]


@pytest.mark.parametrize(
    ("argv", "environ", "expected"), [pytest.param(a, e, x, id=i) for i, a, e, x in GOOD]
)
def test_good_configurations(
    argv: list[str], environ: dict[str, str], expected: dict[str, Any]
) -> None:
    config = ReloaderConfig.from_args(argv, environ)
    for path, value in expected.items():
        actual: Any = config
        for part in path.split("."):
            actual = getattr(actual, part)
        assert actual == value, path


BAD: list[tuple[str, list[str], str]] = [
    ("neither tenant nor selector", CMD, "--namespace-selector is required"),
    ("an empty selector", ["--namespace-selector=", *CMD], "--namespace-selector is required"),
    ("a blank selector", ["--namespace-selector=  ", *CMD], "--namespace-selector is required"),
    ("a selector that does not parse", ["--namespace-selector=team in a", *CMD], "cannot parse"),
    ("an empty requirement", ["--namespace-selector=a=b,,c", *CMD], "cannot parse"),
    ("unbalanced parentheses", ["--namespace-selector=a in (b", *CMD], "unbalanced"),
    ("tenant and selector", [*BASE, "--namespace-selector=a=b", *CMD], "not both"),
    ("a tenant without a rule", ["--tenant=a", *CMD], "no tenancy rule"),
    (
        "a tenant that is not a DNS label",
        ["--tenant=Bad_Name", "--tenant-label-key=t", *CMD],
        "DNS-1123",
    ),
    ("process mode without a command", BASE, "needs the operator command"),
    ("process mode with deployment flags", [*BASE, "--container=x", *CMD], "for --mode=deployment"),
    ("deployment mode without a target", [*BASE, "--mode=deployment"], "needs --target-deployment"),
    (
        "deployment mode with a bad target",
        [*BASE, "--mode=deployment", "--target-deployment=keda", "--container=c"],
        "needs --target-deployment",
    ),
    (
        "deployment mode with a command",
        [*BASE, "--mode=deployment", "--target-deployment=a/b", "--container=c", *CMD],
        "runs no command",
    ),
    ("a bad duration", [*BASE, "--debounce=soon", *CMD], "--debounce"),
    ("a negative duration", [*BASE, "--grace-period=-1", *CMD], "--grace-period"),
    ("zero restarts", [*BASE, "--max-restarts=0", *CMD], "at least 1"),
    (
        "backoff upside down",
        [*BASE, "--backoff-initial=2m", "--backoff-max=1m", *CMD],
        "must not exceed",
    ),
    ("a bad variable name", [*BASE, "--target-env=WATCH-NS", *CMD], "environment variable name"),
    ("a bad port", [*BASE, "--health-port=70000", *CMD], "--health-port"),
    ("an unknown mode", [*BASE, "--mode=sidecar", *CMD], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "message"), [pytest.param(a, m, id=i) for i, a, m in BAD])
def test_bad_configurations_are_refused_at_start(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        ReloaderConfig.from_args(argv, {})
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "selector",
    [
        "team=a",
        "team==a",
        "team!=a",
        "team",
        "!team",
        "example.com/team=a",
        "team in (a,b)",
        "team notin ( a , b )",
        "team=",
        "a=b, c!=d , e",
        "tier>2",
    ],
)
def test_selectors_the_api_server_accepts(selector: str) -> None:
    validate_label_selector(selector)


@pytest.mark.parametrize(
    "selector",
    [
        "=a",
        "team=a=b",
        "team in ()",
        "team in (a,)",
        "Example.com/team=a",
        "team=-a",
        "a b",
        "team=a,",
    ],
)
def test_selectors_the_api_server_refuses(selector: str) -> None:
    with pytest.raises(ConfigError):
        validate_label_selector(selector)


def test_every_flag_is_documented() -> None:
    """docs/reloader.md lists each flag the parser knows."""
    from pathlib import Path  # noqa: PLC0415

    docs = (Path(__file__).parents[2] / "docs" / "reloader.md").read_text()
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if f"`{flag}`" not in docs]
    assert not missing, f"undocumented flags: {missing}"


def test_release_lease_is_namespace_and_name() -> None:
    base = ["--tenant=a", "--tenant-label-key=k", "--", "/keda"]
    config = ReloaderConfig.from_args(
        ["--release-lease=keda-a/a.operator.keda-tenancy.io", *base], {}
    )
    assert config.release_lease == ("keda-a", "a.operator.keda-tenancy.io")
    assert ReloaderConfig.from_args(base, {}).release_lease is None
    for bad in ("keda-a", "/x", "keda-a/", "Keda/x", "keda-a/under_score"):
        with pytest.raises(SystemExit):
            ReloaderConfig.from_args([f"--release-lease={bad}", *base], {})


def test_forward_grpc_is_process_mode_listen_and_target() -> None:
    base = ["--tenant=a", "--tenant-label-key=k"]
    config = ReloaderConfig.from_args(
        [*base, "--forward-grpc=:9666=127.0.0.1:9667", "--", "/keda"], {}
    )
    # No host: --forward-grpc-bind-address, loopback unless told (never every address).
    assert config.forward_grpc == (("127.0.0.1", 9666), ("127.0.0.1", 9667))
    assert config.forward_grpc_max_connections == 32
    config = ReloaderConfig.from_args(
        [*base, "--forward-grpc=:9666=127.0.0.1:9667", "--", "/keda"],
        {
            "KEDA_TENANCY_RELOADER_FORWARD_GRPC_BIND_ADDRESS": "10.1.2.3",
            "KEDA_TENANCY_RELOADER_FORWARD_GRPC_MAX_CONNECTIONS": "4",
        },
    )
    assert config.forward_grpc == (("10.1.2.3", 9666), ("127.0.0.1", 9667))
    assert config.forward_grpc_max_connections == 4
    config = ReloaderConfig.from_args(
        [*base, "--forward-grpc=0.0.0.0:9666=127.0.0.1:9667", "--", "/keda"], {}
    )
    assert config.forward_grpc == (("0.0.0.0", 9666), ("127.0.0.1", 9667))
    assert ReloaderConfig.from_args([*base, "--", "/keda"], {}).forward_grpc is None
    with pytest.raises(SystemExit):
        ReloaderConfig.from_args([*base, "--forward-grpc-max-connections=0", "--", "/keda"], {})
    for bad in (":9666", ":9666=", "x=127.0.0.1:1", ":9666=127.0.0.1:0"):
        with pytest.raises(SystemExit):
            ReloaderConfig.from_args([*base, f"--forward-grpc={bad}", "--", "/keda"], {})
    deployment = [*base, "--mode=deployment", "--target-deployment=n/d", "--container=c"]
    with pytest.raises(SystemExit):
        ReloaderConfig.from_args([*deployment, "--forward-grpc=:1=127.0.0.1:2"], {})
