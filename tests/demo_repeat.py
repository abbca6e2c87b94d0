"""`make demo` N times in a row, as a new user runs it: each run is stopped with Ctrl-C (SIGINT)
once both tenants' values have been served through the router on several lines in a row, and
must then tear down and exit 0. Prints each run's time from start to the first values.

    python -m tests.demo_repeat [--runs 10] [--settled-lines 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"via-router=(\S+).*\| .*via-router=(\S+)")


def one_run(settled_lines: int, timeout_s: float) -> tuple[bool, float | None, str]:
    started = time.monotonic()
    demo = subprocess.Popen(
        ["make", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # SIGINT to make and the demo alike, as a terminal's Ctrl-C
    )
    assert demo.stdout is not None
    first_values: float | None = None
    settled = 0
    tail: list[str] = []
    for line in demo.stdout:
        tail = [*tail[-30:], line.rstrip()]
        found = ROW.search(line)
        if found and "-" not in found.groups():
            first_values = first_values or time.monotonic() - started
            settled += 1
            if settled >= settled_lines:
                break
        elif found:
            settled = 0
        if time.monotonic() - started > timeout_s:
            break
    os.killpg(demo.pid, signal.SIGINT)
    rest, _ = demo.communicate(timeout=300)
    tail += rest.splitlines()[-10:]
    # make itself gets the SIGINT too (as from a terminal) and reports "Interrupt"; what counts
    # is that the demo came up, then tore down and said so.
    ok = settled >= settled_lines and "[demo] stopped" in rest
    return ok, first_values, "\n".join(tail[-15:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--settled-lines", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    failed = 0
    for run in range(1, args.runs + 1):
        ok, first, tail = one_run(args.settled_lines, args.timeout)
        shown = f"{first:.0f}s" if first is not None else "never"
        print(f"run {run}: {'ok' if ok else 'FAILED'}; first values through the router after {shown}",
              flush=True)  # fmt: skip
        if not ok:
            failed += 1
            print(tail, flush=True)
    print(f"{args.runs - failed} of {args.runs} runs came up and stopped cleanly")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
