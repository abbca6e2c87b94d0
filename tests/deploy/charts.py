"""Render the Helm charts in deploy/charts: find helm, run `helm template`/`helm lint`, parse.

Shared by the chart tests here and by the end-to-end suite, which applies the same rendered
documents to a real kube-apiserver (`render_installation` gives the router and tenant releases
in install order, wired together the way the README installs them).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.pki import CertificateAuthority

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "deploy" / "charts"
ROUTER_CHART = CHARTS / "keda-tenancy-router"
TENANT_CHART = CHARTS / "keda-tenancy-tenant"
BUILD_SCRIPT = REPO / "tests" / "e2e" / "build" / "build.sh"
VERSIONS_ENV = REPO / "tests" / "e2e" / "build" / "versions.env"

ROUTER_RELEASE = "keda-tenancy-router"
ROUTER_NAMESPACE = "keda-tenancy-system"

Doc = dict[str, Any]


class HelmNotFound(RuntimeError):
    """No helm binary: neither $HELM, nor helm on PATH, nor the e2e build script's bin dir."""


class HelmFailed(RuntimeError):
    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"helm {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr}"
        )
        self.stderr = result.stderr
        self.returncode = result.returncode


def versions() -> dict[str, str]:
    """KUBERNETES_VERSION, KEDA_VERSION, ... from tests/e2e/build/versions.env."""
    out = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def find_helm(*, build: bool = True, timeout_s: float = 1200) -> Path:
    """$HELM, else helm on PATH, else the e2e build script's (cached) helm built from its module."""
    if env := os.environ.get("HELM"):
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmNotFound(f"HELM={env} is not an executable file")
        return path
    if found := shutil.which("helm"):
        return Path(found)
    if not build or shutil.which("go") is None:
        raise HelmNotFound(
            "no helm: set HELM, put helm on PATH, or install Go for the build script"
        )
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "helm"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise HelmNotFound(f"{BUILD_SCRIPT} helm failed:\n{result.stderr[-2000:]}")
    path = Path(lines[-1]) / "helm"
    if not path.is_file():
        raise HelmNotFound(f"{BUILD_SCRIPT} printed {lines[-1]}, which has no helm")
    return path


@dataclass(frozen=True, slots=True)
class Helm:
    path: Path
    kube_version: str = versions().get("KUBERNETES_VERSION", "v1.35.4")

    def run(
        self, args: Sequence[str], values: Mapping[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run helm; values (if any) arrive on stdin as `-f -`."""
        argv = [str(self.path), *args]
        if values is not None:
            argv += ["-f", "-"]
        return subprocess.run(
            argv,
            input=yaml.safe_dump(dict(values)) if values is not None else None,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def template_raw(
        self,
        chart: Path,
        *,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        extra_args: Iterable[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(chart), "--namespace", namespace]
        args += ["--kube-version", self.kube_version, *extra_args]
        return self.run(args, values)

    def template(
        self,
        chart: Path,
        *,
        release: str,
        namespace: str,
        values: Mapping[str, Any] | None = None,
        extra_args: Iterable[str] = (),
    ) -> list[Doc]:
        """The rendered objects, in helm's install order."""
        args = ["template", release, str(chart)]
        result = self.template_raw(
            chart, release=release, namespace=namespace, values=values, extra_args=extra_args
        )
        if result.returncode != 0:
            raise HelmFailed(args, result)
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def lint(
        self, chart: Path, *, namespace: str, values: Mapping[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = ["lint", "--strict", str(chart), "--namespace", namespace]
        return self.run([*args, "--kube-version", self.kube_version], values)


# --- what the README installs -------------------------------------------------------------


@functools.cache
def router_client_ca_pem() -> str:
    """A public CA certificate standing in for the router client CA that cert-manager issues at
    run time: with cert-manager, a tenant release is given it as router.clientCA (no key)."""
    return CertificateAuthority("keda-tenancy router client CA").cert_pem.decode()


def tenant_namespace(tenant: str) -> str:
    return f"keda-{tenant}"


@dataclass(frozen=True, slots=True)
class Installation:
    router: list[Doc]
    tenants: dict[str, list[Doc]]

    def all_docs(self) -> list[Doc]:
        return self.router + [doc for docs in self.tenants.values() for doc in docs]


def render_installation(
    helm: Helm,
    tenants: Sequence[str] = ("tenant-a", "tenant-b"),
    *,
    router_values: Mapping[str, Any] | None = None,
    tenant_values: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
) -> Installation:
    """The router release and one tenant release per tenant (in keda-<tenant>), wired up: with
    cert-manager, each tenant is given the router client CA's public certificate; without it,
    nothing (the router's keda-tenancy-certs fills the tenant's Secrets at run time)."""
    router = helm.template(
        ROUTER_CHART, release=ROUTER_RELEASE, namespace=ROUTER_NAMESPACE, values=router_values
    )
    cert_manager = bool(_get(router_values or {}, "certificates", "certManager", "enabled"))
    rendered = {}
    for tenant in tenants:
        given = tenant_values(tenant) if callable(tenant_values) else tenant_values
        values = deep_merge({"tenant": tenant}, dict(given or {}))
        if cert_manager:
            values = deep_merge(
                {
                    "certificates": {"certManager": {"enabled": True}},
                    "router": {"clientCA": router_client_ca_pem()},
                },
                values,
            )
        rendered[tenant] = helm.template(
            TENANT_CHART, release="keda", namespace=tenant_namespace(tenant), values=values
        )
    return Installation(router, rendered)


# --- looking at rendered objects -----------------------------------------------------------

CLUSTER_SCOPED_KINDS = frozenset(
    {
        "APIService",
        "CiliumClusterwideNetworkPolicy",
        "ClusterIssuer",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PriorityClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
    }
)


def is_cluster_scoped(doc: Doc) -> bool:
    return doc["kind"] in CLUSTER_SCOPED_KINDS


def key(doc: Doc) -> tuple[str, str, str, str]:
    """(apiVersion group, kind, namespace, name): what identifies an object in a cluster."""
    group = doc["apiVersion"].rpartition("/")[0]
    namespace = "" if is_cluster_scoped(doc) else doc["metadata"].get("namespace", "")
    return group, doc["kind"], namespace, doc["metadata"]["name"]


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"no {kind} {name}")


def container(deployment: Doc, name: str | None = None) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def walk(value: Any) -> Iterable[tuple[str, Any]]:
    """Every (key, value) pair in nested mappings and lists."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield k, v
            yield from walk(v)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _get(values: Mapping[str, Any], *path: str) -> Any:
    for part in path:
        if not isinstance(values, Mapping):
            return None
        values = values.get(part)  # type: ignore[assignment]
    return values
