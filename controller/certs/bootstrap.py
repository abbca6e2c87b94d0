"""`keda-tenancy-certs`: the certificates of the default install (no cert-manager), made once
and renewed in Secrets at run time, so `helm template` never generates keys and a GitOps sync
never changes them.

It keeps, in its own namespace, three separate CAs (the APIService serving CA, the router's
upstream client CA, the tenants' serving CA) and the router's two leaves; it writes the
APIService caBundle with its own server-side-apply field manager (the chart leaves that field
out); and it publishes the CAs' public certificates in a ConfigMap. In every tenant namespace
whose release granted it (a Role there), it keeps that tenant's own internal CA and KEDA
certificate, the metrics server's serving certificate and the router client CA's public
certificate: tenants never get a key that signs for the router or for another tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes_asyncio.client import (
    AdmissionregistrationV1Api,
    ApiClient,
    ApiregistrationV1Api,
    CoreV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.certs.failures import (
    FailingKeys,
    SecretFailedError,
    SecretTypeError,
    classify,
    event_reason,
)
from controller.certs.pki import (
    Authority,
    LeafRequest,
    SecretData,
    issue,
    new_authority,
    not_after,
    reissue_reason,
)
from controller.certs.watch import NewNamespaces, serve_new, wait_for_any
from tenancy_common import health
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.kube import make_api_client, read_json
from tenancy_common.lifecycle import install_stop_signals, run_event_loop, run_roots
from tenancy_common.logs import configure_logging
from tenancy_common.namespace_cache import NamespaceCache
from tenancy_common.namespace_watch import watch_namespaces

logger = logging.getLogger(__name__)

FIELD_MANAGER = "keda-tenancy-certs"
MANAGED_BY = {"app.kubernetes.io/managed-by": "keda-tenancy-certs"}
# The only Secret type it writes (and, by the chart's admission policy, may write).
TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 # a type, no password
TENANT_AUTHORITY = "tenant"  # a tenant certificate's `authority`: that tenant's own CA


# --- the spec (a YAML file the chart renders) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthoritySpec:
    secret: str
    common_name: str
    validity: datetime.timedelta


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    secret: str
    authority: str
    request: LeafRequest
    # Secret key -> authority whose public certificate is stored there (e.g. ca.crt).
    trust: Mapping[str, str] = field(default_factory=dict)

    def for_tenant(self, tenant: str, namespace: str) -> CertificateSpec:
        def fill(text: str) -> str:
            return text.replace("{tenant}", tenant).replace("{namespace}", namespace)

        request = self.request
        return CertificateSpec(
            secret=fill(self.secret),
            authority=self.authority,
            request=LeafRequest(
                common_name=fill(request.common_name),
                dns_names=tuple(fill(n) for n in request.dns_names),
                server=request.server,
                client=request.client,
                validity=request.validity,
                renew_before=request.renew_before,
            ),
            trust=self.trust,
        )


@dataclass(frozen=True, slots=True)
class TenantsSpec:
    namespace_pattern: re.Pattern[str]
    authority: AuthoritySpec
    certificates: tuple[CertificateSpec, ...]
    webhook_configuration: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    namespace: str
    authorities: Mapping[str, AuthoritySpec]
    certificates: tuple[CertificateSpec, ...] = ()
    trust_configmap: str = ""
    trust_keys: Mapping[str, str] = field(default_factory=dict)
    apiservices: Mapping[str, str] = field(default_factory=dict)  # name -> authority
    tenants: TenantsSpec | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Spec:
        """From the spec file's mapping; ValueError names what is wrong."""

        def duration(value: Any, what: str) -> datetime.timedelta:
            try:
                return datetime.timedelta(seconds=parse_duration(str(value)))
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from exc

        def authority(raw: Mapping[str, Any], what: str) -> AuthoritySpec:
            return AuthoritySpec(
                secret=str(raw["secret"]),
                common_name=str(raw["commonName"]),
                validity=duration(raw.get("validity", "87600h"), f"{what}.validity"),
            )

        def certificate(raw: Mapping[str, Any], known: set[str], what: str) -> CertificateSpec:
            usages = set(raw.get("usages", []))
            if not usages or usages - {"server", "client"}:
                raise ValueError(f"{what}.usages must be server and/or client, got {usages}")
            referenced = {raw["authority"], *dict(raw.get("trust") or {}).values()}
            if unknown := referenced - known:
                raise ValueError(f"{what} names unknown authorities {sorted(unknown)}")
            request = LeafRequest(
                common_name=str(raw["commonName"]),
                dns_names=tuple(str(n) for n in raw.get("dnsNames", [])),
                server="server" in usages,
                client="client" in usages,
                validity=duration(raw.get("validity", "2160h"), f"{what}.validity"),
                renew_before=duration(raw.get("renewBefore", "1080h"), f"{what}.renewBefore"),
            )
            if request.renew_before >= request.validity:
                raise ValueError(f"{what}.renewBefore must be shorter than its validity")
            return CertificateSpec(
                secret=str(raw["secret"]),
                authority=str(raw["authority"]),
                request=request,
                trust={str(k): str(v) for k, v in dict(raw.get("trust") or {}).items()},
            )

        try:
            authorities = {
                str(k): authority(v, f"authorities.{k}")
                for k, v in dict(raw.get("authorities") or {}).items()
            }
            known = set(authorities)
            certificates = tuple(
                certificate(c, known, f"certificates[{i}]")
                for i, c in enumerate(raw.get("certificates") or [])
            )
            trust = dict(raw.get("trustConfigMap") or {})
            trust_keys = {str(k): str(v) for k, v in dict(trust.get("keys") or {}).items()}
            apiservices = {
                str(a["name"]): str(a["authority"]) for a in raw.get("apiServices") or []
            }
            if unknown := (set(trust_keys.values()) | set(apiservices.values())) - known:
                raise ValueError(f"unknown authorities {sorted(unknown)}")
            tenants = None
            if raw_tenants := raw.get("tenants"):
                pattern = re.compile(str(raw_tenants["namespacePattern"]))
                if "tenant" not in pattern.groupindex:
                    raise ValueError("tenants.namespacePattern needs a (?P<tenant>...) group")
                tenants = TenantsSpec(
                    namespace_pattern=pattern,
                    authority=authority(raw_tenants["authority"], "tenants.authority"),
                    certificates=tuple(
                        certificate(c, known | {TENANT_AUTHORITY}, f"tenants.certificates[{i}]")
                        for i, c in enumerate(raw_tenants.get("certificates") or [])
                    ),
                    webhook_configuration=str(raw_tenants.get("webhookConfiguration") or ""),
                )
            return cls(
                namespace=str(raw["namespace"]),
                authorities=authorities,
                certificates=certificates,
                trust_configmap=str(trust.get("name") or ""),
                trust_keys=trust_keys,
                apiservices=apiservices,
                tenants=tenants,
            )
        except (KeyError, TypeError, AttributeError, re.error) as exc:
            raise ValueError(f"invalid certificates spec: {exc!r}") from exc


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertsConfig:
    spec_file: str
    kubeconfig: str | None
    resync_interval_s: float
    once: bool
    retry_initial_s: float
    retry_max_s: float
    health_bind_address: str
    health_port: int
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> CertsConfig:
        parser = argparse.ArgumentParser(
            prog="keda-tenancy-certs",
            description="Create once and renew the keda-tenancy certificates in Secrets.",
        )
        parser.add_argument("--spec-file", required=True, help="what to keep (YAML)")
        parser.add_argument("--kubeconfig", default="", help="default: in-cluster")
        parser.add_argument(
            "--resync-interval",
            default="1m",
            help="how often everything is checked (new tenants, renewals)",
        )
        parser.add_argument("--once", action="store_true", help="reconcile once and exit")
        parser.add_argument(
            "--retry-initial",
            default="1s",
            help="first retry of a namespace that failed (doubling up to --retry-max)",
        )
        parser.add_argument(
            "--retry-max", default="5m", help="longest delay between retries of one namespace"
        )
        parser.add_argument("--health-bind-address", default="0.0.0.0")  # noqa: S104 # a pod's port
        parser.add_argument("--health-port", type=int, default=8080)
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--log-format", default="json", choices=["json", "text"])
        apply_env_defaults(parser, environ, "KEDA_TENANCY_CERTS_")
        args = parser.parse_args(list(argv))
        durations = {}
        for flag in ("resync_interval", "retry_initial", "retry_max"):
            try:
                durations[flag] = parse_duration(getattr(args, flag))
            except ValueError as exc:
                parser.error(f"--{flag.replace('_', '-')}: {exc}")
        if durations["retry_initial"] > durations["retry_max"]:
            parser.error("--retry-initial must not exceed --retry-max")
        return cls(
            spec_file=args.spec_file,
            kubeconfig=args.kubeconfig or None,
            resync_interval_s=durations["resync_interval"],
            once=args.once,
            retry_initial_s=durations["retry_initial"],
            retry_max_s=durations["retry_max"],
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            log_level=args.log_level,
            log_format=args.log_format,
        )


# --- metrics ---------------------------------------------------------------------------------


class CertsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        prefix = "keda_tenancy_certs_"
        self.expiry = Gauge(
            prefix + "certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of each certificate kept, by the Secret's namespace and name.",
            # Not "namespace": Prometheus' target label of that name would rename it.
            ["secret_namespace", "secret"],
            registry=registry,
        )
        self.issued = Counter(
            prefix + "issued",
            "Certificates issued, by reason (missing, renewal-due, ...).",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            prefix + "reconcile_errors",
            "Failed attempts, of any namespace (each is retried with its own backoff).",
            registry=registry,
        )
        self.namespace_errors = Counter(
            prefix + "namespace_errors",
            "Failed attempts by namespace (the router's or a tenant's) and reason.",
            ["secret_namespace", "reason"],
            registry=registry,
        )
        self.failing = Gauge(
            prefix + "failing_namespaces",
            "Namespaces whose last attempt failed (retried with backoff).",
            registry=registry,
        )
        self.tenants = Gauge(
            prefix + "tenants",
            "Tenant namespaces whose certificates are kept (the release granted it).",
            registry=registry,
        )


# --- Kubernetes I/O --------------------------------------------------------------------------


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def _unb64(data: Mapping[str, str] | None) -> SecretData:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


class _NotGrantedError(Exception):
    """The namespace's release did not grant us (403 on our first read): not a tenant of ours."""


class CertsController:
    """A full pass keeps every Secret of the spec; the loop repeats it and retries a failed
    namespace sooner, with that namespace's own backoff. A namespace's failure (a malformed
    Secret, a refused write, an API error) stays with it: logged, counted, an Event on the
    Secret; the other namespaces go on."""

    def __init__(
        self,
        api: ApiClient,
        spec: Spec,
        metrics: CertsMetrics,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        failing: FailingKeys | None = None,
    ) -> None:
        self._core = CoreV1Api(api)
        self._registration = ApiregistrationV1Api(api)
        self._admission = AdmissionregistrationV1Api(api)
        self._spec = spec
        self._metrics = metrics
        self._clock = clock
        self.failing = failing if failing is not None else FailingKeys()
        self._error_series: dict[str, set[str]] = {}
        self.last_error: str | None = "not reconciled yet"
        self.listed: frozenset[str] = frozenset()
        # The tenant namespaces that granted us, from full passes and the watch alike, so the
        # `tenants` gauge counts a tenant the watch served before the next pass.
        self._served: set[str] = set()
        """The tenant namespaces the last full pass listed (the watch serves the others)."""

    async def reconcile(self) -> None:
        """The full pass: the router's namespace, then every tenant namespace."""
        now = self._clock()
        spec = self._spec
        authorities = await self._system(now)
        if authorities is None or spec.tenants is None:
            return
        try:
            namespaces = await read_json(self._core.list_namespace(_preload_content=False))
        except Exception as exc:  # retried with the router namespace's backoff
            await self._failed(spec.namespace, exc, now)
            return
        tenants: dict[str, str] = {}
        for item in namespaces.get("items", []):
            namespace = item["metadata"]["name"]
            match = spec.tenants.namespace_pattern.fullmatch(namespace)
            if (
                match is not None
                and namespace != spec.namespace
                and item.get("status", {}).get("phase") != "Terminating"
            ):
                tenants[namespace] = match["tenant"]
        self.listed = frozenset(tenants)
        # Gone (or no longer a tenant's): nothing to retry, no series to keep.
        for key in self.failing:
            if key != spec.namespace and key not in tenants:
                self._forget(key)
        self._served &= set(tenants)
        for namespace, tenant in tenants.items():
            if self.failing.waiting(namespace, now):
                self._served.add(namespace)  # its own retry comes first
                continue
            await self._tenant_key(spec.tenants, tenant, namespace, authorities, now)
        self._metrics.tenants.set(len(self._served))
        self._metrics.failing.set(len(self.failing))

    async def retry_due(self) -> None:
        """Retry the failed namespaces whose backoff has run out (between full passes)."""
        now = self._clock()
        spec = self._spec
        due = self.failing.due(now)
        if not due or self.failing.waiting(spec.namespace, now):
            return
        authorities = await self._system(now)
        if authorities is not None and spec.tenants is not None:
            for namespace in due:
                match = spec.tenants.namespace_pattern.fullmatch(namespace)
                if namespace == spec.namespace or match is None:
                    continue
                await self._tenant_key(spec.tenants, match["tenant"], namespace, authorities, now)
        self._metrics.failing.set(len(self.failing))

    async def reconcile_namespaces(self, namespaces: Sequence[str]) -> list[str]:
        """Only `namespaces` (new ones the watch saw), between full passes; returns those with
        no grant (yet). A namespace waiting for its own retry is left to it, and all wait
        while the router namespace does (they need its CAs)."""
        now = self._clock()
        spec = self._spec
        if spec.tenants is None or self.failing.waiting(spec.namespace, now):
            return []
        authorities = await self._system(now)
        if authorities is None:
            return []
        not_granted = []
        for namespace in namespaces:
            match = spec.tenants.namespace_pattern.fullmatch(namespace)
            if match is None or namespace == spec.namespace or self.failing.waiting(namespace, now):
                continue
            if not await self._tenant_key(
                spec.tenants, match["tenant"], namespace, authorities, now
            ):
                not_granted.append(namespace)
        self._metrics.failing.set(len(self.failing))
        return not_granted

    def forget(self, namespace: str) -> None:
        """A namespace gone: no retry, no metric series left for it."""
        if namespace != self._spec.namespace:
            self._forget(namespace)
            self._served.discard(namespace)
            self._metrics.tenants.set(len(self._served))

    def next_retry_in_s(self) -> float | None:
        # While the router namespace fails, the tenants wait for it (they need its CAs).
        system = self.failing.get(self._spec.namespace)
        at = system.retry_at if system is not None else self.failing.next_retry()
        return None if at is None else max(0.0, (at - self._clock()).total_seconds())

    def tenant_failures(self) -> str | None:
        """For /readyz's body (a warning: one tenant's failure takes no router pod out)."""
        keys = [k for k in self.failing if k != self._spec.namespace]
        if not keys:
            return None
        return ", ".join(f"{k}: {state.reason}" for k in keys if (state := self.failing.get(k)))

    async def _system(self, now: datetime.datetime) -> dict[str, Authority] | None:
        """The router namespace's key. None when its CAs cannot be had: the tenants' leaves
        need them, so they wait for its retry."""
        spec = self._spec
        try:
            authorities = {
                name: await self._authority(spec.namespace, a, now)
                for name, a in spec.authorities.items()
            }
        except Exception as exc:  # one key's failure: recorded, retried
            await self._failed(spec.namespace, exc, now)
            return None
        try:
            for certificate in spec.certificates:
                await self._leaf(spec.namespace, certificate, authorities, now)
            if spec.trust_configmap:
                await self._trust_configmap(authorities)
            for name, authority in spec.apiservices.items():
                await self._apiservice_ca(name, authorities[authority])
        except Exception as exc:
            await self._failed(spec.namespace, exc, now)
        else:
            self._succeeded(spec.namespace)
        return authorities

    async def _tenant_key(
        self,
        spec: TenantsSpec,
        tenant: str,
        namespace: str,
        authorities: Mapping[str, Authority],
        now: datetime.datetime,
    ) -> int:
        """One tenant namespace; 1 when it is ours (granted), failing or not."""
        try:
            await self._tenant(spec, tenant, namespace, authorities, now)
        except _NotGrantedError:
            # Not a tenant release (or one that did not grant us): nothing of ours there.
            logger.debug("no grant in %s", namespace, extra={"namespace": namespace})
            self._forget(namespace)
            self._served.discard(namespace)
            self._metrics.tenants.set(len(self._served))
            return 0
        except Exception as exc:  # one key's failure: recorded, retried
            await self._failed(namespace, exc, now)
            outcome = 1
        else:
            self._succeeded(namespace)
            outcome = 1
        self._served.add(namespace)
        self._metrics.tenants.set(len(self._served))
        return outcome

    async def _failed(self, namespace: str, exc: Exception, now: datetime.datetime) -> None:
        reason, message = classify(exc)
        secret = exc.secret if isinstance(exc, SecretFailedError) else ""
        state, emit = self.failing.failed(namespace, secret, reason, message, now)
        self._metrics.errors.inc()
        self._metrics.namespace_errors.labels(namespace, reason).inc()
        self._error_series.setdefault(namespace, set()).add(reason)
        self._metrics.failing.set(len(self.failing))
        retry_in_s = (state.retry_at - now).total_seconds()
        logger.warning(
            "certificates of %s failed (%s), retry in %.0fs: %s",
            namespace,
            reason,
            retry_in_s,
            message,
            exc_info=reason == "internal",
            extra={
                "namespace": namespace,
                "secret": secret,
                "reason": reason,
                "failures": state.failures,
                "retry_in_s": retry_in_s,
            },
        )
        if namespace == self._spec.namespace:
            self.last_error = f"{reason}: {message}"[:300]
        if emit and secret:
            await self._event(namespace, secret, reason, message, now)

    def _succeeded(self, namespace: str) -> None:
        state = self.failing.forget(namespace)
        if namespace == self._spec.namespace:
            self.last_error = None
        if state is not None:
            logger.info(
                "certificates of %s recovered after %d failed attempts",
                namespace,
                state.failures,
                extra={"namespace": namespace, "failures": state.failures},
            )
            self._metrics.failing.set(len(self.failing))

    def _forget(self, namespace: str) -> None:
        """Gone, or not ours: no retry, and no metric series left behind for it."""
        self.failing.forget(namespace)
        for reason in self._error_series.pop(namespace, set()):
            with contextlib.suppress(KeyError):
                self._metrics.namespace_errors.remove(namespace, reason)
        self._metrics.failing.set(len(self.failing))

    async def _event(
        self, namespace: str, secret: str, reason: str, message: str, now: datetime.datetime
    ) -> None:
        """A Warning Event on the Secret (`kubectl describe secret`, `kubectl get events`).
        Best effort: a release that does not grant events only loses this."""
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{secret}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": secret,
                "namespace": namespace,
            },
            "reason": event_reason(reason),
            "message": message[:1000],
            "type": "Warning",
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        if pod := os.environ.get("HOSTNAME"):
            body["reportingInstance"] = pod
        try:
            await read_json(
                self._core.create_namespaced_event(namespace, body, _preload_content=False)  # type: ignore[arg-type] # the client sends dicts as they are
            )
        except Exception as exc:  # the log line and the metric remain
            logger.debug("no Event in %s: %s", namespace, exc, extra={"namespace": namespace})

    async def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret = await read_json(
                self._core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if (kind := secret.get("type")) != TLS_SECRET_TYPE:
            raise SecretTypeError(
                f"the Secret has type {kind}, not {TLS_SECRET_TYPE}: keda-tenancy-certs keeps"
                " only its own; delete it to have it made anew"
            )
        return secret

    async def _write_secret(
        self, namespace: str, name: str, data: SecretData, existing: dict[str, Any] | None
    ) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "type": TLS_SECRET_TYPE,
            "data": _b64(data),
        }
        if existing is None:
            await read_json(
                self._core.create_namespaced_secret(namespace, body, _preload_content=False)  # type: ignore[arg-type] # the client sends dicts as they are
            )
            return
        # Replace with the read resourceVersion: a concurrent writer makes this a 409, and the
        # next pass starts from what that writer stored.
        metadata = existing["metadata"]
        body["metadata"]["resourceVersion"] = metadata["resourceVersion"]
        body["metadata"]["labels"] = {**(metadata.get("labels") or {}), **MANAGED_BY}
        if metadata.get("annotations"):
            body["metadata"]["annotations"] = metadata["annotations"]
        await read_json(
            self._core.replace_namespaced_secret(name, namespace, body, _preload_content=False)  # type: ignore[arg-type] # the client sends dicts as they are
        )

    async def _authority(
        self, namespace: str, spec: AuthoritySpec, now: datetime.datetime
    ) -> Authority:
        """The CA in `spec.secret`, created once; never replaced (everything trusts it): a
        malformed one is reported, not overwritten."""
        try:
            return await self._kept_authority(namespace, spec, now)
        except SecretFailedError:
            raise
        except Exception as exc:
            raise SecretFailedError(spec.secret, exc) from exc

    async def _kept_authority(
        self, namespace: str, spec: AuthoritySpec, now: datetime.datetime
    ) -> Authority:
        existing = await self._read_secret(namespace, spec.secret)
        if existing is not None:
            return Authority.from_data(_unb64(existing.get("data")))
        data = new_authority(spec.common_name, spec.validity, now)
        try:
            await self._write_secret(namespace, spec.secret, data, None)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Another replica made it first: use theirs (read once: no loop on a 409 that
            # is not "it exists").
            made = await self._read_secret(namespace, spec.secret)
            if made is None:
                raise
            return Authority.from_data(_unb64(made.get("data")))
        logger.info("created CA %s/%s", namespace, spec.secret, extra={"secret": spec.secret})
        self._metrics.issued.labels("new-authority").inc()
        self._metrics.expiry.labels(namespace, spec.secret).set(
            not_after(data["tls.crt"]).timestamp()
        )
        return Authority.from_data(data)

    async def _leaf(
        self,
        namespace: str,
        spec: CertificateSpec,
        authorities: Mapping[str, Authority],
        now: datetime.datetime,
    ) -> None:
        try:
            await self._kept_leaf(namespace, spec, authorities, now)
        except Exception as exc:
            raise SecretFailedError(spec.secret, exc) from exc

    async def _kept_leaf(
        self,
        namespace: str,
        spec: CertificateSpec,
        authorities: Mapping[str, Authority],
        now: datetime.datetime,
    ) -> None:
        authority = authorities[spec.authority]
        trust = {key: authorities[name].cert_pem for key, name in spec.trust.items()}
        existing = await self._read_secret(namespace, spec.secret)
        stored = _unb64(existing.get("data")) if existing else None
        reason = reissue_reason(stored, spec.request, authority, now)
        if reason is None:
            assert stored is not None
            wanted = {**stored, **trust}
            if wanted != stored:
                await self._write_secret(namespace, spec.secret, wanted, existing)
            self._metrics.expiry.labels(namespace, spec.secret).set(
                not_after(stored["tls.crt"]).timestamp()
            )
            return
        data = {**issue(authority, spec.request, now), **trust}
        await self._write_secret(namespace, spec.secret, data, existing)
        self._metrics.issued.labels(reason).inc()
        self._metrics.expiry.labels(namespace, spec.secret).set(
            not_after(data["tls.crt"]).timestamp()
        )
        logger.info(
            "issued %s/%s (%s)",
            namespace,
            spec.secret,
            reason,
            extra={"namespace": namespace, "secret": spec.secret, "reason": reason},
        )

    async def _trust_configmap(self, authorities: Mapping[str, Authority]) -> None:
        spec = self._spec
        data = {key: authorities[name].cert_pem.decode() for key, name in spec.trust_keys.items()}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": spec.trust_configmap,
                "namespace": spec.namespace,
                "labels": dict(MANAGED_BY),
            },
            "data": data,
        }
        try:
            existing = await read_json(
                self._core.read_namespaced_config_map(
                    spec.trust_configmap, spec.namespace, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            await read_json(
                self._core.create_namespaced_config_map(
                    spec.namespace,
                    body,  # type: ignore[arg-type] # dicts are sent as they are
                    _preload_content=False,
                )
            )
            return
        if existing.get("data") != data:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await read_json(
                self._core.replace_namespaced_config_map(
                    spec.trust_configmap,
                    spec.namespace,
                    body,  # type: ignore[arg-type] # dicts are sent as they are
                    _preload_content=False,
                )
            )

    async def _apiservice_ca(self, name: str, authority: Authority) -> None:
        """caBundle by server-side apply under our own field manager: a GitOps tool applying
        the chart (which leaves the field out) does not fight over it."""
        bundle = base64.b64encode(authority.cert_pem).decode()
        current = await read_json(self._registration.read_api_service(name, _preload_content=False))
        if current.get("spec", {}).get("caBundle") == bundle:
            return
        await read_json(
            self._registration.patch_api_service(  # type: ignore[call-arg] # _content_type is read from **kwargs
                name,
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": name},
                    "spec": {"caBundle": bundle},
                },
                _content_type="application/apply-patch+yaml",
                field_manager=FIELD_MANAGER,
                force=True,
                _preload_content=False,
            )
        )
        logger.info("set the caBundle of APIService %s", name, extra={"apiservice": name})

    async def _tenant(
        self,
        spec: TenantsSpec,
        tenant: str,
        namespace: str,
        authorities: Mapping[str, Authority],
        now: datetime.datetime,
    ) -> None:
        try:
            own = await self._authority(
                namespace,
                AuthoritySpec(
                    spec.authority.secret,
                    spec.authority.common_name.replace("{tenant}", tenant),
                    spec.authority.validity,
                ),
                now,
            )
        except SecretFailedError as exc:
            if isinstance(exc.cause, ApiException) and exc.cause.status == 403:
                raise _NotGrantedError(namespace) from exc
            raise
        scoped = {**authorities, TENANT_AUTHORITY: own}
        for certificate in spec.certificates:
            await self._leaf(namespace, certificate.for_tenant(tenant, namespace), scoped, now)
        if spec.webhook_configuration:
            name = spec.webhook_configuration.replace("{tenant}", tenant)
            try:
                await self._webhook_ca(name, own)
            except Exception as exc:
                # Its caBundle is the tenant CA's certificate: the Event goes on that Secret.
                raise SecretFailedError(
                    spec.authority.secret, exc, f"webhook configuration {name}"
                ) from exc

    async def _webhook_ca(self, name: str, authority: Authority) -> None:
        try:
            current = await read_json(
                self._admission.read_validating_webhook_configuration(name, _preload_content=False)
            )
        except ApiException as exc:
            # The release runs without webhooks (and so grants nothing on them).
            if exc.status in (403, 404):
                return
            raise
        bundle = base64.b64encode(authority.cert_pem).decode()
        hooks = current.get("webhooks") or []
        if all(h.get("clientConfig", {}).get("caBundle") == bundle for h in hooks):
            return
        await read_json(
            self._admission.patch_validating_webhook_configuration(  # type: ignore[call-arg] # _content_type is read from **kwargs
                name,
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingWebhookConfiguration",
                    "metadata": {"name": name},
                    "webhooks": [
                        {"name": h["name"], "clientConfig": {"caBundle": bundle}} for h in hooks
                    ],
                },
                _content_type="application/apply-patch+yaml",
                field_manager=FIELD_MANAGER,
                force=True,
                _preload_content=False,
            )
        )
        logger.info("set the caBundle of %s", name, extra={"webhook_configuration": name})


# --- lifecycle -------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


class CertsFailedError(RuntimeError):
    """--once: some namespace's certificates could not be kept (each is in the log)."""


async def run(config: CertsConfig, stop: asyncio.Event, registry: CollectorRegistry) -> None:
    spec = Spec.parse(yaml.safe_load(await asyncio.to_thread(_read, config.spec_file)))
    metrics = CertsMetrics(registry)
    async with await make_api_client(config.kubeconfig) as api:
        failing = FailingKeys(
            datetime.timedelta(seconds=config.retry_initial_s),
            datetime.timedelta(seconds=config.retry_max_s),
        )
        controller = CertsController(api, spec, metrics, failing=failing)
        if config.once:
            await controller.reconcile()
            if failed := list(controller.failing):
                raise CertsFailedError(f"certificates failed in {', '.join(failed)}")
            return

        # Between full passes, new tenant namespaces are served as the watch sees them.
        cache = NamespaceCache()
        changed = asyncio.Event()
        new = (
            NewNamespaces(cache, spec.tenants.namespace_pattern, spec.namespace)
            if spec.tenants is not None
            else None
        )

        async def loop() -> None:
            clock = asyncio.get_running_loop().time
            while not stop.is_set():
                await controller.reconcile()
                if new is not None:
                    new.passed(controller.listed)
                next_pass = clock() + config.resync_interval_s
                # Until the next full pass, retry each failed namespace when its backoff is up
                # and serve new namespaces when the watch brings them.
                while not stop.is_set() and (left := next_pass - clock()) > 0:
                    waits = [left]
                    if (retry := controller.next_retry_in_s()) is not None:
                        waits.append(retry)
                    if new is not None and (grant := new.next_try_in_s(clock())) is not None:
                        waits.append(grant)
                    # Interruptible: SIGTERM ends the loop at once.
                    await wait_for_any((stop, changed), min(waits))
                    changed.clear()
                    if stop.is_set() or clock() >= next_pass:
                        break
                    await controller.retry_due()
                    if new is not None:
                        await serve_new(
                            new, clock(), controller.reconcile_namespaces, controller.forget
                        )

        roots = {"certificates": loop()}
        if new is not None:
            roots["namespaces"] = watch_namespaces(api, cache, stop=stop, on_change=changed.set)
        app = health.build_health_app(
            registry,
            {"certificates": lambda: controller.last_error},
            {"tenant-certificates": controller.tenant_failures},
        )
        roots["health"] = health.serve_until(
            app, config.health_bind_address, config.health_port, stop
        )
        await run_roots(roots, stop)


def main(argv: Sequence[str] | None = None) -> int:
    config = CertsConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(config.log_level, config.log_format)

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(config, stop, CollectorRegistry())

    try:
        run_event_loop(_main())
    except CertsFailedError as exc:  # --once: each failure is logged above
        logger.error("%s", exc)  # no traceback: nothing unexpected happened
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
