"""Who may do what, where: the table deploy/README.md shows and test_13 asks kube-apiserver about.

One row per (identity, verb, resource, where): `yes` rows are what a component needs (so the
test cannot pass on an empty install), `no` rows what it must never have. Namespaces are named by
their role relative to the identity's own tenant, and resolved for the cluster's two tenants
(alpha: process mode, beta: deployment mode) by `checks()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.deploy.charts import ROUTER_NAMESPACE

TENANTS = ("alpha", "beta")
APPS = {"alpha": "alpha-apps", "beta": "beta-apps"}
ROUTER = "keda-tenancy-router"
CERTS = "keda-tenancy-router-certs"
RULE = "keda-tenancy-router-tenancy-rule"  # the router release's published tenancy rule
# The tenant chart's identities: the first two in every mode, the webhook by default; the binding
# manager is its own Deployment in process mode and the namespace reloader in deployment mode.
TENANT_IDENTITIES = {
    "alpha": ("keda-operator", "keda-metrics-server", "keda-webhook", "keda-rolebinding-manager"),
    "beta": ("keda-operator", "keda-metrics-server", "keda-webhook", "keda-namespace-reloader"),
}
BINDING_MANAGERS = {"alpha": "keda-rolebinding-manager", "beta": "keda-namespace-reloader"}


@dataclass(frozen=True)
class Row:
    who: str  # a tenant identity's ServiceAccount name, or ROUTER / CERTS
    verb: str
    resource: str  # as `kubectl auth can-i` takes it: RESOURCE[.GROUP][/NAME]
    where: str  # "cluster", "own apps", "own KEDA", "other apps", "other KEDA", or a namespace
    allowed: bool
    why: str
    subresource: str = ""


NEEDS = [
    Row(ROUTER, "list", "namespaces", "cluster", True, "the tenancy rule's namespace cache"),
    Row(ROUTER, "get", "configmaps/extension-apiserver-authentication", "kube-system", True,
        "the aggregator's front-proxy CA"),
    Row(ROUTER, "get", "rolebindings.rbac.authorization.k8s.io/OPERATOR_ROLE-managed", "own apps",
        True, "explain: whether a tenant's operator holds access there (each tenant release "
        "grants this one name)"),
    Row(ROUTER, "get", "configmaps/keda-operator-watched", "own KEDA", True,
        "explain: what a process-mode tenant's operator watches (this one object)"),
    Row(CERTS, "get", "secrets/keda-metrics-apiserver-tls", "own KEDA", True,
        "keeps each tenant's metrics-server certificate"),
    Row(CERTS, "patch", "apiservices.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io",
        "cluster", True, "the APIService caBundle"),
    Row(CERTS, "watch", "namespaces", "cluster", True,
        "issues a new tenant's certificates when its namespace appears, not at the next pass"),
    Row("keda-operator", "get", "secrets", "own apps", True, "trigger Secrets, by the managed binding"),
    Row("keda-operator", "patch", "deployments.apps", "own apps", True, "scale targets", "scale"),
    Row("keda-operator", "update", "scaledobjects.keda.sh", "own apps", True, "KEDA's own objects"),
    Row("keda-operator", "get", "secrets", "own KEDA", True, "ClusterTriggerAuthentication Secrets"),
    Row("keda-operator", "update", "leases.coordination.k8s.io", "own KEDA", True,
        "leader election"),
    Row("keda-metrics-server", "create", "subjectaccessreviews.authorization.k8s.io", "cluster",
        True, "delegated authorization of every request"),
    Row("keda-webhook", "list", "horizontalpodautoscalers.autoscaling", "cluster", True,
        "KEDA's webhook validates a ScaledObject against the HPAs"),
    Row("keda-rolebinding-manager", "create", "rolebindings.rbac.authorization.k8s.io", "own apps",
        True, "the operator's binding in each tenant namespace"),
    Row("keda-rolebinding-manager", "bind", "clusterroles.rbac.authorization.k8s.io/OPERATOR_ROLE",
        "cluster", True, "may reference its operator's role and no other"),
    Row("keda-rolebinding-manager", "get", f"configmaps/{RULE}", ROUTER_NAMESPACE, True,
        "the router release's published tenancy rule, this one object"),
    Row("keda-namespace-reloader", "get", f"configmaps/{RULE}", ROUTER_NAMESPACE, True,
        "the router release's published tenancy rule, this one object"),
    Row("keda-namespace-reloader", "patch", "deployments.apps/keda-operator", "own KEDA", True,
        "deployment mode: WATCH_NAMESPACE by server-side apply"),
    Row("keda-namespace-reloader", "create", "rolebindings.rbac.authorization.k8s.io", "own apps",
        True, "deployment mode: it manages the bindings itself"),
]  # fmt: skip

# What no identity of either chart may do (the binding managers' RoleBinding rights are bounded
# by the admission policy instead: the escalation part of test_13).
NEVER = [
    ("get", "secrets", "kube-system", "", "the control plane's Secrets"),
    ("get", "secrets", ROUTER_NAMESPACE, "", "the platform's CAs and keys"),
    ("list", "configmaps", ROUTER_NAMESPACE, "", "the platform's configuration beyond the rule"),
    ("get", "secrets", "other apps", "", "another tenant's trigger Secrets"),
    ("list", "secrets", "other KEDA", "", "another tenant's KEDA and its cloud identity"),
    ("create", "pods", "kube-system", "", "running code as the control plane"),
    ("create", "pods", "other apps", "exec", "a shell in another tenant's pods"),
    ("create", "serviceaccounts", "kube-system", "token", "minting a control-plane token"),
    ("create", "serviceaccounts", "other KEDA", "token", "minting another tenant's token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "kube-system", "", "RBAC in kube-system"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "cluster", "", "cluster-wide RBAC"),
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", "cluster", "",
     "binding a bigger role than its own"),
    ("patch", "namespaces", "cluster", "", "relabelling a namespace into a tenant"),
    ("delete", "namespaces", "cluster", "", "deleting a tenant"),
    ("create", "apiservices.apiregistration.k8s.io", "cluster", "", "a second metrics API"),
    ("patch", "apiservices.apiregistration.k8s.io/v1beta1.custom.metrics.k8s.io", "cluster", "",
     "any APIService but ours"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", "cluster", "",
     "intercepting other requests"),
    ("create", "validatingadmissionpolicybindings.admissionregistration.k8s.io", "cluster", "",
     "switching the bounds off"),
]  # fmt: skip
# The certificate controller holds its own CAs: its namespace's Secrets are its to read.
NEVER_EXCEPT = {(CERTS, "get", "secrets", ROUTER_NAMESPACE)}
# The binding managers may create RoleBindings anywhere by RBAC (RBAC cannot name namespaces that
# change): the admission policy bounds them, and test_13's escalation part proves it.
NEVER_EXCEPT |= {
    (manager, "create", "rolebindings.rbac.authorization.k8s.io", "kube-system")
    for manager in BINDING_MANAGERS.values()
}


def identities() -> list[tuple[str, str]]:
    """(namespace, ServiceAccount) of every identity the two charts create on the cluster."""
    out = [(ROUTER_NAMESPACE, ROUTER), (ROUTER_NAMESPACE, CERTS)]
    for tenant in TENANTS:
        out += [(f"keda-{tenant}", name) for name in TENANT_IDENTITIES[tenant]]
    return out


def resolve(where: str, tenant: str | None) -> str:
    """A row's namespace for an identity of `tenant` (None: the router release's)."""
    own = tenant or TENANTS[0]
    other = next(t for t in TENANTS if t != own)
    return {
        "own apps": APPS[own],
        "own KEDA": f"keda-{own}",
        "other apps": APPS[other],
        "other KEDA": f"keda-{other}",
    }.get(where, where)


@dataclass(frozen=True)
class Check:
    subject: str  # system:serviceaccount:NS:NAME
    verb: str
    resource: str
    namespace: str  # "" for cluster-scoped
    subresource: str
    allowed: bool
    row: str


def checks() -> list[Check]:
    out = []
    for namespace, name in identities():
        tenant = namespace.removeprefix("keda-") if namespace != ROUTER_NAMESPACE else None
        subject = f"system:serviceaccount:{namespace}:{name}"
        for row in NEEDS:
            if row.who != name:
                continue
            # The router's rows name the first tenant's objects (it holds them for every tenant).
            role = f"keda-tenancy-{tenant or TENANTS[0]}-operator"
            resource = row.resource.replace("OPERATOR_ROLE", role)
            where = resolve(row.where, tenant)
            out.append(
                Check(subject, row.verb, resource, "" if where == "cluster" else where,
                      row.subresource, True, f"{name} {row.verb} {row.resource} {row.where}")
            )  # fmt: skip
        for verb, resource, where_, subresource, _why in NEVER:
            if (name, verb, resource, where_) in NEVER_EXCEPT:
                continue
            where = resolve(where_, tenant)
            out.append(
                Check(subject, verb, resource, "" if where == "cluster" else where, subresource,
                      False, f"{name} {verb} {resource}{'/' + subresource if subresource else ''} {where_}")
            )  # fmt: skip
    return out


def markdown() -> str:
    """The README's table: what each identity needs (yes) and what none may do (no)."""
    lines = [
        "| identity | may | resource | where | why |",
        "|---|---|---|---|---|",
    ]
    for row in NEEDS:
        resource = row.resource.replace("OPERATOR_ROLE", "keda-tenancy-<tenant>-operator")
        sub = f" (`{row.subresource}`)" if row.subresource else ""
        lines.append(
            f"| `{row.who}` | yes: {row.verb} | `{resource}`{sub} | {row.where} | {row.why} |"
        )
    for verb, resource, where, subresource, why in NEVER:
        sub = f" (`{subresource}`)" if subresource else ""
        exempt = sorted(
            {who for who, v, r, w in NEVER_EXCEPT if (v, r, w) == (verb, resource, where)}
        )
        but = f" (except {', '.join(f'`{w}`' for w in exempt)}: see above)" if exempt else ""
        lines.append(f"| every identity{but} | no: {verb} | `{resource}`{sub} | {where} | {why} |")
    return "\n".join(lines)


# --- the platform layout (issue 21; opt-in: router controller.enabled, tenant
# platformController.enabled). Checked by tests/e2e/cluster/test_platform_layout.py on its own
# tenant, not by test_13 (the default install renders none of these identities' rights). --------

CONTROLLER = "keda-tenancy-controller"
PLATFORM_TENANT = "gamma"  # process mode, webhooks off
PLATFORM_APPS = "gamma-apps"
NAMESPACE_SET = "configmaps/keda-operator-namespaces"
PLATFORM_LEASE = "leases.coordination.k8s.io/TENANT.operator.keda-tenancy.io"

PLATFORM_NEEDS = [
    Row(CONTROLLER, "watch", "namespaces", "cluster", True, "the tenancy rule's namespace cache"),
    Row(CONTROLLER, "watch", "rolebindings.rbac.authorization.k8s.io", "cluster", True,
        "the tenants' grants and its own bindings, one watch by label"),
    Row(CONTROLLER, "create", "rolebindings.rbac.authorization.k8s.io", "own apps", True,
        "the operator's binding in each tenant namespace (RBAC cannot name them: they change)"),
    Row(CONTROLLER, "bind", "clusterroles.rbac.authorization.k8s.io/OPERATOR_ROLE", "cluster",
        True, "granted by each tenant release for its own operator role only"),
    Row(CONTROLLER, "patch", NAMESPACE_SET, "own KEDA", True,
        "publishes the tenant's namespace set (granted by the tenant release)"),
    Row(CONTROLLER, "update", PLATFORM_LEASE, "own KEDA", True,
        "releases the Lease of an operator proven stopped (granted by the tenant release)"),
    Row(CONTROLLER, "watch", "pods", "cluster", True,
        "the operator pods: proof of termination before a Lease release"),
    Row(CONTROLLER, "list", "scaledobjects.keda.sh", "cluster", True,
        "a Terminating namespace's binding is kept until KEDA's objects are gone"),
    Row("keda-operator", "watch", NAMESPACE_SET, "own KEDA", True,
        "the in-pod process reads the namespace set, that one object"),
]  # fmt: skip

PLATFORM_NEVER = [
    (CONTROLLER, "get", "secrets", "own KEDA", "a tenant's certificates and trigger Secrets"),
    (CONTROLLER, "get", "secrets", "own apps", "a tenant's trigger Secrets"),
    (CONTROLLER, "list", "configmaps", "own KEDA", "a tenant's other ConfigMaps"),
    (CONTROLLER, "patch", "deployments.apps/keda-operator", "own KEDA",
     "a process-mode tenant's operator (only deployment mode grants it)"),
    (CONTROLLER, "patch", NAMESPACE_SET, "other KEDA",
     "a tenant that did not register (no grant)"),
    (CONTROLLER, "bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", "cluster",
     "binding a bigger role than a tenant's operator role"),
    (CONTROLLER, "create", "pods", "own apps", "running code in a tenant's namespace"),
    ("keda-operator", "patch", NAMESPACE_SET, "own KEDA",
     "choosing its own namespaces: only the controller writes the set"),
    ("keda-operator", "create", "rolebindings.rbac.authorization.k8s.io", "own KEDA",
     "granting itself or the controller more"),
    ("keda-operator", "patch", "rolebindings.rbac.authorization.k8s.io/keda-tenancy-controller",
     "own KEDA", "changing the grant"),
]  # fmt: skip


def platform_resolve(where: str) -> str:
    """A platform row's namespace: the platform tenant's, the other tenant's is alpha's."""
    return {
        "own apps": PLATFORM_APPS,
        "own KEDA": f"keda-{PLATFORM_TENANT}",
        "other KEDA": f"keda-{TENANTS[0]}",
        "cluster": "",
    }.get(where, where)


def platform_checks() -> list[Check]:
    """The platform rows for the controller (router namespace) and gamma's operator."""
    subjects = {
        CONTROLLER: f"system:serviceaccount:{ROUTER_NAMESPACE}:{CONTROLLER}",
        "keda-operator": f"system:serviceaccount:keda-{PLATFORM_TENANT}:keda-operator",
    }

    def named(resource: str) -> str:
        role = f"keda-tenancy-{PLATFORM_TENANT}-operator"
        return resource.replace("OPERATOR_ROLE", role).replace("TENANT", PLATFORM_TENANT)

    out = [
        Check(subjects[row.who], row.verb, named(row.resource), platform_resolve(row.where),
              row.subresource, True, f"{row.who} {row.verb} {row.resource} {row.where}")
        for row in PLATFORM_NEEDS
    ]  # fmt: skip
    out += [
        Check(subjects[who], verb, named(resource), platform_resolve(where), "", False,
              f"{who} {verb} {resource} {where}")
        for who, verb, resource, where, _why in PLATFORM_NEVER
    ]  # fmt: skip
    # What no identity may do holds for the controller too; its RoleBinding create is bounded
    # by the admission policy instead, as the binding managers' is.
    out += [
        Check(subjects[CONTROLLER], verb, resource, platform_resolve(resolve(where, None)),
              subresource, False, f"{CONTROLLER} {verb} {resource} {where}")
        for verb, resource, where, subresource, _why in NEVER
        if (verb, resource, where) != ("create", "rolebindings.rbac.authorization.k8s.io", "kube-system")
    ]  # fmt: skip
    return out


def platform_markdown() -> str:
    """deploy/README.md's table of the platform layout's rights (yes) and bounds (no)."""
    lines = [
        "| identity | may | resource | where | why |",
        "|---|---|---|---|---|",
    ]

    def shown(resource: str) -> str:
        return resource.replace("OPERATOR_ROLE", "keda-tenancy-<tenant>-operator").replace(
            "TENANT", "<tenant>"
        )

    for row in PLATFORM_NEEDS:
        lines.append(
            f"| `{row.who}` | yes: {row.verb} | `{shown(row.resource)}` | {row.where} | {row.why} |"
        )
    for who, verb, resource, where, why in PLATFORM_NEVER:
        lines.append(f"| `{who}` | no: {verb} | `{shown(resource)}` | {where} | {why} |")
    return "\n".join(lines)
