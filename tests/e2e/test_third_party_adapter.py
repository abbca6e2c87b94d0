"""Identity kept for an adapter that is not KEDA (issue 24, item 2).

custom-metrics-apiserver's sample test adapter, built from its Go module by
tests/e2e/build/build.sh, serves namespaces no tenant owns behind the router. It trusts only
the router's client CA and client certificate name (requestheader flags) and asks the real
kube-apiserver whether the identity the router asserts may read (delegated authorization).
The KEDA tenants of the session stack keep working beside it.

The sample adapter's external metrics are fixed in its provider (its write endpoint sets
custom metrics, which this APIService does not serve): other-external-metric is 44,
my-external-metric is 42 with labels foo=bar and 43 with foo=baz.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import ROOT, Process, Stack, free_port, wait_for
from tests.e2e.test_stack import metric_value

pytestmark = pytest.mark.e2e

NAMESPACE = "adapter-apps"  # owned by no tenant: the router's default upstream serves it
READERS = "external-metrics-readers"  # the group the RoleBinding grants
GROUP_PATH = "/apis/external.metrics.k8s.io/v1beta1"


def metric_path(metric: str, selector: str = "") -> str:
    query = f"?labelSelector={urllib.parse.quote(selector, safe='')}" if selector else ""
    return f"{GROUP_PATH}/namespaces/{NAMESPACE}/{metric}{query}"


def adapter_binary(stack: Stack) -> Path:
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "tests/e2e/build/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return stack.bin / f"custom-metrics-test-adapter-{versions['CUSTOM_METRICS_APISERVER_VERSION']}"


@dataclass
class ThirdParty:
    process: Process
    url: str


def start_test_adapter(stack: Stack) -> ThirdParty:
    """The sample adapter as a platform would run it beside KEDA: requestheader trust in the
    router's client CA and name only, delegated authentication and authorization against
    kube-apiserver (no cache, so a RoleBinding counts at once)."""
    c = stack.certs
    stack.backend_ca.issue(
        "custom-metrics-test-adapter", dns=("localhost",), ips=("127.0.0.1",), server=True
    ).write(c, "test-adapter")
    port = free_port()
    process = stack.run(
        "custom-metrics-test-adapter",
        [
            str(adapter_binary(stack)),
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={c / 'test-adapter.crt'}",
            f"--tls-private-key-file={c / 'test-adapter.key'}",
            f"--write-metrics-address=127.0.0.1:{free_port()}",
            f"--requestheader-client-ca-file={c / 'router-client-ca.crt'}",
            "--requestheader-allowed-names=keda-tenancy-router",
            "--authentication-skip-lookup",
            f"--authentication-kubeconfig={stack.kubeconfig}",
            f"--authorization-kubeconfig={stack.kubeconfig}",
            f"--lister-kubeconfig={stack.kubeconfig}",
            "--authorization-webhook-cache-authorized-ttl=0s",
            "--authorization-webhook-cache-unauthorized-ttl=0s",
        ],
    )
    context = ssl.create_default_context(cafile=str(stack.certs / "backend-ca.crt"))

    def ready() -> bool:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/readyz", context=context, timeout=2
        ) as response:
            return bool(response.status == 200)

    wait_for(ready, "the test adapter ready", 60)
    return ThirdParty(process, f"https://127.0.0.1:{port}")


def restart_router(stack: Stack, *flags: str) -> None:
    """The session's router again, with `flags`."""
    stack.processes["router"].stop()
    stack.start_router(*flags)
    # Ready can come a moment before the secure port is open; the APIService's condition
    # may still be the one from before the restart.
    wait_for(
        lambda: socket.create_connection(("127.0.0.1", stack.router_port), 1).close() or 1,
        "the router's secure port open",
        30,
    )
    wait_for(stack.apiservice_available, "APIService Available", 60)


def route_to(stack: Stack, upstream: str | None) -> None:
    """The router with `upstream` for namespaces no tenant owns (None: none). The one place
    that says how the adapter is routed: a routing rule can take its place here."""
    restart_router(stack, *([f"--default-upstream={upstream}"] if upstream else []))


@pytest.fixture(scope="module")
def adapter(stack: Stack) -> Iterator[ThirdParty]:
    stack.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "external-metrics-reader"},
            "rules": [
                {
                    "apiGroups": ["external.metrics.k8s.io"],
                    "resources": ["*"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "external-metrics-readers", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "external-metrics-reader",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": READERS}
            ],
        },
    )
    third_party = start_test_adapter(stack)
    route_to(stack, third_party.url)
    try:
        yield third_party
    finally:
        route_to(stack, None)  # the later tests expect no default upstream
        third_party.process.stop()


def as_router_caller(stack: Stack, path: str, user: str, *groups: str) -> tuple[int, Any]:
    """GET on the router as the aggregator does (its front-proxy client certificate and the
    identity in X-Remote-* headers): what the router passes on, and the adapter decides."""
    context = ssl.create_default_context(cafile=str(stack.certs / "router-serving-ca.crt"))
    context.load_cert_chain(
        stack.certs / "front-proxy-client.crt", stack.certs / "front-proxy-client.key"
    )
    request = urllib.request.Request(f"https://127.0.0.1:{stack.router_port}{path}")
    request.add_header("X-Remote-User", user)
    for group in groups:
        request.add_header("X-Remote-Group", group)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def access_log(stack: Stack) -> list[dict[str, Any]]:
    lines = stack.processes["router"].log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def values(body: dict[str, Any]) -> list[str]:
    return [str(item["value"]) for item in body.get("items") or []]


def test_a_user_without_rbac_is_refused_by_the_adapter(stack: Stack, adapter: ThirdParty) -> None:
    # Through the aggregation path kube-apiserver itself refuses first (same RBAC).
    nobody = stack.user_kubeconfig("nobody")
    code, _ = stack.get_raw(metric_path("other-external-metric"), kubeconfig=nobody)
    assert code == 403
    # The adapter refuses the same identity when the router passes it on: its own 403, a
    # forwarded answer in the router's access log, not one the router made.
    code, body = as_router_caller(stack, metric_path("other-external-metric"), "nobody")
    assert code == 403, body
    assert body["reason"] == "Forbidden"
    assert 'User "nobody" cannot list resource "other-external-metric"' in body["message"]
    # The router writes the line just after the answer.
    wait_for(
        lambda: any(
            entry.get("user") == "nobody"
            and entry.get("namespace") == NAMESPACE
            and entry.get("status") == 403
            and entry.get("outcome") == "forwarded"
            for entry in access_log(stack)
        ),
        "the forwarded 403 in the access log",
        10,
    )


def test_a_user_granted_through_a_group_reads_the_adapters_value(
    stack: Stack, adapter: ThirdParty
) -> None:
    reader = stack.user_kubeconfig("grace", groups=(READERS,))
    code, body = stack.get_raw(metric_path("other-external-metric"), kubeconfig=reader)
    assert (code, values(body)) == (200, ["44"])
    # The query reaches the adapter unchanged: its label selector picks one series.
    code, body = stack.get_raw(metric_path("my-external-metric", "foo=baz"), kubeconfig=reader)
    assert (code, values(body)) == (200, ["43"])
    # It is the group that grants: the same user without it is refused by the adapter.
    assert as_router_caller(stack, metric_path("other-external-metric"), "grace", READERS)[0] == 200
    assert as_router_caller(stack, metric_path("other-external-metric"), "grace")[0] == 403


def test_keda_tenants_keep_working_beside_it(stack: Stack, adapter: ThirdParty) -> None:
    wait_for(lambda: metric_value(stack, "alpha-apps") == "7", "alpha served", 60, 1)
    wait_for(lambda: metric_value(stack, "beta-apps") == "42", "beta served", 60, 1)
    # A tenant's namespace never falls through to the default upstream: KEDA answers.
    code, body = stack.get_raw(f"{GROUP_PATH}/namespaces/alpha-apps/other-external-metric")
    assert values(body) != ["44"], (code, body)

    def tenants() -> list[object]:
        return [
            entry.get("tenant")
            for entry in access_log(stack)
            if entry.get("namespace") == "alpha-apps"
            and "/other-external-metric " in str(entry.get("msg"))
        ]

    wait_for(lambda: tenants()[-1:] == ["alpha"], "KEDA's answer in the access log", 10)
    assert adapter.process.running
