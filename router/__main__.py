"""`keda-tenancy-router`: parse flags, configure logging, run until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Sequence

from router.app import Router
from router.config import RouterConfig
from router.explain_http import main as explain_main
from tenancy_common.lifecycle import install_stop_signals, run_event_loop
from tenancy_common.logs import configure_logging


async def _run(config: RouterConfig) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await Router(config).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["explain"]:
        return explain_main(args[1:])
    config = RouterConfig.from_args(args, os.environ)
    configure_logging(config.log_level, config.log_format)
    # Everything imported so far lives as long as the process: keep it out of the
    # collector's full passes, which otherwise walk every module's objects.
    gc.collect()
    gc.freeze()
    run_event_loop(_run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
