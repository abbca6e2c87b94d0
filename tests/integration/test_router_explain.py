"""The diagnosis path: /debug/explain and `keda-tenancy-router explain` name the cause for a
namespace of no tenant, a tenant down, and a namespace waiting for its operator's access."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from router.__main__ import main
from router.app import Router
from router.explain_http import PATH, add_explain_route
from tests.fakes.kube_api import FakeKubeAPI
from tests.fakes.tenant_backend import TenantBackend
from tests.integration.test_router_tenancy_modes import overrides
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

LABEL = "keda-tenancy.io/tenant"
CAPSULE = "capsule.clastix.io/tenant"
USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")


@pytest.fixture
async def router(
    pki: Pki,
    tmp_path: Path,
    backends: dict[str, TenantBackend],
    kube_api: FakeKubeAPI,
    kubeconfig: str,
) -> AsyncIterator[Router]:
    kube_api.create("alpha-apps", **{LABEL: "alpha"})
    kube_api.create("beta-apps", **{LABEL: "beta"})
    kube_api.create("loose")
    kube_api.create("both", **{LABEL: "alpha", CAPSULE: "beta"})
    argv = router_args(
        pki,
        overrides(tmp_path, backends),
        f"--kubeconfig={kubeconfig}",
        f"--tenant-label-key={LABEL}",
        f"--tenant-label-key={CAPSULE}",
    )
    async with running_router(argv) as running:
        yield running


async def explain(router: Router, namespace: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{router.health_port}{PATH}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"namespace": namespace}) as response,
    ):
        assert response.status == 200, await response.text()
        return dict(await response.json())


def publish_watched(kube_api: FakeKubeAPI, tenant: str, **pods: str) -> None:
    """What the in-pod reloaders of `tenant` publish (process mode)."""
    kube_api.configmaps[(f"keda-{tenant}", "keda-operator-watched")] = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": "keda-operator-watched",
            "namespace": f"keda-{tenant}",
            "annotations": {"keda-tenancy.io/watched-published": "true"},
        },
        "data": pods,
    }


def bind_operator(kube_api: FakeKubeAPI, tenant: str, namespace: str) -> None:
    """The managed RoleBinding of the tenant's binding manager."""
    kube_api.self_subject = (f"keda-{tenant}", "keda-operator")
    kube_api.add_rolebinding(
        namespace,
        f"keda-tenancy-{tenant}-operator-managed",
        f"keda-tenancy-{tenant}-operator",
        **{"keda-tenancy.io/role-binding-of": tenant},
    )


async def get_metric(router: Router, pki: Pki, namespace: str) -> int:
    assert router.secure_port is not None
    response = await raw_request(
        router.secure_port,
        pki.client_context(pki.aggregator()),
        METRIC_PATH.format(ns=namespace, metric="m"),
        (USER,),
    )
    return response.status


async def test_a_namespace_of_no_tenant_says_which_rule_did_not_match(router: Router) -> None:
    loose = await explain(router, "loose")
    assert loose["verdict"] == (f"no tenant owns loose: no label {LABEL}, no label {CAPSULE}")
    assert loose["ownership"]["verdict"] == "unmapped"
    assert "operator" not in loose
    ghost = await explain(router, "ghost")
    assert ghost["verdict"] == (
        "no tenant owns ghost: the router's namespace list has no such namespace"
    )
    both = await explain(router, "both")
    assert both["verdict"].startswith(
        f"no tenant owns both: claimed by several tenants (alpha, beta: label {LABEL}=alpha; "
        f"label {CAPSULE}=beta)"
    )


async def test_a_tenant_down_is_named_with_its_failures_and_the_other_stays_ok(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], kube_api: FakeKubeAPI
) -> None:
    for tenant in ("alpha", "beta"):
        bind_operator(kube_api, tenant, f"{tenant}-apps")
        publish_watched(kube_api, tenant, **{f"keda-operator-{tenant}": f"{tenant}-apps"})
    await backends["beta"].stop()
    statuses = [await get_metric(router, pki, "beta-apps") for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert await get_metric(router, pki, "alpha-apps") == 200

    beta = await explain(router, "beta-apps")
    assert beta["verdict"].startswith(
        f"tenant beta owns beta-apps by label {LABEL}=beta; its metrics server failed 3 of the "
        "last 3 requests (the metrics server of beta is"
    )
    assert beta["verdict"].endswith(" — tenant down")
    assert beta["upstream"]["health"][0]["healthy"] is False
    assert [a["status"] for a in beta["recent"]["namespace"]] == [503, 503, 503]

    alpha = await explain(router, "alpha-apps")
    assert alpha["verdict"] == (
        f"tenant alpha owns alpha-apps by label {LABEL}=alpha; its metrics server answered the "
        "last 1 requests; its operator watches it — ok"
    )


async def test_a_namespace_waiting_for_access_then_for_the_operator_then_served(
    router: Router, pki: Pki, kube_api: FakeKubeAPI
) -> None:
    publish_watched(kube_api, "alpha", **{"keda-operator-x": "other"})
    waiting = await explain(router, "alpha-apps")
    assert waiting["verdict"] == (
        f"tenant alpha owns alpha-apps by label {LABEL}=alpha; its operator has no access "
        "there (RoleBinding keda-tenancy-alpha-operator-managed (or keda-tenancy-operator-alpha) "
        "missing in alpha-apps) — waiting for access"
    )
    bind_operator(kube_api, "alpha", "alpha-apps")
    bound = await explain(router, "alpha-apps")
    assert bound["verdict"].endswith(
        "its operator does not watch it yet (not in the namespaces its 1 operator pod(s) run "
        "with) — waiting for the operator"
    )
    publish_watched(kube_api, "alpha", **{"keda-operator-x": "alpha-apps,other"})
    assert await get_metric(router, pki, "alpha-apps") == 200
    served = await explain(router, "alpha-apps")
    assert served["verdict"].endswith("its operator watches it — ok")
    assert served["operator"]["watches"]["detail"] == "watched by operator pod keda-operator-x"


def publish_namespaces(kube_api: FakeKubeAPI, tenant: str, value: str | None) -> None:
    """The platform layout: the ConfigMap the platform controller publishes the set to."""
    kube_api.configmaps[(f"keda-{tenant}", "keda-operator-namespaces")] = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "keda-operator-namespaces", "namespace": f"keda-{tenant}"},
        **({} if value is None else {"data": {"namespaces": value}}),
    }


async def test_the_platform_layout_is_explained_from_the_controllers_objects(
    router: Router, pki: Pki, kube_api: FakeKubeAPI
) -> None:
    """Issue 21: a tenant on the platform layout has no binding manager and no reloaders: its
    access is the controller's binding, its watch the namespace set the controller published."""
    publish_namespaces(kube_api, "alpha", None)  # the chart's data-less ConfigMap
    waiting = await explain(router, "alpha-apps")
    assert waiting["verdict"].endswith(" — waiting for access"), waiting["verdict"]
    kube_api.self_subject = ("keda-alpha", "keda-operator")
    kube_api.add_rolebinding(
        "alpha-apps", "keda-tenancy-operator-alpha", "keda-tenancy-alpha-operator"
    )
    bound = await explain(router, "alpha-apps")
    assert bound["operator"]["access"] == {
        "known": True,
        "detail": "RoleBinding keda-tenancy-operator-alpha (platform controller) grants "
        "keda-tenancy-alpha-operator",
    }
    assert bound["operator"]["watches"]["known"] is None
    assert "never published to: the platform controller has not served" in bound["verdict"]
    publish_namespaces(kube_api, "alpha", "other")
    assert (await explain(router, "alpha-apps"))["verdict"].endswith(
        "its operator does not watch it yet (not in the namespaces published to its operator "
        "in configmap keda-alpha/keda-operator-namespaces) — waiting for the operator"
    )
    publish_namespaces(kube_api, "alpha", "alpha-apps,other")
    assert await get_metric(router, pki, "alpha-apps") == 200
    served = await explain(router, "alpha-apps")
    assert served["verdict"].endswith("its operator watches it — ok"), served["verdict"]
    # A binding of that name granting another role is not the controller's: no access.
    kube_api.rolebindings.pop(("alpha-apps", "keda-tenancy-operator-alpha"), None)
    kube_api.add_rolebinding("alpha-apps", "keda-tenancy-operator-alpha", "view")
    assert (await explain(router, "alpha-apps"))["verdict"].endswith(" — waiting for access")


async def test_a_binding_that_grants_something_else_is_no_access(
    router: Router, kube_api: FakeKubeAPI
) -> None:
    kube_api.self_subject = ("keda-alpha", "keda-operator")
    kube_api.add_rolebinding("alpha-apps", "keda-tenancy-alpha-operator-managed", "view")
    report = await explain(router, "alpha-apps")
    assert "does not grant ClusterRole keda-tenancy-alpha-operator" in report["verdict"]
    assert report["verdict"].endswith("— waiting for access")


async def test_what_the_router_may_not_read_is_unknown_not_missing(
    router: Router, pki: Pki, kube_api: FakeKubeAPI
) -> None:
    kube_api.forbidden.add("get rolebinding")
    assert await get_metric(router, pki, "alpha-apps") == 200
    report = await explain(router, "alpha-apps")
    assert report["operator"]["access"]["known"] is None
    assert "the router may not read RoleBinding" in report["operator"]["access"]["detail"]
    assert report["verdict"].endswith(" — ok")
    assert "not known: the router may not read" in report["verdict"]


async def test_a_tenants_error_answer_is_told_without_its_message(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], kube_api: FakeKubeAPI
) -> None:
    """A scaler's error may quote a connection string: only the status and reason are kept."""
    bind_operator(kube_api, "alpha", "alpha-apps")
    publish_watched(kube_api, "alpha", **{"keda-operator-x": "alpha-apps"})
    body = json.dumps(
        {"kind": "Status", "reason": "InternalError", "code": 500,
         "message": "dial postgres://app:hunter2@db:5432 failed"}
    ).encode()  # fmt: skip
    backends["alpha"].scripted.append((500, "application/json", body, 0.0))
    assert await get_metric(router, pki, "alpha-apps") == 500
    report = await explain(router, "alpha-apps")
    assert "hunter2" not in json.dumps(report)
    assert report["recent"]["namespace"][-1]["message"] == (
        "the metrics server answered 500 InternalError"
    )
    assert report["verdict"].endswith(
        "the tenant's last request failed (500: the metrics server answered 500 InternalError; "
        "1 of its last 1) — tenant answers errors"
    )
    # Answered again: the path works; the past error is still told.
    assert await get_metric(router, pki, "alpha-apps") == 200
    report = await explain(router, "alpha-apps")
    assert (
        "its metrics server answered the last request (1 of its last 2 failed, the last: "
        in (report["verdict"])
    )
    assert report["verdict"].endswith(" — ok")


async def test_the_command_prints_the_verdict_first(
    router: Router, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy in the container's environment (an unroutable one here) is not used for loopback.
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:9")
    code = await asyncio.to_thread(
        main, ["explain", "loose", f"--health-port={router.health_port}"]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"no tenant owns loose: no label {LABEL}, no label {CAPSULE}"
    assert f"  label {LABEL}: no label {LABEL}" in out
    code = await asyncio.to_thread(
        main, ["explain", "Not_A_Name", f"--health-port={router.health_port}"]
    )
    assert code == 2
    assert "is not a namespace name" in capsys.readouterr().err


async def test_only_a_process_in_the_pod_may_ask(router: Router) -> None:
    app = web.Application()
    add_explain_route(app, router.explainer())
    for peer, allowed in (("10.0.0.7", False), ("192.168.1.2", False), ("127.0.0.1", True)):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda key, p=peer: (
            (p, 1) if key == "peername" else None
        )
        request = make_mocked_request(
            "GET", f"{PATH}?namespace=loose", app=app, transport=transport
        )
        match = await app.router.resolve(request)
        response = await match.handler(request)
        assert (response.status == 200) is allowed, peer
