"""Issue 27: the router chart's admission policies, on the real kube-apiserver.

A RoleBinding that grants a tenant's operator role, or names an identity of a tenant's KEDA
namespace, is admitted only where the tenancy rule gives the namespace to that tenant alone (or in
the tenant's own KEDA namespace), whoever asks: cluster admins included. Each rule kind the
router takes (label keys, HNC roots, HNC root label, name pattern, static lists) is tried, with
conflicts. And only the named identities may change the labels that decide ownership.

Every request is a server-side dry run: RBAC and admission run, nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.charts import ROUTER_CHART, ROUTER_NAMESPACE, ROUTER_RELEASE, Helm, find_helm
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

LABEL = "keda-tenancy.io/tenant"
TREE = ".tree.hnc.x-k8s.io/depth"
REFUSED = "keda-tenancy: RoleBinding"


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }


def policies(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = Helm(find_helm()).template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE, values=values
    )
    return [d for d in docs if d and d["kind"].startswith("ValidatingAdmissionPolicy")]


class Policies:
    """The router chart's policies for some values, in force on the stack's kube-apiserver."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.applied: list[dict[str, Any]] = []

    def use(
        self,
        values: dict[str, Any],
        admitted: tuple[str, str],
        refused: tuple[str, str] = ("a", "kube-system"),
    ) -> None:
        """Put the policies for `values` in force; kube-apiserver picks up a changed policy
        a moment later, so wait until a binding only these values admit is admitted and one they
        refuse is refused (the previous values, or none, would answer differently)."""
        self.remove()
        self.applied = policies(values)
        assert {d["kind"] for d in self.applied} == {
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        }
        self.stack.apply(*self.applied)

        def in_force() -> bool:
            return (
                self.bind(*admitted).returncode == 0
                and REFUSED in self.bind(*refused).stderr
                and REFUSED in self.bind("a", "kube-system").stderr
            )

        for _ in range(3):  # three answers in a row: not an informer between two versions
            wait_for(in_force, "the admission policies in force", 30, 0.2)

    def remove(self) -> None:
        for doc in reversed(self.applied):
            self.stack.kubectl(
                "delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False
            )
        self.applied = []

    def bind(self, tenant: str, ns: str, *, role: bool = True, subject: str | None = None) -> Any:
        """`kubectl create rolebinding --dry-run=server`: the operator role of `tenant`, to its
        operator ServiceAccount (or `subject`, a --serviceaccount NS:NAME)."""
        args = ["create", "rolebinding", "probe", "-n", ns, "--dry-run=server"]
        args += [f"--clusterrole={f'keda-tenancy-{tenant}-operator' if role else 'view'}"]
        args += [f"--serviceaccount={subject or f'keda-{tenant}:keda-operator'}"]
        return self.stack.kubectl(*args, check=False)

    def admitted(self, tenant: str, ns: str, **kwargs: Any) -> bool:
        done = self.bind(tenant, ns, **kwargs)
        if done.returncode == 0:
            return True
        assert REFUSED in done.stderr, done.stderr  # refused by the policy, not anything else
        return False


@pytest.fixture(scope="module")
def admission(stack: Stack) -> Iterator[Policies]:
    stack.apply(
        namespace("adm-a", {LABEL: "a"}),
        namespace("adm-b", {LABEL: "b"}),
        namespace("adm-none"),
        namespace("keda-a"),
        namespace("keda-b"),
        namespace(ROUTER_NAMESPACE),
        # HNC as it labels: root a-root holds a-dev and the root b-root (nested), which holds b-dev.
        namespace("a-root", {f"a-root{TREE}": "0"}),
        namespace("a-dev", {f"a-root{TREE}": "1", f"a-dev{TREE}": "0"}),
        namespace("b-root", {f"a-root{TREE}": "1", f"b-root{TREE}": "0"}),
        namespace("b-dev", {f"a-root{TREE}": "2", f"b-root{TREE}": "1", f"b-dev{TREE}": "0"}),
        # Two label rules that disagree.
        namespace("adm-split", {LABEL: "a", "capsule.clastix.io/tenant": "b"}),
        namespace("a--prod"),
        namespace("static-ns"),
    )
    policies_ = Policies(stack)
    yield policies_
    policies_.remove()


def test_label_rule_binds_only_in_the_tenants_namespaces(admission: Policies) -> None:
    admission.use(
        {}, ("a", "adm-a"), ("a", "adm-b")
    )  # the defaults: the label keda-tenancy.io/tenant
    assert admission.admitted("a", "adm-a")
    assert admission.admitted("b", "adm-b")
    assert admission.admitted("a", "keda-a")  # its own KEDA namespace
    for ns in ("adm-b", "adm-none", "keda-b", "kube-system", "kube-public", "kube-node-lease",
               "default", ROUTER_NAMESPACE):  # fmt: skip
        assert not admission.admitted("a", ns), ns
    # The same, named by its identity only: another role for a's ServiceAccounts, or a's group.
    assert not admission.admitted("a", "adm-b", role=False)
    assert not admission.admitted("x", "adm-b", role=False, subject="keda-a:keda-metrics-server")
    assert admission.admitted("x", "adm-b", role=False, subject="adm-b:app")  # not a tenant's
    done = admission.stack.kubectl(
        "create", "rolebinding", "probe", "-n", "adm-b", "--clusterrole=view",
        "--group=system:serviceaccounts:keda-a", "--dry-run=server", check=False,
    )  # fmt: skip
    assert REFUSED in done.stderr

    # In the platform's namespace, the one Role a tenant identity may hold: reading the rule.
    def bind_role(role: str) -> Any:
        return admission.stack.kubectl(
            "create", "rolebinding", "probe", "-n", ROUTER_NAMESPACE, f"--role={role}",
            "--serviceaccount=keda-a:keda-operator", "--dry-run=server", check=False,
        )  # fmt: skip

    assert bind_role(f"{ROUTER_RELEASE}-tenancy-rule-reader").returncode == 0
    assert REFUSED in bind_role(f"{ROUTER_RELEASE}-certs").stderr
    # The message says what and where.
    message = admission.bind("a", "kube-system").stderr
    assert "tenant(s) a in namespace kube-system" in message
    assert "protected namespace" in message


def test_a_binding_left_behind_by_a_move_can_still_be_released(admission: Policies) -> None:
    """The policy gates what a binding grants, not its removal: once its namespace moved to
    another tenant, the RoleBinding manager must still take its finalizer off (an update), or
    the binding, and the old tenant's access, would stay for good. New subjects stay refused."""
    admission.use({}, ("a", "adm-a"), ("a", "adm-b"))
    stack = admission.stack
    stack.apply(namespace("adm-move", {LABEL: "a"}))
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": "keda-tenancy-a-operator-managed",
            "namespace": "adm-move",
            "finalizers": ["keda-tenancy.io/operator-access"],
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "keda-tenancy-a-operator",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "keda-operator", "namespace": "keda-a"}],
    }
    stack.kubectl("create", "-f", "-", stdin=json.dumps(binding))
    try:
        stack.kubectl("label", "namespace", "adm-move", f"{LABEL}=b", "--overwrite")
        name = ["-n", "adm-move", "rolebinding", "keda-tenancy-a-operator-managed"]
        more = [{"op": "add", "path": "/subjects/-", "value": {"kind": "ServiceAccount",
                 "name": "other", "namespace": "keda-a"}}]  # fmt: skip
        done = stack.kubectl("patch", *name, "--type=json", "-p", json.dumps(more), check=False)
        assert REFUSED in done.stderr
        stack.kubectl("delete", *name, "--wait=false")
        release = [{"op": "remove", "path": "/metadata/finalizers"}]
        stack.kubectl("patch", *name, "--type=json", "-p", json.dumps(release))
        wait_for(
            lambda: stack.kubectl("get", *name, check=False).returncode != 0,
            "the released binding gone",
            30,
            0.2,
        )
    finally:
        stack.kubectl("delete", "namespace", "adm-move", "--wait=false", check=False)


def test_conflicting_rules_give_the_namespace_to_nobody(admission: Policies) -> None:
    admission.use(
        {"tenancy": {"labelKeys": [LABEL, "capsule.clastix.io/tenant"]}},
        ("a", "adm-a"),
        ("a", "adm-split"),
    )
    assert admission.admitted("a", "adm-a")
    assert not admission.admitted("a", "adm-split")
    assert not admission.admitted("b", "adm-split")


def test_hnc_roots_nested_roots_are_a_conflict(admission: Policies) -> None:
    admission.use(
        {"tenancy": {"labelKeys": [], "hnc": {"roots": ["a-root", "b-root"]}}},
        ("a-root", "a-dev"),
        ("a-root", "b-dev"),
    )
    assert admission.admitted("a-root", "a-root")
    assert admission.admitted("a-root", "a-dev")
    # b-root and b-dev sit under both roots: the router calls them a conflict, so may no one.
    for tenant in ("a-root", "b-root"):
        for ns in ("b-root", "b-dev"):
            assert not admission.admitted(tenant, ns), (tenant, ns)
    assert not admission.admitted("a-root", "adm-a")


def test_hnc_root_label_bounds_a_tenant_to_its_subtree(admission: Policies) -> None:
    admission.use(
        {"tenancy": {"labelKeys": [], "hnc": {"rootLabel": "keda-tenancy.io/tenant-root"}}},
        ("b-root", "b-dev"),
        ("a-root", "adm-a"),
    )
    assert admission.admitted("a-root", "a-dev")
    assert not admission.admitted("a-root", "adm-a")
    assert not admission.admitted("b-root", "a-dev")


def test_name_pattern_and_static_lists(admission: Policies) -> None:
    admission.use(
        {
            "tenancy": {
                "labelKeys": [],
                "namespaceNamePattern": "(?P<tenant>[a-z0-9-]+?)--.+",
                "tenants": {"s": {"namespaces": ["static-ns"]}},
            }
        },
        ("a", "a--prod"),
        ("a", "adm-a"),
    )
    assert admission.admitted("a", "a--prod")
    assert not admission.admitted("b", "a--prod")
    assert admission.admitted("s", "static-ns")
    assert not admission.admitted("a", "static-ns")
    assert not admission.admitted("s", "a--prod")


def test_only_named_identities_change_tenancy_labels(admission: Policies) -> None:
    admission.use({}, ("a", "adm-a"), ("a", "adm-b"))
    stack = admission.stack
    owner = "tenant-owner"  # someone allowed by RBAC to label namespaces (a Capsule owner)
    stack.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "adm-namespace-labeller"},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "adm-namespace-labeller"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "adm-namespace-labeller",
            },
            "subjects": [{"kind": "User", "name": owner, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )

    def label(ns: str, change: dict[str, str | None], as_user: str | None = owner) -> Any:
        args = ["patch", "namespace", ns, "--type=merge", "--dry-run=server"]
        args += ["-p", json.dumps({"metadata": {"labels": change}})]
        if as_user:
            args += ["--as", as_user]
        return stack.kubectl(*args, check=False)

    try:
        for change in ({LABEL: "b"}, {LABEL: None}):
            done = label("adm-a", change)
            assert done.returncode != 0
            assert f"may not set or change the tenancy label(s) {LABEL}" in done.stderr
        assert "may not set" in label("adm-none", {LABEL: "a"}).stderr  # set where none was
        assert label("adm-a", {"team": "payments"}).returncode == 0  # other labels: fine
        assert label("adm-a", {LABEL: "b"}, as_user=None).returncode == 0  # system:masters
        # Nor may it make a tenant KEDA namespace, whose release would get certificates.
        stack.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "adm-namespace-labeller"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["namespaces"],
                        "verbs": ["get", "patch", "create"],
                    }
                ],
            }
        )
        create = ["create", "namespace", "--dry-run=server", "--as", owner]
        done = stack.kubectl(*create, "keda-evil", check=False)
        assert "may not create keda-evil, a tenant KEDA namespace" in done.stderr
        assert stack.kubectl(*create, "evil-apps", check=False).returncode == 0
    finally:
        stack.kubectl("delete", "clusterrolebinding,clusterrole", "adm-namespace-labeller",
                      "--ignore-not-found", check=False)  # fmt: skip


def test_disabled_renders_no_policy() -> None:
    assert policies({"admissionPolicy": {"enabled": False}}) == []
