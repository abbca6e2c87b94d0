"""The access gate's bookkeeping: who waits, why, and when to look again (fake time)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from reloader.access import BindingGate
from reloader.rolebindings import BindingMetrics, ReconcileResult


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


class Manager:
    """Binds what `bindable` holds; counts the namespaces it was asked about."""

    def __init__(self) -> None:
        self.bindable: set[str] = set()
        self.asked: list[list[str]] = []

    async def ensure(self, namespaces: Iterable[str]) -> ReconcileResult:
        names = sorted(namespaces)
        self.asked.append(names)
        result = ReconcileResult()
        for ns in names:
            if ns in self.bindable:
                result.bound.add(ns)
            else:
                result.failed[ns] = "forbidden"
        return result


async def test_waiting_namespaces_back_off_and_new_ones_are_checked_at_once() -> None:
    clock, manager, registry = Clock(), Manager(), CollectorRegistry()
    manager.bindable = {"a"}
    gate = BindingGate(manager, BindingMetrics(registry), clock=clock)  # type: ignore[arg-type]
    assert await gate.admit(["a", "b"]) == ("a",)
    assert gate.waiting == {"b": "forbidden"}
    assert gate.retry_in_s() == 1.0
    assert registry.get_sample_value("keda_tenancy_reloader_namespaces_waiting_for_access") == 1
    # Before the retry is due, b is not asked about again, a not at all (admitted) ...
    assert await gate.admit(["a", "b"]) == ("a",)
    assert manager.asked == [["a", "b"]]
    # ... but a namespace that just appeared is.
    assert await gate.admit(["a", "b", "c"]) == ("a",)
    assert manager.asked[-1] == ["c"]
    clock.t += 1.0
    assert await gate.admit(["a", "b", "c"]) == ("a",)
    assert manager.asked[-1] == ["b", "c"]
    assert gate.retry_in_s() == 2.0  # failed again: doubled
    manager.bindable |= {"b", "c"}
    clock.t += 2.0
    assert await gate.admit(["a", "b", "c"]) == ("a", "b", "c")
    assert gate.waiting == {}
    assert gate.retry_in_s() is None
    assert registry.get_sample_value("keda_tenancy_reloader_namespaces_waiting_for_access") == 0
    # A namespace that leaves and comes back is checked again.
    assert await gate.admit(["a", "c"]) == ("a", "c")
    manager.bindable.discard("b")
    assert await gate.admit(["a", "b", "c"]) == ("a", "c")
    assert gate.retry_in_s() == 1.0  # a new refusal starts the backoff over
