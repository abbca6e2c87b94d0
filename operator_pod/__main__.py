"""`keda-tenancy-operator-pod --mode=process|deployment [flags] -- /keda ...`"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from operator_pod.app import serve
from operator_pod.config import Config, ConfigError
from tenancy_common.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = Config.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"keda-tenancy-operator-pod: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
