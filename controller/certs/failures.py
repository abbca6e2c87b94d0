"""keda-tenancy-certs' failing keys, with no I/O: why a namespace failed (one of a fixed set of
reasons, a metric label), when to retry it (per-key exponential backoff), and when to say so
again in an Event. A key is a namespace: one tenant's broken Secret or refused write stays with
that tenant; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from controller.certs.pki import AuthorityError

RETRY_INITIAL = datetime.timedelta(seconds=1)
RETRY_MAX = datetime.timedelta(minutes=5)
# Events expire (kube-apiserver's --event-ttl, 1h): a failure that lasts is said again.
EVENT_REPEAT = datetime.timedelta(minutes=30)


class SecretTypeError(ValueError):
    """A Secret we keep exists with another type than kubernetes.io/tls: it is not ours to
    rewrite (and an admission policy refuses us writing any other type)."""

    reason = "secret-wrong-type"


class SecretFailedError(Exception):
    """What failed, on which Secret of the namespace (the Event's object)."""

    def __init__(self, secret: str, cause: BaseException, context: str = "") -> None:
        super().__init__(f"{secret}: {cause}")
        self.secret = secret
        self.cause = cause
        self.context = context


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason, message): the reason is one of a fixed set, so a label of bounded cardinality."""
    if isinstance(exc, SecretFailedError):
        reason, message = classify(exc.cause)
        where = f"{exc.context}: " if exc.context else ""
        return reason, f"Secret {exc.secret}: {where}{message}"
    if isinstance(exc, AuthorityError):
        return exc.reason, str(exc)
    if isinstance(exc, SecretTypeError):
        return exc.reason, str(exc)
    if isinstance(exc, ApiException):
        reason = {
            403: "api-forbidden",
            404: "api-not-found",
            409: "api-conflict",
            422: "api-invalid",
        }.get(exc.status or 0, "api-error")
        return reason, f"{exc.status}: {_api_message(exc)}"
    if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError):
        return "api-unreachable", f"{type(exc).__name__}: {exc}"
    return "internal", f"{type(exc).__name__}: {exc}"


def _api_message(exc: ApiException) -> str:
    """The Status message kube-apiserver sent (read_json puts the body in `reason`)."""
    text = str(exc.body or exc.reason or "")
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return str(json.loads(text)["message"])[:300]
    return text[:300]


def event_reason(reason: str) -> str:
    """`ca-key-encrypted` -> `CaKeyEncrypted`: Events' reasons are CamelCase."""
    return "".join(part.capitalize() for part in reason.split("-"))


@dataclass
class KeyFailure:
    secret: str
    reason: str
    message: str
    failures: int
    retry_at: datetime.datetime
    evented: tuple[str, datetime.datetime] | None = None


class FailingKeys:
    """The keys whose last attempt failed, each with its own backoff."""

    def __init__(
        self,
        initial: datetime.timedelta = RETRY_INITIAL,
        maximum: datetime.timedelta = RETRY_MAX,
    ) -> None:
        self._initial = initial
        self._max = maximum
        self._failing: dict[str, KeyFailure] = {}

    def failed(
        self, key: str, secret: str, reason: str, message: str, now: datetime.datetime
    ) -> tuple[KeyFailure, bool]:
        """Record a failed attempt; (its state, whether to emit an Event now): on a new or
        changed reason, and again once the last Event may have expired."""
        previous = self._failing.get(key)
        failures = previous.failures + 1 if previous else 1
        delay = min(self._max, self._initial * 2 ** min(failures - 1, 30))
        state = KeyFailure(
            secret=secret,
            reason=reason,
            message=message,
            failures=failures,
            retry_at=now + delay,
            evented=previous.evented if previous else None,
        )
        emit = (
            state.evented is None
            or state.evented[0] != reason
            or now - state.evented[1] >= EVENT_REPEAT
        )
        if emit:
            state.evented = (reason, now)
        self._failing[key] = state
        return state, emit

    def forget(self, key: str) -> KeyFailure | None:
        """The key succeeded, or is gone: its backoff starts over."""
        return self._failing.pop(key, None)

    def get(self, key: str) -> KeyFailure | None:
        return self._failing.get(key)

    def waiting(self, key: str, now: datetime.datetime) -> bool:
        """Failed, and its retry is not due yet."""
        state = self._failing.get(key)
        return state is not None and state.retry_at > now

    def due(self, now: datetime.datetime) -> list[str]:
        return sorted(k for k, s in self._failing.items() if s.retry_at <= now)

    def next_retry(self) -> datetime.datetime | None:
        return min((s.retry_at for s in self._failing.values()), default=None)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._failing))  # a copy: forgetting while iterating is fine

    def __len__(self) -> int:
        return len(self._failing)
