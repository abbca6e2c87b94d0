"""operator_pod's own Kubernetes client: in-cluster credentials over real TLS (the token re-read
as kubelet rotates it), a deadline on every read (a hung API server never hangs it), error
Statuses as ApiError, and the kubeconfig it can read (JSON) and the one it refuses (YAML)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from operator_pod.kube import (
    ApiError,
    ConfigError,
    KubeClient,
    TransportError,
    in_cluster_config,
    kubeconfig_config,
)
from tests.fakes.kube_api import FakeKubeAPI
from tests.router_harness import Pki

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            tasks.discard(task)

    listening = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=context)
    try:
        yield int(listening.sockets[0].getsockname()[1])
    finally:
        listening.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listening.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> list[str]:
    lines = []
    while (line := (await reader.readline()).decode().strip()) != "":
        lines.append(line)
    return lines


def answer(status: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


def service_account(tmp_path: Path, pki: Pki, token: str) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(Path(pki.path("serving_ca.crt")).read_bytes())
    return directory


def tls_server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.path("serving.crt"), pki.path("serving.key"))
    return context


async def test_in_cluster_over_tls_with_the_token_reread_as_it_rotates(
    pki: Pki, tmp_path: Path
) -> None:
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        seen.extend(line for line in head if line.lower().startswith("authorization:"))
        writer.write(answer("200 OK", {"kind": "ConfigMap", "metadata": {"name": "x"}}))
        await writer.drain()

    directory = service_account(tmp_path, pki, "token-1\n")
    async with server(handler, tls_server_context(pki)) as port:
        environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
        client = KubeClient(in_cluster_config(environ, directory), token_reread_s=0)
        assert (await client.get("/api/v1/namespaces/a/configmaps/x"))["kind"] == "ConfigMap"
        (directory / "token").write_text("token-2\n")  # the kubelet rotated it
        await client.get("/api/v1/namespaces/a/configmaps/x")
    assert seen == ["Authorization: Bearer token-1", "Authorization: Bearer token-2"]


async def test_a_server_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    directory = service_account(tmp_path, pki, "t")
    (directory / "ca.crt").write_bytes(Path(pki.path("other_ca.crt")).read_bytes())
    async with server(handler, tls_server_context(pki)) as port:
        environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
        client = KubeClient(in_cluster_config(environ, directory))
        with pytest.raises(TransportError):
            await client.get("/api/v1/namespaces")


async def test_a_hung_api_server_fails_requests_and_watches_at_their_deadlines(
    tmp_path: Path,
) -> None:
    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async def goes_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = json.dumps({"type": "BOOKMARK", "object": {"metadata": {}}}).encode() + b"\n"
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    for handler in (never_answers, goes_silent):
        async with server(handler) as port:
            config = kubeconfig_config(kubeconfig(tmp_path, f"http://127.0.0.1:{port}"))
            client = KubeClient(config, request_timeout_s=0.3)
            if handler is never_answers:
                with pytest.raises(TransportError, match=r"no answer in 0\.3s"):
                    await client.get("/api/v1/namespaces")
            events: list[str] = []
            with pytest.raises(TransportError):
                await collect(client, events)
            assert events == ([] if handler is never_answers else ["BOOKMARK"])


async def collect(client: KubeClient, events: list[str]) -> None:
    async with contextlib.aclosing(
        client.watch("/api/v1/namespaces", {}, idle_timeout_s=0.3)
    ) as stream:
        async for event in stream:
            events.append(event["type"])


async def test_error_statuses_are_api_errors_and_410_is_gone(
    kube_api: FakeKubeAPI, kubeconfig: str
) -> None:
    client = KubeClient(kubeconfig_config(kubeconfig))
    with pytest.raises(ApiError) as missing:
        await client.get("/api/v1/namespaces/keda-alpha/configmaps/nothing")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    kube_api.put_configmap("keda-alpha", "cm", {}, {"namespaces": "a"})
    kube_api.compact()
    query = {"fieldSelector": "metadata.name=cm", "resourceVersion": "1"}
    async with contextlib.aclosing(
        client.watch("/api/v1/namespaces/keda-alpha/configmaps", query, idle_timeout_s=5)
    ) as stream:
        event = await anext(stream)
    assert event["type"] == "ERROR"
    assert ApiError.from_status(410, event["object"]).gone


def kubeconfig(tmp_path: Path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"tokenFile": "token"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    (tmp_path / "token").write_text("from-a-file")
    return str(path)


def test_a_yaml_kubeconfig_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match="not JSON: this program reads no YAML"):
        kubeconfig_config(str(path))


def test_a_json_kubeconfig_resolves_files_relative_to_itself(tmp_path: Path) -> None:
    config = kubeconfig_config(kubeconfig(tmp_path, "https://10.0.0.1:6443/prefix"))
    assert (config.host, config.port, config.base_path) == ("10.0.0.1", 6443, "/prefix")
    assert config.token_file == str(tmp_path / "token")
