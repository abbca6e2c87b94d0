"""/debug/explain on the health port, and `keda-tenancy-router explain NAMESPACE`.

Who may ask: only a process in the router pod's own network namespace (loopback peers); any
other peer gets 403, whatever reaches the port (kubelet probes and Prometheus scrapes do; so
may other pods). So the answer needs no credentials beyond `kubectl exec` into the pod, and
whoever may exec there already holds the router's ServiceAccount token, which reads everything
the answer is built from. It holds no Secret: namespace names, the rule's labels, upstream URLs,
the router's own error messages and tenants' status codes (never their messages: a scaler error
may quote a connection string), and whether two named RBAC objects exist. With
`hostNetwork: true` loopback is the node's: any host-network process on that node may ask too.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from router.explain import Explainer
from router.status import StatusError

PATH = "/debug/explain"


def add_explain_route(app: web.Application, explainer: Explainer) -> None:
    async def explain(request: web.Request) -> web.Response:
        if not _loopback(request.remote):
            return web.json_response(
                {"error": "only from inside the router pod (kubectl exec)"}, status=403
            )
        try:
            report = await explainer.explain(request.query.get("namespace", ""))
        except StatusError as exc:
            return web.json_response({"error": exc.message}, status=exc.code)
        return web.json_response(report)

    app.router.add_get(PATH, explain)


def _loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


# -- the command -------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="keda-tenancy-router explain",
        description="Why a namespace's external metrics work or not, asked of the router "
        "running in this pod (run it with kubectl exec).",
    )
    parser.add_argument("namespace")
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="the router's health port (default: the --health-port of the pod's router, "
        "process 1, else $KEDA_TENANCY_ROUTER_HEALTH_PORT, else 8080)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    args = parser.parse_args(argv)
    port = args.health_port or _router_health_port()
    query = urllib.parse.urlencode({"namespace": args.namespace})
    url = f"http://127.0.0.1:{port}{PATH}?{query}"
    try:
        # Straight to loopback, whatever HTTP_PROXY the container has.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=15) as response:
            report = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        print(f"error: the router answered {exc.code}: {body}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the router at {url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _router_health_port(cmdline: str = "/proc/1/cmdline") -> int:
    """The port the router in this container serves health on: `kubectl exec` runs beside
    it, and the chart passes the port as a flag, not in the environment."""
    try:
        with open(cmdline, "rb") as file:
            words = file.read().decode("utf-8", "replace").split("\0")
    except OSError:
        words = []
    if any(word.endswith("keda-tenancy-router") for word in words[:2]):
        for i, word in enumerate(words):
            if word.startswith("--health-port="):
                return int(word.partition("=")[2])
            if word == "--health-port" and i + 1 < len(words):
                return int(words[i + 1])
    return int(os.environ.get("KEDA_TENANCY_ROUTER_HEALTH_PORT") or 8080)


def render(report: dict[str, Any]) -> str:
    """The answer for a person: the verdict first, then what it rests on."""
    lines = [str(report["verdict"]), ""]
    ownership = report.get("ownership")
    if ownership:
        lines.append(f"ownership: {ownership['verdict']}")
        lines += [
            f"  {rule['rule']}: {rule['reason']}"
            + (f" -> {', '.join(rule['proposes'])}" if rule["proposes"] else "")
            for rule in ownership["rules"]
        ]
    upstream = report.get("upstream")
    if upstream:
        lines.append(f"upstream: {upstream['url']}")
        for health in upstream["health"]:
            state = {True: "up", False: "DOWN", None: "unknown"}[health["healthy"]]
            lines.append(f"  {health['source']}: {state}: {health['detail']}")
    recent = report.get("recent")
    if recent:
        tenant = recent["tenant"]
        if ownership and ownership.get("tenant"):
            lines.append(
                f"tenant's last {tenant['answers']} requests: {tenant['errors']} failed, "
                f"{tenant['unavailable']} without a working metrics server"
            )
        for answer in recent["namespace"]:
            if answer["status"] >= 400:
                lines.append(f"  {answer['status']}: {answer['message']}")
    operator = report.get("operator")
    if operator:
        for key, label in (("watches", "operator watches it"), ("access", "operator access")):
            fact = operator[key]
            state = {True: "yes", False: "NO", None: "unknown"}[fact["known"]]
            lines.append(f"{label}: {state}: {fact['detail']}")
    return "\n".join(lines).rstrip()
