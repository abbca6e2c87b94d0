"""keda-tenancy-operator-forward takes keda-tenancy-grpc-forward's flags and environment
defaults: a pod spec switches programs by its command alone."""

from __future__ import annotations

import pytest

from operator_pod import grpc_forward
from operator_pod.grpc_forward import ForwardConfig
from reloader import forward_cli


def flags(parser: object) -> dict[str, object]:
    return {
        action.option_strings[-1]: (action.default, action.choices, action.type)
        for action in parser._actions  # type: ignore[attr-defined]
        if action.option_strings and action.dest != "help"
    }


def test_the_flags_and_their_defaults_are_the_old_sidecars() -> None:
    assert flags(grpc_forward.build_parser()) == flags(forward_cli.build_parser())
    assert grpc_forward.ENV_PREFIX == forward_cli.ENV_PREFIX


def test_flags_win_over_environment_defaults() -> None:
    config = ForwardConfig.from_args(
        ["--target=keda-operator.ns.svc.cluster.local:9666", "--dial-wait=2s"],
        {
            "KEDA_TENANCY_GRPC_FORWARD_DIAL_WAIT": "5s",
            "KEDA_TENANCY_GRPC_FORWARD_SHUTDOWN_GRACE": "40s",
            "KEDA_TENANCY_GRPC_FORWARD_HEALTH_PORT": "8099",
        },
    )
    assert config.target == ("keda-operator.ns.svc.cluster.local", 9666)
    assert config.listen == ("127.0.0.1", 9666)
    assert config.dial_wait_s == 2.0
    assert config.shutdown_grace_s == 40.0
    assert config.health_port == 8099


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--target=nohost"],
        ["--target=a:1", "--dial-wait=soon"],
        ["--target=a:1", "--health-port=70000"],
    ],
)
def test_unusable_flags_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ForwardConfig.from_args(argv, {})
    assert exited.value.code == 2
