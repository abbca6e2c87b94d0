"""deploy/README.md's table of who may do what is the one the cluster's RBAC matrix test asks
kube-apiserver about (tests/e2e/cluster/rbac_matrix.py), not a copy kept in step by hand."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cluster import rbac_matrix

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"


def test_the_readme_shows_the_tested_table() -> None:
    assert rbac_matrix.markdown() in README.read_text()


def test_every_identity_has_a_need_and_every_never_row_applies_to_it() -> None:
    checks = rbac_matrix.checks()
    for namespace, name in rbac_matrix.identities():
        subject = f"system:serviceaccount:{namespace}:{name}"
        mine = [c for c in checks if c.subject == subject]
        assert any(c.allowed for c in mine), name  # the table cannot pass on an empty install
        assert sum(not c.allowed for c in mine) >= len(rbac_matrix.NEVER) - 2, name


def test_the_readme_shows_the_platform_layouts_tested_table() -> None:
    assert rbac_matrix.platform_markdown() in README.read_text()


def test_every_platform_row_resolves_to_a_subject_and_a_namespace() -> None:
    checks = rbac_matrix.platform_checks()
    assert any(c.allowed for c in checks)
    assert {c.subject.rsplit(":", 1)[1] for c in checks} == {
        rbac_matrix.CONTROLLER,
        "keda-operator",
    }
    for check in checks:
        assert "OPERATOR_ROLE" not in check.resource
        assert "TENANT" not in check.resource
        assert check.namespace in {"", "kube-system", "keda-tenancy-system", "gamma-apps",
                                   "keda-gamma", "keda-alpha", "keda-beta", "alpha-apps", "beta-apps"}  # fmt: skip
