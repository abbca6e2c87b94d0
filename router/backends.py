"""Where a tenant's requests go: the upstream URL, TLS name and CA for each tenant.

Pure: built once from the configuration and the tenancy file, then a dictionary lookup
per request. The tenant name placed into the template is always a DNS-1123 label (the
tenancy rule refuses anything else), so it cannot change the URL's structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

from tenancy_common.names import TenantName
from tenancy_common.tenancy_config import ConfigError, TenantSpec

DEFAULT_UPSTREAM_TEMPLATE = "https://keda-operator-metrics-apiserver.{tenant}.svc:443"
DEFAULT_CA = ""
"""CA key for backends verified with --upstream-ca-file."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream metrics server. `name` labels metrics and logs (the tenant)."""

    name: str
    origin: URL  # scheme://host:port, nothing else
    server_name: str | None = None  # TLS SNI/verification name when not the URL host
    ca_file: str = DEFAULT_CA


def origin(raw: str, what: str) -> URL:
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}: {raw!r} is not a URL") from exc
    if url.scheme != "https" or not url.host:
        raise ConfigError(f"{what}: {raw!r} must be an https:// URL with a host")
    if url.raw_path not in ("", "/") or url.query_string or url.fragment or url.user:
        raise ConfigError(f"{what}: {raw!r} must not have a path, query, fragment or userinfo")
    return url.origin()


class BackendResolver:
    """Tenant -> Backend, from the URL template and per-tenant overrides."""

    def __init__(
        self,
        template: str,
        overrides: Mapping[TenantName, TenantSpec],
        default_upstream: str | None,
        default_backend: Backend | None = None,
    ) -> None:
        """`default_backend`: --default-upstream with its own trust (router.upstream_rules)."""
        if "{tenant}" not in template:
            raise ConfigError("--upstream-url-template must contain {tenant}")
        try:
            origin(template.format(tenant="tenant-check"), "--upstream-url-template")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"--upstream-url-template: {exc}") from exc
        self._template = template
        self._overrides = dict(overrides)
        self._cache: dict[TenantName, Backend] = {}
        self.default = default_backend or (
            Backend("_default", origin(default_upstream, "--default-upstream"))
            if default_upstream
            else None
        )
        for tenant in self._overrides:
            self.for_tenant(tenant)  # validate overrides at start, not on first request

    def for_tenant(self, tenant: TenantName) -> Backend:
        backend = self._cache.get(tenant)
        if backend is None:
            spec = self._overrides.get(tenant, TenantSpec())
            raw = spec.upstream or self._template.format(tenant=tenant)
            backend = Backend(
                name=tenant,
                origin=origin(raw, f"upstream of tenant {tenant}"),
                server_name=spec.server_name,
                ca_file=spec.ca_file or DEFAULT_CA,
            )
            self._cache[tenant] = backend
        return backend

    def per_tenant_ca_files(self) -> set[str]:
        return {spec.ca_file for spec in self._overrides.values() if spec.ca_file}
