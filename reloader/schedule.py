"""When to restart: pure, with the clock passed in, so it is tested with fake time.

Bursts coalesce: a restart waits for a quiet period (`debounce`) after the last change,
but never longer than `max_wait` after the first one; restarts are at least
`min_interval` apart; a change that only removes namespaces is held for `removal_delay`
to ride out label flapping, while additions go at the pace of the debounce. Nothing
is pending when the desired value equals what is running.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    debounce_s: float = 2.0
    max_wait_s: float = 30.0
    min_interval_s: float = 5.0
    removal_delay_s: float = 0.0


class RestartSchedule:
    def __init__(self, policy: SchedulePolicy) -> None:
        self._policy = policy
        self._pending: str | None = None
        self._first_change_at = 0.0
        self._last_change_at = 0.0
        self._removal_only = False
        self._last_restart_at: float | None = None

    @property
    def pending(self) -> str | None:
        return self._pending

    def observe(self, now: float, desired: str, running: str | None) -> None:
        """Record the desired value after an event; `running` is what the child has."""
        if desired == running:
            self._pending = None
            return
        if desired == self._pending:
            return
        if self._pending is None:
            self._first_change_at = now
        self._pending = desired
        self._last_change_at = now
        wanted, current = set(desired.split(",")) - {""}, set((running or "").split(",")) - {""}
        self._removal_only = running is not None and wanted < current

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending restart is due (0: now), or None when nothing is pending."""
        if self._pending is None:
            return None
        policy = self._policy
        quiet_at = self._last_change_at + policy.debounce_s
        at = min(quiet_at, self._first_change_at + policy.max_wait_s)
        if self._removal_only:
            at = max(at, self._first_change_at + policy.removal_delay_s)
        if self._last_restart_at is not None:
            at = max(at, self._last_restart_at + policy.min_interval_s)
        return max(0.0, at - now)

    def restarted(self, now: float) -> None:
        self._pending = None
        self._last_restart_at = now


def crash_backoff_s(consecutive_failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff before restarting a child that exited on its own."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(max_s, initial_s * 2 ** (consecutive_failures - 1)))
