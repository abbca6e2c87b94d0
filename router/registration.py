"""Backends that register themselves: labelled ConfigMaps in namespaces the platform declared.

    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: team-a-prometheus-adapter
      namespace: team-a                          # one of --registration-namespaces
      labels: {keda-tenancy.io/backend-registration: "true"}
    data:
      name: prometheus-adapter                   # DNS-1123 label
      address: https://prometheus-adapter.team-a.svc:443
      serverName: prometheus-adapter.team-a.svc  # optional: TLS name when not the host
      caKey: ca.crt                              # the key of this ConfigMap holding the CA
      ca.crt: "-----BEGIN CERTIFICATE-----..."
      tenant: team-a                             # required in a namespace no tenant owns
      default: "true"                            # the tenant's upstream instead of the template
      metricName: "prometheus-.*"                # or: a rule for these metrics of the tenant

Who a registration serves is decided from where it is, never only from what it says: in a
namespace tenant T owns it serves T (a `tenant` naming anyone else is ignored), and its address
must be a Service in a namespace T owns (`<svc>.<ns>.svc[.cluster.local]`), so a tenant cannot
point its requests at another tenant's server; in a declared namespace no tenant owns (the
platform's), `tenant` says whom it serves. A registration only ever routes its tenant's
namespaces. Everything ignored is counted by reason
(`keda_tenancy_router_registrations_ignored_total`) and logged once.

Its place in the evaluation order (router.upstream_rules): a `metricName` registration is one
more rule of its tenant, after the rules file's; a `default` one replaces the tenant's URL
template (or tenancy file) upstream. Of two defaults for one tenant the first by namespace and
name wins; the other is ignored as a duplicate.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from router.backends import Backend, origin
from router.metrics import PREFIX
from router.upstream_rules import RoutingRule
from tenancy_common import tls
from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.tenancy import Decision, TenancyRule, Verdict
from tenancy_common.tenancy_config import ConfigError

logger = logging.getLogger(__name__)

REGISTRATION_LABEL = "keda-tenancy.io/backend-registration"
TRUST_PREFIX = "\0registration/"
"""Trust keys of registered backends (a NUL is in no file path: never a tenant's caFile)."""
_SERVICE_HOST = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?"
)
_KEYS = {"name", "address", "serverName", "caKey", "tenant", "default", "metricName"}


@dataclass(frozen=True, slots=True)
class Registration:
    namespace: str
    object_name: str
    name: str
    backend: Backend
    ca_pem: bytes
    tenant: TenantName | None
    default: bool
    metric: re.Pattern[str] | None


class RejectedError(ValueError):
    """A registration that is ignored; `reason` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_registration(obj: Mapping[str, Any]) -> Registration:
    meta = obj.get("metadata") or {}
    namespace, object_name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    data = obj.get("data") or {}
    ca_key = data.get("caKey") or "ca.crt"
    unknown = set(data) - _KEYS - {ca_key}
    if unknown:
        raise RejectedError("invalid", f"unknown keys {sorted(unknown)}")
    name = data.get("name", "")
    if not is_dns1123_label(name):
        raise RejectedError("invalid", f"name {name!r} is not a DNS-1123 label")
    ca_pem = str(data.get(ca_key, "")).encode()
    try:
        tls.parse_certificates(ca_pem)
        backend = Backend(
            name=f"registration/{namespace}/{name}",
            origin=origin(str(data.get("address", "")), "address"),
            server_name=data.get("serverName") or None,
            ca_file=f"{TRUST_PREFIX}{namespace}/{name}",
        )
        metric = re.compile(data["metricName"]) if data.get("metricName") else None
    except (ConfigError, ValueError, re.error) as exc:
        raise RejectedError("invalid", str(exc)) from exc
    default = data.get("default", "false")
    if default not in ("true", "false"):
        raise RejectedError("invalid", 'default must be "true" or "false"')
    if (default == "true") == (metric is not None):
        raise RejectedError("invalid", 'give either default: "true" or a metricName')
    tenant = data.get("tenant") or None
    if tenant is not None and not is_dns1123_label(tenant):
        raise RejectedError("invalid", f"tenant {tenant!r} is not a DNS-1123 label")
    return Registration(
        namespace,
        object_name,
        name,
        backend,
        ca_pem,
        TenantName(tenant) if tenant else None,
        default == "true",
        metric,
    )


class RegistrationStore:
    """The registration ConfigMaps of one declared namespace, kept by `watch_objects`."""

    def __init__(self, namespace: str, on_change: Callable[[], None]) -> None:
        self.namespace = namespace
        self.objects: dict[str, Mapping[str, Any]] = {}
        self.synced = False
        self._on_change = on_change

    def replace(self, items: Iterable[Mapping[str, Any]]) -> bool:
        self.objects = {str(obj["metadata"]["name"]): obj for obj in items}
        self.synced = True
        self._on_change()
        return True

    def apply(self, event_type: str, item: Mapping[str, Any]) -> bool:
        name = str(item["metadata"]["name"])
        if event_type == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = item
        self._on_change()
        return True

    def confirm_current(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.objects)


@dataclass
class _View:
    rules: dict[TenantName, tuple[RoutingRule, ...]] = field(default_factory=dict)
    defaults: dict[TenantName, Backend] = field(default_factory=dict)
    backends: dict[str, Backend] = field(default_factory=dict)
    ca: dict[str, bytes] = field(default_factory=dict)


class Registrations:
    """Every declared namespace's registrations, and what they route once ownership is known."""

    def __init__(
        self,
        namespaces: frozenset[str],
        tenancy: TenancyRule,
        registry: CollectorRegistry,
        on_change: Callable[[], None],
    ) -> None:
        self.stores = {ns: RegistrationStore(ns, on_change) for ns in sorted(namespaces)}
        self._tenancy = tenancy
        self._view: _View | None = None
        self._counted: set[tuple[str, str, str, str]] = set()
        self._contexts: dict[str, tuple[bytes, object, ssl.SSLContext]] = {}
        self._ca: dict[str, bytes] = {}  # of the last view: kept while it is rebuilt
        self.ignored = Counter(
            PREFIX + "registrations_ignored",
            "Backend registrations ignored, by reason (invalid, undeclared-namespace, "
            "foreign-tenant, address-outside-tenant, unknown-tenant, conflict, duplicate)",
            ["reason"],
            registry=registry,
        )
        for reason in ("invalid", "foreign-tenant", "address-outside-tenant", "duplicate"):
            self.ignored.labels(reason)

    @property
    def synced(self) -> bool:
        return all(store.synced for store in self.stores.values())

    def invalidate(self) -> None:
        self._view = None

    def view(self, decide: Callable[[NamespaceName], Decision]) -> _View:
        if self._view is None:
            self._view = self._build(decide)
            self._ca = self._view.ca
        return self._view

    def _build(self, decide: Callable[[NamespaceName], Decision]) -> _View:
        view = _View()
        rules: dict[TenantName, list[RoutingRule]] = {}
        for namespace, store in self.stores.items():
            for object_name, obj in sorted(store.objects.items()):
                try:
                    registration, tenant = self._admit(namespace, obj, decide)
                    if registration.default and tenant in view.defaults:
                        raise RejectedError("duplicate", f"tenant {tenant} has a default already")
                except RejectedError as exc:
                    self._count(namespace, object_name, obj, exc)
                    continue
                backend = registration.backend
                view.backends[backend.name] = backend
                view.ca[backend.ca_file] = registration.ca_pem
                if registration.default:
                    view.defaults[tenant] = backend
                else:
                    rules.setdefault(tenant, []).append(
                        RoutingRule(
                            name=backend.name,
                            upstream=backend.name,
                            tenant=tenant,
                            metric=registration.metric,
                        )
                    )
        view.rules = {tenant: tuple(listed) for tenant, listed in rules.items()}
        present = {
            (namespace, name) for namespace, store in self.stores.items() for name in store.objects
        }
        self._counted = {key for key in self._counted if key[:2] in present}
        return view

    def _admit(
        self,
        namespace: str,
        obj: Mapping[str, Any],
        decide: Callable[[NamespaceName], Decision],
    ) -> tuple[Registration, TenantName]:
        if (obj.get("metadata") or {}).get("namespace") != namespace:
            raise RejectedError("undeclared-namespace", "not in the namespace it was listed in")
        registration = parse_registration(obj)
        decision = decide(NamespaceName(namespace))
        if decision.tenant is not None:
            if registration.tenant not in (None, decision.tenant):
                raise RejectedError(
                    "foreign-tenant",
                    f"names tenant {registration.tenant} in a namespace of {decision.tenant}",
                )
            host = registration.backend.origin.raw_host or ""
            match = _SERVICE_HOST.fullmatch(host)
            owner = decide(NamespaceName(match["ns"])).tenant if match else None
            if owner != decision.tenant:
                raise RejectedError(
                    "address-outside-tenant",
                    f"address {host} is not a Service in a namespace of {decision.tenant}",
                )
            return registration, decision.tenant
        if decision.verdict is not Verdict.UNMAPPED:
            raise RejectedError("conflict", f"namespace {namespace} has no single owner")
        if registration.tenant is None:
            raise RejectedError(
                "invalid", "a registration in a platform namespace names its tenant"
            )
        problem = self._tenancy.never_owns(registration.tenant)
        if problem is not None:
            raise RejectedError("unknown-tenant", problem)
        return registration, registration.tenant

    def _count(
        self, namespace: str, object_name: str, obj: Mapping[str, Any], exc: RejectedError
    ) -> None:
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        key = (namespace, object_name, version, exc.reason)
        if key in self._counted:
            return  # the view is rebuilt on every change: count each version once
        self._counted.add(key)
        self.ignored.labels(exc.reason).inc()
        logger.warning(
            "backend registration ignored",
            extra={
                "namespace": namespace,
                "configmap": object_name,
                "reason": exc.reason,
                "error": str(exc),
            },
        )

    def context(
        self, key: str, client: tuple[ssl.SSLContext, bytes | None], client_pem: tuple[bytes, ...]
    ) -> ssl.SSLContext:
        """The client TLS context of a registered backend: its own CA, the router's client
        certificate; the same object while neither changes (a new one rebuilds its pool)."""
        ca = self._ca.get(key)
        if ca is None:
            raise tls.NotYetAvailableError(f"registration {key[len(TRUST_PREFIX) :]} is gone")
        cached = self._contexts.get(key)
        if cached is not None and cached[0] == ca and cached[1] is client:
            return cached[2]
        cert, private_key = (client_pem[0], client_pem[1]) if client[1] else (None, None)
        context = tls.client_context(cert, private_key, ca)
        self._contexts[key] = (ca, client, context)
        return context
