"""keda-tenancy-operator-forward's entry point: keeps OpenSSL out of the process.

The forwarder splices the adapter's TLS without terminating it, so it never needs the ssl
module, yet asyncio imports it whenever it can: 4.4 MiB of RSS (libssl, libcrypto and the
module), a fifth of the process. asyncio runs without it (as on a Python built without ssl),
so the name is blocked before anything imports asyncio (`sys.modules[name] = None` makes an
import fail, which asyncio expects). Only here, never on import of the forwarder's modules:
the operator-pod program and the tests load them beside code that needs TLS.
"""

from __future__ import annotations

import sys


def main() -> int:
    if "asyncio" not in sys.modules:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from operator_pod.grpc_forward import main as forward  # noqa: PLC0415 - after the block

    return forward()


if __name__ == "__main__":
    sys.exit(main())
