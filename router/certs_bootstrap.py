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

from router.certs_pki import (
    Authority,
    LeafRequest,
    SecretData,
    issue,
    new_authority,
    not_after,
    reissue_reason,
)
from tenancy_common import health
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.kube import make_api_client, read_json
from tenancy_common.lifecycle import install_stop_signals, run_event_loop, run_roots
from tenancy_common.logs import configure_logging

logger = logging.getLogger(__name__)

FIELD_MANAGER = "keda-tenancy-certs"
MANAGED_BY = {"app.kubernetes.io/managed-by": "keda-tenancy-certs"}
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
        parser.add_argument("--health-bind-address", default="0.0.0.0")  # noqa: S104 # a pod's port
        parser.add_argument("--health-port", type=int, default=8080)
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--log-format", default="json", choices=["json", "text"])
        apply_env_defaults(parser, environ, "KEDA_TENANCY_CERTS_")
        args = parser.parse_args(list(argv))
        try:
            resync = parse_duration(args.resync_interval)
        except ValueError as exc:
            parser.error(f"--resync-interval: {exc}")
        return cls(
            spec_file=args.spec_file,
            kubeconfig=args.kubeconfig or None,
            resync_interval_s=resync,
            once=args.once,
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
            "Reconciliations that failed (the next resync retries).",
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


class CertsController:
    """One reconcile pass keeps every Secret of the spec; the loop repeats it."""

    def __init__(
        self,
        api: ApiClient,
        spec: Spec,
        metrics: CertsMetrics,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._core = CoreV1Api(api)
        self._registration = ApiregistrationV1Api(api)
        self._admission = AdmissionregistrationV1Api(api)
        self._spec = spec
        self._metrics = metrics
        self._clock = clock
        self.last_error: str | None = "not reconciled yet"

    async def reconcile(self) -> None:
        now = self._clock()
        spec = self._spec
        authorities = {
            name: await self._authority(spec.namespace, a, now)
            for name, a in spec.authorities.items()
        }
        for certificate in spec.certificates:
            await self._leaf(spec.namespace, certificate, authorities, now)
        if spec.trust_configmap:
            await self._trust_configmap(authorities)
        for name, authority in spec.apiservices.items():
            await self._apiservice_ca(name, authorities[authority])
        if spec.tenants is not None:
            await self._tenants(spec.tenants, authorities, now)
        self.last_error = None

    async def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await read_json(
                self._core.read_namespaced_secret(name, namespace, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _write_secret(
        self, namespace: str, name: str, data: SecretData, existing: dict[str, Any] | None
    ) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
            "type": "kubernetes.io/tls",
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
        body["type"] = existing.get("type", "kubernetes.io/tls")
        await read_json(
            self._core.replace_namespaced_secret(name, namespace, body, _preload_content=False)  # type: ignore[arg-type] # the client sends dicts as they are
        )

    async def _authority(
        self, namespace: str, spec: AuthoritySpec, now: datetime.datetime
    ) -> Authority:
        """The CA in `spec.secret`, created once; never replaced (everything trusts it)."""
        existing = await self._read_secret(namespace, spec.secret)
        if existing is not None:
            return Authority.from_data(_unb64(existing.get("data")))
        data = new_authority(spec.common_name, spec.validity, now)
        try:
            await self._write_secret(namespace, spec.secret, data, None)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Another replica made it first: use theirs.
            return await self._authority(namespace, spec, now)
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

    async def _tenants(
        self, spec: TenantsSpec, authorities: Mapping[str, Authority], now: datetime.datetime
    ) -> None:
        namespaces = await read_json(self._core.list_namespace(_preload_content=False))
        served = 0
        for item in namespaces.get("items", []):
            namespace = item["metadata"]["name"]
            match = spec.namespace_pattern.fullmatch(namespace)
            if (
                match is None
                or namespace == self._spec.namespace
                or item.get("status", {}).get("phase") == "Terminating"
            ):
                continue
            try:
                await self._tenant(spec, match["tenant"], namespace, authorities, now)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                # Not a tenant release (or one that did not grant us): nothing of ours there.
                logger.debug("no grant in %s", namespace, extra={"namespace": namespace})
                continue
            served += 1
        self._metrics.tenants.set(served)

    async def _tenant(
        self,
        spec: TenantsSpec,
        tenant: str,
        namespace: str,
        authorities: Mapping[str, Authority],
        now: datetime.datetime,
    ) -> None:
        own = await self._authority(
            namespace,
            AuthoritySpec(
                spec.authority.secret,
                spec.authority.common_name.replace("{tenant}", tenant),
                spec.authority.validity,
            ),
            now,
        )
        scoped = {**authorities, TENANT_AUTHORITY: own}
        for certificate in spec.certificates:
            await self._leaf(namespace, certificate.for_tenant(tenant, namespace), scoped, now)
        if spec.webhook_configuration:
            await self._webhook_ca(spec.webhook_configuration.replace("{tenant}", tenant), own)

    async def _webhook_ca(self, name: str, authority: Authority) -> None:
        try:
            current = await read_json(
                self._admission.read_validating_webhook_configuration(name, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404:  # the release runs without webhooks
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


async def run(config: CertsConfig, stop: asyncio.Event, registry: CollectorRegistry) -> None:
    spec = Spec.parse(yaml.safe_load(await asyncio.to_thread(_read, config.spec_file)))
    metrics = CertsMetrics(registry)
    async with await make_api_client(config.kubeconfig) as api:
        controller = CertsController(api, spec, metrics)

        async def loop() -> None:
            while not stop.is_set():
                try:
                    await controller.reconcile()
                except (ApiException, ValueError, OSError) as exc:
                    controller.last_error = str(exc)[:300]
                    metrics.errors.inc()
                    logger.warning("reconcile failed: %s", exc)
                    if config.once:
                        raise
                if config.once:
                    return
                # Interruptible sleep: SIGTERM ends the loop at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), config.resync_interval_s)

        if config.once:
            await loop()
            return
        app = health.build_health_app(registry, {"certificates": lambda: controller.last_error})
        await run_roots(
            {
                "certificates": loop(),
                "health": health.serve_until(
                    app, config.health_bind_address, config.health_port, stop
                ),
            },
            stop,
        )


def main(argv: Sequence[str] | None = None) -> int:
    config = CertsConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(config.log_level, config.log_format)

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(config, stop, CollectorRegistry())

    run_event_loop(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
