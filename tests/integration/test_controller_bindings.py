"""The platform controller's bindings and namespace sets, against the fake API's semantics
(list/watch with resourceVersions, label selectors, finalizers holding deletions, the
escalation check, 403 where RBAC would refuse)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from controller.objects import CONTROLLER_LABEL, GRANT_NAME, MODE_ANNOTATION
from tenancy_common.keda_objects import FINALIZER
from tenancy_common.platform_objects import NAMESPACES_CONFIGMAP
from tests.controller_harness import (
    TENANT_LABEL,
    binding,
    bound,
    grant,
    namespaces_with_two_holders,
    published,
    register,
    role,
    running_controller,
    settled,
)
from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import eventually


@pytest.fixture(autouse=True)
def every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Emit every record, so a bad `extra` key fails here and not in a pod."""
    caplog.set_level(logging.DEBUG)


def owned_by(kube_api: FakeKubeAPI, tenant: str, *names: str) -> None:
    for name in names:
        kube_api.relabel_new(name, {TENANT_LABEL: tenant})


def timeline_index(kube_api: FakeKubeAPI, *entry: str) -> int:
    for index, seen in enumerate(kube_api.timeline):
        if seen[: len(entry)] == entry:
            return index
    raise AssertionError(f"{entry} never happened: {kube_api.timeline}")


async def test_join_creates_the_binding_before_the_namespace_is_published(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    owned_by(kube_api, "alpha", "a1", "a2")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2")
        assert bound(kube_api, "alpha") == {"a1", "a2"}
        publish = timeline_index(kube_api, "namespaces published", "keda-alpha")
        assert timeline_index(kube_api, "rolebinding created", "a1") < publish
        assert timeline_index(kube_api, "rolebinding created", "a2") < publish
        made = kube_api.rolebindings[("a1", binding("alpha"))]
        assert made["roleRef"]["name"] == role("alpha")
        assert made["subjects"] == [
            {"kind": "ServiceAccount", "name": "keda-operator", "namespace": "keda-alpha"}
        ]
        assert made["metadata"]["finalizers"] == [FINALIZER]
        assert made["metadata"]["labels"][CONTROLLER_LABEL] == "binding"

        owned_by(kube_api, "alpha", "a3")
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2,a3")
        assert timeline_index(kube_api, "rolebinding created", "a3") < kube_api.timeline.index(
            ("namespaces published", "keda-alpha", NAMESPACES_CONFIGMAP, "a1,a2,a3")
        )
        await settled(controller, kube_api)
        assert controller.errors == {}


async def test_leave_publishes_the_set_without_it_then_deletes_the_binding(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    owned_by(kube_api, "alpha", "a1", "a2")
    async with running_controller(kubeconfig):
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2")
        kube_api.relabel("a2", {TENANT_LABEL: None})
        await eventually(lambda: bound(kube_api, "alpha") == {"a1"})
        assert published(kube_api, "alpha") == "a1"
        shrunk = kube_api.timeline.index(
            ("namespaces published", "keda-alpha", NAMESPACES_CONFIGMAP, "a1")
        )
        assert shrunk < timeline_index(kube_api, "rolebinding gone", "a2", binding("alpha"))

        # Its last namespace gone: the set is published empty (decided), not left unset.
        kube_api.relabel("a1", {TENANT_LABEL: None})
        await eventually(
            lambda: published(kube_api, "alpha") == "" and not bound(kube_api, "alpha")
        )


async def test_two_tenants_never_get_each_others_namespaces(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    owned_by(kube_api, "alpha", "a1", "a2")
    owned_by(kube_api, "beta", "b1")
    kube_api.create("nobody")
    async with running_controller(kubeconfig) as controller:
        await eventually(
            lambda: published(kube_api, "alpha") == "a1,a2" and published(kube_api, "beta") == "b1"
        )
        await settled(controller, kube_api)
        assert bound(kube_api, "alpha") == {"a1", "a2"}
        assert bound(kube_api, "beta") == {"b1"}
        for (namespace, name), obj in kube_api.rolebindings.items():
            if name == binding("beta"):
                assert obj["subjects"][0]["namespace"] == "keda-beta"
                assert obj["roleRef"]["name"] == role("beta")
                assert namespace == "b1"


async def test_a_namespace_moving_between_tenants_is_never_held_by_both(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    owned_by(kube_api, "alpha", "a1", "moving")
    owned_by(kube_api, "beta", "b1")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1,moving")
        await eventually(lambda: published(kube_api, "beta") == "b1")
        kube_api.relabel("moving", {TENANT_LABEL: "beta"})
        await eventually(
            lambda: (
                published(kube_api, "beta") == "b1,moving" and published(kube_api, "alpha") == "a1"
            )
        )
        await settled(controller, kube_api)
        assert bound(kube_api, "alpha") == {"a1"}
        assert bound(kube_api, "beta") == {"b1", "moving"}
        gone = timeline_index(kube_api, "rolebinding gone", "moving", binding("alpha"))
        assert gone < timeline_index(kube_api, "rolebinding created", "moving", binding("beta"))
        assert namespaces_with_two_holders(kube_api.timeline, ["alpha", "beta"]) == []
        # And back, in a burst with other changes.
        kube_api.relabel("moving", {TENANT_LABEL: "alpha"})
        kube_api.relabel("b1", {TENANT_LABEL: "alpha"})
        owned_by(kube_api, "beta", "b2")
        await eventually(
            lambda: (
                published(kube_api, "alpha") == "a1,b1,moving"
                and published(kube_api, "beta") == "b2"
            )
        )
        await settled(controller, kube_api)
        assert namespaces_with_two_holders(kube_api.timeline, ["alpha", "beta"]) == []
        assert controller.errors == {}


async def test_a_deleted_grant_takes_every_binding_of_its_tenant_finalizers_and_all(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    owned_by(kube_api, "alpha", "a1", "a2")
    owned_by(kube_api, "beta", "b1")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: bound(kube_api, "alpha") == {"a1", "a2"})
        await eventually(lambda: bound(kube_api, "beta") == {"b1"})
        kube_api.delete_rolebinding("keda-alpha", GRANT_NAME)
        await eventually(lambda: not bound(kube_api, "alpha"))
        await settled(controller, kube_api)
        assert bound(kube_api, "beta") == {"b1"}
        assert controller.store.granted() == 1

        # Registered again: served again.
        grant(kube_api, "alpha")
        await eventually(lambda: bound(kube_api, "alpha") == {"a1", "a2"})


async def test_a_tenant_whose_grant_is_broken_does_not_delay_another(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    register(kube_api, "gamma", annotations={MODE_ANNOTATION: "bogus"})
    owned_by(kube_api, "alpha", "a1")
    owned_by(kube_api, "beta", "b1")
    owned_by(kube_api, "gamma", "g1")
    kube_api.forbidden.add("patch configmap keda-alpha")  # its Role lost the ConfigMap
    registry = CollectorRegistry()
    async with running_controller(kubeconfig, registry=registry) as controller:
        await eventually(lambda: published(kube_api, "beta") == "b1")
        owned_by(kube_api, "beta", "b2")
        await eventually(lambda: published(kube_api, "beta") == "b1,b2")

        def errors(tenant: str) -> float:
            value = registry.get_sample_value(
                "keda_tenancy_controller_reconcile_errors_total", {"tenant": tenant}
            )
            return value or 0.0

        await eventually(lambda: errors("alpha") >= 2 and errors("gamma") >= 1)
        assert errors("beta") == 0
        assert "403" in controller.errors["alpha"]
        assert "keda-tenancy.io/mode" in controller.errors["gamma"]
        # The binding came first and stays (its set could not be published).
        assert bound(kube_api, "alpha") == {"a1"}
        assert not bound(kube_api, "gamma")
        warned = {
            (e["metadata"]["namespace"], e["involvedObject"]["name"], e["reason"])
            for e in kube_api.events
        }
        assert ("keda-alpha", GRANT_NAME, "ReconcileFailed") in warned
        assert ("keda-gamma", GRANT_NAME, "ReconcileFailed") in warned
        # One Event per problem, not one per retry.
        assert sum(1 for e in kube_api.events if e["metadata"]["namespace"] == "keda-alpha") == 1

        kube_api.forbidden.discard("patch configmap keda-alpha")
        await eventually(lambda: published(kube_api, "alpha") == "a1")
        await eventually(lambda: "alpha" not in controller.errors)
        await eventually(
            lambda: any(
                e["reason"] == "Reconciled" and e["metadata"]["namespace"] == "keda-alpha"
                for e in kube_api.events
            )
        )


async def test_a_grant_cannot_bind_what_its_tenant_did_not_allow(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """The escalation check: without `bind` on the tenant's operator ClusterRole (the tenant
    chart's ClusterRoleBinding) no binding is made, nothing is published with it."""
    register(kube_api, "alpha", bindable=False)
    register(kube_api, "beta", annotations={"keda-tenancy.io/operator-clusterrole": "admin"})
    kube_api.bindable.add("admin")
    owned_by(kube_api, "alpha", "a1")
    owned_by(kube_api, "beta", "b1")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: "alpha" in controller.errors and "beta" in controller.errors)
        await eventually(lambda: published(kube_api, "alpha") == "")
        assert "RBAC permissions not currently held" in controller.errors["alpha"]
        # A grant naming any other ClusterRole is refused before the API is asked.
        assert "admin" in controller.errors["beta"]
        assert not bound(kube_api, "alpha")
        assert not bound(kube_api, "beta")
        assert published(kube_api, "beta") is None


async def test_a_terminating_namespace_keeps_its_binding_until_keda_objects_are_gone(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    owned_by(kube_api, "alpha", "a1", "a2")
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "app", "namespace": "a2", "finalizers": ["finalizer.keda.sh"]},
    }
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a2")] = [scaled]
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2")
        kube_api.terminate_namespace("a2")
        await settled(controller, kube_api)
        # Still there (deleted, held by our finalizer), still in the set: KEDA can clean up.
        binding_a2 = kube_api.rolebindings[("a2", binding("alpha"))]
        assert binding_a2["metadata"]["deletionTimestamp"]
        assert published(kube_api, "alpha") == "a1,a2"

        kube_api.custom_objects[("keda.sh", "scaledobjects", "a2")] = []  # KEDA is done
        await eventually(lambda: bound(kube_api, "alpha") == {"a1"})
        kube_api.finalize("a2")
        await eventually(lambda: published(kube_api, "alpha") == "a1")
        assert controller.errors == {}


async def test_a_restart_converges_without_duplicates(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    register(kube_api, "alpha")
    register(kube_api, "beta")
    owned_by(kube_api, "alpha", "a1", "a2")
    owned_by(kube_api, "beta", "b1")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "beta") == "b1")
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2")
        await settled(controller, kube_api)

    # A restart with nothing changed writes nothing.
    writes = len(kube_api.operations)
    async with running_controller(kubeconfig) as controller:
        await settled(controller, kube_api)
        assert kube_api.operations[writes:] == []
        assert controller.errors == {}

    # While it was down: beta's grant went, alpha lost a binding and gained a namespace.
    kube_api.delete_rolebinding("keda-beta", GRANT_NAME)
    kube_api.rolebindings.pop(("a1", binding("alpha")))
    owned_by(kube_api, "alpha", "a3")
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1,a2,a3")
        await eventually(lambda: not bound(kube_api, "beta"))
        await settled(controller, kube_api)
        assert bound(kube_api, "alpha") == {"a1", "a2", "a3"}
        assert controller.errors == {}
    creates = [e for e in kube_api.timeline if e[0] == "rolebinding created"]
    assert len(creates) == len(set(creates[:3])) + 2  # a1 again and a3, nothing twice at once


async def test_a_binding_deleted_before_the_namespace_watch_says_terminating_stays(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    """The namespace controller deletes bindings right after marking the namespace; the
    RoleBinding watch may say so before the Namespace watch does. The binding is KEDA's way to
    its finalizers: it stays."""
    register(kube_api, "alpha")
    owned_by(kube_api, "alpha", "a1")
    scaled = {"metadata": {"name": "app", "namespace": "a1", "finalizers": ["finalizer.keda.sh"]}}
    kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] = [scaled]
    async with running_controller(kubeconfig) as controller:
        await eventually(lambda: published(kube_api, "alpha") == "a1")
        # Terminating in the store, not yet on the namespace watch; the binding deleted.
        kube_api.namespaces["a1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        kube_api.delete_rolebinding("a1", binding("alpha"))
        await settled(controller, kube_api)
        assert bound(kube_api, "alpha") == {"a1"}
        assert published(kube_api, "alpha") == "a1"

        kube_api.delete("a1", terminating=True)  # the watch catches up
        kube_api.custom_objects[("keda.sh", "scaledobjects", "a1")] = []
        await eventually(lambda: not bound(kube_api, "alpha"))
