"""`keda-tenancy-controller [flags]`: the platform controller (docs/controller.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from controller.app import serve
from controller.config import ControllerConfig
from tenancy_common.lifecycle import run_event_loop
from tenancy_common.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    config = ControllerConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(config.log_level, config.log_format)
    status: list[int] = []

    async def run() -> None:
        status.append(await serve(config))

    run_event_loop(run())
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
