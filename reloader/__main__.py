"""`keda-tenancy-reloader [flags] -- COMMAND`: exits with the operator's exit status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from reloader.app import Reloader
from reloader.config import ReloaderConfig
from tenancy_common.lifecycle import install_stop_signals, run_event_loop
from tenancy_common.logs import configure_logging


async def _run(config: ReloaderConfig, result: list[int]) -> None:
    stop = asyncio.Event()
    reloader = Reloader(config)

    def forward(sig: signal.Signals) -> None:
        reloader.stop_signal = sig

    install_stop_signals(stop, forward)
    result.append(await reloader.run(stop))


def main(argv: Sequence[str] | None = None) -> int:
    config = ReloaderConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(config.log_level, config.log_format)
    result: list[int] = []
    run_event_loop(_run(config, result))
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
