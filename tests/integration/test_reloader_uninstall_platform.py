"""`--mode=uninstall --uninstall-platform-layout` (the platform layout's pre-delete hook) against
the fake API: it stops the tenant's KEDA operator, waits until no operator pod is left, then
removes KEDA's finalizer where only this tenant's platform binding is, the operator's Lease and
the certificate Secrets (after their writer's RoleBinding); it never touches the platform
controller's bindings, the grant, or anything of another tenant."""

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
from tenancy_common.platform_objects import CONTROLLER_LABEL, TENANT_LABEL, binding_name
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import eventually

LEASE = ("keda-alpha", "alpha.operator.keda-tenancy.io")
CERTS = {"app.kubernetes.io/managed-by": "keda-tenancy-certs"}
OPERATOR_PODS = "app.kubernetes.io/instance=keda,app.kubernetes.io/component=operator"
SECRETS = ("keda-tenancy-internal-ca", "kedaorg-certs", "keda-metrics-apiserver-tls")


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def argv(kubeconfig: str, *extra: str) -> list[str]:
    secrets = ",".join(f"keda-alpha/{name}" for name in SECRETS)
    return [
        f"--kubeconfig={kubeconfig}",
        "--mode=uninstall",
        "--tenant=alpha",
        "--uninstall-platform-layout=true",
        "--uninstall-stop-deployment=keda-alpha/keda-operator",
        f"--uninstall-wait-for-pods=keda-alpha/{OPERATOR_PODS}",
        f"--release-lease={LEASE[0]}/{LEASE[1]}",
        "--uninstall-revoke-rolebindings=keda-alpha/keda-tenancy-certs",
        f"--uninstall-delete-secrets={secrets}",
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


def platform_binding(kube_api: FakeKubeAPI, namespace: str, tenant: str) -> dict[str, Any]:
    """As the platform controller makes it (controller/objects.py, binding_body)."""
    binding = kube_api.add_rolebinding(
        namespace,
        binding_name(tenant),
        f"keda-tenancy-{tenant}-operator",
        **{CONTROLLER_LABEL: "binding", TENANT_LABEL: tenant},
    )
    binding["metadata"]["finalizers"] = [FINALIZER]
    return binding


def operator(kube_api: FakeKubeAPI) -> None:
    kube_api.add_deployment("keda-alpha", "keda-operator", [{"name": "keda-operator"}])
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


async def test_it_stops_the_operator_then_leaves_nothing_of_the_tenant(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    for name in ("keda-alpha", "a1", "a2", "shared", "old", "b1"):
        kube_api.create(name)
    bindings = {ns: platform_binding(kube_api, ns, "alpha") for ns in ("a1", "a2", "shared", "old")}
    # "shared" is on its way to beta (beta's binding already there), "old" held by gamma in the
    # per-tenant layout: another KEDA may still act on the objects there.
    beta = platform_binding(kube_api, "shared", "beta")
    platform_binding(kube_api, "b1", "beta")
    kube_api.add_rolebinding(
        "old", "keda-tenancy-gamma-operator-managed", "x", **{OWNER_LABEL: "gamma"}
    )
    grant = kube_api.add_rolebinding(
        "keda-alpha",
        "keda-tenancy-controller",
        "keda-tenancy-controller",
        **{CONTROLLER_LABEL: "grant"},
    )
    kube_api.add_rolebinding("keda-alpha", "keda-tenancy-certs", "keda-tenancy-certs")
    so = kube_api.custom_objects
    so[("keda.sh", "scaledobjects", "a1")] = [scaled_object("deleted", deleting=True)]
    so[("keda.sh", "scaledobjects", "a2")] = [scaled_object("kept", "example.com/keep")]
    for namespace in ("shared", "old", "b1"):
        so[("keda.sh", "scaledobjects", namespace)] = [scaled_object("theirs")]
    kube_api.put_lease(*LEASE, {"holderIdentity": "keda-operator-1"})
    for name in SECRETS[::2]:
        kube_api.put_secret("keda-alpha", name, CERTS)
    kube_api.put_secret("keda-alpha", "kedaorg-certs", {})  # not the controller's: kept
    operator(kube_api)

    task, stop = await run(ReloaderConfig.from_args(argv(kubeconfig), {}))
    try:
        await eventually(
            lambda: "delete deployment keda-alpha/keda-operator" in kube_api.operations, 10
        )
        await asyncio.sleep(1.5)
        # An operator pod is still there (it may still hold finalizers): nothing else is touched.
        assert not task.done()
        assert kube_api.operations == ["delete deployment keda-alpha/keda-operator"]
        # The garbage collector deletes the pod; the kubelet reports it gone.
        kube_api.delete_pod("keda-alpha", "keda-operator-1", grace_period_s=30)
        await asyncio.sleep(1.5)
        assert kube_api.operations == ["delete deployment keda-alpha/keda-operator"]
        kube_api.finalize_pod("keda-alpha", "keda-operator-1")
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        stop.set()

    # The controller's bindings and the grant are Helm's and the controller's to delete.
    for namespace, binding in bindings.items():
        assert kube_api.rolebindings[(namespace, binding_name("alpha"))] is binding
        assert binding["metadata"]["finalizers"] == [FINALIZER]
        assert "deletionTimestamp" not in binding["metadata"]
    assert kube_api.rolebindings[("shared", binding_name("beta"))] is beta
    assert kube_api.rolebindings[("keda-alpha", "keda-tenancy-controller")] is grant
    assert ("keda-alpha", "keda-tenancy-certs") not in kube_api.rolebindings
    assert so[("keda.sh", "scaledobjects", "a1")] == []
    (kept,) = so[("keda.sh", "scaledobjects", "a2")]
    assert kept["metadata"]["finalizers"] == ["example.com/keep"]
    for namespace in ("shared", "old", "b1"):
        (obj,) = so[("keda.sh", "scaledobjects", namespace)]
        assert KEDA_FINALIZER in obj["metadata"]["finalizers"], namespace
    assert LEASE not in kube_api.leases
    assert set(kube_api.secrets) == {("keda-alpha", "kedaorg-certs")}
    # The certificate controller loses its access before its Secrets go (else it rewrites them).
    ops = kube_api.operations
    revoked = ops.index("delete rolebinding keda-alpha")
    assert all(revoked < i for i, op in enumerate(ops) if op.startswith("delete secret"))
    assert "patch deployment" not in ops


async def test_with_an_operator_pod_left_it_gives_up_having_touched_nothing_else(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    kube_api.create("a1")
    binding = platform_binding(kube_api, "a1", "alpha")
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] = [scaled_object("so")]
    kube_api.put_lease(*LEASE, {"holderIdentity": "keda-operator-1"})
    operator(kube_api)
    config = ReloaderConfig.from_args(argv(kubeconfig, "--uninstall-timeout=1s"), {})
    task, stop = await run(config)
    try:
        assert await asyncio.wait_for(task, 10) == 1
    finally:
        stop.set()
    assert kube_api.operations == ["delete deployment keda-alpha/keda-operator"]
    assert kube_api.rolebindings[("a1", binding_name("alpha"))] is binding
    (obj,) = kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")]
    assert KEDA_FINALIZER in obj["metadata"]["finalizers"]
    assert LEASE in kube_api.leases


async def test_run_again_after_a_partial_cleanup_it_succeeds(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """A failed hook retried (`helm uninstall` again): the Deployment and the rest already gone
    is no error."""
    task, stop = await run(ReloaderConfig.from_args(argv(kubeconfig), {}))
    try:
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        stop.set()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--bind-cluster-role=keda-tenancy-alpha-operator", "--bind-service-account=a/b"],
            "drop the --bind-* flags",
        ),
        (["--uninstall-stop-deployment=nope"], "--uninstall-stop-deployment"),
        (["--uninstall-revoke-rolebindings=nope"], "--uninstall-revoke-rolebindings wants"),
        (["--uninstall-platform-layout=maybe"], "--uninstall-platform-layout"),
    ],
)
def test_platform_layout_flags_are_checked(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        ReloaderConfig.from_args(argv("/nonexistent", *extra), {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
