"""Where a stale namespace list fails /readyz and where it only warns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from tenancy_common.namespace_cache import NamespaceCache

BASE = ["--tenant=alpha", "--tenant-label-key=keda-tenancy.io/tenant"]


class ManualClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def stale_reloader(argv: list[str]) -> tuple[Reloader, ManualClock]:
    reloader = Reloader(ReloaderConfig.from_args(argv, {}), CollectorRegistry())
    clock = ManualClock()
    reloader.cache = NamespaceCache(clock)
    reloader.cache.replace([])  # listed once, at 50 s
    return reloader, clock


def test_deployment_mode_turns_not_ready() -> None:
    """Its pod serves nothing: not ready is only seen, and alerted on."""
    reloader, clock = stale_reloader(
        [
            *BASE,
            "--mode=deployment",
            "--target-deployment=keda-alpha/keda-operator",
            "--container=c",
        ]
    )
    check = reloader.readiness_checks()["namespace-staleness"]
    assert "namespace-staleness" not in reloader.readiness_warnings()
    clock.now += 300  # the default bound, 5m, reached but not passed
    assert check() is None
    clock.now += 1
    assert "not confirmed current for 301s" in (check() or "")
    reloader.cache.confirm_current()  # a bookmark
    assert check() is None


def test_process_mode_only_warns() -> None:
    """Its pod is the operator's: not ready, the adapter would lose it (Service endpoints)."""
    reloader, clock = stale_reloader([*BASE, "--max-namespace-staleness=2m", "--", "/keda"])
    assert "namespace-staleness" not in reloader.readiness_checks()
    warning = reloader.readiness_warnings()["namespace-staleness"]
    clock.now += 121
    assert "not confirmed current for 121s (bound 120s)" in (warning() or "")


def test_zero_disables() -> None:
    reloader, clock = stale_reloader(
        [
            *BASE,
            "--mode=deployment",
            "--target-deployment=keda-alpha/keda-operator",
            "--container=c",
            "--max-namespace-staleness=0s",
        ]
    )
    clock.now += 10**6
    assert reloader.readiness_checks()["namespace-staleness"]() is None
