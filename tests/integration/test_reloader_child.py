"""The process manager with real child processes: environment, stop with grace period
and SIGKILL, start failures, the execve size limit, and reaping orphans without
stealing the operator's exit status."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from reloader.child import ChildProcess, ChildStartError, exit_status, reap_orphans
from reloader.desired import MAX_ENV_STRING_BYTES
from tests.reloader_harness import eventually

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w')); {rest}"
IGNORE_TERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)"


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


async def test_the_environment_is_ours_with_only_the_target_replaced(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    environ = {"PATH": os.environ.get("PATH", ""), "KEEP": "1", "WATCH_NAMESPACE": "stale"}
    child = ChildProcess(
        python(DUMP_ENV.format(rest="pass"), str(out)),
        "WATCH_NAMESPACE",
        grace_period_s=1,
        kill_wait_s=1,
        environ=environ,
    )
    await child.start("a,b")
    assert await child.wait() == 0
    seen = json.loads(out.read_text())
    seen.pop("LC_CTYPE", None)  # Python may coerce the C locale for its children
    assert seen == {**environ, "WATCH_NAMESPACE": "a,b"}


async def test_sigterm_then_exit_status() -> None:
    child = ChildProcess(
        python(
            "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\nwhile True: time.sleep(0.05)"
        ),
        "W",
        grace_period_s=5,
        kill_wait_s=1,
    )
    await child.start("a")
    await asyncio.sleep(0.3)  # let it install its handler
    assert await child.stop() == 7
    assert not child.running
    assert await child.stop() == 7  # stopping again reports the same status


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    child = ChildProcess(python(IGNORE_TERM), "W", grace_period_s=0.4, kill_wait_s=2)
    await child.start("a")
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert await child.stop() == 128 + signal.SIGKILL
    assert 0.4 <= time.monotonic() - started < 2


# A process started in the background by a shell without job control (a CI job, nohup ... &)
# inherits SIGINT ignored, and a Python child keeps it so. The child takes the default back
# first, as KEDA's Go runtime does (signal.Notify re-enables a SIGINT ignored at start), and
# says so by a file: only then is the forwarded signal's effect the child's own.
DEFAULT_INT = (
    "import pathlib, signal, sys, time\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "pathlib.Path(sys.argv[1]).touch()\nwhile True: time.sleep(0.05)"
)


async def test_forwarded_signal_and_default_death(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = ChildProcess(python(DEFAULT_INT, str(ready)), "W", grace_period_s=5, kill_wait_s=1)
    await child.start("a")
    await eventually(ready.exists)
    assert await child.stop(signal.SIGINT) == 128 + signal.SIGINT


@pytest.mark.parametrize(
    ("command", "code"),
    [(["/nonexistent/keda"], 127), (["/etc/hostname"], 126)],
)
async def test_start_failures_have_shell_exit_codes(command: list[str], code: int) -> None:
    child = ChildProcess(command, "W", grace_period_s=1, kill_wait_s=1)
    with pytest.raises(ChildStartError) as caught:
        await child.start("a")
    assert caught.value.code == code
    assert not child.running
    assert child.pid is None


@pytest.mark.skipif(os.sysconf("SC_PAGE_SIZE") != 4096, reason="MAX_ARG_STRLEN is 32 pages")
async def test_the_env_limit_is_the_kernels() -> None:
    """The limit desired.py enforces is exactly where execve starts to fail."""
    name = "WATCH_NAMESPACE"
    room = MAX_ENV_STRING_BYTES - len(name) - 2
    environ = {"PATH": os.environ.get("PATH", "")}
    child = ChildProcess(["true"], name, grace_period_s=1, kill_wait_s=1, environ=environ)
    await child.start("x" * room)
    assert await child.wait() == 0
    with pytest.raises(ChildStartError) as caught:
        await child.start("x" * (room + 1))
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.E2BIG


async def test_reaping_never_steals_the_operators_status() -> None:
    """Orphans are reaped by pid; the operator's exit status still reaches asyncio."""
    child = ChildProcess(python("import sys; sys.exit(5)"), "W", grace_period_s=1, kill_wait_s=1)
    stray = _spawn_stray()
    await child.start("a")
    managed = child.pid
    waiting = asyncio.ensure_future(child.wait())
    reaped: list[int] = []

    def swept() -> bool:
        reaped.extend(reap_orphans(child.is_managed))
        return stray in reaped

    await eventually(swept, timeout_s=5)
    assert await asyncio.wait_for(waiting, 5) == 5  # not 255: asyncio got the real status
    assert managed not in reaped
    assert _gone(stray)  # reaped, not left a zombie


def _spawn_stray() -> int:
    """A direct child that nobody waits for (non-blocking)."""
    return os.posix_spawn("/bin/true", ["true"], {})


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def test_nothing_is_reaped_while_a_spawn_is_in_flight() -> None:
    child = ChildProcess(python("pass"), "W", grace_period_s=1, kill_wait_s=1)
    child._spawning = True
    assert child.is_managed(12345)
    child._spawning = False
    assert not child.is_managed(12345)


@pytest.mark.parametrize(("returncode", "status"), [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_exit_status(returncode: int, status: int) -> None:
    assert exit_status(returncode) == status
