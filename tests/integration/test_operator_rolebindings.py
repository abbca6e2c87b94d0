"""RoleBindings that follow the tenant's namespaces, against the fake API's RBAC semantics.

The manager binds only what it may bind (the escalation check), deletes only its own
bindings and only once no operator watches the namespace; the in-pod reloader adds a
namespace only once the operator can read it, and publishes what its operator runs with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from reloader.access import SelfAccessGate
from reloader.binding_loop import LEAVING_POLL_S, BindingLoop
from reloader.desired import Desired
from reloader.rolebindings import (
    FINALIZER,
    OWNER_LABEL,
    BindingMetrics,
    BindingSpec,
    RoleBindingManager,
)
from reloader.watched import PUBLISHED_ANNOTATION, DeploymentPods, WatchedConfigMap
from tenancy_common.kube import make_api_client
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import ChildLog, eventually, label, reloader_args, running_reloader

ROLE = "keda-tenancy-alpha-operator"
NAME = f"{ROLE}-managed"
OPERATOR_RULES = [
    {"apiGroups": ["keda.sh"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["eventing.keda.sh"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["autoscaling"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
]
SPEC = BindingSpec(
    tenant="alpha",
    cluster_role=ROLE,
    subject_namespace="keda-alpha",
    subject_name="keda-operator",
    name=NAME,
)


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Emit every record, so a bad `extra` key fails here and not in a pod."""
    caplog.set_level(logging.DEBUG)


@pytest.fixture
async def rbac(kube_api: FakeKubeAPI) -> FakeKubeAPI:
    kube_api.cluster_roles[ROLE] = OPERATOR_RULES
    kube_api.cluster_roles["admin"] = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    kube_api.bindable = {ROLE}
    for name in ("keda-alpha", "a1", "a2", "b1"):
        kube_api.create(name)
    return kube_api


def bound(kube_api: FakeKubeAPI) -> set[str]:
    """Namespaces where the manager's binding is."""
    return {ns for (ns, name) in kube_api.rolebindings if name == NAME}


async def test_reconcile_binds_desired_and_keeps_watched_and_never_touches_others(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    # Someone else's bindings: same name without our label, our label for another tenant.
    foreign = rbac.add_rolebinding("b1", NAME, ROLE)
    other_tenant = rbac.add_rolebinding("a2", NAME, ROLE, **{OWNER_LABEL: "beta"})
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        result = await manager.reconcile({"a1"})
        assert result.created == ["a1"]
        binding = rbac.rolebindings[("a1", NAME)]
        assert binding["metadata"]["labels"][OWNER_LABEL] == "alpha"
        assert binding["roleRef"]["name"] == ROLE
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "keda-operator", "namespace": "keda-alpha"}
        ]
        assert rbac.allowed("a1", "", "secrets", "get")
        # a1 leaves the tenant but the operator still watches it: the binding stays.
        result = await manager.reconcile(set(), keep={"a1"})
        assert result.deleted == []
        assert ("a1", NAME) in rbac.rolebindings
        result = await manager.reconcile(set())
        assert result.deleted == ["a1"]
        assert not rbac.allowed("a1", "", "secrets", "get")
        # Neither the unlabelled binding nor the other tenant's was touched.
        assert rbac.rolebindings[("b1", NAME)] is foreign
        assert rbac.rolebindings[("a2", NAME)] is other_tenant
        # A namespace deleted since the cache saw it is not an error.
        result = await manager.reconcile({"a1", "no-such-namespace"})
        assert result.failed == {}
        assert result.created == ["a1"]
        # A desired namespace whose name is taken by a foreign binding is reported, not taken.
        result = await manager.reconcile({"b1"})
        assert "not ours" in result.failed["b1"]
        assert rbac.rolebindings[("b1", NAME)] is foreign
    finally:
        await api.close()


async def test_the_escalation_check_stops_a_binding_of_any_other_role(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    api = await make_api_client(kubeconfig)
    try:
        spec = BindingSpec(
            tenant="alpha",
            cluster_role="admin",
            subject_namespace="keda-alpha",
            subject_name="keda-operator",
            name=NAME,
        )
        registry = CollectorRegistry()
        manager = RoleBindingManager(api, spec, BindingMetrics(registry))
        result = await manager.reconcile({"a1"})
        assert result.created == []
        assert "not currently held" in result.failed["a1"]
        assert not rbac.rolebindings
        errors = registry.get_sample_value(
            "keda_tenancy_reloader_role_binding_errors_total", {"operation": "create"}
        )
        assert errors == 1.0
    finally:
        await api.close()


async def test_an_edited_binding_is_replaced(rbac: FakeKubeAPI, kubeconfig: str) -> None:
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        await manager.reconcile({"a1"})
        rbac.rolebindings[("a1", NAME)]["subjects"].append(
            {"kind": "ServiceAccount", "name": "intruder", "namespace": "b1"}
        )
        result = await manager.reconcile({"a1"})
        assert result.deleted == ["a1"]
        assert result.created == ["a1"]
        assert len(rbac.rolebindings[("a1", NAME)]["subjects"]) == 1
    finally:
        await api.close()


async def test_in_a_terminating_namespace_the_binding_outlives_kedas_objects(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        await manager.reconcile({"a1", "a2"})
        assert rbac.rolebindings[("a1", NAME)]["metadata"]["finalizers"] == [FINALIZER]
        # a1 is deleted with a ScaledObject in it whose KEDA finalizer is still to go.
        rbac.custom_objects[("keda.sh", "scaledobjects", "a1")] = [{"metadata": {"name": "app"}}]
        rbac.terminate_namespace("a1")
        await manager.reconcile({"a1", "a2"})
        assert ("a1", NAME) in rbac.rolebindings  # pending on our finalizer ...
        assert rbac.allowed("a1", "keda.sh", "scaledobjects", "get")  # ... and in force
        rbac.custom_objects[("keda.sh", "scaledobjects", "a1")] = []  # KEDA is done there
        result = await manager.reconcile({"a1", "a2"})
        assert ("a1", NAME) not in rbac.rolebindings
        assert "a1" not in result.created  # not made anew in a Terminating namespace
        # Our own delete (the namespace left the tenant) releases at once.
        await manager.reconcile({"a1"} - {"a1"})
        assert bound(rbac) == set()
    finally:
        await api.close()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


async def test_binding_loop_keeps_desired_plus_watched_until_the_operator_runs_without_it(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "keda-alpha"},
    }
    desired: list[str] = ["a1", "a2"]
    clock = FakeClock()
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        configmap = WatchedConfigMap(api, "keda-alpha", "watched", key="pod-1")
        loop = BindingLoop(
            manager=manager,
            cache=NamespaceCache(),
            desired=lambda: Desired(tuple(NamespaceName(n) for n in desired)),
            watched=configmap,
            interval_s=10,
            unbind_timeout_s=5,
            clock=clock,
        )
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        assert loop.next_pass_in() == 10
        # Never published: what runs is unknown, so a2 keeps its binding (for now) ...
        desired.remove("a2")
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        assert "not been published" in (loop.warning() or "")
        # ... shown, not failing: the operator's identity can strip the annotation, and an
        # unready manager would block the release's rollouts (helm upgrade --wait).
        assert loop.readiness() is None
        # ... and what the operator watches is read again soon, not at the interval.
        assert loop.next_pass_in() == LEAVING_POLL_S
        # Published: the operator still runs with a2, so a2 keeps its binding ...
        await configmap.publish("a1,a2")
        cm = rbac.configmaps[("keda-alpha", "watched")]
        assert cm["metadata"]["annotations"][PUBLISHED_ANNOTATION] == "true"
        clock.t += 1
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        assert loop.readiness() is None
        assert loop.warning() is None
        clock.t = 4.5
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        assert loop.next_pass_in() == pytest.approx(0.5)  # its deadline, 5 s after it left
        # ... until the operator runs without it.
        await configmap.publish("a1")
        clock.t = 4.6
        await loop.reconcile_once()
        assert bound(rbac) == {"a1"}
        assert loop.next_pass_in() == 10
        # Its pod's entry removed: the value is the union of the other pods', now none.
        await configmap.publish(None)
        assert "pod-1" not in rbac.configmaps[("keda-alpha", "watched")].get("data", {})
    finally:
        await api.close()


def _stripped(cm: dict[str, Any]) -> None:
    """One merge patch: the published annotation removed (watched set unknown)."""
    del cm["metadata"]["annotations"][PUBLISHED_ANNOTATION]


def _garbage(cm: dict[str, Any]) -> None:
    cm["metadata"]["annotations"] = {"keda-tenancy.io/watched-published ": "yes", "x": "\u0000"}
    cm["data"] = {"pod-1": ",,,a2,, ,A2,-,a2;a1", "../../etc": "*", "": "a2"}


def _deleted(cm: dict[str, Any]) -> None:
    cm.clear()


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda cm: None, id="claims-it-forever"),
        pytest.param(_stripped, id="strips-the-annotation"),
        pytest.param(_garbage, id="writes-garbage"),
        pytest.param(_deleted, id="configmap-gone"),
    ],
)
async def test_an_operator_cannot_keep_a_namespace_that_left_bound_past_the_unbind_timeout(
    rbac: FakeKubeAPI, kubeconfig: str, write: Callable[[dict[str, Any]], None]
) -> None:
    """Issue 20, item 1: whatever the operator's pod writes to the watched ConfigMap (which it
    may patch), a namespace that left loses its binding the unbind timeout after the manager
    saw it leave. On main a ConfigMap without the annotation kept every binding forever."""
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "keda-alpha"},
    }
    desired: list[str] = ["a1", "a2"]
    clock = FakeClock()
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        configmap = WatchedConfigMap(api, "keda-alpha", "watched", key="pod-1")
        await configmap.publish("a1,a2")
        loop = BindingLoop(
            manager=manager,
            cache=NamespaceCache(),
            desired=lambda: Desired(tuple(NamespaceName(n) for n in desired)),
            watched=configmap,
            interval_s=10,
            unbind_timeout_s=5,
            clock=clock,
        )
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        clock.t = 100.0
        desired.remove("a2")  # a2 moved to another tenant
        write(rbac.configmaps[("keda-alpha", "watched")])
        if not rbac.configmaps[("keda-alpha", "watched")]:
            del rbac.configmaps[("keda-alpha", "watched")]
        for t in (100.0, 101.0, 102.0, 103.0, 104.0, 104.9):
            clock.t = t
            await loop.reconcile_once()
            assert bound(rbac) == {"a1", "a2"}
        clock.t = 105.0
        await loop.reconcile_once()
        assert bound(rbac) == {"a1"}
        # Still claimed (or unknown) afterwards: it is not bound again.
        clock.t = 200.0
        await loop.reconcile_once()
        assert bound(rbac) == {"a1"}
    finally:
        await api.close()


async def test_no_binding_is_attempted_in_a_terminating_namespace(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "keda-alpha"},
    }
    cache = NamespaceCache()
    cache.replace(
        [Namespace(NamespaceName("a1"), terminating=True), Namespace(NamespaceName("a2"))]
    )
    api = await make_api_client(kubeconfig)
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry()))
        configmap = WatchedConfigMap(api, "keda-alpha", "watched", key="pod-1")
        await configmap.publish("a1,a2")
        loop = BindingLoop(
            manager=manager,
            cache=cache,
            desired=lambda: Desired((NamespaceName("a1"), NamespaceName("a2"))),
            watched=configmap,
            interval_s=10,
            unbind_timeout_s=60,
            clock=FakeClock(),
        )
        await loop.reconcile_once()
        assert bound(rbac) == {"a2"}
        assert rbac.requests["create rolebinding"] == 1
        assert loop.readiness() is None
    finally:
        await api.close()


@pytest.mark.parametrize("incomplete", [False, True])
async def test_access_is_read_from_one_rules_review_per_namespace(
    rbac: FakeKubeAPI, kubeconfig: str, incomplete: bool
) -> None:
    """RBAC lists its rules: one request per namespace. An authorizer that cannot (the review
    is `incomplete`) is asked access by access."""
    rbac.rules_incomplete = incomplete
    rbac.add_rolebinding("a1", NAME, ROLE)
    rbac.add_rolebinding("a2", "only-secrets", "secrets-reader")
    rbac.cluster_roles["secrets-reader"] = [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        # Narrowed to names: does not let KEDA watch them all.
        {"apiGroups": ["keda.sh"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["x"]},
    ]
    api = await make_api_client(kubeconfig)
    try:
        gate = SelfAccessGate(api, BindingMetrics(CollectorRegistry()))
        assert await gate.admit(["a1", "a2", "b1"]) == ("a1",)
        assert "watch scaledobjects.keda.sh" in gate.waiting["b1"]
        assert set(gate.waiting) == {"a2", "b1"}
        assert rbac.requests["selfsubjectrulesreview"] == 3
        if incomplete:
            assert rbac.requests["selfsubjectaccessreview"] >= 6  # a1's six, at least
        else:
            assert rbac.requests["selfsubjectaccessreview"] == 0
    finally:
        await api.close()


def access_args(kubeconfig: str, log_path: object) -> list[str]:
    return reloader_args(
        kubeconfig,
        log_path,  # type: ignore[arg-type]
        "--check-operator-access=true",
        "--watched-configmap=keda-alpha/watched",
    )


async def test_process_mode_adds_a_namespace_only_once_the_operator_can_read_it(
    rbac: FakeKubeAPI, kubeconfig: str, tmp_path: object
) -> None:
    from pathlib import Path  # noqa: PLC0415

    log = ChildLog(Path(str(tmp_path)) / "child.log")
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "keda-alpha"},
    }
    rbac.relabel("a1", label("alpha"))
    rbac.add_rolebinding("a1", NAME, ROLE)
    rbac.relabel("a2", label("alpha"))  # no binding yet
    async with (
        running_reloader(access_args(kubeconfig, log.path), environ={"POD_NAME": "op-1"}) as r,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: log.starts() == ["a1"])
        await eventually(
            lambda: rbac.configmaps[("keda-alpha", "watched")].get("data") == {"op-1": "a1"}
        )
        base = f"http://127.0.0.1:{r.health_port}"
        async with http.get(base + "/readyz") as response:
            body = await response.text()
            # The operator's pod stays in its Service; the reason is in the body.
            assert response.status == 200
            assert "namespace-access" in body
            assert "a2" in body
            assert "watch scaledobjects.keda.sh" in body
        async with http.get(base + "/metrics") as response:
            metrics = await response.text()
        assert "keda_tenancy_reloader_namespaces_waiting_for_access 1.0" in metrics.splitlines()
        # The binding appears (the manager's work): a2 is retried and added.
        rbac.add_rolebinding("a2", NAME, ROLE)
        await eventually(lambda: log.starts()[-1] == "a1,a2", timeout_s=10)
        await eventually(
            lambda: rbac.configmaps[("keda-alpha", "watched")].get("data") == {"op-1": "a1,a2"}
        )
        assert r.gate is not None
        assert r.gate.waiting == {}
        # Removal: the operator is restarted without a2 first, then that is published.
        rbac.relabel("a2", {"keda-tenancy.io/tenant": None})
        await eventually(
            lambda: rbac.configmaps[("keda-alpha", "watched")].get("data") == {"op-1": "a1"}
        )
        await eventually(lambda: log.starts()[-1] == "a1")
    # At shutdown the pod's entry goes: its operator watches nothing any more.
    assert rbac.configmaps[("keda-alpha", "watched")].get("data") == {}
    assert all(value for value in log.starts())


def bindings_args(kubeconfig: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--mode=bindings",
        "--tenant=alpha",
        "--tenant-label-key=keda-tenancy.io/tenant",
        f"--bind-cluster-role={ROLE}",
        "--bind-service-account=keda-alpha/keda-operator",
        "--watched-configmap=keda-alpha/watched",
        "--bindings-interval=100ms",
        "--unbind-timeout=1h",  # these tests are about the order of events, not the bound
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
    ]


async def test_bindings_mode_and_process_mode_together(
    rbac: FakeKubeAPI, kubeconfig: str, tmp_path: object
) -> None:
    """The manager (its own identity) binds; the in-pod reloader waits for access, then adds;
    on removal the binding goes only after the operator was restarted without it."""
    from pathlib import Path  # noqa: PLC0415

    log = ChildLog(Path(str(tmp_path)) / "child.log")
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "keda-alpha"},
    }
    rbac.relabel("a1", label("alpha"))
    rbac.add_pod("keda-alpha", "op-1", {"app": "keda-operator"}, [])
    async with (
        running_reloader(bindings_args(kubeconfig)) as manager,
        running_reloader(access_args(kubeconfig, log.path), environ={"POD_NAME": "op-1"}),
    ):
        await eventually(lambda: log.starts() == ["a1"])
        assert ("a1", NAME) in rbac.rolebindings
        rbac.relabel("a2", label("alpha"))
        await eventually(lambda: log.starts()[-1] == "a1,a2", timeout_s=10)
        create_a2 = rbac.operations.index("create rolebinding a2")
        rbac.operations.clear()
        rbac.relabel("a2", {"keda-tenancy.io/tenant": None})
        await eventually(lambda: bound(rbac) == {"a1"}, timeout_s=10)
        await eventually(lambda: log.starts()[-1] == "a1")
        # The operator's list was published without a2 before a2's binding was deleted.
        assert rbac.operations.index("patch configmap watched") < rbac.operations.index(
            "delete rolebinding a2"
        )
        assert create_a2 >= 0
        assert manager.binding_loop is not None
        assert manager.binding_loop.readiness() is None


async def test_bindings_mode_ignores_and_removes_entries_of_pods_that_are_gone(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    rbac.relabel("a1", label("alpha"))
    rbac.add_pod("keda-alpha", "alive", {}, [])
    rbac.add_rolebinding("a2", NAME, ROLE, **{OWNER_LABEL: "alpha"})  # a2 left the tenant
    rbac.configmaps[("keda-alpha", "watched")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "watched",
            "namespace": "keda-alpha",
            "annotations": {PUBLISHED_ANNOTATION: "true"},
        },
        # "killed" died without removing its entry, which still lists a2.
        "data": {"alive": "a1", "killed": "a1,a2"},
    }
    async with running_reloader(bindings_args(kubeconfig)):
        await eventually(lambda: bound(rbac) == {"a1"})
        assert rbac.configmaps[("keda-alpha", "watched")]["data"] == {"alive": "a1"}


def deployment_args(kubeconfig: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--mode=deployment",
        "--target-deployment=keda-alpha/keda-operator",
        "--container=keda-operator",
        "--tenant=alpha",
        "--tenant-label-key=keda-tenancy.io/tenant",
        f"--bind-cluster-role={ROLE}",
        "--bind-service-account=keda-alpha/keda-operator",
        "--bindings-interval=100ms",
        "--unbind-timeout=1h",  # these tests are about the order of events, not the bound
        "--debounce=100ms",
        "--min-restart-interval=0s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
    ]


def operator_pod(kube_api: FakeKubeAPI, name: str, value: str) -> None:
    kube_api.add_pod(
        "keda-alpha",
        name,
        {"app": "keda-operator"},
        [{"name": "keda-operator", "env": [{"name": "WATCH_NAMESPACE", "value": value}]}],
    )


async def test_deployment_mode_binds_before_patching_and_unbinds_after_the_rollout(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    rbac.add_deployment("keda-alpha", "keda-operator", [{"name": "keda-operator"}])
    deployment = rbac.deployments[("keda-alpha", "keda-operator")]
    deployment["spec"]["selector"] = {"matchLabels": {"app": "keda-operator"}}
    rbac.relabel("a1", label("alpha"))
    rbac.relabel("a2", label("alpha"))
    async with running_reloader(deployment_args(kubeconfig)) as r:
        await eventually(lambda: r.applied == "a1,a2")
        ops = rbac.operations
        assert ops.index("create rolebinding a1") < ops.index("patch deployment")
        assert ops.index("create rolebinding a2") < ops.index("patch deployment")
        operator_pod(rbac, "old", "a1,a2")  # the rollout's pod
        rbac.operations.clear()
        rbac.relabel("a2", {"keda-tenancy.io/tenant": None})
        await eventually(lambda: r.applied == "a1")
        await eventually(lambda: "patch deployment" in rbac.operations)
        # The old pod still runs with a2 (terminating, say): a2 keeps its binding.
        for _ in range(5):
            await r.binding_loop.reconcile_once()  # type: ignore[union-attr]
        assert bound(rbac) == {"a1", "a2"}
        del rbac.pods[("keda-alpha", "old")]
        operator_pod(rbac, "new", "a1")
        await eventually(lambda: bound(rbac) == {"a1"})


async def test_deployment_mode_a_pod_that_keeps_a_namespace_cannot_keep_its_binding(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    """A pod that never goes (stuck terminating on a lost node, say) keeps the namespace in
    WATCH_NAMESPACE; the binding still goes the unbind timeout after the namespace left."""
    rbac.add_deployment("keda-alpha", "keda-operator", [{"name": "keda-operator"}])
    rbac.deployments[("keda-alpha", "keda-operator")]["spec"]["selector"] = {
        "matchLabels": {"app": "keda-operator"}
    }
    operator_pod(rbac, "stuck", "a1,a2")
    desired: list[str] = ["a1", "a2"]
    clock = FakeClock()
    api = await make_api_client(kubeconfig)
    try:
        loop = BindingLoop(
            manager=RoleBindingManager(api, SPEC, BindingMetrics(CollectorRegistry())),
            cache=NamespaceCache(),
            desired=lambda: Desired(tuple(NamespaceName(n) for n in desired)),
            watched=DeploymentPods(
                api, "keda-alpha", "keda-operator", "keda-operator", "WATCH_NAMESPACE"
            ),
            interval_s=10,
            unbind_timeout_s=5,
            clock=clock,
        )
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        desired.remove("a2")
        await loop.reconcile_once()
        clock.t = 4.9
        await loop.reconcile_once()
        assert bound(rbac) == {"a1", "a2"}
        clock.t = 5
        await loop.reconcile_once()
        assert bound(rbac) == {"a1"}
    finally:
        await api.close()


async def test_deployment_mode_leaves_out_a_namespace_it_cannot_bind(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    rbac.add_deployment("keda-alpha", "keda-operator", [{"name": "keda-operator"}])
    rbac.deployments[("keda-alpha", "keda-operator")]["spec"]["selector"] = {
        "matchLabels": {"app": "keda-operator"}
    }
    rbac.relabel("a1", label("alpha"))
    rbac.relabel("a2", label("alpha"))
    rbac.add_rolebinding("a2", NAME, ROLE)  # someone else's, same name: not ours to take
    async with running_reloader(deployment_args(kubeconfig)) as r:
        await eventually(lambda: r.applied == "a1")
        assert r.gate is not None
        assert "not ours" in r.gate.waiting["a2"]
        assert "a2" in (r.binding_loop.warning() or "")  # type: ignore[union-attr]
        assert r.binding_loop.readiness() is None  # type: ignore[union-attr]


async def test_the_gate_and_the_loop_binding_a_new_namespace_at_once_is_no_error(
    rbac: FakeKubeAPI, kubeconfig: str
) -> None:
    """Deployment mode: a new namespace wakes the binding loop, and the gate ensures its binding
    before the Deployment is patched, both at once. One creates it; the other must not report
    the new binding as a stranger's (an error, and a /readyz warning)."""
    api = await make_api_client(kubeconfig)
    registry = CollectorRegistry()
    try:
        manager = RoleBindingManager(api, SPEC, BindingMetrics(registry))
        ensured, reconciled = await asyncio.gather(
            manager.ensure({"a1"}), manager.reconcile({"a1"})
        )
        assert ensured.failed == {}
        assert reconciled.failed == {}
        assert "a1" in ensured.bound
        assert "a1" in reconciled.bound
        assert sorted(ensured.created + reconciled.created) == ["a1"]
        errors = registry.get_sample_value(
            "keda_tenancy_reloader_role_binding_errors_total", {"operation": "create"}
        )
        assert not errors
    finally:
        await api.close()
