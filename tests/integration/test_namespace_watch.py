"""The shared namespace list+watch against a fake API server with real watch semantics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from tenancy_common.kube import make_api_client
from tenancy_common.namespace_cache import NamespaceCache, WatchMetrics, staleness_check
from tenancy_common.namespace_watch import WatchSettings, watch_namespaces
from tests.fakes.kube_api import FakeKubeAPI

FAST = WatchSettings(
    server_timeout_s=30,
    inactivity_timeout_s=0.6,
    verify_interval_s=0.2,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    page_size=2,
)


class Watching:
    def __init__(self, cache: NamespaceCache, registry: CollectorRegistry) -> None:
        self.cache = cache
        self.registry = registry
        self.metrics = WatchMetrics(registry)
        self.changes = 0

    def relists(self, reason: str | None = None) -> float:
        name = "keda_tenancy_namespace_watch_relists_total"
        if reason is not None:
            return self.registry.get_sample_value(name, {"reason": reason}) or 0.0
        return sum(
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == name
        )

    def names(self) -> set[str]:
        return set(self.cache.snapshot())

    async def until(self, check: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watching(
    kubeconfig: str,
    selector: str | None = None,
    cache: NamespaceCache | None = None,
    settings: WatchSettings = FAST,
) -> AsyncIterator[Watching]:
    api = await make_api_client(kubeconfig)
    cache = NamespaceCache() if cache is None else cache
    state = Watching(cache, CollectorRegistry())

    def changed() -> None:
        state.changes += 1

    stop = asyncio.Event()
    task = asyncio.create_task(
        watch_namespaces(
            api,
            cache,
            stop=stop,
            label_selector=selector,
            on_change=changed,
            settings=settings,
            metrics=state.metrics,
        )
    )
    try:
        await asyncio.wait_for(cache.synced.wait(), 5)
        yield state
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await api.close()


async def test_list_then_follow_changes(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    for name in ("a", "b", "c", "d", "e"):  # more than one page (page_size=2)
        kube_api.create(name, team="x")
    async with watching(kubeconfig) as w:
        assert w.names() == {"a", "b", "c", "d", "e"}
        kube_api.create("f")
        await w.until(lambda: "f" in w.names())
        kube_api.set_labels("a", team="y")
        await w.until(lambda: w.cache.snapshot()["a"].labels.get("team") == "y")  # type: ignore[index]
        kube_api.delete("b")
        await w.until(lambda: "b" not in w.names())
        kube_api.delete("c", terminating=True)
        await w.until(lambda: w.cache.snapshot()["c"].terminating)  # type: ignore[index]
        kube_api.finalize("c")
        await w.until(lambda: "c" not in w.names())


async def test_label_selected_watch_treats_leaving_as_deleted(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    kube_api.create("in-1", tenant="a")
    kube_api.create("out-1", tenant="b")
    async with watching(kubeconfig, "tenant=a") as w:
        assert w.names() == {"in-1"}
        kube_api.set_labels("out-1", tenant="a")
        await w.until(lambda: w.names() == {"in-1", "out-1"})
        kube_api.set_labels("in-1", tenant=None)
        await w.until(lambda: w.names() == {"out-1"})
        assert kube_api.requests["list namespaces"] == 1  # no relist was needed


async def test_bookmarks_advance_without_changes(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    kube_api.create("a")
    async with watching(kubeconfig) as w:
        changes = w.changes
        await asyncio.sleep(1.0)  # > inactivity timeout: only bookmarks keep the stream alive
        assert w.changes == changes
        assert w.metrics.reconnects._value.get() == 0  # type: ignore[attr-defined]
        assert kube_api.requests["watch namespaces"] == 1


async def test_gone_relists_and_replaces_the_cache(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    kube_api.create("a")
    kube_api.create("b")
    async with watching(kubeconfig) as w:
        await w.until(lambda: kube_api.open_watches == 1)
        kube_api.silence_watches()
        kube_api.delete("a")  # this event is never delivered on the silent stream ...
        kube_api.create("c")
        kube_api.compact()  # ... and history is gone
        kube_api.drop_watches()
        kube_api.silence_watches(False)
        await w.until(lambda: w.names() == {"b", "c"})
        assert w.relists() == 2
        assert w.relists("expired") == 1


async def test_dropped_connection_resumes_without_losing_events(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    async with watching(kubeconfig) as w:
        await w.until(lambda: kube_api.open_watches == 1)
        kube_api.drop_watches()
        kube_api.create("during-outage")
        await w.until(lambda: "during-outage" in w.names())
        assert (
            kube_api.requests["list namespaces"] == 1
        )  # resumed from the resourceVersion, no relist
        assert w.metrics.reconnects._value.get() >= 1  # type: ignore[attr-defined]


async def test_silent_stream_is_reconnected(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    kube_api.bookmarks = False
    async with watching(kubeconfig) as w:
        kube_api.silence_watches()
        await w.until(lambda: w.metrics.reconnects._value.get() >= 1, timeout_s=5)  # type: ignore[attr-defined]
        kube_api.silence_watches(False)
        kube_api.create("after-silence")
        await w.until(lambda: "after-silence" in w.names())


@pytest.mark.parametrize("selector", ["tenant in (a,b)", "tenant,!legacy", "tenant!=b"])
async def test_selectors(kube_api: FakeKubeAPI, kubeconfig: str, selector: str) -> None:
    kube_api.create("one", tenant="a")
    kube_api.create("two", tenant="b")
    kube_api.create("three", tenant="a", legacy="yes")
    expected = {
        "tenant in (a,b)": {"one", "two", "three"},
        "tenant,!legacy": {"one", "two"},
        "tenant!=b": {"one", "three"},
    }
    async with watching(kubeconfig, selector) as w:
        assert w.names() == expected[selector]


@pytest.mark.parametrize("answer", ["silent", "error"])
async def test_too_large_resource_version_relists_and_replaces_the_cache(
    kube_api: FakeKubeAPI, kubeconfig: str, answer: str
) -> None:
    """An etcd restored from a snapshot: the API server is behind our resourceVersion. Its
    watch stays silent (1.35) or answers "Too large resource version" (older watch caches).
    Retrying that version would keep the cache frozen (and, once the store passes it, resume
    at a version that now means something else)."""
    kube_api.too_large_watch = answer
    kube_api.bookmarks = False  # nothing but the verification can tell
    kube_api.create("kept")
    snapshot = kube_api.snapshot()
    async with watching(kubeconfig) as w:
        kube_api.create("lost-1")
        kube_api.create("lost-2")
        await w.until(lambda: w.names() == {"kept", "lost-1", "lost-2"})
        kube_api.restore(snapshot)  # lost-1 and lost-2 never happened
        kube_api.create("after-restore")  # still behind the resourceVersion we hold
        await w.until(lambda: w.names() == {"kept", "after-restore"})
        assert w.relists("too-large-resource-version") == 1
        kube_api.create("later")  # and the watch follows again
        await w.until(lambda: "later" in w.names())


async def test_persistent_watch_error_relists_with_backoff(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """An ERROR event other than 410 (here a 500) is not retried from the same resourceVersion
    forever: the watch relists (and keeps relisting, backing off, while it persists)."""
    kube_api.create("a")
    async with watching(kubeconfig) as w:
        await w.until(lambda: kube_api.open_watches == 1)
        kube_api.watch_error = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "etcdserver: request timed out",
            "reason": "InternalError",
            "code": 500,
        }
        kube_api.drop_watches()
        await w.until(lambda: w.relists("error") >= 2)
        kube_api.watch_error = None
        kube_api.create("b")
        await w.until(lambda: "b" in w.names())


async def test_watches_that_keep_ending_at_once_relist(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """Resuming from the same resourceVersion is tried `resume_attempts` times, then a relist."""
    async with watching(kubeconfig) as w:
        kube_api.end_watches_at_once = True
        kube_api.drop_watches()
        await w.until(lambda: w.relists("failures") >= 1)
        kube_api.end_watches_at_once = False
        kube_api.create("after")
        await w.until(lambda: "after" in w.names())


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


INTERNAL_ERROR = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": "etcdserver: request timed out",
    "reason": "InternalError",
    "code": 500,
}


async def test_staleness_is_visible_while_the_api_server_fails(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    clock = ManualClock()
    cache = NamespaceCache(clock)
    check = staleness_check(cache, 300)
    async with watching(kubeconfig, cache=cache) as w:
        staleness = "keda_tenancy_namespace_watch_staleness_seconds"
        assert w.registry.get_sample_value(staleness) == 0
        assert check() is None
        kube_api.watch_error = INTERNAL_ERROR  # watches and relists fail: nothing confirms
        kube_api.list_error = INTERNAL_ERROR
        kube_api.drop_watches()
        await w.until(lambda: kube_api.requests["list namespaces"] >= 3)
        clock.now += 301
        assert w.registry.get_sample_value(staleness) == 301
        assert "not confirmed current for 301s" in (check() or "")
        last = w.registry.get_sample_value(
            "keda_tenancy_namespace_watch_last_current_timestamp_seconds"
        )
        assert last is not None
        assert last > 0
        kube_api.watch_error = kube_api.list_error = None  # the next relist confirms it
        await w.until(lambda: check() is None)
        assert w.registry.get_sample_value(staleness) == 0


async def test_an_open_quiet_stream_keeps_the_cache_current(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """No event and no bookmark (a quiet cluster: kube-apiserver's bookmarks follow its watch
    cache), but the server is verified at or past our resourceVersion: current, no relist."""
    kube_api.bookmarks = False
    clock = ManualClock()
    cache = NamespaceCache(clock)
    settings = dataclasses.replace(FAST, inactivity_timeout_s=30, verify_interval_s=0.05)
    async with watching(kubeconfig, cache=cache, settings=settings) as w:
        await w.until(lambda: kube_api.open_watches == 1)
        clock.now += 1000
        await w.until(lambda: cache.staleness_s() == 0)
        assert w.relists() == 1
        assert kube_api.requests["list namespaces"] >= 2  # the verifications
