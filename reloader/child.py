"""One run of the operator binary, and the orphans that PID 1 must reap.

The child gets a copy of our environment with only the target variable replaced.
Stopping is SIGTERM, the grace period, SIGKILL, then a bounded wait, so a child that
ignores SIGTERM can never hold the reloader up forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


class ChildProcess:
    def __init__(
        self,
        command: Sequence[str],
        env_name: str,
        *,
        grace_period_s: float,
        kill_wait_s: float,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._command = tuple(command)
        self._env_name = env_name
        self._grace_period_s = grace_period_s
        self._kill_wait_s = kill_wait_s
        self._environ = dict(os.environ if environ is None else environ)
        self._process: asyncio.subprocess.Process | None = None
        self.value: str | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, value: str) -> None:
        assert not self.running, "stop the running child first"
        env = dict(self._environ)
        env[self._env_name] = value
        self._process = await asyncio.create_subprocess_exec(*self._command, env=env)
        self.value = value
        self.started_at = asyncio.get_running_loop().time()
        logger.info(
            "child started", extra={"pid": self._process.pid, "namespaces": value.count(",") + 1}
        )

    async def wait(self) -> int:
        """The child's exit status as a shell reports it (128+N when killed by signal N)."""
        assert self._process is not None
        return exit_status(await self._process.wait())

    def send(self, sig: signal.Signals) -> None:
        if self.running and self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop the child (`sig`, grace period, SIGKILL); its exit status, None if not running."""
        if self._process is None:
            return None
        if self._process.returncode is None:
            self.send(sig)
            try:
                await asyncio.wait_for(self._process.wait(), self._grace_period_s)
            except TimeoutError:
                logger.warning("child ignored %s for the grace period, killing it", sig.name)
                self.send(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), self._kill_wait_s)
        code = self._process.returncode
        return exit_status(code) if code is not None else None


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def become_subreaper() -> bool:
    """Adopt orphaned descendants like PID 1 does (Linux), so they can be reaped here."""
    if os.getpid() == 1:
        return True
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap_orphans(managed: Callable[[], int | None]) -> list[int]:
    """Reap exited processes that are not the managed child (which asyncio collects).

    `waitid(..., WNOWAIT)` peeks without reaping, so the managed child's status is never
    stolen from asyncio's child watcher.
    """
    reaped = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        if info is None or info.si_pid == 0 or info.si_pid == managed():
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
        reaped.append(info.si_pid)
    return reaped
