"""A fake Kubernetes API server on loopback with the semantics our watches rely on.

Namespaces with a global, increasing resourceVersion; LIST with label selectors and
limit/continue; WATCH from a resourceVersion with selector transitions (an object that
stops matching arrives as DELETED, one that starts matching as ADDED, as kube-apiserver
does), BOOKMARKs, timeoutSeconds, and `410 Gone` for compacted versions. Test knobs drop
or silence open watches. Also ConfigMaps and Deployments (GET, strategic-merge PATCH of
container env) for the router's and reloader's other reads and writes, and Leases (GET, PUT
with the resourceVersion precondition: a stale one is refused with 409 Conflict).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


@dataclass
class _Event:
    resource_version: int
    type: str
    old: Obj | None
    new: Obj | None
    resource: str = "namespaces"
    """"namespaces", or "pods/<namespace>"."""


def _parse_selector(selector: str) -> list[tuple[str, str, set[str]]]:
    """'a=b,c!=d,e,!f,g in (x,y),h notin (z)' -> [(key, op, values)]."""
    requirements = []
    for raw in re.findall(r"(?:[^,(]|\([^)]*\))+", selector):
        part = raw.strip()
        if not part:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", part):
            requirements.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append((key.strip(), "!=", {value.strip()}))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            requirements.append((key.strip(), "=", {value.strip()}))
        elif part.startswith("!"):
            requirements.append((part[1:].strip(), "!", set()))
        else:
            requirements.append((part, "exists", set()))
    return requirements


def _matches(obj: Obj | None, requirements: list[tuple[str, str, set[str]]]) -> bool:
    if obj is None:
        return False
    labels = obj["metadata"].get("labels") or {}
    for key, op, values in requirements:
        present = key in labels
        value = labels.get(key)
        ok = {
            "=": present and value in values,
            "in": present and value in values,
            "!=": not present or value not in values,
            "notin": not present or value not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class FakeKubeAPI:
    bookmarks: bool = True
    bookmark_interval_s: float = 0.2
    namespaces: dict[str, Obj] = field(default_factory=dict)
    configmaps: dict[tuple[str, str], Obj] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Obj] = field(default_factory=dict)
    leases: dict[tuple[str, str], Obj] = field(default_factory=dict)
    pods: dict[tuple[str, str], Obj] = field(default_factory=dict)
    applied_by: set[str] = field(default_factory=set)
    """Field managers of server-side applies."""
    renew_leases_after_get: bool = False
    """A live leader renews every Lease right after each GET (so a write based on it is stale)."""
    requests: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _rv: int = 1
    _compacted: int = 0
    _events: list[_Event] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _streams: dict[web.StreamResponse, asyncio.BaseTransport | None] = field(default_factory=dict)
    _silent: bool = False
    _closing: bool = False
    _runner: web.AppRunner | None = None

    # -- server ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self._configmap)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._deployment)
        app.router.add_patch(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._patch_deployment
        )
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        lease = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"
        app.router.add_get(lease, self._lease)
        app.router.add_put(lease, self._put_lease)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.2
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing = True
        self.drop_watches()
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> str:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return str(path)

    # -- test controls -----------------------------------------------------------------

    def _record(
        self, kind: str, old: Obj | None, new: Obj | None, resource: str = "namespaces"
    ) -> None:
        self._rv += 1
        for obj in (new,):
            if obj is not None:
                obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append(
            _Event(self._rv, kind, copy.deepcopy(old), copy.deepcopy(new), resource)
        )
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def create(self, name: str, **labels: str) -> None:
        obj = {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {"name": name, "labels": dict(labels), "uid": f"uid-{name}"},
            "status": {"phase": "Active"},
        }
        self.namespaces[name] = obj
        self._record("ADDED", None, obj)

    def set_labels(self, name: str, **labels: str | None) -> None:
        old = copy.deepcopy(self.namespaces[name])
        current = self.namespaces[name]["metadata"].setdefault("labels", {})
        for key, value in labels.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        self._record("MODIFIED", old, self.namespaces[name])

    def relabel(self, name: str, labels: dict[str, str | None]) -> None:
        """Like set_labels, for keys that are not Python identifiers."""
        self.set_labels(name, **labels)

    def relabel_new(self, name: str, labels: dict[str, str]) -> None:
        """Create a namespace with labels whose keys are not Python identifiers."""
        self.create(name, **labels)

    def delete(self, name: str, *, terminating: bool = False) -> None:
        """Delete now, or (terminating) mark it Terminating first; finish with `finalize`."""
        if terminating:
            old = copy.deepcopy(self.namespaces[name])
            self.namespaces[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            self.namespaces[name]["status"]["phase"] = "Terminating"
            self._record("MODIFIED", old, self.namespaces[name])
        else:
            self.finalize(name)

    def finalize(self, name: str) -> None:
        obj = self.namespaces.pop(name)
        self._record("DELETED", obj, obj)

    def compact(self) -> None:
        """Forget history: watches from older resourceVersions get 410 Gone."""
        self._compacted = self._rv
        self._events.clear()

    def drop_watches(self) -> None:
        """Abort every open watch connection, as a restarting API server or LB would."""
        for stream in list(self._streams):
            transport = stream._req.transport if stream._req else None
            if transport is not None:
                transport.abort()
        self._streams.clear()

    def silence_watches(self, silent: bool = True) -> None:
        """Keep watch connections open but send nothing, not even bookmarks."""
        self._silent = silent

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    # -- handlers ----------------------------------------------------------------------

    async def _namespaces(self, request: web.Request) -> web.StreamResponse:
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if _true(request.query.get("watch")):
            self.requests["watch namespaces"] += 1
            return await self._watch(request, selector)
        self.requests["list namespaces"] += 1
        matching = sorted(
            (obj for obj in self.namespaces.values() if _matches(obj, selector)),
            key=lambda o: o["metadata"]["name"],
        )
        limit = int(request.query.get("limit") or 0)
        start = int(request.query.get("continue") or 0)
        page = matching[start : start + limit] if limit else matching[start:]
        more = bool(limit) and start + limit < len(matching)
        return web.json_response(
            {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {
                    "resourceVersion": str(self._rv),
                    **({"continue": str(start + limit)} if more else {}),
                },
                "items": page,
            }
        )

    async def _watch(
        self,
        request: web.Request,
        selector: list[tuple[str, str, set[str]]],
        resource: str = "namespaces",
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self._rv)
        timeout_s = float(request.query.get("timeoutSeconds") or 300)
        bookmarks = self.bookmarks and _true(request.query.get("allowWatchBookmarks"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._streams[response] = request.transport
        try:
            if since < self._compacted:
                gone = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({self._compacted})",
                    "reason": "Expired",
                    "code": 410,
                }
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            position = since
            while loop.time() < deadline and not self._closing and response in self._streams:
                sent = False
                for event in [
                    e
                    for e in self._events
                    if e.resource_version > position and e.resource == resource
                ]:
                    position = event.resource_version
                    line = self._transition(event, selector)
                    if line is not None and not self._silent:
                        await response.write(json.dumps(line).encode() + b"\n")
                        sent = True
                if not sent and bookmarks and not self._silent:
                    mark = {
                        "kind": "Namespace" if resource == "namespaces" else "Pod",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(self._rv)},
                    }
                    await response.write(
                        json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n"
                    )
                async with self._changed:
                    try:
                        await asyncio.wait_for(
                            self._changed.wait(),
                            min(self.bookmark_interval_s, max(0.0, deadline - loop.time())),
                        )
                    except TimeoutError:
                        pass
            return response
        except (ConnectionResetError, RuntimeError):
            return response
        finally:
            self._streams.pop(response, None)

    @staticmethod
    def _transition(
        event: _Event, selector: list[tuple[str, str, set[str]]]
    ) -> dict[str, Any] | None:
        was, now = _matches(event.old, selector), _matches(event.new, selector)
        if event.type == "DELETED":
            return {"type": "DELETED", "object": event.new} if was else None
        if now and not was:
            return {"type": "ADDED", "object": event.new}
        if now and was:
            return {"type": "MODIFIED", "object": event.new}
        if was and not now:
            return {"type": "DELETED", "object": event.new}
        return None

    async def _configmap(self, request: web.Request) -> web.Response:
        self.requests["get configmap"] += 1
        obj = self.configmaps.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _not_found("configmaps", request.match_info["name"])
        return web.json_response(obj)

    async def _deployment(self, request: web.Request) -> web.Response:
        self.requests["get deployment"] += 1
        obj = self.deployments.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _not_found("deployments.apps", request.match_info["name"])
        return web.json_response(obj)

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        self.requests["patch deployment"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        obj = self.deployments.get(key)
        if obj is None:
            return _not_found("deployments.apps", key[1])
        patch = await request.json()
        if request.content_type == "application/apply-patch+yaml":
            # Server-side apply: the manager and force are required for a partial apply
            # that takes fields over from other managers.
            self.requests["apply deployment"] += 1
            self.applied_by.add(request.query.get("fieldManager", ""))
            if not _true(request.query.get("force")):
                return _status(409, "Conflict", "Apply failed with 1 conflict")
            patch = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        _merge_containers(obj, patch)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return web.json_response(obj)

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["ns"]
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if _true(request.query.get("watch")):
            self.requests["watch pods"] += 1
            return await self._watch(request, selector, f"pods/{namespace}")
        self.requests["list pods"] += 1
        items = [
            obj
            for (ns, _), obj in sorted(self.pods.items())
            if ns == namespace and _matches(obj, selector)
        ]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
        )

    def put_pod(self, namespace: str, name: str, labels: dict[str, str], status: Obj) -> None:
        """Create or update a pod (as the kubelet reports its containers)."""
        old = copy.deepcopy(self.pods.get((namespace, name)))
        obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "status": copy.deepcopy(status),
        }
        self.pods[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, f"pods/{namespace}")

    def delete_pod(self, namespace: str, name: str) -> None:
        obj = self.pods.pop((namespace, name))
        self._record("DELETED", obj, obj, f"pods/{namespace}")

    async def _lease(self, request: web.Request) -> web.Response:
        self.requests["get lease"] += 1
        obj = self.leases.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _not_found("leases.coordination.k8s.io", request.match_info["name"])
        response = web.json_response(obj)
        if self.renew_leases_after_get:
            self.put_lease(obj["metadata"]["namespace"], obj["metadata"]["name"], obj["spec"])
        return response

    async def _put_lease(self, request: web.Request) -> web.Response:
        self.requests["put lease"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        obj = self.leases.get(key)
        if obj is None:
            return _not_found("leases.coordination.k8s.io", key[1])
        body = await request.json()
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent and sent != obj["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}": '
                "the object has been modified; please apply your changes to the latest version",
            )
        self.put_lease(key[0], key[1], body["spec"])
        return web.json_response(self.leases[key])

    def put_lease(self, namespace: str, name: str, spec: Obj) -> Obj:
        """Create or replace a Lease (as a leader acquiring or renewing it would)."""
        self._rv += 1
        obj = {
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self._rv)},
            "spec": copy.deepcopy(spec),
        }
        self.leases[(namespace, name)] = obj
        return obj

    def add_deployment(
        self, namespace: str, name: str, containers: list[Obj], replicas: int = 1
    ) -> None:
        self.deployments[(namespace, name)] = {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}},
        }


def _merge_containers(obj: Obj, patch: Obj) -> None:
    """Strategic merge patch, as far as Deployments need it here: maps merge recursively,
    null deletes a key, and `containers` and `env` lists merge by `name`."""
    for key, value in patch.items():
        if value is None:
            obj.pop(key, None)
        elif key in ("containers", "env") and isinstance(value, list):
            items = obj.setdefault(key, [])
            for change in value:
                target = next(
                    (item for item in items if item.get("name") == change.get("name")), None
                )
                if target is None:
                    items.append({k: v for k, v in change.items() if v is not None})
                else:
                    _merge_containers(target, change)
        elif isinstance(value, dict) and isinstance(obj.get(key), dict):
            _merge_containers(obj[key], value)
        elif isinstance(value, dict):
            obj[key] = {}
            _merge_containers(obj[key], value)
        else:
            obj[key] = value


def _true(value: str | None) -> bool:
    """Booleans in query strings, parsed like Go's strconv.ParseBool."""
    return (value or "").lower() in ("1", "t", "true")


def _not_found(resource: str, name: str) -> web.Response:
    return _status(404, "NotFound", f'{resource} "{name}" not found')


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )
