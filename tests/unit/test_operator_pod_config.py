"""keda-tenancy-operator-pod's flags, their KEDA_TENANCY_OPERATOR_POD_* environment defaults,
and the pure decisions: the namespace set KEDA may run with, and whose Lease it may release."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from operator_pod.config import Config, ConfigError
from operator_pod.lease import release_for
from operator_pod.lease_gate import verdict
from operator_pod.namespace_set import Decision, decide
from operator_pod.operator_health import probe_address

PROCESS = ["--mode=process", "--namespaces-configmap=keda-alpha/keda-operator-namespaces"]


def test_process_mode_flags_as_the_chart_passes_them() -> None:
    config = Config.from_args(
        [
            *PROCESS,
            "--release-lease=keda-alpha/operator.keda.sh",
            "--forward-grpc=:9666=127.0.0.1:9667",
            "--forward-grpc-bind-address=10.0.0.7",
            "--grace-period=45s",
            "--check-operator-health=true",
            "--",
            "/keda",
            "--health-probe-bind-address=:8081",
        ],
        {},
    )
    assert config.mode == "process"
    assert config.namespaces_configmap == ("keda-alpha", "keda-operator-namespaces")
    assert config.lease == ("keda-alpha", "operator.keda.sh")
    assert config.forward_grpc == (("10.0.0.7", 9666), ("127.0.0.1", 9667))
    assert config.grace_period_s == 45.0
    assert config.debounce_s == 0.2
    assert config.target_env == "WATCH_NAMESPACE"
    assert config.command == ("/keda", "--health-probe-bind-address=:8081")
    assert config.operator_health is not None
    assert (config.operator_health.host, config.operator_health.port) == ("127.0.0.1", 8081)


def test_environment_defaults_and_flags_win_over_them() -> None:
    environ = {
        "KEDA_TENANCY_OPERATOR_POD_MODE": "deployment",
        "KEDA_TENANCY_OPERATOR_POD_LEASE": "keda-alpha/operator.keda.sh",
        "KEDA_TENANCY_OPERATOR_POD_HEALTH_PORT": "9000",
        "KEDA_TENANCY_OPERATOR_POD_GRACE_PERIOD": "10s",
    }
    config = Config.from_args(["--", "/keda"], environ)
    assert (config.mode, config.lease, config.health_port) == (
        "deployment",
        ("keda-alpha", "operator.keda.sh"),
        9000,
    )
    assert config.grace_period_s == 10.0
    assert Config.from_args(["--grace-period=3s", "--", "/keda"], environ).grace_period_s == 3.0


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--mode=process", "--", "/keda"], "--namespaces-configmap"),
        ([*PROCESS], "after '--'"),
        (["--mode=deployment", "--", "/keda"], "--lease"),
        (["--mode=deployment", "--lease=a/b", "--forward-grpc=:1=:2", "--", "/k"], "process"),
        (["--mode=deployment", "--lease=a/b", *PROCESS[1:], "--", "/keda"], "process"),
        ([*PROCESS[:1], "--namespaces-configmap=just-a-name", "--", "/keda"], "NAMESPACE/NAME"),
        ([*PROCESS, "--forward-grpc=9666", "--", "/keda"], "LISTEN=TARGET"),
        ([*PROCESS, "--debounce=soon", "--", "/keda"], "invalid duration"),
        ([*PROCESS, "--lease=a/b", "--release-lease=a/c", "--", "/keda"], "same Lease"),
    ],
)
def test_unusable_flags_are_refused(argv: list[str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Config.from_args(argv, {})


def configmap(data: dict[str, object] | None) -> dict[str, object]:
    obj: dict[str, object] = {"metadata": {"name": "keda-operator-namespaces"}}
    if data is not None:
        obj["data"] = data
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, Decision(None, "undecided")),
        (configmap(None), Decision(None, "undecided")),
        (configmap({"other": "x"}), Decision(None, "undecided")),
        (configmap({"namespaces": ""}), Decision(None, "empty")),
        (configmap({"namespaces": "b,a"}), Decision("a,b", "decided")),
        (configmap({"namespaces": "a"}), Decision("a", "decided")),
    ],
)
def test_the_namespace_set_decision(obj: dict[str, object] | None, expected: Decision) -> None:
    assert decide(obj, "WATCH_NAMESPACE") == expected


@pytest.mark.parametrize(
    "value",
    ["a,,b", ",a", "a,", " ", "A", "a b", "a,-b", "x" * 64, 7],
)
def test_values_keda_would_misread_are_refused(value: object) -> None:
    decision = decide(configmap({"namespaces": value}), "WATCH_NAMESPACE")
    assert decision.value is None
    assert decision.refused


def test_a_set_too_large_for_one_environment_string_is_refused() -> None:
    value = ",".join(f"namespace-{i:06d}" for i in range(8000))
    assert decide(configmap({"namespaces": value}), "WATCH_NAMESPACE").refused


NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def lease(holder: str, renewed: str = "2026-12-07T11:59:58.000000Z") -> dict[str, object]:
    return {
        "metadata": {"name": "operator.keda.sh", "resourceVersion": "42"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed},
    }


def test_the_lease_is_released_only_from_this_pods_keda_and_only_if_it_did_not_renew_since() -> (
    None
):
    died_at = datetime(2026, 12, 7, 11, 59, 59, tzinfo=UTC)
    ours = release_for(lease("pod-a_1234"), hostname="pod-a", died_at=died_at, now=NOW)
    assert ours is not None
    assert ours["spec"]["holderIdentity"] == ""
    assert ours["metadata"]["resourceVersion"] == "42"  # the update's precondition
    assert release_for(lease("pod-b_1234"), hostname="pod-a", died_at=died_at, now=NOW) is None
    assert release_for(lease("pod-a"), hostname="pod-a", died_at=died_at, now=NOW) is None
    renewed_after = lease("pod-a_1234", "2026-12-07T11:59:59.500000Z")
    assert release_for(renewed_after, hostname="pod-a", died_at=died_at, now=NOW) is None
    assert release_for(lease(""), hostname="pod-a", died_at=died_at, now=NOW) is None


def test_the_gate_verdict() -> None:
    assert verdict(None, "pod-a") == "free"
    assert verdict(lease(""), "pod-a") == "free"
    assert verdict(lease("pod-a_1"), "pod-a") == "own"
    assert verdict(lease("pod-b_1"), "pod-a") == "held"


def test_keda_probe_address_comes_from_its_own_flag() -> None:
    assert probe_address(["/keda"]) == ("127.0.0.1", 8081)
    assert probe_address(["/keda", "--health-probe-bind-address", "10.1.2.3:9"]) == ("10.1.2.3", 9)
    assert probe_address(["/keda", "--health-probe-bind-address=0"]) is None
