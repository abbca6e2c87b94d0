"""The names of the platform layout's objects, which the platform controller writes and the
router's explain command reads: one definition for both."""

from __future__ import annotations

BINDING_PREFIX = "keda-tenancy-operator-"
"""+ tenant: the operator's RoleBinding in each of the tenant's namespaces."""
NAMESPACES_CONFIGMAP = "keda-operator-namespaces"
"""In the tenant's KEDA namespace: the namespace set published to its operator."""
NAMESPACES_KEY = "namespaces"
UPDATED_ANNOTATION = "keda-tenancy.io/namespaces-updated"
CONTROLLER_LABEL = "keda-tenancy.io/platform-controller"
"""On grants (`grant`), bindings (`binding`) and the namespace set ConfigMap (`namespaces`)."""
BINDING_LABEL_VALUE = "binding"
TENANT_LABEL = "keda-tenancy.io/tenant"
"""On a binding: whose it is (the tenant chart's uninstall hook finds the namespaces by it)."""


def binding_name(tenant: str) -> str:
    return f"{BINDING_PREFIX}{tenant}"
