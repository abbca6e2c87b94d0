"""Issue 20, item 2 (a): every reloader reads the one rule the router release publishes.

Nested HNC roots installed the old way (each tenant release listing only its own root) made
tenant a's reloader claim a, a-dev, b and b-dev while the router called b and b-dev conflicts.
With the published rule, each reloader evaluates exactly the router's rule (roots a and b), so
a's operator watches a and a-dev, and b's nothing, as the router routes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import CHILD, FAST_WATCH, ChildLog, eventually, running_reloader

RULE_MAP = ("keda-tenancy-system", "keda-tenancy-router-tenancy-rule")
NESTED = "labelKeys: []\nhnc: {roots: [a, b], rootLabel: ''}\nnamespaceNamePattern: ''\n"


def publish(kube_api: FakeKubeAPI, text: str) -> None:
    namespace, name = RULE_MAP
    kube_api.configmaps[RULE_MAP] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"rule.yaml": text},
    }


def hnc_tree(kube_api: FakeKubeAPI) -> None:
    depth = ".tree.hnc.x-k8s.io/depth"
    kube_api.relabel_new("a", {f"a{depth}": "0"})
    kube_api.relabel_new("a-dev", {f"a{depth}": "1", f"a-dev{depth}": "0"})
    kube_api.relabel_new("b", {f"a{depth}": "1", f"b{depth}": "0"})  # root b inside root a
    kube_api.relabel_new("b-dev", {f"a{depth}": "2", f"b{depth}": "1", f"b-dev{depth}": "0"})


def args(kubeconfig: str, tenant: str, log: Path, *flags: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--tenant={tenant}",
        f"--tenancy-rule-configmap={'/'.join(RULE_MAP)}",
        "--debounce=100ms",
        "--max-wait=1s",
        "--min-restart-interval=0s",
        "--grace-period=2s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
        *flags,
        "--",
        *CHILD,
        f"--log={log}",
    ]


def router_owner(kube_api: FakeKubeAPI, text: str) -> dict[str, str | None]:
    import yaml  # noqa: PLC0415

    from tenancy_common.tenancy_config import parse_rule_document  # noqa: PLC0415

    rule = parse_rule_document(yaml.safe_load(text), source="router")
    view = {
        NamespaceName(name): Namespace(NamespaceName(name), obj["metadata"]["labels"])
        for name, obj in kube_api.namespaces.items()
    }
    return {name: rule.decide(ns, view).tenant for name, ns in view.items()}


async def test_nested_hnc_roots_every_reloader_decides_as_the_router(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hnc_tree(kube_api)
    publish(kube_api, NESTED)
    assert router_owner(kube_api, NESTED) == {"a": "a", "a-dev": "a", "b": None, "b-dev": None}
    log_a, log_b = ChildLog(tmp_path / "a.log"), ChildLog(tmp_path / "b.log")
    async with (
        running_reloader(args(kubeconfig, "a", log_a.path)) as a,
        running_reloader(args(kubeconfig, "b", log_b.path)) as b,
    ):
        await eventually(lambda: log_a.starts() == ["a,a-dev"])
        await eventually(b.cache.synced.is_set)
        assert b._desired().names == ()
        assert b._desired().contested == {"b", "b-dev"}
        await asyncio.sleep(0.3)
        assert log_b.starts() == []  # b's KEDA never runs over a namespace the router refuses
        assert a.config.rule is not None
        assert kube_api.requests["get configmap"] >= 2  # each read the published object


async def test_without_the_published_rule_the_operator_waits_not_ready(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hnc_tree(kube_api)
    log = ChildLog(tmp_path / "a.log")
    config = ReloaderConfig.from_args(args(kubeconfig, "a", log.path), {})
    reloader = Reloader(config, CollectorRegistry(), watch_settings=FAST_WATCH)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    try:
        await eventually(lambda: kube_api.requests["get configmap"] >= 1)
        await eventually(lambda: reloader.health_port is not None)
        assert "not synced" in str(reloader.readiness_checks()["namespaces"]())
        assert log.starts() == []
        publish(kube_api, NESTED)
        await eventually(lambda: log.starts() == ["a,a-dev"], timeout_s=10)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def test_a_changed_rule_ends_the_reloader_to_start_with_it(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    hnc_tree(kube_api)
    publish(kube_api, NESTED)
    log = ChildLog(tmp_path / "a.log")
    config = ReloaderConfig.from_args(
        args(kubeconfig, "a", log.path, "--tenancy-rule-interval=100ms"), {}
    )
    reloader = Reloader(config, CollectorRegistry(), watch_settings=FAST_WATCH)
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.run(stop))
    try:
        await eventually(lambda: log.starts() == ["a,a-dev"])
        publish(kube_api, "hnc: {roots: [a, b], rootLabel: ''}\nnamespaceNamePattern: '(?P<'\n")
        await asyncio.sleep(0.4)
        assert not task.done()  # an invalid new rule is refused: the loaded one stays in force
        publish(kube_api, "hnc: {roots: [a]}\n")  # b is no longer a root: a owns all four
        assert await asyncio.wait_for(task, 20) == 1
        assert reloader.child is not None
        assert not reloader.child.running  # the operator was stopped on the way out
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 20)


async def test_a_root_label_rule_sees_the_outer_root_through_the_real_watch(
    kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path
) -> None:
    """(b): narrowed to b's tree label, the watch never showed root a, so b took b and b-dev."""
    hnc_tree(kube_api)
    for root in ("a", "b"):
        kube_api.relabel(root, {"keda-tenancy.io/tenant-root": "true"})
    log = ChildLog(tmp_path / "b.log")
    argv = [
        arg
        for arg in args(kubeconfig, "b", log.path, "--hnc-root-label=keda-tenancy.io/tenant-root")
        if not arg.startswith("--tenancy-rule-configmap")
    ]
    async with running_reloader(argv) as b:
        await eventually(b.cache.synced.is_set)
        assert set(b.cache.snapshot()) == {"a", "a-dev", "b", "b-dev"}
        assert b._desired().names == ()
        await asyncio.sleep(0.3)
        assert log.starts() == []
