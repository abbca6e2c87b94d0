"""Local demo: the router in front of two example tenant metrics servers, on loopback.

Generates a throw-away PKI, starts two mTLS tenant backends (real requestheader
authentication), runs the router in front of them with a static tenancy file, and
prints what each tenant's namespace returns through the router, every two seconds,
until Ctrl-C. Nothing but Python and this repository is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import tempfile
from pathlib import Path

from tenancy_common.logs import configure_logging
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

TENANTS = {"tenant-a": ("tenant-a--web", "7"), "tenant-b": ("tenant-b--jobs", "42")}


async def main() -> None:
    configure_logging("warning", "text")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="keda-tenancy-demo-") as workdir:
        directory = Path(workdir)
        pki = Pki.create(directory)
        backends = {}
        for tenant, (_, value) in TENANTS.items():
            backend = TenantBackend(
                tenant,
                pki.path("backend.crt"),
                pki.path("backend.key"),
                pki.path("router_client_ca.crt"),
                value=value,
            )
            await backend.start()
            backends[tenant] = backend
        tenancy = directory / "tenancy.yaml"
        tenancy.write_text(
            "tenants:\n"
            + "".join(
                f"  {tenant}:\n    namespaces: [{ns}]\n    upstream: {backends[tenant].url}\n"
                for tenant, (ns, _) in TENANTS.items()
            )
        )
        argv = [a for a in router_args(pki, str(tenancy)) if not a.startswith("--secure-port")]
        argv += ["--secure-port=0", "--log-level=warning"]
        try:
            async with running_router(argv) as router:
                assert router.secure_port
                print(
                    f"router: https://127.0.0.1:{router.secure_port}  health: http://127.0.0.1:{router.health_port}/readyz"
                )
                print(f"certificates: {directory}   (Ctrl-C to stop)")
                aggregator = pki.client_context(pki.aggregator())
                user = (
                    "X-Remote-User",
                    "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                )
                for tick in itertools.count():
                    cells = []
                    for tenant, (ns, _) in TENANTS.items():
                        backends[tenant].value = str(int(TENANTS[tenant][1]) + tick % 5)
                        path = METRIC_PATH.format(ns=ns, metric="s0-demo")
                        response = await raw_request(router.secure_port, aggregator, path, (user,))
                        body = response.json()
                        value = (
                            body["items"][0]["value"]
                            if response.status == 200
                            else body.get("reason")
                        )  # type: ignore[index]
                        cells.append(f"{ns} -> {tenant}: {response.status} value={value}")
                    unknown = await raw_request(
                        router.secure_port,
                        aggregator,
                        METRIC_PATH.format(ns="nobody", metric="m"),
                        (user,),
                    )
                    print(" | ".join(cells) + f" | nobody: {unknown.status}", flush=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2)
                    if stop.is_set():
                        break
        finally:
            for backend in backends.values():
                await backend.stop()
    print("stopped")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
