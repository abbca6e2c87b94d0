"""A stand-in for KEDA's operator binary: records the WATCH_NAMESPACE it was started
with, then behaves as told (run, crash, ignore SIGTERM, leave an orphan behind)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--exit-code", type=int, default=None, help="exit at once with this code")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--term-exit", type=int, default=0, help="exit code after SIGTERM")
    parser.add_argument(
        "--orphan", action="store_true", help="start a grandchild and let it be orphaned"
    )
    parser.add_argument(
        "--health-probe-bind-address",
        default="",
        help="serve /healthz and /readyz here, as KEDA does (SIGSTOP it to make it hang)",
    )
    args = parser.parse_args()
    if args.health_probe_bind_address:
        serve_probes(args.health_probe_bind_address)

    def record(event: str, **extra: object) -> None:
        with open(args.log, "a", encoding="utf-8") as log:
            log.write(
                json.dumps({"event": event, "pid": os.getpid(), "t": time.monotonic(), **extra})
                + "\n"
            )

    record(
        "start",
        watch_namespace=os.environ.get("WATCH_NAMESPACE"),
        has_env="WATCH_NAMESPACE" in os.environ,
        other=os.environ.get("KEEP_ME"),
    )
    if args.orphan:
        # sh exits at once; its background sleep is reparented to the nearest subreaper.
        subprocess.run(["sh", "-c", 'sleep 0.3 & echo $! > "$0"', args.log + ".orphan"], check=True)
    if args.exit_code is not None:
        record("exit", code=args.exit_code)
        sys.exit(args.exit_code)

    def on_term(signum: int, _frame: object) -> None:
        record("signal", signal=signum)
        if not args.ignore_term:
            sys.exit(args.term_exit)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        time.sleep(0.05)


class _Probes(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path in ("/healthz", "/readyz")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"not found")

    def log_message(self, *_: object) -> None:
        pass


def serve_probes(address: str) -> None:
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _Probes)
    threading.Thread(target=server.serve_forever, daemon=True).start()


if __name__ == "__main__":
    main()
