"""One value moves a tenant's KEDA (issue 22, item 3): every KEDA image of the tenant takes its
tag from `keda.version`, and images that would run different KEDA versions are refused."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.charts import TENANT_CHART, Doc, Helm, versions

TENANT = "tenant-a"
NAMESPACE = f"keda-{TENANT}"


def images(docs: list[Doc]) -> dict[str, str]:
    """container name (in its workload) -> image, for every container the release runs."""
    found = {}
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        if doc["kind"] == "Job":
            continue  # the uninstall hook's
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            found[f"{doc['metadata']['name']}/{container['name']}"] = container["image"]
    return found


def render(helm: Helm, **values: Any) -> list[Doc]:
    return helm.template(
        TENANT_CHART, release="keda", namespace=NAMESPACE, values={"tenant": TENANT, **values}
    )


def refusal(helm: Helm, **values: Any) -> str:
    result = helm.template_raw(
        TENANT_CHART, release="keda", namespace=NAMESPACE, values={"tenant": TENANT, **values}
    )
    assert result.returncode != 0, result.stdout[:2000]
    return result.stderr


def test_the_default_is_the_keda_the_suite_builds_and_the_chart_announces(helm: Helm) -> None:
    chart = yaml.safe_load((TENANT_CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((TENANT_CHART / "values.yaml").read_text())
    version = versions()["KEDA_VERSION"].lstrip("v")
    assert values["keda"]["version"] == version
    assert chart["annotations"]["keda-tenancy.io/keda-version"] == version
    rendered = images(render(helm))
    assert rendered["keda-operator/keda-operator"] == f"keda-tenancy-keda:0.1.0-keda{version}"
    assert (
        rendered["keda-operator-metrics-apiserver/keda-operator-metrics-apiserver"]
        == f"ghcr.io/kedacore/keda-metrics-apiserver:{version}"
    )
    assert (
        rendered["keda-admission-webhooks/keda-admission-webhooks"]
        == f"ghcr.io/kedacore/keda-admission-webhooks:{version}"
    )


@pytest.mark.parametrize("mode", ["process", "deployment"])
def test_keda_version_alone_moves_every_keda_image_of_the_tenant(helm: Helm, mode: str) -> None:
    before = images(render(helm, reloader={"mode": mode}, images={"tenant": {"tagPrefix": "b7"}}))
    after = images(
        render(
            helm,
            reloader={"mode": mode},
            images={"tenant": {"tagPrefix": "b7"}},
            keda={"version": "v2.20.1"},
        )
    )
    assert before.keys() == after.keys()
    for container, image in after.items():
        repository = image.rsplit(":", 1)[0]
        if repository == "keda-tenancy-keda":
            assert image == "keda-tenancy-keda:b7-keda2.20.1", container
        else:
            assert image.endswith(":2.20.1"), (container, image)
        assert image != before[container], container
    if mode == "deployment":
        assert "keda-operator-metrics-apiserver/grpc-forward" in after


@pytest.mark.parametrize(
    ("images_values", "named"),
    [
        ({"metricsApiServer": {"tag": "2.20.1"}}, "images.metricsApiServer: 2.20.1"),
        ({"webhooks": {"tag": "2.19.0"}}, "images.webhooks: 2.19.0"),
        ({"tenant": {"tag": "build-42-keda2.20.1"}}, "images.tenant: 2.20.1"),
    ],
)
def test_explicit_tags_of_different_keda_versions_are_refused_unless_allowed(
    helm: Helm, images_values: dict[str, Any], named: str
) -> None:
    stderr = refusal(helm, images=images_values)
    assert "different KEDA versions" in stderr
    assert named in stderr
    assert "keda.allowVersionSkew" in stderr
    render(helm, images=images_values, keda={"version": "2.20.2", "allowVersionSkew": True})


def test_a_tenant_tag_naming_no_keda_version_is_refused(helm: Helm) -> None:
    stderr = refusal(helm, images={"tenant": {"tag": "0.1.0"}})
    assert 'images.tenant.tag "0.1.0" names no KEDA version' in stderr


def test_explicit_tags_that_agree_and_disabled_webhooks_pass(helm: Helm) -> None:
    rendered = images(
        render(
            helm,
            keda={"version": "2.20.1"},
            images={
                "tenant": {"tag": "build-42-kedav2.20.1"},
                "metricsApiServer": {"tag": "v2.20.1"},
            },
        )
    )
    assert rendered["keda-operator/keda-operator"] == "keda-tenancy-keda:build-42-kedav2.20.1"
    # Webhooks off: their tag is not run, so not checked.
    render(helm, webhooks={"enabled": False}, images={"webhooks": {"tag": "2.19.0"}})


@pytest.mark.parametrize("version", ["latest", "2.20", "2.20.1 ", ""])
def test_the_schema_refuses_what_is_not_a_release_version(helm: Helm, version: str) -> None:
    assert "don't meet the specifications of the schema" in refusal(helm, keda={"version": version})
