"""How the router reads a backend's response: framing decides where it ends, bodiless
statuses stay bodiless, and whatever a backend sends outside a response is not passed on."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from router.app import Router
from tests.fakes.tenant_backend import ScriptedBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = b"X-Remote-User: system:serviceaccount:kube-system:horizontal-pod-autoscaler\r\n"
REQUEST = (
    b"GET " + METRIC_PATH.format(ns="alpha-ns", metric="m").encode() + b" HTTP/1.1\r\n"
    b"Host: x\r\n" + USER + b"\r\n"
)


@pytest.fixture
async def scripted(pki: Pki) -> AsyncIterator[ScriptedBackend]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.path("backend.crt"), pki.path("backend.key"))
    context.load_verify_locations(pki.path("router_client_ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    backend = ScriptedBackend(context)
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
async def router(
    pki: Pki, tenancy_file: Callable[..., str], scripted: ScriptedBackend
) -> AsyncIterator[Router]:
    argv = router_args(pki, tenancy_file(alpha=scripted.url), "--upstream-max-connections=1")
    async with running_router(argv) as router:
        yield router


async def exchange(
    router: Router, pki: Pki, count: int = 1
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """`count` requests pipelined on one connection; each answer read by its framing."""
    assert router.secure_port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        router.secure_port,
        ssl=pki.client_context(pki.aggregator()),
        server_hostname="localhost",
    )
    answers = []
    try:
        writer.write(REQUEST * count)
        for _ in range(count):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status_line, *lines = head[:-4].split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in lines:
                name, _, value = line.partition(b":")
                assert name.lower() not in headers, f"{name!r} twice"
                headers[name.lower()] = value.strip()
            status = int(status_line.split(b" ")[1])
            length = 0 if status in (204, 304) else int(headers[b"content-length"])
            answers.append((status, headers, await reader.readexactly(length)))
    finally:
        writer.close()
    return answers


async def test_204_is_passed_on_without_a_content_length(
    router: Router, pki: Pki, scripted: ScriptedBackend
) -> None:
    scripted.scripts = [[b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]]
    [(status, headers, body)] = await exchange(router, pki)
    assert (status, body) == (204, b"")
    assert b"content-length" not in headers


async def test_304_is_passed_on_without_a_body(
    router: Router, pki: Pki, scripted: ScriptedBackend
) -> None:
    scripted.scripts = [[b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 99\r\n\r\n']]
    (status, headers, _), (after, _, body) = await exchange(router, pki, 2)
    assert status == 304
    assert headers[b"etag"] == b'"v1"'
    assert b"content-length" not in headers
    assert (after, json.loads(body)) == (200, {"good": "yes"})  # the connection stays in step


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 099 Odd", b"HTTP/1.1 600 Beyond", b"HTTP/1.1 000 Zero"]
)
async def test_an_invalid_status_code_is_502(
    router: Router, pki: Pki, scripted: ScriptedBackend, status_line: bytes
) -> None:
    scripted.scripts = [[status_line + b"\r\nContent-Length: 2\r\n\r\n{}"]]
    [(status, _, body)] = await exchange(router, pki)
    assert status == 502
    assert json.loads(body)["kind"] == "Status"  # a Status from the router, not the odd line


async def test_transfer_encoding_is_compared_case_insensitively(
    router: Router, pki: Pki, scripted: ScriptedBackend
) -> None:
    scripted.scripts = [
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"]
    ]
    [(status, headers, body)] = await exchange(router, pki)
    assert (status, body) == (200, b"{}")
    assert b"transfer-encoding" not in headers


async def test_headers_named_in_the_connection_header_are_not_passed_on(
    router: Router, pki: Pki, scripted: ScriptedBackend
) -> None:
    scripted.scripts = [
        [
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: secret\r\n"
            b"X-Kept: yes\r\nContent-Length: 2\r\n\r\n{}"
        ]
    ]
    [(status, headers, _)] = await exchange(router, pki)
    assert status == 200
    assert b"x-hop" not in headers
    assert b"connection" not in headers
    assert headers[b"x-kept"] == b"yes"


async def test_a_redirect_is_502_but_a_3xx_without_location_passes(
    router: Router, pki: Pki, scripted: ScriptedBackend
) -> None:
    scripted.scripts = [
        [b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n"],
        [b"HTTP/1.1 300 Multiple Choices\r\nContent-Length: 2\r\n\r\n[]"],
    ]
    (redirect, _, _), (choices, _, body) = await exchange(router, pki, 2)
    assert redirect == 502
    assert (choices, body) == (300, b"[]")


FORGED = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"forged": true}'


@pytest.mark.parametrize("pause_s", [0.0, 0.1], ids=["with-the-answer", "while-idle"])
async def test_bytes_after_a_response_discard_the_connection(
    router: Router, pki: Pki, scripted: ScriptedBackend, pause_s: float
) -> None:
    # The first answer says it is 2 bytes long and is followed by what looks like a
    # second answer, at once or while the connection is idle. The next request must get
    # a real answer to itself from a new connection, not those bytes.
    scripted.scripts = [[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", pause_s, FORGED]]
    [(first, _, body)] = await exchange(router, pki)
    assert (first, body) == (200, b"{}")
    await asyncio.sleep(pause_s + 0.1)
    [(second, _, answer)] = await exchange(router, pki)
    assert (second, json.loads(answer)) == (200, {"good": "yes"}), answer
    assert scripted.connections == 2


async def test_a_tenants_answers_in_flight_together_are_bounded(
    pki: Pki, tenancy_file: Callable[..., str], scripted: ScriptedBackend
) -> None:
    # Answers each within the limit, but sent slowly on many connections at once, would
    # pin 16 x 600 KB; a tenant may hold 8 x 1 MiB of the router's memory at a time.
    size, part = 1_000_000, 600_000
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    scripted.scripts = [[head + b"x" * part, 1.0, b"x" * (size - part)] for _ in range(16)]
    async with running_router(router_args(pki, tenancy_file(alpha=scripted.url))) as router:
        assert router.secure_port
        port = router.secure_port
        context = pki.client_context(pki.aggregator())
        target = METRIC_PATH.format(ns="alpha-ns", metric="m")
        answers = await asyncio.gather(
            *(raw_request(port, context, target, (("X-Remote-User", "u"),)) for _ in range(16))
        )
    statuses = sorted(a.status for a in answers)
    assert 502 in statuses, statuses
    refused = next(a for a in answers if a.status == 502)
    assert "too large together" in str(refused.json()["message"])
    assert statuses.count(200) >= 8  # the rest went through whole
    assert all(len(a.body) == size for a in answers if a.status == 200)
