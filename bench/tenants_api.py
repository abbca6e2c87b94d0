"""A small REST client for `bench.tenants`: many creates and patches in parallel (one
connection per thread), and watches that record when each object changed, on
CLOCK_MONOTONIC (system-wide, so it compares with the stand-in operators' own records)."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Api:
    """kube-apiserver on 127.0.0.1:`port` as the client certificate's user."""

    port: int
    ca: Path
    cert: Path
    key: Path
    _local: threading.local = field(default_factory=threading.local)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def connection(self, timeout_s: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context(), timeout=timeout_s
        )

    def request(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        for attempt in range(3):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connection()
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"Content-Type": content_type} if data is not None else {}
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> dict[str, Any]:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def create(self, obj: dict[str, Any], collection: str) -> None:
        status, body = self.request("POST", collection, obj)
        if status not in (200, 201, 409):
            raise RuntimeError(f"POST {collection}: {status} {body[:300]!r}")

    def merge_patch(self, path: str, patch: dict[str, Any]) -> None:
        status, body = self.request("PATCH", path, patch, "application/merge-patch+json")
        if status != 200:
            raise RuntimeError(f"PATCH {path}: {status} {body[:300]!r}")

    def text(self, path: str) -> str:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        return body.decode()


def in_parallel(work: Iterable[Callable[[], object]], threads: int = 16) -> None:
    """Run every call, `threads` at a time; the first failure is raised."""
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(call) for call in work]:
            future.result()


@dataclass(frozen=True)
class Change:
    at: float
    """time.monotonic() when the event arrived."""
    type: str
    """ADDED, MODIFIED, DELETED (a relist's objects are ADDED)."""
    obj: dict[str, Any]


@dataclass
class Recorder:
    """Lists and then watches one collection (cluster-wide, by label selector), keeping every
    change by (namespace, name); reconnects from the last resourceVersion, relists on 410."""

    api: Api
    collection: str
    selector: str
    changes: dict[tuple[str, str], list[Change]] = field(default_factory=dict)
    current: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Recorder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self.lock:
            self.changes.setdefault(key, []).append(Change(time.monotonic(), kind, obj))
            if kind == "DELETED":
                self.current.pop(key, None)
            else:
                self.current[key] = obj

    def _list(self) -> str:
        query = urllib.parse.urlencode({"labelSelector": self.selector})
        listed = self.api.get_json(f"{self.collection}?{query}")
        seen = set()
        for obj in listed["items"]:
            seen.add((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
            self._record("ADDED", obj)
        with self.lock:
            gone = [key for key in self.current if key not in seen]
        for key in gone:
            self._record("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                version = self._watch(version)
            except (OSError, http.client.HTTPException, RuntimeError, ValueError):
                time.sleep(0.5)

    def _watch(self, version: str) -> str:
        query = urllib.parse.urlencode(
            {
                "labelSelector": self.selector,
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "600",
            }
        )
        conn = self.api.connection(timeout_s=700)
        try:
            conn.request("GET", f"{self.collection}?{query}")
            response = conn.getresponse()
            if response.status != 200:
                return ""
            while not self._stop.is_set():
                line = response.readline()
                if not line:
                    return version
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    return ""  # 410 Gone: relist
                version = str(obj["metadata"].get("resourceVersion", version))
                if event["type"] != "BOOKMARK":
                    self._record(event["type"], obj)
            return version
        finally:
            conn.close()

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return dict(self.current)

    def history(self, key: tuple[str, str]) -> list[Change]:
        with self.lock:
            return list(self.changes.get(key, []))
