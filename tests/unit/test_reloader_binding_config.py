"""The operator-access flags: who may bind (never the operator's own pod), and how long a
namespace that left may keep its binding."""

from __future__ import annotations

import pytest

from reloader.config import BindingSettings, ReloaderConfig

BASE = ["--tenant=alpha", "--tenant-label-key=keda-tenancy.io/tenant"]
BIND = [
    "--bind-cluster-role=keda-tenancy-alpha-operator",
    "--bind-service-account=keda-alpha/keda-operator",
]
DEPLOYMENT = [
    "--mode=deployment",
    "--target-deployment=keda-alpha/keda-operator",
    "--container=keda-operator",
]


def test_bindings_mode() -> None:
    config = ReloaderConfig.from_args(
        [
            *BASE,
            "--mode=bindings",
            *BIND,
            "--watched-configmap=keda-alpha/watched",
            "--removal-delay=1m",
            "--unbind-timeout=70s",
        ],
        {},
    )
    assert config.watched_configmap == ("keda-alpha", "watched")
    assert config.bindings == BindingSettings(
        cluster_role="keda-tenancy-alpha-operator",
        subject=("keda-alpha", "keda-operator"),
        name="keda-tenancy-alpha-operator-managed",
        interval_s=10,
        unbind_timeout_s=70,
    )


def test_deployment_mode_binds_and_process_mode_checks() -> None:
    config = ReloaderConfig.from_args([*BASE, *DEPLOYMENT, *BIND, "--binding-name=ops"], {})
    assert config.bindings is not None
    assert config.bindings.name == "ops"
    # The security bound by default: seconds, not minutes (issue 20, item 1).
    assert config.bindings.unbind_timeout_s == 5
    process = ReloaderConfig.from_args(
        [*BASE, "--check-operator-access=true", "--watched-configmap=keda-alpha/w", "--", "/keda"],
        {"KEDA_TENANCY_RELOADER_CHECK_OPERATOR_ACCESS": "false"},
    )
    assert process.check_operator_access
    assert process.bindings is None
    from_env = ReloaderConfig.from_args(
        [*BASE, "--", "/keda"], {"KEDA_TENANCY_RELOADER_CHECK_OPERATOR_ACCESS": "true"}
    )
    assert from_env.check_operator_access


@pytest.mark.parametrize(
    "argv",
    [
        # The operator's own pod may never bind: a compromised KEDA could bind itself anywhere.
        [*BASE, *BIND, "--", "/keda"],
        [*BASE, "--mode=bindings", *BIND],  # no watched ConfigMap
        [*BASE, "--mode=bindings", "--watched-configmap=keda-alpha/w"],  # nothing to bind
        [*BASE, "--mode=bindings", *BIND, "--watched-configmap=keda-alpha/w", "--", "/keda"],
        [*BASE, *DEPLOYMENT, "--bind-cluster-role=r"],  # half of the pair
        [*BASE, *DEPLOYMENT, *BIND, "--watched-configmap=keda-alpha/w"],
        [*BASE, *DEPLOYMENT, "--check-operator-access=true"],
        [*BASE, "--check-operator-access=maybe", "--", "/keda"],
        [*BASE, "--watched-configmap=no-slash", "--", "/keda"],
        ["--namespace-selector=team=a", *DEPLOYMENT, *BIND],  # bindings are labelled by tenant
        [*BASE, *DEPLOYMENT, *BIND, "--binding-name=Bad_Name"],
        # KEDA would be refused a namespace before the reloader stops it.
        [*BASE, *DEPLOYMENT, *BIND, "--removal-delay=1m"],
        [*BASE, *DEPLOYMENT, *BIND, "--debounce=5s"],
        [*BASE, *DEPLOYMENT, *BIND, "--unbind-timeout=2s"],
    ],
)
def test_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ReloaderConfig.from_args(argv, {})
    assert exited.value.code == 2
