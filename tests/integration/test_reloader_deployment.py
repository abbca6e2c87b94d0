"""Deployment mode: the operator container's env is patched, and only when it differs."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.kube_api import FakeKubeAPI
from tests.reloader_harness import eventually, label, running_reloader


def deployment_args(kubeconfig: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--mode=deployment",
        "--target-deployment=keda-alpha/keda-operator",
        "--container=keda-operator",
        "--tenant=alpha",
        "--tenant-label-key=keda-tenancy.io/tenant",
        "--debounce=100ms",
        "--min-restart-interval=0s",
        "--health-bind-address=127.0.0.1",
        "--health-port=0",
    ]


def env_of(kube_api: FakeKubeAPI) -> dict[str, str | None]:
    container = kube_api.deployments[("keda-alpha", "keda-operator")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def replicas_of(kube_api: FakeKubeAPI) -> int:
    return int(kube_api.deployments[("keda-alpha", "keda-operator")]["spec"]["replicas"])


async def test_patch_then_no_op(kube_api: FakeKubeAPI, kubeconfig: str, tmp_path: Path) -> None:
    kube_api.add_deployment(
        "keda-alpha",
        "keda-operator",
        [
            {
                "name": "keda-operator",
                "env": [
                    {"name": "WATCH_NAMESPACE", "value": "old"},
                    {"name": "KEEP", "value": "1"},
                ],
            }
        ],
        replicas=2,
    )
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader(deployment_args(kubeconfig)):
        await eventually(lambda: env_of(kube_api)["WATCH_NAMESPACE"] == "a1")
        assert env_of(kube_api)["KEEP"] == "1"
        kube_api.relabel_new("a2", label("alpha"))
        await eventually(lambda: env_of(kube_api)["WATCH_NAMESPACE"] == "a1,a2")
    assert kube_api.requests["patch deployment"] == 2
    # A new reloader that finds the Deployment already right sends no PATCH at all.
    async with running_reloader(deployment_args(kubeconfig)) as r:
        await eventually(lambda: r.applied == "a1,a2")
    assert kube_api.requests["patch deployment"] == 2


async def test_empty_set_scales_to_zero_and_back(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    kube_api.add_deployment(
        "keda-alpha",
        "keda-operator",
        [{"name": "keda-operator", "env": [{"name": "WATCH_NAMESPACE", "value": "a1"}]}],
        replicas=2,
    )
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader([*deployment_args(kubeconfig), "--replicas=2"]) as r:
        await eventually(lambda: r.applied == "a1")
        kube_api.delete("a1")
        await eventually(lambda: replicas_of(kube_api) == 0)
        assert env_of(kube_api)["WATCH_NAMESPACE"] == "a1"  # never written empty
        kube_api.relabel_new("a5", label("alpha"))
        await eventually(
            lambda: replicas_of(kube_api) == 2 and env_of(kube_api)["WATCH_NAMESPACE"] == "a5"
        )
    # Server-side applies under the reloader's own field manager: the fields are its own.
    assert kube_api.applied_by == {"keda-tenancy-reloader"}
    assert kube_api.requests["apply deployment"] == kube_api.requests["patch deployment"] == 2


async def test_missing_deployment_is_reported_not_ready(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader(deployment_args(kubeconfig)) as r:
        await eventually(lambda: r.last_error is not None)
        assert "cannot update" in str(r.readiness_checks()["operator"]())


async def test_drift_is_undone_at_the_resync(kube_api: FakeKubeAPI, kubeconfig: str) -> None:
    kube_api.add_deployment(
        "keda-alpha",
        "keda-operator",
        [{"name": "keda-operator", "env": [{"name": "WATCH_NAMESPACE", "value": "a1"}]}],
    )
    kube_api.relabel_new("a1", label("alpha"))
    async with running_reloader([*deployment_args(kubeconfig), "--resync-period=300ms"]) as r:
        await eventually(lambda: r.applied == "a1")
        assert kube_api.requests["patch deployment"] == 0  # already right
        env = kube_api.deployments[("keda-alpha", "keda-operator")]["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
        env[0]["value"] = ""  # someone (a helm upgrade, a person) resets it
        await eventually(lambda: env_of(kube_api)["WATCH_NAMESPACE"] == "a1")
        assert kube_api.requests["patch deployment"] == 1
        assert kube_api.requests["get deployment"] >= 2
