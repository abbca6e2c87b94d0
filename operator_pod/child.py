"""One run of KEDA's operator binary, and the orphans that PID 1 must reap (as reloader/child.py,
which this package may not import).

The child gets a copy of our environment with only the target variable replaced.
Stopping is a signal, the grace period, SIGKILL, then a bounded wait, so a child that
ignores SIGTERM can never hold this process up forever.

Reaping: asyncio's child watcher waits for the operator by its pid. Orphans re-parented
to us (as PID 1, or as a subreaper) are peeked at with `waitid(WNOWAIT)` and reaped by
pid only when they are not the operator, so the operator's exit status is never stolen
from asyncio; while a spawn is in flight (its pid not yet known) nothing is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


class ChildStartError(Exception):
    """The operator could not be started; `code` is what a shell would report."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChildProcess:
    def __init__(
        self,
        command: Sequence[str],
        env_name: str | None,
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
        self._spawning = False
        self.value: str | None = None
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def running_for_s(self) -> float | None:
        """How long the running operator has run (monotonic); None when none runs."""
        return time.monotonic() - self._started_at if self.running else None

    def is_managed(self, pid: int) -> bool:
        """True for the operator's pid, and for any pid while a spawn is in flight."""
        return self._spawning or pid == self.pid

    def environment(self, value: str | None) -> dict[str, str]:
        env = dict(self._environ)
        if self._env_name is not None and value is not None:
            env[self._env_name] = value
        return env

    async def start(self, value: str | None) -> None:
        """Start the operator with `value` in the target variable (None: our environment as
        it is); ChildStartError when it cannot be executed."""
        assert not self.running, "stop the running child first"
        self._spawning = True
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._command, env=self.environment(value)
            )
        except OSError as exc:
            self._process = None
            code = 127 if exc.errno == errno.ENOENT else 126
            raise ChildStartError(code, f"cannot run {self._command[0]}: {exc}") from exc
        finally:
            self._spawning = False
        self.value = value
        self._started_at = time.monotonic()
        counted = {} if value is None else {"namespaces": len(value.split(","))}
        logger.info("operator started", extra={"pid": self._process.pid, **counted})

    async def wait(self) -> int:
        """The child's exit status as a shell reports it (128+N when killed by signal N)."""
        assert self._process is not None
        return exit_status(await self._process.wait())

    def send(self, sig: signal.Signals) -> None:
        if self.running and self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop the child (`sig`, grace period, SIGKILL, bounded wait).

        Returns the exit status of the last child, also when it had already exited;
        None when there was none or it survived SIGKILL (then `running` stays True).
        """
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            started = time.monotonic()
            self.send(sig)
            try:
                await asyncio.wait_for(process.wait(), self._grace_period_s)
                logger.info(
                    "operator stopped",
                    extra={
                        "pid": process.pid,
                        "signal": sig.name,
                        "took_s": round(time.monotonic() - started, 3),
                    },
                )
            except TimeoutError:
                logger.warning(
                    "operator ignored %s for the grace period, killing it",
                    sig.name,
                    extra={"pid": process.pid, "grace_period_s": self._grace_period_s},
                )
                self.send(signal.SIGKILL)
                try:
                    await asyncio.wait_for(process.wait(), self._kill_wait_s)
                except TimeoutError:
                    logger.error("operator survived SIGKILL", extra={"pid": process.pid})
                    return None
        code = process.returncode
        return exit_status(code) if code is not None else None


def exit_status(returncode: int) -> int:
    """asyncio's returncode (-N for signal N) as a shell and Kubernetes report it."""
    return 128 - returncode if returncode < 0 else returncode


def become_subreaper() -> bool:
    """Adopt orphaned descendants like PID 1 does (Linux), so they can be reaped here."""
    if os.getpid() == 1:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # noqa: PLC0415 - its memory only when not PID 1 (under a debugger, tests)

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap_orphans(is_managed: Callable[[int], bool]) -> list[int]:
    """Reap every exited child that is not the operator; the pids reaped.

    Stops at the operator (a zombie until asyncio collects it): the next sweep goes on.
    """
    reaped = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break  # no children at all
        if info is None or info.si_pid == 0 or is_managed(info.si_pid):
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
        reaped.append(info.si_pid)
    return reaped
