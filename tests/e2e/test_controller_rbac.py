"""The platform controller against the real kube-apiserver, as its own ServiceAccount with only
the RBAC docs/controller.md lists, and each tenant's grant as the contract (CONTRACT-21) has
the tenant chart render it: the escalation check lets it bind only the ClusterRole a tenant
allowed it to bind, a tenant's Role lets it write only that tenant's ConfigMap, and a namespace
moving between tenants changes which operator may read it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import TENANT_LABEL, Stack, free_port, running_stack, wait_for

pytestmark = pytest.mark.e2e

CONTROLLER_NS = "keda-tenancy"
CONTROLLER_SA = "keda-tenancy-controller"
RBAC = "rbac.authorization.k8s.io/v1"

CONTROLLER_RULES: list[dict[str, Any]] = [
    # docs/controller.md, "RBAC": what the controller holds cluster-wide, and nothing more.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["rolebindings"],
        "verbs": ["get", "list", "watch", "create", "delete", "patch"],
    },
    {
        "apiGroups": ["keda.sh"],
        "resources": ["scaledobjects", "scaledjobs", "triggerauthentications"],
        "verbs": ["list"],
    },
    {"apiGroups": ["eventing.keda.sh"], "resources": ["cloudeventsources"], "verbs": ["list"]},
]
OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["keda.sh"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
]


def tenant_objects(tenant: str, *, may_bind: bool = True) -> list[dict[str, Any]]:
    """What the tenant chart renders for the controller (CONTRACT-21, item 1)."""
    ns, prefix = f"keda-{tenant}", f"keda-tenancy-{tenant}"
    controller = {"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": CONTROLLER_NS}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "keda-operator", "namespace": ns},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "keda-operator-namespaces",
                "namespace": ns,
                "labels": {"keda-tenancy.io/platform-controller": "namespaces"},
            },
        },
        {
            "apiVersion": RBAC,
            "kind": "ClusterRole",
            "metadata": {"name": f"{prefix}-operator"},
            "rules": OPERATOR_RULES,
        },
        {
            "apiVersion": RBAC,
            "kind": "Role",
            "metadata": {"name": "keda-tenancy-controller", "namespace": ns},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["keda-operator-namespaces"],
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [f"{tenant}.operator.keda-tenancy.io"],
                    "verbs": ["get", "update"],
                },
            ],
        },
        {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": {
                "name": "keda-tenancy-controller",
                "namespace": ns,
                "labels": {"keda-tenancy.io/platform-controller": "grant"},
                "annotations": {
                    "keda-tenancy.io/mode": "process",
                    "keda-tenancy.io/operator-service-account": "keda-operator",
                    "keda-tenancy.io/operator-clusterrole": f"{prefix}-operator",
                    "keda-tenancy.io/lease": f"{tenant}.operator.keda-tenancy.io",
                },
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "keda-tenancy-controller",
            },
            "subjects": [controller],
        },
    ]
    if may_bind:
        objects += [
            {
                "apiVersion": RBAC,
                "kind": "ClusterRole",
                "metadata": {"name": f"{prefix}-controller-bind"},
                "rules": [
                    {
                        "apiGroups": ["rbac.authorization.k8s.io"],
                        "resources": ["clusterroles"],
                        "resourceNames": [f"{prefix}-operator"],
                        "verbs": ["bind"],
                    }
                ],
            },
            {
                "apiVersion": RBAC,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{prefix}-controller-bind"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{prefix}-controller-bind",
                },
                "subjects": [controller],
            },
        ]
    return objects


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("controller")) as stack:
        stack.start_control_plane()
        stack.install_keda_crds()
        yield stack
        print(f"\ncontroller e2e logs: {stack.logs}")


def get(stack: Stack, *args: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", *args, "-o", "json").stdout))


def published(stack: Stack, tenant: str) -> str | None:
    configmap = get(stack, "configmap", "keda-operator-namespaces", "-n", f"keda-{tenant}")
    return (configmap.get("data") or {}).get("namespaces")


def operator_may_list(stack: Stack, tenant: str, namespace: str) -> bool:
    done = stack.kubectl(
        "auth",
        "can-i",
        "list",
        "scaledobjects.keda.sh",
        "-n",
        namespace,
        f"--as=system:serviceaccount:keda-{tenant}:keda-operator",
        check=False,
    )
    return done.stdout.strip() == "yes"


def start_controller(stack: Stack) -> Path:
    kubeconfig = stack.service_account_kubeconfig(CONTROLLER_NS, CONTROLLER_SA)
    stack.run(
        "controller",
        [
            sys.executable,
            "-m",
            "controller",
            f"--kubeconfig={kubeconfig}",
            f"--tenant-label-key={TENANT_LABEL}",
            "--health-bind-address=127.0.0.1",
            f"--health-port={free_port()}",
            "--backoff-max=2s",
        ],
    )
    return kubeconfig


def test_the_controller_binds_only_what_each_tenant_allowed_with_its_documented_rbac(
    bare: Stack,
) -> None:
    stack = bare
    stack.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NS}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": CONTROLLER_SA, "namespace": CONTROLLER_NS},
        },
        {
            "apiVersion": RBAC,
            "kind": "ClusterRole",
            "metadata": {"name": CONTROLLER_SA},
            "rules": CONTROLLER_RULES,
        },
        {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER_SA},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": CONTROLLER_SA,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": CONTROLLER_NS}
            ],
        },
        *tenant_objects("alpha"),
        *tenant_objects("gamma"),
        # beta's release did not let the controller bind its operator ClusterRole.
        *tenant_objects("beta", may_bind=False),
    )
    for tenant, namespaces in {"alpha": ("a1", "moves"), "beta": ("b1",), "gamma": ("g1",)}.items():
        for name in namespaces:
            stack.tenant_namespace(tenant, name)
    start_controller(stack)

    wait_for(lambda: published(stack, "alpha") == "a1,moves", "alpha's set published", 30)
    wait_for(lambda: published(stack, "gamma") == "g1", "gamma's set published", 30)
    assert operator_may_list(stack, "alpha", "a1")
    assert not operator_may_list(stack, "alpha", "g1")
    assert not operator_may_list(stack, "gamma", "a1")

    # The API server's escalation check refused beta's binding: nothing published with b1,
    # and the grant says why.
    wait_for(lambda: published(stack, "beta") == "", "beta's empty set published", 30)
    assert not operator_may_list(stack, "beta", "b1")

    def beta_warned() -> bool:
        events = get(stack, "events", "-n", "keda-beta")["items"]
        return any(e["reason"] == "ReconcileFailed" and "b1" in e["message"] for e in events)

    wait_for(beta_warned, "an Event on beta's grant", 30)

    # A namespace moves from alpha to gamma: alpha's operator loses it, gamma's gains it.
    stack.kubectl("label", "namespace", "moves", f"{TENANT_LABEL}=gamma", "--overwrite")
    wait_for(lambda: published(stack, "gamma") == "g1,moves", "gamma's set with moves", 30)
    assert published(stack, "alpha") == "a1"
    wait_for(lambda: not operator_may_list(stack, "alpha", "moves"), "alpha unbound", 10)
    assert operator_may_list(stack, "gamma", "moves")

    # Alpha's grant deleted: its bindings go, finalizers and all.
    stack.kubectl("delete", "rolebinding", "keda-tenancy-controller", "-n", "keda-alpha")
    wait_for(
        lambda: not get(stack, "rolebindings", "-A", "-l", "keda-tenancy.io/tenant=alpha")["items"],
        "alpha's bindings gone",
        30,
    )
    controller = stack.processes["controller"]
    assert controller.running, controller.tail()
    # SIGTERM: the watches and workers stop, and it exits 0.
    assert controller.stop() == 0, controller.tail()
