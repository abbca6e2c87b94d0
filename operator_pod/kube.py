"""A small Kubernetes API client on asyncio streams: GET, PUT, merge PATCH and WATCH, JSON only.

Why not kubernetes_asyncio: it and aiohttp cost this process ~80 MB of its 32 MiB budget. This
client speaks HTTP/1.1 with one connection per request (`Connection: close`): at rest the
process makes one watch request every few minutes, so keep-alive would save nothing.

Every read has a deadline: a request (connect, send, response) `request_timeout_s` in all, a
watch stream `idle_timeout_s` between two reads, so a hung API server never hangs the caller.
Errors are two types the callers branch on: `ApiError` (the server answered with an error
Status) and `TransportError` (no usable answer: refused, reset, timed out, malformed).

Credentials: in-cluster (the ServiceAccount token, re-read every `token_reread_s` since bound
tokens rotate, and its CA) or a kubeconfig for tests. A kubeconfig is YAML, and this program
reads no YAML: it must be JSON (JSON is YAML, so kubectl reads the same file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

Obj = dict[str, Any]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_BODY_BYTES = 8 * 1024 * 1024
"""A ConfigMap is at most 1 MiB; anything far larger is not an answer we asked for."""
MAX_HEADERS = 100
USER_AGENT = "keda-tenancy-operator-pod"


class KubeError(Exception):
    """Base of this client's errors."""


class ConfigError(KubeError):
    """No usable credentials (missing files, a kubeconfig that is not JSON)."""


class TransportError(KubeError):
    """No usable answer: refused, reset, timed out, or not HTTP we understand."""


class ApiError(KubeError):
    """The API server answered with an error Status."""

    def __init__(self, status: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}"[:500])
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}

    @classmethod
    def from_status(cls, status: int, body: Obj | None) -> ApiError:
        body = body or {}
        return cls(
            int(body.get("code") or status),
            str(body.get("reason") or "Unknown"),
            str(body.get("message") or ""),
            body.get("details") if isinstance(body.get("details"), dict) else None,
        )

    @property
    def gone(self) -> bool:
        """The resourceVersion asked for was compacted: list again."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @property
    def too_large_resource_version(self) -> bool:
        """The server is behind our resourceVersion (an etcd restore, a lagging replica)."""
        causes = self.details.get("causes") or []
        return any(c.get("reason") == "ResourceVersionTooLarge" for c in causes)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    scheme: str
    host: str
    port: int
    base_path: str = ""
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_data: str | None = None
    client_key_data: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def in_cluster_config(
    environ: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR
) -> ClusterConfig:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port.isdigit():
        raise ConfigError(
            "not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset); pass --kubeconfig"
        )
    token_file = directory / "token"
    if not token_file.exists():
        raise ConfigError(f"no ServiceAccount token at {token_file}")
    return ClusterConfig(
        scheme="https",
        host=host.strip("[]"),
        port=int(port),
        ca_file=str(directory / "ca.crt"),
        token_file=str(token_file),
    )


def kubeconfig_config(path: str) -> ClusterConfig:
    """The current context of a JSON kubeconfig; ConfigError when it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the kubeconfig {path}: {exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"the kubeconfig {path} is not JSON: this program reads no YAML (write it as "
            "JSON, which kubectl reads as well)"
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"the kubeconfig {path} is not a JSON object")
    base = Path(path).resolve().parent

    def named(kind: str, name: str) -> Obj:
        for item in doc.get(kind) or []:
            if isinstance(item, dict) and item.get("name") == name:
                value = item.get(kind[:-1]) or {}
                return value if isinstance(value, dict) else {}
        raise ConfigError(f"the kubeconfig {path} has no {kind[:-1]} {name!r}")

    context = named("contexts", str(doc.get("current-context") or ""))
    cluster = named("clusters", str(context.get("cluster") or ""))
    user = named("users", str(context.get("user") or "")) if context.get("user") else {}

    def file(value: object) -> str | None:
        if not value:
            return None
        return str(base / str(value))  # relative paths are relative to the kubeconfig

    def data(value: object) -> str | None:
        import base64  # noqa: PLC0415 - only kubeconfigs with inline credentials need it

        if not value:
            return None
        try:
            return base64.b64decode(str(value), validate=True).decode()
        except ValueError as exc:  # binascii.Error, UnicodeDecodeError
            raise ConfigError(f"the kubeconfig {path} has inline data that is not base64") from exc

    url = urlsplit(str(cluster.get("server") or ""))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"the kubeconfig {path} has no usable server URL")
    for unsupported in ("exec", "auth-provider", "username"):
        if user.get(unsupported):
            raise ConfigError(f"the kubeconfig user's {unsupported!r} is not supported here")
    return ClusterConfig(
        scheme=url.scheme,
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        base_path=url.path.rstrip("/"),
        ca_file=file(cluster.get("certificate-authority")),
        ca_data=data(cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user.get("tokenFile")),
        client_cert_file=file(user.get("client-certificate")),
        client_key_file=file(user.get("client-key")),
        client_cert_data=data(user.get("client-certificate-data")),
        client_key_data=data(user.get("client-key-data")),
    )


class KubeClient:
    def __init__(
        self,
        config: ClusterConfig,
        *,
        request_timeout_s: float = 10.0,
        token_reread_s: float = 60.0,
    ) -> None:
        self.config = config
        self.request_timeout_s = request_timeout_s
        self._token_reread_s = token_reread_s
        self._token: str | None = config.token
        self._token_read_at = -1e9
        self._ssl: ssl.SSLContext | None = None
        self._ca_digest: bytes | None = None

    # -- credentials -------------------------------------------------------------------

    def _bearer(self) -> str | None:
        """The token, re-read from its file every `token_reread_s` (kubelet rotates it)."""
        path = self.config.token_file
        if path is None:
            return self._token
        now = time.monotonic()
        if now - self._token_read_at >= self._token_reread_s or self._token is None:
            try:
                self._token = Path(path).read_text(encoding="utf-8").strip()
                self._token_read_at = now
            except OSError as exc:
                if self._token is None:
                    raise TransportError(f"cannot read the token {path}: {exc}") from exc
            self._refresh_ssl()  # the CA is re-read with it (a rotated cluster CA)
        return self._token

    def _refresh_ssl(self) -> None:
        config = self.config
        if not config.tls:
            return
        ca: bytes | None = None
        if config.ca_file is not None:
            try:
                ca = Path(config.ca_file).read_bytes()
            except OSError as exc:
                if self._ssl is None:
                    raise TransportError(f"cannot read the CA {config.ca_file}: {exc}") from exc
                return
        elif config.ca_data is not None:
            ca = config.ca_data.encode()
        if self._ssl is not None and ca == self._ca_digest:
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif ca is not None:
            context.load_verify_locations(cadata=ca.decode())
        else:
            context.load_default_certs()
        self._load_client_cert(context)
        self._ssl, self._ca_digest = context, ca

    def _load_client_cert(self, context: ssl.SSLContext) -> None:
        config = self.config
        if config.client_cert_file and config.client_key_file:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
        elif config.client_cert_data and config.client_key_data:
            # ssl loads certificates from files only: a private temporary one, removed at once.
            import tempfile  # noqa: PLC0415 - only kubeconfigs with inline credentials need it

            with tempfile.TemporaryDirectory() as directory:
                pem = Path(directory) / "client.pem"
                fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(config.client_key_data + "\n" + config.client_cert_data)
                context.load_cert_chain(str(pem))

    # -- requests ----------------------------------------------------------------------

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Obj:
        return await self.request("GET", path, query=query)

    async def put(self, path: str, body: Obj) -> Obj:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> Obj:
        """One request and its JSON answer; ApiError for an error Status, TransportError
        when there is no usable answer within `timeout_s` (default `request_timeout_s`)."""
        payload = json.dumps(body).encode() if body is not None else None
        try:
            async with asyncio.timeout(timeout_s or self.request_timeout_s):
                reader, writer = await self._send(method, path, query, payload, content_type)
                try:
                    status, headers = await _read_head(reader)
                    data = await _read_body(reader, headers)
                finally:
                    await _close(writer)
        except TimeoutError as exc:
            raise TransportError(
                f"{method} {path}: no answer in {timeout_s or self.request_timeout_s:g}s"
            ) from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(f"{method} {path}: {_describe(exc)}") from exc
        return _decode(status, data)

    async def watch(
        self, path: str, query: Mapping[str, str], *, idle_timeout_s: float
    ) -> AsyncGenerator[Obj, None]:
        """The events of one watch request (each a dict with `type` and `object`) until the
        server ends it; TransportError when nothing arrives for `idle_timeout_s`. Use with
        `contextlib.aclosing` so the connection closes with the loop."""
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    reader, writer = await self._send("GET", path, {**query, "watch": "true"})
                    status, headers = await _read_head(reader)
                    if not 200 <= status < 300:
                        _decode(status, await _read_body(reader, headers))  # raises ApiError
            except TimeoutError as exc:
                raise TransportError(
                    f"WATCH {path}: no answer in {self.request_timeout_s:g}s"
                ) from exc
            async for line in _lines(reader, headers, idle_timeout_s):
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise TransportError(f"WATCH {path}: not a JSON event") from exc
                if not isinstance(event, dict):
                    raise TransportError(f"WATCH {path}: not a watch event")
                yield event
        except TimeoutError as exc:
            raise TransportError(f"WATCH {path}: silent for {idle_timeout_s:g}s") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(f"WATCH {path}: {_describe(exc)}") from exc
        finally:
            if writer is not None:
                await _close(writer)

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        payload: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        config = self.config
        token = self._bearer()
        if config.tls and self._ssl is None:
            self._refresh_ssl()
        target = config.base_path + path + (f"?{urlencode(query)}" if query else "")
        host = f"[{config.host}]" if ":" in config.host else config.host
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {host}:{config.port}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json",
            "Connection: close",
        ]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if payload is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection(
            config.host,
            config.port,
            ssl=self._ssl if config.tls else None,
            server_hostname=config.host if config.tls else None,
            limit=MAX_BODY_BYTES,
        )
        writer.write(head + (payload or b""))
        await writer.drain()
        return reader, writer


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readuntil(b"\r\n")).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
        if not line:
            return int(parts[1]), headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise TransportError("too many response headers")


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = bytearray()
        async for chunk in _chunks(reader):
            chunked += chunk
            if len(chunked) > MAX_BODY_BYTES:
                raise TransportError("response body too large")
        return bytes(chunked)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise TransportError(f"bad Content-Length {length[:20]!r}")
        return await reader.readexactly(int(length))
    body = await reader.read(MAX_BODY_BYTES + 1)  # to the end of the connection
    while len(body) <= MAX_BODY_BYTES and (more := await reader.read(MAX_BODY_BYTES)):
        body += more
    if len(body) > MAX_BODY_BYTES:
        raise TransportError("response body too large")
    return body


async def _chunks(reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
    """The chunks of a chunked body (RFC 9112 7.1), trailers skipped."""
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as exc:
            raise TransportError(f"bad chunk size {size_line[:20]!r}") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        if size > MAX_BODY_BYTES:
            raise TransportError("chunk too large")
        chunk = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise TransportError("chunk not terminated by CRLF")
        yield chunk


async def _lines(
    reader: asyncio.StreamReader, headers: Mapping[str, str], idle_timeout_s: float
) -> AsyncGenerator[bytes, None]:
    """Newline-separated lines of a streamed body, each read given `idle_timeout_s`."""
    buffer = bytearray()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = _chunks(reader)
        async with contextlib.aclosing(chunks):
            while True:
                async with asyncio.timeout(idle_timeout_s):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        yield line
                if len(buffer) > MAX_BODY_BYTES:
                    raise TransportError("watch event too large")
    else:
        while True:
            async with asyncio.timeout(idle_timeout_s):
                line = await reader.readline()
            if not line:
                break
            if line.strip():
                yield line
    if buffer.strip():
        yield bytes(buffer)


def _decode(status: int, data: bytes) -> Obj:
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = None
    if not 200 <= status < 300:
        if isinstance(parsed, dict) and parsed.get("kind") == "Status":
            raise ApiError.from_status(status, parsed)
        text = data[:200].decode("utf-8", "replace").strip()
        raise ApiError(status, "Unknown", text)
    if not isinstance(parsed, dict):
        raise TransportError(f"a {status} answer that is not a JSON object")
    return parsed


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection ended mid-answer"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"[:200]


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except TimeoutError:
        writer.transport.abort()  # a TLS peer that never answers the close
    except OSError:
        pass
