"""`keda-tenancy-grpc-forward --listen 127.0.0.1:9666 --target HOST:PORT`: deployment mode's
counterpart of process mode's `--forward-grpc`, as a sidecar of KEDA's metrics adapter.

In deployment mode the operator's pods are rolled: the old pod's operator exits, the adapter's
gRPC connection drops, and its reconnect is refused until the new pod has taken the Lease and
listens; gRPC's reconnect backoff (1 s, then 1.6 s, ...) then decides when the adapter tries
again, whenever the new operator is ready. With this sidecar the adapter dials loopback
instead: its connection is accepted at once and held (its TLS handshake waits) while the
sidecar dials the operator's Service every 50 ms, then spliced to it (TLS stays end to end;
the adapter keeps verifying the operator's certificate through its gRPC authority).

`/healthz`, `/livez`, `/readyz` (ready once listening) and `/metrics` (connections, bytes,
errors: reloader.forward_metrics) are served on `--health-port`.

On SIGTERM the adapter stops too: connections go on being forwarded until none is open (the
adapter has exited) or `--shutdown-grace` has passed, so the adapter's last requests finish.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from reloader.forward import Forwarder, parse_address
from reloader.forward_metrics import ForwardMetrics
from tenancy_common import health
from tenancy_common.cli import apply_env_defaults
from tenancy_common.durations import parse_duration
from tenancy_common.lifecycle import install_stop_signals, run_event_loop
from tenancy_common.logs import configure_logging

ENV_PREFIX = "KEDA_TENANCY_GRPC_FORWARD_"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keda-tenancy-grpc-forward", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9666", help="HOST:PORT the adapter dials")
    parser.add_argument("--target", default="", help="HOST:PORT of the operator's gRPC (required)")
    parser.add_argument(
        "--dial-wait", default="10s", help="how long a connection is held for the operator"
    )
    parser.add_argument(
        "--shutdown-grace", default="25s", help="after SIGTERM, forward at most this long"
    )
    parser.add_argument(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of /healthz /livez /readyz /metrics",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=8090,
        help="port of /healthz /livez /readyz /metrics (0 picks a free one)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    return parser


async def forward(
    listen: tuple[str, int],
    target: tuple[str, int],
    dial_wait_s: float,
    grace_s: float,
    health_address: tuple[str, int] = ("127.0.0.1", 0),
) -> None:
    registry = CollectorRegistry()
    forwarder = Forwarder(listen, target, dial_wait_s=dial_wait_s, metrics=ForwardMetrics(registry))
    signalled, stop = asyncio.Event(), asyncio.Event()
    install_stop_signals(signalled)

    def listening() -> str | None:
        return None if forwarder.port is not None else "not listening yet"

    app = health.build_health_app(registry, {"listening": listening})
    probes = asyncio.ensure_future(health.serve_until(app, *health_address, stop))
    serving = asyncio.ensure_future(forwarder.serve(stop))
    waiting = asyncio.ensure_future(signalled.wait())
    await asyncio.wait({serving, waiting, probes}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done() and not probes.done():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while forwarder.open_connections and loop.time() < deadline:  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.1)
        logger.info("stopping", extra={"open_connections": forwarder.open_connections})
        stop.set()
    waiting.cancel()
    stop.set()  # one of the listeners failed: stop the other too
    try:
        await serving  # raises when the listener could not be opened
    finally:
        await probes  # raises when the health port could not be opened


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    apply_env_defaults(parser, os.environ, ENV_PREFIX)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        listen, target = parse_address(args.listen), parse_address(args.target)
        dial_wait_s = parse_duration(args.dial_wait)
        grace_s = parse_duration(args.shutdown_grace)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level, args.log_format)
    if not 0 <= args.health_port <= 65535:
        parser.error("--health-port must be a port number (0 picks a free one)")
    health_address = (args.health_bind_address, args.health_port)
    run_event_loop(forward(listen, target, dial_wait_s, grace_s, health_address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
