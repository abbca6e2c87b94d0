"""An upstream's health, as the explain command reports it, from whichever sources know.

A source answers for one backend or says nothing (None). Today the one source is the request
path's fast-fail state; an active prober plugs in by implementing `HealthSource` and being
added to the Router's `health_sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.backends import Backend
from router.health_probes import HEALTHY, UNHEALTHY, HealthProbes
from router.upstreams import Upstreams


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    source: str
    """Who says so, e.g. `fast-fail` (the request path) or a prober's name."""
    healthy: bool | None
    """None: this source does not know (yet)."""
    detail: str


class HealthSource(Protocol):
    def health(self, backend: Backend) -> UpstreamHealth | None: ...


class FastFailHealth:
    """The request path's memory of a backend: down (failing fast) or answering."""

    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams

    def health(self, backend: Backend) -> UpstreamHealth | None:
        state = self._upstreams.fast_fail_state(backend.name)
        if state is None:
            return UpstreamHealth("fast-fail", None, "no request forwarded to it yet")
        if state.down:
            when = (
                f"requests fail fast with 503, the next try in {state.retry_in_s:.1f} s"
                if state.failing_fast
                else "the next request tries it again"
            )
            return UpstreamHealth("fast-fail", False, f"down ({state.reason}): {when}")
        if state.last_answer_age_s is None:
            return UpstreamHealth("fast-fail", None, "has not answered any request yet")
        detail = f"last answered {state.last_answer_age_s:.1f} s ago"
        if state.reason:
            detail += f" (was down before: {state.reason})"
        return UpstreamHealth("fast-fail", True, detail)


class ProbeHealth:
    """The active prober's last verdict on a backend (router/health_probes.py)."""

    def __init__(self, probes: HealthProbes, enabled: bool) -> None:
        self._probes = probes
        self._enabled = enabled

    def health(self, backend: Backend) -> UpstreamHealth | None:
        if not self._enabled:
            return None  # --health-probe-interval=0s: no prober to ask
        state = self._probes.state_of(backend.name)
        if state == HEALTHY:
            return UpstreamHealth("health-probe", True, "answered its last probe")
        if state == UNHEALTHY:
            reason = self._probes.reasons.get(backend.name, "")
            return UpstreamHealth("health-probe", False, f"failed its last probe: {reason}")
        return UpstreamHealth("health-probe", None, "not probed yet")
