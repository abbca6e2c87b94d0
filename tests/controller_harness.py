"""Tenants as the tenant chart registers them, and a running platform controller, for tests
against the fake API (tests/fakes/kube_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from prometheus_client import CollectorRegistry

from controller.app import PlatformController
from controller.config import ControllerConfig
from controller.objects import (
    CLUSTER_ROLE_ANNOTATION,
    CONTROLLER_LABEL,
    GRANT_NAME,
    LEASE_ANNOTATION,
    MODE_ANNOTATION,
    SERVICE_ACCOUNT_ANNOTATION,
)
from tenancy_common.namespace_watch import WatchSettings
from tenancy_common.platform_objects import NAMESPACES_CONFIGMAP
from tests.fakes.kube_api import FakeKubeAPI

TENANT_LABEL = "keda-tenancy.io/tenant"
OPERATOR_POD_LABELS = {
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "keda-tenancy",
}
OPERATOR_RULES = [
    {"apiGroups": ["keda.sh"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
]


def role(tenant: str) -> str:
    return f"keda-tenancy-{tenant}-operator"


def binding(tenant: str) -> str:
    return f"keda-tenancy-operator-{tenant}"


def lease_name(tenant: str) -> str:
    return f"{tenant}.operator.keda-tenancy.io"


def register(
    kube_api: FakeKubeAPI,
    tenant: str,
    *,
    mode: str = "process",
    annotations: dict[str, str] | None = None,
    bindable: bool = True,
) -> None:
    """What the tenant chart installs: its namespace, the namespace-set ConfigMap (no data),
    the grant, and (`bindable`) the ClusterRole the controller may bind for it."""
    namespace = f"keda-{tenant}"
    if namespace not in kube_api.namespaces:
        kube_api.create(namespace)
    kube_api.put_configmap(
        namespace, NAMESPACES_CONFIGMAP, {CONTROLLER_LABEL: "namespaces"}, data={}
    )
    kube_api.configmaps[(namespace, NAMESPACES_CONFIGMAP)].pop("data")
    kube_api.cluster_roles[role(tenant)] = OPERATOR_RULES
    if bindable:
        kube_api.bindable.add(role(tenant))
    if mode == "deployment":
        kube_api.add_deployment(namespace, "keda-operator", [{"name": "keda-operator"}])
    grant(kube_api, tenant, mode=mode, annotations=annotations)


def grant(
    kube_api: FakeKubeAPI,
    tenant: str,
    *,
    mode: str = "process",
    annotations: dict[str, str] | None = None,
) -> None:
    kube_api.add_rolebinding(
        f"keda-{tenant}",
        GRANT_NAME,
        GRANT_NAME,
        subject=("keda-tenancy", "keda-tenancy-controller"),
        annotations={
            MODE_ANNOTATION: mode,
            SERVICE_ACCOUNT_ANNOTATION: "keda-operator",
            CLUSTER_ROLE_ANNOTATION: role(tenant),
            LEASE_ANNOTATION: lease_name(tenant),
            **(annotations or {}),
        },
        **{CONTROLLER_LABEL: "grant"},
    )


def published(kube_api: FakeKubeAPI, tenant: str) -> str | None:
    """The tenant's published namespace set (None: not decided)."""
    configmap = kube_api.configmaps[(f"keda-{tenant}", NAMESPACES_CONFIGMAP)]
    return (configmap.get("data") or {}).get("namespaces")


def bound(kube_api: FakeKubeAPI, tenant: str) -> set[str]:
    """Namespaces holding the tenant's binding (one being deleted included)."""
    return {ns for (ns, name) in kube_api.rolebindings if name == binding(tenant)}


def controller_config(kubeconfig: str, *extra: str) -> ControllerConfig:
    return ControllerConfig.from_args(
        [
            "--kubeconfig",
            kubeconfig,
            f"--tenant-label-key={TENANT_LABEL}",
            "--health-bind-address=127.0.0.1",
            "--health-port=0",
            "--backoff-initial=50ms",
            "--backoff-max=400ms",
            "--terminating-recheck=100ms",
            *extra,
        ],
        {},
    )


@contextlib.asynccontextmanager
async def running_controller(
    kubeconfig: str, *extra: str, registry: CollectorRegistry | None = None
) -> AsyncIterator[PlatformController]:
    controller = PlatformController(
        controller_config(kubeconfig, *extra),
        registry or CollectorRegistry(),
        watch_settings=WatchSettings(backoff_initial_s=0.05, backoff_max_s=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        async with asyncio.timeout(10):
            started = asyncio.ensure_future(controller.started.wait())
            await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                started.cancel()
                await task  # raises what ended it
            await controller.pods.synced.wait()  # its list is not waited for by `started`
        yield controller
    finally:
        stop.set()
        await task


async def settled(controller: PlatformController, kube_api: FakeKubeAPI) -> None:
    """Wait until the controller has nothing queued, no tenant waits, and a round trip of the
    watch has passed (so what the fake did so far has been seen)."""
    for _ in range(3):
        await asyncio.sleep(0.3)
        async with asyncio.timeout(10):
            while len(controller.queue) or controller.queue._active:
                await asyncio.sleep(0.02)


def namespaces_with_two_holders(
    timeline: Sequence[tuple[str, str, str, str]], tenants: Sequence[str]
) -> list[str]:
    """Replays the fake's timeline: every moment a namespace was published to two tenants, or
    held two tenants' bindings."""
    holders: dict[str, set[str]] = {}
    sets: dict[str, set[str]] = {}
    names = {binding(t): t for t in tenants}
    problems = []
    for what, namespace, name, detail in timeline:
        if what == "rolebinding created" and name in names:
            holders.setdefault(namespace, set()).add(names[name])
        elif what == "rolebinding gone" and name in names:
            holders.get(namespace, set()).discard(names[name])
        elif what == "namespaces published":
            tenant = namespace.removeprefix("keda-")
            sets[tenant] = {ns for ns in detail.split(",") if ns}
        for ns, who in holders.items():
            if len(who) > 1:
                problems.append(f"{ns} bound to {sorted(who)} after {what} {namespace}")
        for ns in {ns for s in sets.values() for ns in s}:
            owners = sorted(t for t, s in sets.items() if ns in s)
            if len(owners) > 1:
                problems.append(f"{ns} published to {owners} after {what} {namespace}")
    return problems
