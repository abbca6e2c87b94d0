"""When to restart: pure, with the time passed in, so it is tested with fake time.

Bursts coalesce: a restart waits for a quiet period (`debounce`) after the last change,
but never longer than `max_wait` after the first one; restarts are at least
`min_interval` apart; a change that only removes namespaces is held for `removal_delay`
to ride out label flapping, unless a removed namespace now belongs to another tenant
(it must leave at once), while additions go at the pace of the debounce. A removal is never
put off further: it goes `debounce` (or its hold) after it was first seen, whatever changes
follow and however recent the last restart, since the RoleBinding manager removes the
namespace's binding a fixed time after it left (`--unbind-timeout`) and the old operator
must have been stopped by then. Nothing is pending when the desired value equals the one in
force. The minimum gap is between restarts of a running operator: starting one that is kept
stopped (an empty list in force, e.g. a new tenant whose first namespace was not readable yet)
waits only for the quiet period.
"""

from __future__ import annotations

from dataclasses import dataclass

from reloader.desired import split


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    debounce_s: float = 2.0
    """Quiet period after the last change before acting."""
    max_wait_s: float = 30.0
    """Act at most this long after the first change, even if changes keep coming."""
    min_interval_s: float = 5.0
    """Minimum time between two restarts (or patches)."""
    removal_delay_s: float = 0.0
    """Hold a change that only removes namespaces this long after it began."""


@dataclass(frozen=True, slots=True)
class CrashPolicy:
    max_restarts: int = 10
    """Consecutive failures (exits on its own, failed starts) before giving up."""
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 60.0
    """A run at least this long resets the count of consecutive failures."""

    def backoff_s(self, consecutive_failures: int) -> float:
        return crash_backoff_s(consecutive_failures, self.backoff_initial_s, self.backoff_max_s)


class RestartSchedule:
    def __init__(self, policy: SchedulePolicy) -> None:
        self._policy = policy
        self._pending: str | None = None
        self._first_change_at = 0.0
        self._last_change_at = 0.0
        self._hold_removal = False
        self._removal_at: float | None = None
        """When the pending value first removed a namespace from the one in force."""
        self._last_restart_at: float | None = None
        self._not_before: float | None = None
        self._from_stopped = False
        """The operator is kept stopped: putting the pending value in force restarts nothing."""

    @property
    def pending(self) -> str | None:
        """The value waiting to be put in force, None when there is nothing to do."""
        return self._pending

    def observe(
        self, now: float, desired: str, in_force: str | None, *, urgent: bool = False
    ) -> None:
        """Record the desired value (after any event); `in_force` is what the operator has,
        None before the first start. `urgent`: a removed namespace moved to another tenant."""
        if desired == in_force:
            self._pending = None
            self._not_before = None
            self._removal_at = None
            return
        if desired == self._pending and not (urgent and self._hold_removal):
            return  # same target: the quiet period is not extended by unrelated events
        if self._pending is None:
            self._first_change_at = now
        if desired != self._pending:
            self._last_change_at = now
        self._pending = desired
        self._from_stopped = in_force == ""
        wanted, current = split(desired), split(in_force)
        self._hold_removal = in_force is not None and wanted < current and not urgent
        if not current - wanted:
            self._removal_at = None
        elif self._removal_at is None:
            self._removal_at = now

    def due_in(self, now: float) -> float | None:
        """Seconds until the pending restart is due (0: now), or None when nothing is pending."""
        if self._pending is None:
            return None
        policy = self._policy
        quiet_at = self._last_change_at + policy.debounce_s
        at = min(quiet_at, self._first_change_at + policy.max_wait_s)
        if self._hold_removal:
            at = max(at, self._first_change_at + policy.removal_delay_s)
        if self._last_restart_at is not None and not self._from_stopped:
            at = max(at, self._last_restart_at + policy.min_interval_s)
        if self._removal_at is not None:
            removal_due = self._removal_at + policy.debounce_s
            if self._hold_removal:
                removal_due = max(removal_due, self._first_change_at + policy.removal_delay_s)
            at = min(at, removal_due)
        if self._not_before is not None:
            at = max(at, self._not_before)
        return max(0.0, at - now)

    def restarted(self, now: float) -> None:
        """The pending value (or another) was put in force at `now`."""
        self._pending = None
        self._not_before = None
        self._removal_at = None
        self._last_restart_at = now

    def failed(self, now: float, retry_in_s: float) -> None:
        """Putting the value in force failed: keep it pending, try again in `retry_in_s`."""
        self._not_before = now + retry_in_s


def crash_backoff_s(consecutive_failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: `initial_s` after the first failure, doubling up to `max_s`."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(max_s, initial_s * 2 ** min(consecutive_failures - 1, 62)))
