"""A fake Kubernetes API server on loopback with the semantics our watches rely on.

Namespaces with a global, increasing resourceVersion; LIST with label selectors and
limit/continue; WATCH from a resourceVersion with selector transitions (an object that stops
matching arrives as DELETED, carrying its last matching state, one that starts matching as
ADDED, as kube-apiserver does), BOOKMARKs, timeoutSeconds, `410 Gone` for compacted versions,
and for a resourceVersion newer than the store's (after `restore`, as after an etcd restore)
kube-apiserver's answer: a 504 `Timeout` Status with the cause `ResourceVersionTooLarge` as the
HTTP response of a LIST (kube-apiserver first waits up to 3 s for its cache to catch up; here the
answer is immediate), and a WATCH kept open and silent (no event, no bookmark) until the store
passes that version, as kube-apiserver 1.35 does (`too_large_watch="error"`: the ERROR event
older watch caches sent). Test knobs drop or silence open watches, or end new ones with an ERROR
event (`watch_error`), or answer LISTs with an error Status (`list_error`). Also ConfigMaps and
Deployments (GET, strategic-merge PATCH of container env) for the router's and reloader's other
reads and writes, Pods (LIST and WATCH, with or without a label selector; graceful and forced
deletion, see `delete_pod`), and Leases (GET, PUT with the resourceVersion precondition: a stale
one is refused with 409 Conflict; DELETE; LIST and WATCH by `fieldSelector=metadata.name=...`,
as a single Lease is followed), Secrets (GET, DELETE with a uid precondition) and namespaced
custom objects (LIST, merge PATCH with a resourceVersion precondition; finalizers hold a
deleted one).

RBAC, for the operator's RoleBindings: RoleBindings (cluster-wide LIST and WATCH by label,
create, delete with a uid precondition, merge PATCH with a resourceVersion precondition;
finalizers hold a deleted one) with the API server's escalation check (a binding can only be
created for a ClusterRole in `bindable`, as `bind` with resourceNames grants), and
SelfSubjectAccessReviews answered for `self_subject` from the RoleBindings and `cluster_roles`
rules, so access follows bindings the way the authorizer does. `operations` records writes in
order, `timeline` binding creations and removals and published namespace sets; Events are kept
(`events`); `forbidden` answers chosen requests 403 (per namespace for ConfigMap patches). Pods
are also listed and watched cluster-wide (`/api/v1/pods`).
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
    """"namespaces", "pods/<namespace>", "configmaps/<namespace>" or "leases/<namespace>/<name>"."""


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
    rolebindings: dict[tuple[str, str], Obj] = field(default_factory=dict)
    cluster_roles: dict[str, list[Obj]] = field(default_factory=dict)
    """ClusterRole name -> its rules."""
    bindable: set[str] = field(default_factory=set)
    """ClusterRoles the caller may bind (`bind` on resourceNames)."""
    self_subject: tuple[str, str] = ("keda-alpha", "keda-operator")
    """The ServiceAccount (namespace, name) SelfSubjectAccessReviews are answered for."""
    custom_objects: dict[tuple[str, str, str], list[Obj]] = field(default_factory=dict)
    """(group, plural, namespace) -> objects, e.g. ScaledObjects left in a namespace."""
    secrets: dict[tuple[str, str], Obj] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)
    events: list[Obj] = field(default_factory=list)
    timeline: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(what, namespace, name, detail) in order: "rolebinding created" / "rolebinding gone"
    (the object left the store), "namespaces published" (detail: data.namespaces)."""
    """Events posted (core/v1), in order."""
    forbidden: set[str] = field(default_factory=set)
    """Requests answered 403 (as RBAC would), by their `requests` key, e.g. "get rolebinding"."""
    port: int = 0
    _rv: int = 1
    _compacted: int = 0
    _events: list[_Event] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _streams: dict[web.StreamResponse, asyncio.BaseTransport | None] = field(default_factory=dict)
    _silent: bool = False
    watch_error: Obj | None = None
    """A Status sent as the only (ERROR) event of each new namespace watch while set."""
    too_large_watch: str = "silent"
    """A watch from a resourceVersion past the store's: "silent" or "error" (see above)."""
    end_watches_at_once: bool = False
    """End each new namespace watch at once, with nothing in it (a proxy cutting them)."""
    list_error: Obj | None = None
    """A Status every namespace LIST is answered with (its code the HTTP status) while set."""
    _closing: bool = False
    _runner: web.AppRunner | None = None

    # -- server ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self._configmap)
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps", self._configmaps)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._deployment)
        app.router.add_patch(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._patch_deployment
        )
        app.router.add_delete(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._delete_deployment
        )
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        lease = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"
        app.router.add_get(lease, self._lease)
        app.router.add_get("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", self._leases)
        app.router.add_put(lease, self._put_lease)
        app.router.add_delete(lease, self._delete_lease)
        secret = "/api/v1/namespaces/{ns}/secrets/{name}"
        app.router.add_get(secret, self._get_secret)
        app.router.add_delete(secret, self._delete_secret)
        app.router.add_patch("/api/v1/namespaces/{ns}/configmaps/{name}", self._patch_configmap)
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        app.router.add_get(rbac + "/rolebindings", self._list_rolebindings)
        app.router.add_post(rbac + "/namespaces/{ns}/rolebindings", self._create_rolebinding)
        app.router.add_delete(
            rbac + "/namespaces/{ns}/rolebindings/{name}", self._delete_rolebinding
        )
        app.router.add_patch(rbac + "/namespaces/{ns}/rolebindings/{name}", self._patch_rolebinding)
        app.router.add_get(rbac + "/namespaces/{ns}/rolebindings/{name}", self._get_rolebinding)
        app.router.add_get("/api/v1/namespaces/{name}", self._get_namespace)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._list_custom)
        app.router.add_patch(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._patch_custom
        )
        app.router.add_post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self._access_review
        )
        app.router.add_post(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", self._rules_review
        )
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

    def snapshot(self) -> tuple[int, dict[str, Obj]]:
        """The namespaces as an etcd snapshot would keep them, for `restore`."""
        return self._rv, copy.deepcopy(self.namespaces)

    def restore(self, snapshot: tuple[int, dict[str, Obj]]) -> None:
        """An etcd restored from `snapshot` without a revision bump: the store's
        resourceVersion goes back, and what happened since never did. Watches are dropped
        (the API servers restart); clients holding a newer resourceVersion are answered
        "Too large resource version" until the store passes it."""
        self._rv, namespaces = snapshot[0], copy.deepcopy(snapshot[1])
        self.namespaces.clear()
        self.namespaces.update(namespaces)
        self._events = [e for e in self._events if e.resource_version <= self._rv]
        self.drop_watches()

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
        if self.list_error is not None:
            return web.json_response(self.list_error, status=int(self.list_error["code"]))
        wanted = request.query.get("resourceVersion") or "0"
        if int(wanted) > self._rv:
            return web.json_response(_too_large(int(wanted), self._rv), status=504)
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
        *,
        name: str | None = None,
    ) -> web.StreamResponse:
        """`name`: only that object's events (a `metadata.name` field selector)."""
        since = int(request.query.get("resourceVersion") or self._rv)
        timeout_s = float(request.query.get("timeoutSeconds") or 300)
        bookmarks = self.bookmarks and _true(request.query.get("allowWatchBookmarks"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._streams[response] = request.transport
        try:
            if self.end_watches_at_once and resource == "namespaces":
                return response
            if since > self._rv and self.too_large_watch == "error":
                error = {"type": "ERROR", "object": _too_large(since, self._rv)}
                await response.write(json.dumps(error).encode() + b"\n")
                return response
            if self.watch_error is not None and resource == "namespaces":
                error = {"type": "ERROR", "object": self.watch_error}
                await response.write(json.dumps(error).encode() + b"\n")
                return response
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
                    if e.resource_version > position
                    and (
                        e.resource == resource
                        or (resource == "pods" and e.resource.startswith("pods/"))
                    )
                    and name in (None, _event_name(e))
                ]:
                    position = event.resource_version
                    line = self._transition(event, selector)
                    if line is not None and not self._silent:
                        await response.write(json.dumps(line).encode() + b"\n")
                        sent = True
                if not sent and bookmarks and not self._silent and self._rv >= since:
                    kinds = {
                        "namespaces": "Namespace",
                        "pods": "Pod",
                        "leases": "Lease",
                        "configmaps": "ConfigMap",
                        "rolebindings": "RoleBinding",
                    }
                    mark = {
                        "kind": kinds[resource.partition("/")[0]],
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
            # As kube-apiserver's watch cache: the object as it last matched, at the new version.
            assert event.old is not None
            assert event.new is not None
            gone = copy.deepcopy(event.old)
            gone["metadata"]["resourceVersion"] = event.new["metadata"]["resourceVersion"]
            return {"type": "DELETED", "object": gone}
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
        self.operations.append("patch deployment")
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

    async def _delete_deployment(self, request: web.Request) -> web.Response:
        """The Deployment leaves the store at once (background propagation); its pods do not:
        the garbage collector and the kubelet remove them later (`delete_pod`,
        `finalize_pod`), and until then a LIST still returns them."""
        self.requests["delete deployment"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        if self.deployments.pop(key, None) is None:
            return _not_found("deployments.apps", key[1])
        self.operations.append(f"delete deployment {key[0]}/{key[1]}")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    async def _configmaps(self, request: web.Request) -> web.StreamResponse:
        """LIST and WATCH of one namespace's ConfigMaps (events only for those changed
        through put_configmap / delete_configmap)."""
        namespace = request.match_info["ns"]
        selector = _parse_selector(request.query.get("labelSelector", ""))
        name = _field_name(request)
        if _true(request.query.get("watch")):
            self.requests["watch configmaps"] += 1
            return await self._watch(request, selector, f"configmaps/{namespace}", name=name)
        self.requests["list configmaps"] += 1
        items = [
            obj
            for (ns, cm), obj in sorted(self.configmaps.items())
            if ns == namespace and _matches(obj, selector) and name in (None, cm)
        ]
        return web.json_response(
            {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
        )

    def put_configmap(
        self, namespace: str, name: str, labels: dict[str, str], data: dict[str, str]
    ) -> None:
        old = copy.deepcopy(self.configmaps.get((namespace, name)))
        obj: Obj = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "data": dict(data),
        }
        self.configmaps[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, f"configmaps/{namespace}")

    def delete_configmap(self, namespace: str, name: str) -> None:
        obj = self.configmaps.pop((namespace, name))
        self._record("DELETED", obj, obj, f"configmaps/{namespace}")

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        """One namespace's pods, or every namespace's (/api/v1/pods)."""
        namespace = request.match_info.get("ns")
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if _true(request.query.get("watch")):
            self.requests["watch pods"] += 1
            return await self._watch(
                request, selector, f"pods/{namespace}" if namespace else "pods"
            )
        self.requests["list pods"] += 1
        items = [
            obj
            for (ns, _), obj in sorted(self.pods.items())
            if namespace in (None, ns) and _matches(obj, selector)
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
        """Create or update a pod (as the kubelet reports its containers, or as a relabel
        does); a deletion already under way (deletionTimestamp) is kept."""
        old = copy.deepcopy(self.pods.get((namespace, name)))
        metadata = {**((old or {}).get("metadata") or {}), "name": name, "namespace": namespace}
        obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {**metadata, "labels": dict(labels)},
            "status": copy.deepcopy(status),
        }
        self.pods[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, f"pods/{namespace}")

    def delete_pod(self, namespace: str, name: str, *, grace_period_s: int = 0) -> None:
        """Delete a pod as `kubectl delete` does. With a grace period the API server only
        marks it (deletionTimestamp; a MODIFIED event) and the kubelet stops its containers,
        reports them terminated (`put_pod`) and then removes it (`finalize_pod`). With 0 (a
        force deletion) it goes at once, its last status as it was: DELETED, whatever runs."""
        if grace_period_s > 0:
            old = copy.deepcopy(self.pods[(namespace, name)])
            metadata = self.pods[(namespace, name)]["metadata"]
            metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            metadata["deletionGracePeriodSeconds"] = grace_period_s
            self._record("MODIFIED", old, self.pods[(namespace, name)], f"pods/{namespace}")
        else:
            self.finalize_pod(namespace, name)

    def finalize_pod(self, namespace: str, name: str) -> None:
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

    async def _leases(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["ns"]
        field, _, name = request.query.get("fieldSelector", "").partition("=")
        if field != "metadata.name" or not name:
            return _status(400, "BadRequest", "this fake lists Leases by metadata.name only")
        if _true(request.query.get("watch")):
            self.requests["watch lease"] += 1
            return await self._watch(request, [], f"leases/{namespace}/{name}")
        self.requests["list lease"] += 1
        obj = self.leases.get((namespace, name))
        return web.json_response(
            {
                "kind": "LeaseList",
                "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [obj] if obj is not None else [],
            }
        )

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
        old = copy.deepcopy(self.leases.get((namespace, name)))
        obj = {
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": copy.deepcopy(spec),
        }
        self.leases[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, f"leases/{namespace}/{name}")
        return obj

    async def _delete_lease(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.leases:
            return _not_found("leases.coordination.k8s.io", key[1])
        self.delete_lease(*key)
        self.operations.append(f"delete lease {key[0]}/{key[1]}")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    # -- Secrets (GET, DELETE with a uid precondition) ---------------------------------

    def put_secret(self, namespace: str, name: str, labels: dict[str, str]) -> Obj:
        self._rv += 1
        obj = {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels),
                "uid": f"uid-{namespace}-{name}-{self._rv}",
                "resourceVersion": str(self._rv),
            },
            "type": "kubernetes.io/tls",
            "data": {},
        }
        self.secrets[(namespace, name)] = obj
        return obj

    async def _get_secret(self, request: web.Request) -> web.Response:
        obj = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _not_found("secrets", request.match_info["name"])
        return web.json_response(obj)

    async def _delete_secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        obj = self.secrets.get(key)
        if obj is None:
            return _not_found("secrets", key[1])
        text = await request.text()
        uid = ((json.loads(text) if text else {}).get("preconditions") or {}).get("uid")
        if uid and uid != obj["metadata"]["uid"]:
            return _status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}")
        del self.secrets[key]
        self.operations.append(f"delete secret {key[0]}/{key[1]}")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def delete_lease(self, namespace: str, name: str) -> None:
        obj = self.leases.pop((namespace, name))
        self._record("DELETED", obj, obj, f"leases/{namespace}/{name}")

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

    # -- RBAC --------------------------------------------------------------------------

    def add_rolebinding(
        self,
        namespace: str,
        name: str,
        role: str,
        *,
        annotations: dict[str, str] | None = None,
        subject: tuple[str, str] | None = None,
        **labels: str,
    ) -> Obj:
        """A RoleBinding of `role` to `self_subject` (or `subject`: (namespace, name)), made by
        someone else (an admin, a tenant chart)."""
        sa_namespace, sa_name = subject or self.self_subject
        obj = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels),
                "annotations": dict(annotations or {}),
                "uid": f"uid-{namespace}-{name}-{self._rv + 1}",
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}],
        }
        old = copy.deepcopy(self.rolebindings.get((namespace, name)))
        self.rolebindings[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, "rolebindings")
        return obj

    def delete_rolebinding(self, namespace: str, name: str) -> None:
        """Someone else deletes a RoleBinding (finalizers hold it, as the API server does)."""
        self._delete_or_mark((namespace, name))

    # -- Events ------------------------------------------------------------------------

    async def _create_event(self, request: web.Request) -> web.Response:
        self.requests["create event"] += 1
        body = await request.json()
        body.setdefault("metadata", {})["namespace"] = request.match_info["ns"]
        self.events.append(body)
        return web.json_response(body, status=201)

    rules_incomplete: bool = False
    """Answer SelfSubjectRulesReviews as an authorizer that cannot list its rules would."""

    def rules_in(self, namespace: str) -> list[Obj]:
        """The rules `self_subject` holds in `namespace`, from the RoleBindings there."""
        sa_namespace, sa_name = self.self_subject
        rules: list[Obj] = []
        for (ns, _), binding in self.rolebindings.items():
            if ns != namespace:
                continue
            if any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == sa_name
                and s.get("namespace") == sa_namespace
                for s in binding.get("subjects") or []
            ):
                rules += self.cluster_roles.get(binding["roleRef"]["name"], [])
        return rules

    async def _rules_review(self, request: web.Request) -> web.Response:
        self.requests["selfsubjectrulesreview"] += 1
        body = await request.json()
        namespace = body["spec"]["namespace"]
        rules = [] if self.rules_incomplete else self.rules_in(namespace)
        status = {
            "resourceRules": rules,
            "nonResourceRules": [],
            "incomplete": self.rules_incomplete,
        }
        return web.json_response({**body, "status": status}, status=201)

    def allowed(self, namespace: str, group: str, resource: str, verb: str) -> bool:
        """What the authorizer says for `self_subject`: some RoleBinding in `namespace` binds
        it to a ClusterRole with a rule that matches."""
        sa_namespace, sa_name = self.self_subject
        for (ns, _), binding in self.rolebindings.items():
            if ns != namespace:
                continue
            subjects = binding.get("subjects") or []
            if not any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == sa_name
                and s.get("namespace") == sa_namespace
                for s in subjects
            ):
                continue
            for rule in self.cluster_roles.get(binding["roleRef"]["name"], []):
                if (
                    _matches_any(group, rule.get("apiGroups"))
                    and _matches_any(resource, rule.get("resources"))
                    and _matches_any(verb, rule.get("verbs"))
                ):
                    return True
        return False

    async def _list_rolebindings(self, request: web.Request) -> web.StreamResponse:
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if _true(request.query.get("watch")):
            self.requests["watch rolebindings"] += 1
            return await self._watch(request, selector, "rolebindings")
        self.requests["list rolebindings"] += 1
        items = [obj for _, obj in sorted(self.rolebindings.items()) if _matches(obj, selector)]
        return web.json_response(
            {
                "kind": "RoleBindingList",
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
        )

    async def _create_rolebinding(self, request: web.Request) -> web.Response:
        self.requests["create rolebinding"] += 1
        namespace = request.match_info["ns"]
        body = await request.json()
        name = body["metadata"]["name"]
        role = body.get("roleRef", {}).get("name", "")
        if namespace not in self.namespaces:
            return _not_found("namespaces", namespace)
        if self.namespaces[namespace]["metadata"].get("deletionTimestamp"):
            return _status(
                403,
                "Forbidden",
                f'rolebindings.rbac.authorization.k8s.io "{name}" is forbidden: unable to create '
                f"new content in namespace {namespace} because it is being terminated",
            )
        if role not in self.bindable:
            # The escalation check: no `bind` on this role, and we do not hold its rules.
            return _status(
                403,
                "Forbidden",
                f'rolebindings.rbac.authorization.k8s.io "{name}" is forbidden: user "fake" '
                "is attempting to grant RBAC permissions not currently held",
            )
        if (namespace, name) in self.rolebindings:
            return _status(
                409,
                "AlreadyExists",
                f'rolebindings.rbac.authorization.k8s.io "{name}" already exists',
            )
        body["metadata"].update(namespace=namespace, uid=f"uid-{namespace}-{name}-{self._rv + 1}")
        self.rolebindings[(namespace, name)] = body
        self._record("ADDED", None, body, "rolebindings")
        self.timeline.append(("rolebinding created", namespace, name, role))
        self.operations.append(f"create rolebinding {namespace}")
        return web.json_response(body, status=201)

    async def _delete_rolebinding(self, request: web.Request) -> web.Response:
        self.requests["delete rolebinding"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        obj = self.rolebindings.get(key)
        if obj is None:
            return _not_found("rolebindings.rbac.authorization.k8s.io", key[1])
        text = await request.text()
        uid = ((json.loads(text) if text else {}).get("preconditions") or {}).get("uid")
        if uid and uid != obj["metadata"]["uid"]:
            return _status(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{obj['metadata']['uid']}",
            )
        self._delete_or_mark(key)
        self.operations.append(f"delete rolebinding {key[0]}")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def _delete_or_mark(self, key: tuple[str, str]) -> None:
        """As the API server deletes: an object with finalizers only gets a deletionTimestamp."""
        obj = self.rolebindings[key]
        if obj["metadata"].get("finalizers"):
            old = copy.deepcopy(obj)
            obj["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
            self._record("MODIFIED", old, obj, "rolebindings")
        else:
            del self.rolebindings[key]
            self._record("DELETED", obj, obj, "rolebindings")
            self.timeline.append(("rolebinding gone", key[0], key[1], ""))

    def terminate_namespace(self, name: str) -> None:
        """A namespace deleted: Terminating, and (the namespace controller) its RoleBindings
        deleted, those with finalizers left pending on them."""
        self.delete(name, terminating=True)
        for key in [k for k in self.rolebindings if k[0] == name]:
            self._delete_or_mark(key)

    async def _get_rolebinding(self, request: web.Request) -> web.Response:
        self.requests["get rolebinding"] += 1
        if "get rolebinding" in self.forbidden:
            return _status(403, "Forbidden", "rolebindings is forbidden")
        obj = self.rolebindings.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return _not_found("rolebindings.rbac.authorization.k8s.io", request.match_info["name"])
        return web.json_response(obj)

    async def _patch_rolebinding(self, request: web.Request) -> web.Response:
        """JSON merge patch; a resourceVersion in it must match; an object being deleted goes
        once its last finalizer is removed."""
        self.requests["patch rolebinding"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        obj = self.rolebindings.get(key)
        if obj is None:
            return _not_found("rolebindings.rbac.authorization.k8s.io", key[1])
        patch = await request.json()
        expected = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if expected is not None and expected != obj["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified")
        old = copy.deepcopy(obj)
        _merge_patch(obj, patch)
        self.operations.append(f"patch rolebinding {key[0]}")
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            del self.rolebindings[key]
            self._record("DELETED", old, obj, "rolebindings")
            self.timeline.append(("rolebinding gone", key[0], key[1], ""))
        else:
            self._record("MODIFIED", old, obj, "rolebindings")
        return web.json_response(obj)

    async def _get_namespace(self, request: web.Request) -> web.Response:
        obj = self.namespaces.get(request.match_info["name"])
        if obj is None:
            return _not_found("namespaces", request.match_info["name"])
        return web.json_response(obj)

    changed_after_list: int = 0
    """This many custom-object LISTs are each followed by a write of someone else's to every
    object listed (a new resourceVersion), so a patch based on the list gets 409 Conflict."""

    async def _list_custom(self, request: web.Request) -> web.Response:
        m = request.match_info
        items = self.custom_objects.get((m["group"], m["plural"], m["ns"]), [])
        response = web.json_response(
            {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
        )
        if items and self.changed_after_list > 0:
            self.changed_after_list -= 1
            for obj in items:
                self._rv += 1
                obj["metadata"]["resourceVersion"] = str(self._rv)
        return response

    async def _patch_custom(self, request: web.Request) -> web.Response:
        """JSON merge patch of a namespaced custom object; a resourceVersion in it must match;
        one being deleted goes once its last finalizer is removed."""
        m = request.match_info
        items = self.custom_objects.get((m["group"], m["plural"], m["ns"]), [])
        obj = next((o for o in items if o["metadata"]["name"] == m["name"]), None)
        if obj is None:
            return _not_found(f"{m['plural']}.{m['group']}", m["name"])
        patch = await request.json()
        expected = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if expected is not None and expected != obj["metadata"].get("resourceVersion"):
            return _status(409, "Conflict", "the object has been modified")
        _merge_patch(obj, patch)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.operations.append(f"patch {m['plural']} {m['ns']}/{m['name']}")
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            items.remove(obj)
        return web.json_response(obj)

    async def _access_review(self, request: web.Request) -> web.Response:
        self.requests["selfsubjectaccessreview"] += 1
        body = await request.json()
        attributes = body["spec"]["resourceAttributes"]
        allowed = self.allowed(
            attributes.get("namespace", ""),
            attributes.get("group", ""),
            attributes["resource"],
            attributes["verb"],
        )
        return web.json_response({**body, "status": {"allowed": allowed}}, status=201)

    async def _patch_configmap(self, request: web.Request) -> web.Response:
        """JSON merge patch (RFC 7386): null removes a key."""
        self.requests["patch configmap"] += 1
        key = (request.match_info["ns"], request.match_info["name"])
        if f"patch configmap {key[0]}" in self.forbidden:
            return _status(403, "Forbidden", f'configmaps "{key[1]}" is forbidden')
        obj = self.configmaps.get(key)
        if obj is None:
            return _not_found("configmaps", key[1])
        patch = await request.json()
        _merge_patch(obj, patch)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.operations.append(f"patch configmap {key[1]}")
        if "namespaces" in (patch.get("data") or {}):
            value = str(obj["data"]["namespaces"])
            self.timeline.append(("namespaces published", key[0], key[1], value))
        return web.json_response(obj)

    def add_pod(
        self, namespace: str, name: str, labels: dict[str, str], containers: list[Obj]
    ) -> None:
        old = copy.deepcopy(self.pods.get((namespace, name)))
        obj: Obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"containers": containers},
        }
        self.pods[(namespace, name)] = obj
        self._record("MODIFIED" if old else "ADDED", old, obj, f"pods/{namespace}")


def _field_name(request: web.Request) -> str | None:
    """The name in a `fieldSelector=metadata.name=NAME` (the only field selector served here,
    as RBAC with resourceNames allows list/watch with exactly it); None without one."""
    selector = request.query.get("fieldSelector", "")
    if not selector:
        return None
    field, _, value = selector.partition("=")
    if field != "metadata.name" or not value:
        raise web.HTTPBadRequest(text=f"unsupported field selector {selector!r}")
    return value


def _event_name(event: _Event) -> str | None:
    obj = event.new or event.old
    return obj["metadata"].get("name") if obj is not None else None


def _matches_any(value: str, allowed: list[str] | None) -> bool:
    return bool(allowed) and ("*" in allowed or value in allowed)  # type: ignore[operator]


def _merge_patch(obj: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if value is None:
            obj.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(obj.get(key), dict):
                obj[key] = {}
            _merge_patch(obj[key], value)
        else:
            obj[key] = value


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


def _too_large(wanted: int, current: int) -> Obj:
    """apiserver storage.NewTooLargeResourceVersionError: a Timeout with its cause."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"Timeout: Too large resource version: {wanted}, current: {current}",
        "reason": "Timeout",
        "details": {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    }


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
