"""router.upstream.caBundle adds CAs to the tenantServing CA the router verifies tenants with;
it never replaces it (issue 22, item 5: before, a migration that set it for a shared KEDA left
every tenant chart install unverifiable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from tests.deploy.charts import ROUTER_RELEASE, Helm, container, deep_merge, find
from tests.deploy.test_charts import CERT_MANAGER, flag, render_router
from tests.router_harness import Pki

MOUNT = "/etc/keda-tenancy"


def volumes_by_mount(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(deployment)["volumeMounts"]}


@pytest.mark.parametrize("cert_manager", [False, True], ids=["keda-tenancy-certs", "cert-manager"])
def test_ca_bundle_is_trusted_beside_the_tenant_serving_ca(
    helm: Helm, pki: Pki, tmp_path: Path, cert_manager: bool
) -> None:
    bundle = Path(pki.path("other_ca.crt")).read_text()
    values = deep_merge(
        CERT_MANAGER if cert_manager else {}, {"router": {"upstream": {"caBundle": bundle}}}
    )
    docs = render_router(helm, values)
    deployment = find(docs, "Deployment", ROUTER_RELEASE)
    args = container(deployment)["args"]
    mounts = volumes_by_mount(deployment)

    # The tenantServing CA stays where --upstream-ca-file reads it, whatever caBundle says.
    assert flag(args, "upstream-ca-file") == f"{MOUNT}/upstream-ca/ca.crt"
    tenant_serving = mounts[f"{MOUNT}/upstream-ca"]
    if cert_manager:
        trust = f"{ROUTER_RELEASE}-tenant-serving-trust"
        assert tenant_serving["secret"]["secretName"] == trust
        assert tenant_serving["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        assert find(docs, "Certificate", trust)["spec"]["secretName"] == trust
    else:
        assert tenant_serving["configMap"] == {
            "name": f"{ROUTER_RELEASE}-trust",
            "items": [{"key": "tenant-serving-ca.crt", "path": "ca.crt"}],
        }
    # The bundle is mounted beside it and given as the extra CAs.
    assert flag(args, "upstream-extra-ca-file") == f"{MOUNT}/upstream-extra-ca/ca.crt"
    extra = mounts[f"{MOUNT}/upstream-extra-ca"]
    bundle_map = find(docs, "ConfigMap", extra["configMap"]["name"])
    assert bundle_map["data"]["ca.crt"].strip() == bundle.strip()

    # The router reads both (a flag it did not know would fail here).
    local = [
        a.replace(f"{MOUNT}/", f"{tmp_path}/") if a.startswith("--upstream-") else a
        for a in args
        if not a.startswith(("--tenancy-rule-file", "--tenancy-file"))
    ]
    config = RouterConfig.from_args([*local, "--tenant-label-key=keda-tenancy.io/tenant"], {})
    assert config.upstream_ca_file == f"{tmp_path}/upstream-ca/ca.crt"
    assert config.upstream_extra_ca_file == f"{tmp_path}/upstream-extra-ca/ca.crt"


def test_without_ca_bundle_nothing_extra_is_trusted(helm: Helm) -> None:
    deployment = find(render_router(helm, {}), "Deployment", ROUTER_RELEASE)
    assert flag(container(deployment)["args"], "upstream-extra-ca-file") is None
    assert f"{MOUNT}/upstream-extra-ca" not in volumes_by_mount(deployment)
