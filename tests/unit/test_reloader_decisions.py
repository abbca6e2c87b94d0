"""The reloader's pure parts: desired set, restart schedule (fake time), config, patches."""

from __future__ import annotations

import pytest

from reloader.config import ReloaderConfig
from reloader.deployment import REPLICAS_ANNOTATION, DeploymentPatcher
from reloader.desired import (
    MAX_ENV_STRING_BYTES,
    EnvTooLargeError,
    canonical,
    changes,
    check_env_size,
    desired_namespaces,
)
from reloader.schedule import RestartSchedule, SchedulePolicy, crash_backoff_s
from tenancy_common.names import NamespaceName, TenantName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import LabelValueRule, TenancyRule


def ns(name: str, tenant: str | None = None, *, terminating: bool = False) -> Namespace:
    return Namespace(NamespaceName(name), {"t": tenant} if tenant else {}, terminating)


def test_desired_is_sorted_unique_valid_and_keeps_terminating() -> None:
    cache = {
        n.name: n
        for n in (ns("b", "x"), ns("a", "x"), ns("c", "y"), ns("d", "x", terminating=True))
    }
    rule = TenancyRule((LabelValueRule("t"),))
    assert desired_namespaces(cache, rule=rule, tenant=TenantName("x")) == ("a", "b", "d")
    assert desired_namespaces(cache, rule=None, tenant=None) == ("a", "b", "c", "d")
    assert canonical(()) == ""


def test_changes_for_the_log() -> None:
    assert changes(None, "a,b") == (["a", "b"], [])
    assert changes("a,b", "b,c") == (["c"], ["a"])
    assert changes("a", "") == ([], ["a"])


def test_env_size_limit() -> None:
    name = "WATCH_NAMESPACE"
    fits = "x" * (MAX_ENV_STRING_BYTES - len(name) - 2)
    check_env_size(name, fits)
    with pytest.raises(EnvTooLargeError):
        check_env_size(name, fits + "x")


POLICY = SchedulePolicy(debounce_s=2, max_wait_s=10, min_interval_s=5, removal_delay_s=4)


def test_debounce_waits_for_quiet() -> None:
    s = RestartSchedule(POLICY)
    s.observe(100.0, "a,b", "a")
    assert s.due_in(100.0) == 2
    s.observe(101.5, "a,b,c", "a")  # still changing: the quiet period starts again
    assert s.due_in(101.5) == 2
    assert s.due_in(103.5) == 0


def test_a_burst_coalesces_into_one_restart() -> None:
    s = RestartSchedule(POLICY)
    restarts, running, now = 0, "a0", 0.0
    names = ["a0"]
    for i in range(200):
        now += 0.005
        names.append(f"n{i}")
        s.observe(now, ",".join(names), running)
        if s.due_in(now) == 0:
            restarts += 1
            running = s.pending or running
            s.restarted(now)
    now += POLICY.debounce_s
    if s.due_in(now) == 0:
        restarts += 1
        s.restarted(now)
    assert restarts == 1


def test_max_wait_bounds_continuous_churn() -> None:
    s = RestartSchedule(POLICY)
    for step in range(30):
        s.observe(step * 1.0, f"a,{step}", "a")  # a change every second, never quiet
        if s.due_in(step * 1.0) == 0:
            assert step == 10
            return
    raise AssertionError("never restarted")


def test_no_restart_when_equal_and_flaps_cancel() -> None:
    s = RestartSchedule(POLICY)
    s.observe(0, "a", "a")
    assert s.due_in(0) is None
    s.observe(0, "a,b", "a")
    s.observe(1, "a", "a")  # flapped back
    assert s.due_in(5) is None


def test_removals_are_held_additions_are_not() -> None:
    s = RestartSchedule(POLICY)
    s.observe(0, "a", "a,b")  # removal only
    assert s.due_in(0) == 4
    s.observe(1, "a,c", "a,b")  # now an addition too
    assert s.due_in(1) == 2


def test_min_interval_between_restarts() -> None:
    s = RestartSchedule(POLICY)
    s.restarted(10)
    s.observe(10, "a,b", "a")
    assert s.due_in(10) == 5


@pytest.mark.parametrize(("failures", "delay"), [(0, 0), (1, 1), (2, 2), (3, 4), (6, 30), (20, 30)])
def test_crash_backoff(failures: int, delay: float) -> None:
    assert crash_backoff_s(failures, 1, 30) == delay


@pytest.mark.parametrize(
    "argv",
    [
        ["--", "/keda"],  # neither tenant nor selector
        ["--namespace-selector=", "--", "/keda"],  # empty selector
        ["--namespace-selector=  ", "--", "/keda"],
        ["--tenant=a"],  # no rule, no command
        ["--tenant=a", "--tenant-label-key=t"],  # no command
        ["--tenant=Bad_Name", "--tenant-label-key=t", "--", "/keda"],
        ["--tenant=a", "--tenant-label-key=t", "--mode=deployment"],  # no target
        ["--tenant=a", "--tenant-label-key=t", "--debounce=soon", "--", "/keda"],
    ],
)
def test_bad_config_is_refused_at_start(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        ReloaderConfig.from_args(argv, {})
    assert caught.value.code == 2


def test_config_from_flags_and_environment() -> None:
    config = ReloaderConfig.from_args(
        ["--hnc-roots=org-a", "--debounce=500ms", "--", "/keda", "--leader-elect"],
        {"KEDA_TENANCY_RELOADER_TENANT": "org-a"},
    )
    assert config.tenant == "org-a"
    assert config.label_selector == "org-a.tree.hnc.x-k8s.io/depth"
    assert config.command == ("/keda", "--leader-elect")
    assert config.schedule.debounce_s == 0.5
    raw = ReloaderConfig.from_args(["--namespace-selector=team=a", "--", "/keda"], {})
    assert (raw.rule, raw.label_selector) == (None, "team=a")


def deployment(
    env: list[dict[str, object]], replicas: int = 1, annotations: dict[str, str] | None = None
) -> dict[str, object]:
    return {
        "metadata": {"annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "op", "env": env}]}},
        },
    }


def test_deployment_patches() -> None:
    patcher = DeploymentPatcher.__new__(DeploymentPatcher)
    patcher._namespace, patcher._name, patcher._container, patcher._env_name = (
        "ns",
        "keda",
        "op",
        "WATCH_NAMESPACE",
    )
    same = deployment([{"name": "WATCH_NAMESPACE", "value": "a,b"}])
    assert patcher.patch_for(same, "a,b") is None
    changed = patcher.patch_for(same, "a")
    assert changed == {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "op",
                            "env": [{"name": "WATCH_NAMESPACE", "value": "a", "valueFrom": None}],
                        }
                    ]
                }
            }
        }
    }
    from_secret = deployment([{"name": "WATCH_NAMESPACE", "valueFrom": {"configMapKeyRef": {}}}])
    assert patcher.patch_for(from_secret, "a") is not None
    assert patcher.patch_for(same, None) == {
        "metadata": {"annotations": {REPLICAS_ANNOTATION: "1"}},
        "spec": {"replicas": 0},
    }
    scaled_down = deployment(
        [{"name": "WATCH_NAMESPACE", "value": "a,b"}], 0, {REPLICAS_ANNOTATION: "3"}
    )
    assert patcher.patch_for(scaled_down, None) is None
    assert patcher.patch_for(scaled_down, "a,b") == {
        "spec": {"replicas": 3},
        "metadata": {"annotations": {REPLICAS_ANNOTATION: None}},
    }
    patcher._container = "missing"
    with pytest.raises(LookupError):
        patcher.patch_for(same, "a")
