"""The router's own HTTP/1.1 handling over real TLS: keep-alive, pipelining, framing,
and requests it must refuse without forwarding anything."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import pytest

from router import listener
from router.app import Router
from tests.fakes.tenant_backend import TenantBackend
from tests.pki import Issued
from tests.router_harness import METRIC_PATH, Pki, router_args, running_router

USER = b"X-Remote-User: system:serviceaccount:kube-system:horizontal-pod-autoscaler\r\n"


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with running_router(router_args(pki, tenancy_file())) as router:
        yield router


class Connection:
    """One kept-alive TLS connection to the router, reading responses by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, router: Router, pki: Pki, cert: Issued | None = None) -> Connection:
        assert router.secure_port
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            router.secure_port,
            ssl=pki.client_context(cert or pki.aggregator()),
            server_hostname="localhost",
        )
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers[b"content-length"]))
        return int(status_line.split(b" ")[1]), headers, body

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def get(ns: str, extra: bytes = b"", version: bytes = b"HTTP/1.1", *, metric: str = "m") -> bytes:
    target = METRIC_PATH.format(ns=ns, metric=metric).encode()
    return b"GET " + target + b" " + version + b"\r\nHost: x\r\n" + USER + extra + b"\r\n"


def set_dial_delay(router: Router, seconds: float) -> None:
    """How long a request waits for a busy upstream connection before one is dialled."""
    upstreams = router.upstreams
    upstreams._settings = dataclasses.replace(upstreams._settings, dial_delay_s=seconds)


async def test_pipelined_requests_are_answered_in_order_each_by_its_tenant(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    connection = await Connection.open(router, pki)
    try:
        connection.send(get("beta-ns") + get("alpha-ns") + get("beta-ns"))
        tenants = []
        for _ in range(3):
            status, _, body = await connection.response()
            assert status == 200
            tenants.append(json.loads(body)["received"]["tenant"])
        assert tenants == ["beta", "alpha", "beta"]
    finally:
        await connection.close()


async def test_upstream_chunked_and_closing_responses_are_reframed(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    connection = await Connection.open(router, pki)
    try:
        for mode in ("chunked", "close", "close", "ok", "chunked"):
            backends["alpha"].mode = mode
            connection.send(get("alpha-ns"))
            status, headers, body = await connection.response()
            assert status == 200, body
            assert json.loads(body)["items"][0]["value"] == "7"
            assert b"transfer-encoding" not in headers
            assert b"connection" not in headers  # the upstream's close is not the caller's
        assert len(backends["alpha"].received) == 5
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("alpha-ns", b"Content-Length: 4\r\n") + b"abcd",
        get("alpha-ns", b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
        get("alpha-ns", b"X-Remote-Group: a\nX-Remote-User: system:admin\r\n"),
        get("alpha-ns", b" folded\r\n"),
        b"GET /apis HTTP/2.0\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_and_the_connection_closes(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], request_bytes: bytes
) -> None:
    connection = await Connection.open(router, pki)
    try:
        connection.send(request_bytes + get("alpha-ns"))  # the second must never be read
        status, headers, body = await connection.response()
        assert status == 400
        assert json.loads(body)["reason"] == "BadRequest"
        assert headers[b"connection"] == b"close"
        assert await connection.closed()
        assert not backends["alpha"].received
    finally:
        await connection.close()


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH"])
@pytest.mark.parametrize(
    "body", [b"Content-Length: 4\r\n\r\nabcd", b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
)
async def test_writes_with_a_body_are_405_never_forwarded_and_the_connection_closes(
    router: Router, pki: Pki, backends: dict[str, TenantBackend], method: bytes, body: bytes
) -> None:
    connection = await Connection.open(router, pki)
    try:
        target = METRIC_PATH.format(ns="alpha-ns", metric="m").encode()
        write = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + USER + body
        connection.send(write + get("alpha-ns"))  # the body and what follows are never read
        status, headers, answer = await connection.response()
        assert status == 405, answer
        assert json.loads(answer)["reason"] == "MethodNotAllowed"
        assert headers[b"connection"] == b"close"
        assert await connection.closed()
        assert not backends["alpha"].received
    finally:
        await connection.close()


async def test_http10_and_connection_close_end_the_connection(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    for request_bytes in (
        get("alpha-ns", version=b"HTTP/1.0"),
        get("alpha-ns", b"Connection: close\r\n"),
    ):
        connection = await Connection.open(router, pki)
        try:
            connection.send(request_bytes)
            status, headers, _ = await connection.response()
            assert (status, headers[b"connection"]) == (200, b"close")
            assert await connection.closed()
        finally:
            await connection.close()


async def test_oversized_head_is_431(router: Router, pki: Pki) -> None:
    connection = await Connection.open(router, pki)
    try:
        connection.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n")
        status, _, body = await connection.response()
        assert status == 431
        assert json.loads(body)["kind"] == "Status"
    finally:
        await connection.close()


async def test_without_a_certificate_a_large_head_is_431_and_pipelined_requests_are_not_read(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    assert router.secure_port
    for request_bytes, code in (
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (20 << 10) + b"\r\n", 431),
        (get("alpha-ns") * 50, 401),  # one answer, then the connection is closed
    ):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            router.secure_port,
            ssl=pki.client_context(None),
            server_hostname="localhost",
        )
        connection = Connection(reader, writer)
        try:
            connection.send(request_bytes)
            status, headers, _ = await connection.response()
            assert (status, headers[b"connection"]) == (code, b"close")
            assert await connection.closed()
        finally:
            await connection.close()
    assert not backends["alpha"].received


async def test_clients_that_stall_or_idle_without_a_certificate_are_cut(
    router: Router, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep's limits, shortened: a client that reads none of its answers, and one
    # without a certificate that sends nothing.
    monkeypatch.setattr(listener, "STALLED_TIMEOUT_S", 1.0)
    monkeypatch.setattr(listener, "UNVERIFIED_TIMEOUT_S", 1.0)
    assert router.secure_port
    # A client that really reads nothing: a tiny receive window and no reading at all, so
    # neither the kernel's autotuned buffers nor asyncio's absorb the answers.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", router.secure_port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=pki.client_context(pki.aggregator()), server_hostname="localhost"
    )
    writer.transport.pause_reading()
    stalled = Connection(reader, writer)
    discovery = b"GET /apis HTTP/1.1\r\nHost: x\r\n" + USER + b"\r\n"
    for _ in range(64):  # far more answers than the socket buffers hold, none read
        stalled.send(discovery * 256)
    _, idle_writer = await asyncio.open_connection(
        "127.0.0.1", router.secure_port, ssl=pki.client_context(None), server_hostname="localhost"
    )
    try:
        await eventually(lambda: open_connections(router) == 2)
        await eventually(lambda: open_connections(router) == 0, timeout_s=10)
    finally:
        stalled.writer.transport.abort()
        idle_writer.transport.abort()


def open_connections(router: Router) -> int:
    return int(router.registry.get_sample_value("keda_tenancy_router_open_connections") or 0)


async def test_one_kept_alive_upstream_connection_serves_sequential_requests(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    connection = await Connection.open(router, pki)
    try:
        for _ in range(5):
            connection.send(get("alpha-ns"))
            assert (await connection.response())[0] == 200
    finally:
        await connection.close()
    assert len({r.connection for r in backends["alpha"].received}) == 1


async def test_new_upstream_connections_resume_the_tls_session(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    backends["alpha"].mode = "close"  # every answer closes its connection: three handshakes
    connection = await Connection.open(router, pki)
    try:
        for _ in range(3):
            connection.send(get("alpha-ns"))
            assert (await connection.response())[0] == 200
    finally:
        await connection.close()
    received = backends["alpha"].received
    assert len({r.connection for r in received}) == 3
    assert [r.resumed for r in received] == [False, True, True]
    assert {r.client_cn for r in received} == {"keda-tenancy-router"}


async def test_a_request_stuck_upstream_does_not_hold_up_the_next_one(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    backends["alpha"].mode = "hang:slow"
    slow, fast = await Connection.open(router, pki), await Connection.open(router, pki)
    try:
        slow.send(get("alpha-ns", metric="slow"))
        await eventually(lambda: len(backends["alpha"].received) == 1)
        fast.send(get("alpha-ns"))
        status, _, body = await fast.response()  # on a second upstream connection
        assert status == 200, body
        assert len({r.connection for r in backends["alpha"].received}) == 2
        backends["alpha"].hang_released.set()
        assert (await slow.response())[0] == 200
    finally:
        await slow.close()
        await fast.close()


async def test_requests_that_each_wait_briefly_share_one_upstream_connection(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    # Two callers in step on one tenant keep a request waiting for its one connection
    # most of the time, yet no single request waits long: that needs no second connection.
    set_dial_delay(router, 0.5)
    alpha = backends["alpha"]
    alpha.mode = "hang:slow"
    slow = get("alpha-ns", metric="slow")
    first, second = await Connection.open(router, pki), await Connection.open(router, pki)
    try:
        first.send(slow)
        await eventually(lambda: len(alpha.received) == 1)
        second.send(slow)  # waits for the one connection from t=0 ...
        await asyncio.sleep(0.3)
        released, alpha.hang_released = alpha.hang_released, asyncio.Event()
        released.set()  # ... gets it at 0.3 s and holds it in turn
        assert (await first.response())[0] == 200
        await eventually(lambda: len(alpha.received) == 2)
        first.send(get("alpha-ns"))  # waits from about 0.3 s: 0.5 s after the first wait began
        await asyncio.sleep(0.35)
        alpha.hang_released.set()
        assert (await second.response())[0] == 200
        assert (await first.response())[0] == 200
        assert len({r.connection for r in alpha.received}) == 1
    finally:
        await first.close()
        await second.close()


async def test_more_waiting_requests_than_busy_connections_dial_at_once(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    # One busy connection can serve one waiter soon; a second waiter would wait for rounds.
    set_dial_delay(router, 30)
    alpha = backends["alpha"]
    alpha.mode = "hang:slow"
    stuck, *waiting = [await Connection.open(router, pki) for _ in range(3)]
    try:
        stuck.send(get("alpha-ns", metric="slow"))
        await eventually(lambda: len(alpha.received) == 1)
        for connection in waiting:
            connection.send(get("alpha-ns"))
        statuses = [(await connection.response())[0] for connection in waiting]
        assert statuses == [200, 200]  # well before the 30 s dial delay (5 s read timeout)
        assert len({r.connection for r in alpha.received}) == 2
        alpha.hang_released.set()
        assert (await stuck.response())[0] == 200
    finally:
        for connection in (stuck, *waiting):
            await connection.close()


async def test_a_certificate_that_expires_on_a_kept_alive_connection_is_refused_from_then_on(
    router: Router, pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    # As kube-apiserver's x509 authenticator: validity is checked for every request, not
    # only at the handshake, so a long-lived aggregator connection cannot outlive its
    # certificate.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = pki.aggregator(not_after=now + datetime.timedelta(seconds=2))
    connection = await Connection.open(router, pki, cert)
    try:
        connection.send(get("alpha-ns"))
        assert (await connection.response())[0] == 200
        await asyncio.sleep((now + datetime.timedelta(seconds=3.2)).timestamp() - time.time())
        connection.send(get("alpha-ns"))
        status, _, body = await connection.response()
        assert status == 401, body
        assert b"not valid now" in body
        assert len(backends["alpha"].received) == 1
    finally:
        await connection.close()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)
