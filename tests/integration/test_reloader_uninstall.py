"""`--mode=uninstall` (the tenant chart's post-delete hook) against the fake API: once the
release's pods are gone it leaves no RoleBinding, finalizer, Lease or certificate Secret of the
tenant, and touches nothing of another tenant's or anyone else's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from reloader.rolebindings import OWNER_LABEL
from reloader.uninstall import KEDA_FINALIZER
from tenancy_common.keda_objects import FINALIZER
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import eventually

ROLE = "keda-tenancy-alpha-operator"
NAME = f"{ROLE}-managed"
LEASE = ("keda-alpha", "alpha.operator.keda-tenancy.io")
CERTS = {"app.kubernetes.io/managed-by": "keda-tenancy-certs"}
RELEASE_PODS = "app.kubernetes.io/instance=keda,app.kubernetes.io/component!=uninstall"


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def argv(kubeconfig: str, *extra: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--mode=uninstall",
        "--tenant=alpha",
        f"--bind-cluster-role={ROLE}",
        "--bind-service-account=keda-alpha/keda-operator",
        f"--uninstall-wait-for-pods=keda-alpha/{RELEASE_PODS}",
        f"--release-lease={LEASE[0]}/{LEASE[1]}",
        "--uninstall-delete-secrets=keda-alpha/keda-metrics-apiserver-tls,keda-alpha/kedaorg-certs",
        "--health-port=0",
        *extra,
    ]


def scaled_object(name: str, *finalizers: str, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "resourceVersion": "1",
        "finalizers": [KEDA_FINALIZER, *finalizers],
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": metadata}


def ours(kube_api: FakeKubeAPI, namespace: str) -> dict[str, Any]:
    binding = kube_api.add_rolebinding(namespace, NAME, ROLE, **{OWNER_LABEL: "alpha"})
    binding["metadata"]["finalizers"] = [FINALIZER]
    return binding


def release_pod(kube_api: FakeKubeAPI) -> None:
    kube_api.put_pod(
        "keda-alpha",
        "keda-operator-1",
        {"app.kubernetes.io/instance": "keda", "app.kubernetes.io/component": "operator"},
        {"phase": "Running"},
    )


async def run(config: ReloaderConfig) -> tuple[asyncio.Task[int], asyncio.Event]:
    stop = asyncio.Event()
    reloader = Reloader(config, CollectorRegistry())
    return asyncio.create_task(reloader.run(stop)), stop


async def test_nothing_of_the_tenant_is_left_once_its_pods_are_gone(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    for name in ("keda-alpha", "a1", "a2", "moved", "b1", "other"):
        kube_api.create(name)
    for namespace in ("a1", "a2", "moved"):
        ours(kube_api, namespace)
    # A namespace that moved to beta: beta's KEDA may still act on its objects there.
    beta = kube_api.add_rolebinding(
        "moved", "keda-tenancy-beta-operator-managed", "x", **{OWNER_LABEL: "beta"}
    )
    beta_b1 = kube_api.add_rolebinding("b1", NAME, ROLE, **{OWNER_LABEL: "beta"})
    unlabelled = kube_api.add_rolebinding("other", NAME, ROLE)
    # a1 was deleted while alpha's KEDA was gone: Terminating, its binding pending on ours.
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] = [
        scaled_object("left", deleting=True)
    ]
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a2")] = [
        scaled_object("kept", "example.com/keep")
    ]
    kube_api.custom_objects[("keda.sh", "scaledobjects", "moved")] = [scaled_object("betas")]
    kube_api.custom_objects[("keda.sh", "scaledobjects", "other")] = [scaled_object("theirs")]
    kube_api.terminate_namespace("a1")
    kube_api.put_lease(*LEASE, {"holderIdentity": ""})
    kube_api.put_secret("keda-alpha", "keda-metrics-apiserver-tls", CERTS)
    kube_api.put_secret("keda-alpha", "kedaorg-certs", {})  # not the controller's: kept
    release_pod(kube_api)

    task, stop = await run(ReloaderConfig.from_args(argv(kubeconfig), {}))
    try:
        await asyncio.sleep(1.5)
        # The operator's pod still exists: nothing is touched (it may still need its access).
        assert not task.done()
        assert kube_api.operations == []
        kube_api.finalize_pod("keda-alpha", "keda-operator-1")
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        stop.set()

    assert set(kube_api.rolebindings) == {
        ("moved", "keda-tenancy-beta-operator-managed"),
        ("b1", NAME),
        ("other", NAME),
    }
    assert kube_api.rolebindings[("moved", "keda-tenancy-beta-operator-managed")] is beta
    assert kube_api.rolebindings[("b1", NAME)] is beta_b1
    assert kube_api.rolebindings[("other", NAME)] is unlabelled
    # a1's deleted ScaledObject went; a2's lost KEDA's finalizer only; the others kept theirs.
    assert kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] == []
    (kept,) = kube_api.custom_objects[("keda.sh", "scaledobjects", "a2")]
    assert kept["metadata"]["finalizers"] == ["example.com/keep"]
    for namespace in ("moved", "other"):
        (obj,) = kube_api.custom_objects[("keda.sh", "scaledobjects", namespace)]
        assert KEDA_FINALIZER in obj["metadata"]["finalizers"]
    assert LEASE not in kube_api.leases
    assert set(kube_api.secrets) == {("keda-alpha", "kedaorg-certs")}


async def test_with_a_pod_of_the_release_left_it_gives_up_touching_nothing(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    kube_api.create("a1")
    binding = ours(kube_api, "a1")
    kube_api.put_lease(*LEASE, {"holderIdentity": "keda-operator-1"})
    release_pod(kube_api)
    config = ReloaderConfig.from_args(argv(kubeconfig, "--uninstall-timeout=1s"), {})
    task, stop = await run(config)
    try:
        assert await asyncio.wait_for(task, 10) == 1
    finally:
        stop.set()
    assert kube_api.rolebindings[("a1", NAME)] is binding
    assert "deletionTimestamp" not in binding["metadata"]
    assert LEASE in kube_api.leases
    assert kube_api.operations == []


async def test_a_binding_already_released_by_hand_is_not_an_error(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """`helm uninstall --no-hooks` and the manual steps, then the hook run again: done."""
    config = ReloaderConfig.from_args(argv(kubeconfig), {})
    task, stop = await run(config)
    try:
        await eventually(task.done, 10)
    finally:
        stop.set()
    assert task.result() == 0


async def test_a_binding_is_kept_until_keda_s_finalizer_there_is_gone(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """The binding is how the namespace is found: released before KEDA's finalizer (a patch
    refused as stale), the ScaledObject would keep it for good."""
    kube_api.create("a1")
    ours(kube_api, "a1")
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] = [scaled_object("busy")]
    kube_api.changed_after_list = 2
    task, stop = await run(ReloaderConfig.from_args(argv(kubeconfig), {}))
    try:
        assert await asyncio.wait_for(task, 20) == 0
    finally:
        stop.set()
    (obj,) = kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")]
    assert not obj["metadata"].get("finalizers")
    assert ("a1", NAME) not in kube_api.rolebindings
    released = kube_api.operations.index("patch scaledobjects a1/busy")
    assert kube_api.operations.index("delete rolebinding a1") > released


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--uninstall-wait-for-pods="], "--uninstall-wait-for-pods NAMESPACE/SELECTOR"),
        (["--uninstall-delete-secrets=nope"], "--uninstall-delete-secrets wants NAMESPACE/NAME"),
        (["--uninstall-timeout=0s"], "--uninstall-timeout must be positive"),
        (["--", "/keda"], "uninstall mode runs no command"),
    ],
)
def test_uninstall_mode_flags_are_checked(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        ReloaderConfig.from_args(argv("/nonexistent", *extra), {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_uninstall_mode_needs_the_binding_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in argv("/nonexistent") if not a.startswith("--bind-")]
    with pytest.raises(SystemExit):
        ReloaderConfig.from_args(args, {})
    assert "uninstall mode needs --tenant, --bind-cluster-role" in capsys.readouterr().err
