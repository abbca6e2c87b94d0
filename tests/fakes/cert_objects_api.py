"""A fake kube-apiserver for what keda-tenancy-certs touches, with the semantics it relies on:
Secrets and ConfigMaps with resourceVersions (create of an existing name is 409
AlreadyExists, a replace with a stale resourceVersion 409 Conflict), a namespace list, and
server-side-apply PATCHes of an APIService's and a ValidatingWebhookConfiguration's caBundle.
Namespaces are listed and watched as `FakeKubeAPI` serves them (resourceVersions, bookmarks,
410 after a compaction): `namespace_store` adds and deletes them while it runs.
Secrets are readable and writable only in `granted` namespaces (else 403), as RBAC would have it;
Events can be created there too. `failures` answers chosen requests with an API error for as
long as it holds them (a 409, a 422 from admission, a 500, ...).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.kube_api import FakeKubeAPI

Obj = dict[str, Any]


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
         "message": message},
        status=code,
    )  # fmt: skip


@dataclass
class CertObjectsAPI:
    granted: set[str] = field(default_factory=set)
    namespaces: list[str] = field(default_factory=list)
    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)  # (kind, ns, name)
    apiservices: dict[str, Obj] = field(default_factory=dict)
    webhooks: dict[str, Obj] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)
    applies: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # Names whose next replace finds the object changed by someone else (409 Conflict).
    conflict_next: set[str] = field(default_factory=set)
    # (method, namespace, name) -> (code, reason): answered so until removed. Name "*": any.
    failures: dict[tuple[str, str, str], tuple[int, str]] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)
    port: int = 0
    namespace_store: FakeKubeAPI = field(default_factory=FakeKubeAPI)
    _rv: int = 1
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        for name in self.namespaces:
            self.namespace_store.create(name)
        app = web.Application()
        app.router.add_get("/api/v1/namespaces", self.namespace_store._namespaces)
        for kind in ("secrets", "configmaps"):
            app.router.add_get(f"/api/v1/namespaces/{{ns}}/{kind}/{{name}}", self._get)
            app.router.add_post(f"/api/v1/namespaces/{{ns}}/{kind}", self._create)
            app.router.add_put(f"/api/v1/namespaces/{{ns}}/{kind}/{{name}}", self._replace)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        app.router.add_get("/apis/apiregistration.k8s.io/v1/apiservices/{name}", self._get_cluster)
        app.router.add_patch(
            "/apis/apiregistration.k8s.io/v1/apiservices/{name}", self._apply_cluster
        )
        base = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
        app.router.add_get(base, self._get_cluster)
        app.router.add_patch(base, self._apply_cluster)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self.namespace_store.stop()  # ends its watches
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "f", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "f", "user": {"token": "fake"}}],
            "contexts": [{"name": "f", "context": {"cluster": "f", "user": "f"}}],
            "current-context": "f",
        }

    def data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        return dict(self.objects[(kind, namespace, name)].get("data") or {})

    # -- handlers ----------------------------------------------------------------------

    def _kind(self, request: web.Request) -> str:
        return "secrets" if "/secrets" in request.path else "configmaps"

    def _forbidden(self, kind: str, namespace: str) -> web.Response | None:
        if kind in ("secrets", "events") and namespace not in self.granted:
            return _status(403, "Forbidden", f"{kind} is forbidden in {namespace}")
        return None

    def _failure(self, method: str, namespace: str, name: str) -> web.Response | None:
        failure = self.failures.get((method, namespace, name)) or self.failures.get(
            (method, namespace, "*")
        )
        if failure is None:
            return None
        code, reason = failure
        return _status(code, reason, f"injected {code} {reason} for {method} {namespace}/{name}")

    def events_in(self, namespace: str) -> list[Obj]:
        return [e for e in self.events if e["metadata"]["namespace"] == namespace]

    async def _create_event(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if denied := self._forbidden("events", ns):
            return denied
        body: Obj = await request.json()
        if body["metadata"].get("namespace", ns) != ns or body["involvedObject"]["namespace"] != ns:
            return _status(422, "Invalid", "the Event's namespace does not match")
        body["metadata"]["namespace"] = ns
        self.events.append(body)
        return web.json_response(body, status=201)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _get(self, request: web.Request) -> web.Response:
        kind, ns, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        if denied := self._forbidden(kind, ns) or self._failure("GET", ns, name):
            return denied
        obj = self.objects.get((kind, ns, name))
        if obj is None:
            return _status(404, "NotFound", f'{kind} "{name}" not found')
        return web.json_response(obj)

    async def _create(self, request: web.Request) -> web.Response:
        kind, ns = self._kind(request), request.match_info["ns"]
        if denied := self._forbidden(kind, ns):
            return denied
        body: Obj = await request.json()
        name = body["metadata"]["name"]
        if failed := self._failure("POST", ns, name):
            return failed
        if (kind, ns, name) in self.objects:
            return _status(409, "AlreadyExists", f'{kind} "{name}" already exists')
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[(kind, ns, name)] = body
        self.writes[f"{kind}/{ns}/{name}"] += 1
        return web.json_response(body, status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        kind, ns, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        if denied := self._forbidden(kind, ns) or self._failure("PUT", ns, name):
            return denied
        body: Obj = await request.json()
        current = self.objects.get((kind, ns, name))
        if current is None:
            return _status(404, "NotFound", f'{kind} "{name}" not found')
        if name in self.conflict_next:
            self.conflict_next.discard(name)
            current["metadata"]["resourceVersion"] = self._next_rv()
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[(kind, ns, name)] = body
        self.writes[f"{kind}/{ns}/{name}"] += 1
        return web.json_response(body)

    def _cluster(self, request: web.Request) -> dict[str, Obj]:
        return self.apiservices if "apiservices" in request.path else self.webhooks

    async def _get_cluster(self, request: web.Request) -> web.Response:
        obj = self._cluster(request).get(request.match_info["name"])
        if obj is None:
            return _status(404, "NotFound", "not found")
        return web.json_response(obj)

    async def _apply_cluster(self, request: web.Request) -> web.Response:
        store, name = self._cluster(request), request.match_info["name"]
        if request.content_type != "application/apply-patch+yaml":
            return _status(415, "UnsupportedMediaType", request.content_type)
        current = store.get(name)
        if current is None:
            return _status(404, "NotFound", "not found")
        patch: Obj = await request.json()
        self.applies.append(
            (
                name,
                request.content_type,
                request.query.get("fieldManager", ""),
                # kube-apiserver parses it as Go's strconv.ParseBool does.
                request.query.get("force", "") in ("1", "t", "T", "true", "TRUE", "True"),
            )
        )
        merged = copy.deepcopy(current)
        if "spec" in patch:
            merged.setdefault("spec", {}).update(patch["spec"])
        for hook in patch.get("webhooks", []):
            target = next(h for h in merged["webhooks"] if h["name"] == hook["name"])
            target.setdefault("clientConfig", {}).update(hook["clientConfig"])
        store[name] = merged
        return web.json_response(merged)
