"""A GET is sent again, once, when the tenant's KEDA adapter answers that the operator's gRPC
went away under it (500, `rpc error: code = Unavailable ...`) or that the scalers cache it read
was replaced (500, `... no matching metrics found for ...`); nothing else is retried."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from router.app import Router
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
ALPHA = METRIC_PATH.format(ns="alpha-ns", metric="s0-metric-api-value")
JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
UNAVAILABLE = "rpc error: code = Unavailable desc = error reading from server: EOF"
NO_MATCHING = (
    "rpc error: code = Unknown desc = error when getting metric values no matching metrics "
    "found for s0-metric-api-value"
)


def json_status(code: int, message: str, reason: str | None = None) -> bytes:
    """As k8s.io/apiserver writes an error that is not an APIStatus (KEDA's adapter)."""
    status: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    }
    if reason:
        status["reason"] = reason
    return json.dumps(status, separators=(",", ":")).encode()


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def _field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def protobuf_status(code: int, message: str) -> bytes:
    """The same Status in Kubernetes' protobuf envelope (runtime.Unknown behind `k8s\\0`)."""
    status = (
        _field(1, b"")
        + _field(2, b"Failure")
        + _field(3, message.encode())
        + _field(4, b"")
        + _field(6, code)
    )
    type_meta = _field(1, b"v1") + _field(2, b"Status")
    return b"k8s\x00" + _field(1, type_meta) + _field(2, status) + _field(3, b"") + _field(4, b"")


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with running_router(router_args(pki, tenancy_file(), "--upstream-timeout=1s")) as router:
        yield router


@pytest.fixture
def aggregator(pki: Pki) -> ssl.SSLContext:
    return pki.client_context(pki.aggregator())


async def retries_metric(router: Router) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{router.health_port}/metrics") as response,
    ):
        text = await response.text()
    return "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("keda_tenancy_router_upstream_transient_retries_total{")
    )


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        (JSON, json_status(500, UNAVAILABLE), "unavailable"),
        (PROTOBUF, protobuf_status(500, UNAVAILABLE), "unavailable"),
        (
            JSON,
            json_status(500, "rpc error: code = Unavailable desc = connection error"),
            "unavailable",
        ),
        (JSON, json_status(500, NO_MATCHING), "scalers-cache"),
        (PROTOBUF, protobuf_status(500, NO_MATCHING), "scalers-cache"),
    ],
    ids=["json", "protobuf", "json-connection-error", "json-cache", "protobuf-cache"],
)
async def test_a_transient_answer_once_is_retried_and_served(
    router: Router,
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
    content_type: str,
    body: bytes,
    reason: str,
) -> None:
    assert router.secure_port
    backends["alpha"].scripted = [(500, content_type, body, 0.0)]
    response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
    assert response.status == 200, response.body
    assert response.json()["items"][0]["value"] == "7"  # type: ignore[index]
    assert len(backends["alpha"].received) == 2
    assert not backends["beta"].received  # the same tenant only
    assert await retries_metric(router) == (
        f'keda_tenancy_router_upstream_transient_retries_total{{reason="{reason}",tenant="alpha"}} 1.0'
    )


async def test_always_unavailable_is_retried_once_then_passed_through(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    body = json_status(500, UNAVAILABLE)
    backends["alpha"].scripted = [(500, JSON, body, 0.0)] * 5
    response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
    assert response.status == 500
    assert response.body == body  # the adapter's own answer, untouched
    assert len(backends["alpha"].received) == 2
    assert len(backends["alpha"].scripted) == 3
    # The next request gets its own single retry.
    response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
    assert response.status == 500
    assert len(backends["alpha"].received) == 4
    assert await retries_metric(router) == (
        'keda_tenancy_router_upstream_transient_retries_total{reason="unavailable",tenant="alpha"} 2.0'
    )


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (500, JSON, json_status(500, "Internal error occurred: something else")),
        (500, JSON, json_status(500, "rpc error: code = DeadlineExceeded desc = context deadline")),
        (500, JSON, json_status(500, "rpc error: code = Internal desc = " + UNAVAILABLE)),
        (500, JSON, json_status(503, UNAVAILABLE)),  # a Status that says another code
        (503, JSON, json_status(503, UNAVAILABLE)),  # not a 500
        (502, JSON, json_status(500, UNAVAILABLE)),
        (500, "text/plain", UNAVAILABLE.encode()),  # not a Status
        (500, JSON, json.dumps({"kind": "Other", "code": 500, "message": UNAVAILABLE}).encode()),
        (500, JSON, b"[" + json_status(500, UNAVAILABLE) + b"]"),
        (500, JSON, json_status(500, UNAVAILABLE)[:-1]),  # truncated
        (500, PROTOBUF, protobuf_status(500, "rpc error: code = Unknown desc = x")),
        (500, JSON, json_status(500, "rpc error: code = Unknown desc = error when getting x")),
        (500, JSON, json_status(500, "no matching metrics found for s0-metric-api-value")),
        (500, PROTOBUF, protobuf_status(500, UNAVAILABLE)[:-3]),  # truncated
        (500, PROTOBUF, protobuf_status(503, UNAVAILABLE)),
    ],
)
async def test_other_errors_are_never_retried(
    router: Router,
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
    status: int,
    content_type: str,
    body: bytes,
) -> None:
    assert router.secure_port
    backends["alpha"].scripted = [(status, content_type, body, 0.0)]
    response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
    assert response.status == status
    assert response.body == body
    assert len(backends["alpha"].received) == 1
    assert await retries_metric(router) == ""


async def test_writes_are_never_forwarded_so_never_retried(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    backends["alpha"].scripted = [(500, JSON, json_status(500, UNAVAILABLE), 0.0)] * 2
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,), method=method)
        assert response.status == 405
    assert not backends["alpha"].received
    assert await retries_metric(router) == ""


async def test_the_retry_keeps_the_request_deadline(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    """--upstream-timeout=1s: the first 500 after 0.6 s, the retry's 200 would come 0.6 s later.
    With a deadline of its own it would be served at 1.2 s; it keeps the request's: 504."""
    assert router.secure_port
    body = json_status(500, UNAVAILABLE)
    backends["alpha"].scripted = [(500, JSON, body, 0.6), (200, JSON, b"{}", 0.6)]
    started = time.monotonic()
    response = await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
    took = time.monotonic() - started
    assert response.status == 504
    assert 0.9 < took < 1.5, took  # one deadline (the wheel fires within 0.2 s of it)
    assert len(backends["alpha"].received) == 2
