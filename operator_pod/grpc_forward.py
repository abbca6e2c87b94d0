"""`keda-tenancy-operator-forward --listen 127.0.0.1:9666 --target HOST:PORT`: the platform
layout's sidecar of KEDA's metrics adapter in deployment mode, stdlib only.

It does what keda-tenancy-grpc-forward (reloader/forward_cli.py) does, with the same flags and
a KEDA_TENANCY_GRPC_FORWARD_<FLAG> environment default for each, at a third less memory: no
prometheus_client and no aiohttp (this package's import contract, docs/operator-pod.md).

In deployment mode the operator's pods are rolled: the old pod's operator exits, the adapter's
gRPC connection drops, and its reconnect would be refused until the new pod listens, leaving
gRPC's backoff (1 s, 1.6 s, ...) to decide when it tries again. The adapter dials loopback
instead: its connection is accepted at once and held (its TLS handshake waits) while this
dials the operator's Service every 50 ms for at most --dial-wait, then spliced to it
(operator_pod.forward; TLS stays end to end, the adapter verifies the operator by name).

`/healthz`, `/livez`, `/readyz` (ready once listening) and `/metrics` (connections, bytes,
errors as keda_tenancy_grpc_forward_*, the names the old sidecar exposed, and the process's
own memory) are served on --health-port.

On SIGTERM the adapter stops too: connections go on being forwarded until none is open (the
adapter has exited) or --shutdown-grace has passed, so the adapter's last requests finish.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from operator_pod.config import apply_env_defaults
from operator_pod.forward import Forwarder, ForwardMetrics, parse_address
from operator_pod.probes import ProbeServer
from operator_pod.prometheus import Registry, process_metrics
from tenancy_common.durations import parse_duration
from tenancy_common.logs import configure_logging

PROGRAM = "keda-tenancy-operator-forward"
ENV_PREFIX = "KEDA_TENANCY_GRPC_FORWARD_"
"""The old sidecar's: a pod spec's env keeps working when it switches programs."""
METRICS_PREFIX = "keda_tenancy_"
"""ForwardMetrics adds grpc_forward_: the old sidecar's metric names, for the same alerts."""
GRACE_POLL_S = 0.1

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    listen: Address
    target: Address
    dial_wait_s: float = 10.0
    shutdown_grace_s: float = 25.0
    health_bind_address: str = "0.0.0.0"  # noqa: S104 - a pod listens on all its addresses
    health_port: int = 8090
    log_level: str = "info"
    log_format: str = "json"

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str]) -> ForwardConfig:
        """Exits with usage (status 2), as argparse does, for anything unusable."""
        parser = build_parser()
        apply_env_defaults(parser, environ, ENV_PREFIX)
        args = parser.parse_args(argv)
        try:
            listen, target = parse_address(args.listen), parse_address(args.target)
            dial_wait_s = parse_duration(args.dial_wait)
            shutdown_grace_s = parse_duration(args.shutdown_grace)
        except ValueError as exc:
            parser.error(str(exc))
        if not 0 <= args.health_port <= 65535:
            parser.error("--health-port must be a port number (0 picks a free one)")
        return cls(
            listen=listen,
            target=target,
            dial_wait_s=dial_wait_s,
            shutdown_grace_s=shutdown_grace_s,
            health_bind_address=args.health_bind_address,
            health_port=args.health_port,
            log_level=args.log_level,
            log_format=args.log_format,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Hold KEDA's metrics adapter's gRPC connection on loopback while the "
        "operator's pods roll, and splice it to the operator (docs/operator-pod.md).",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> (upper case, '_' for '-').",
    )
    add = parser.add_argument
    add("--listen", default="127.0.0.1:9666", help="HOST:PORT the adapter dials")
    add("--target", default="", help="HOST:PORT of the operator's gRPC (required)")
    add("--dial-wait", default="10s", help="how long a connection is held for the operator")
    add("--shutdown-grace", default="25s", help="after SIGTERM, forward at most this long")
    add(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - a pod listens on all its addresses
        help="address of /healthz /livez /readyz /metrics",
    )
    add(
        "--health-port",
        type=int,
        default=8090,
        help="port of /healthz /livez /readyz /metrics (0 picks a free one)",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("--log-format", default="json", choices=["json", "text"])
    return parser


async def forward(config: ForwardConfig, registry: Registry | None = None) -> None:
    """Forward until SIGTERM/SIGINT (then the grace) or until a listener fails (raised)."""
    registry = registry or Registry()
    process_metrics(registry)
    forwarder = Forwarder(
        config.listen,
        config.target,
        dial_wait_s=config.dial_wait_s,
        metrics=ForwardMetrics(registry, METRICS_PREFIX),
    )

    def listening() -> str | None:
        return None if forwarder.port is not None else "not listening yet"

    probes = ProbeServer(registry, readiness={"listening": listening})
    signalled, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    serving = asyncio.ensure_future(forwarder.serve(stop))
    health = asyncio.ensure_future(
        probes.serve(config.health_bind_address, config.health_port, stop)
    )
    waiting = asyncio.ensure_future(signalled.wait())
    try:
        await asyncio.wait({serving, health, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done() and not serving.done() and not health.done():
            logger.info(
                "stopping once the adapter's connections have closed",
                extra={"open_connections": forwarder.open_connections},
            )
            deadline = loop.time() + config.shutdown_grace_s
            while forwarder.open_connections and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(GRACE_POLL_S)
            logger.info("stopping", extra={"open_connections": forwarder.open_connections})
    finally:
        waiting.cancel()
        stop.set()  # the grace is over, or one listener failed: stop the other too
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        try:
            await serving  # raises when the listener could not be opened
        finally:
            await health  # raises when the health port could not be opened


def main(argv: Sequence[str] | None = None) -> int:
    config = ForwardConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(config.log_level, config.log_format)
    asyncio.run(forward(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
