"""The last few answers per tenant and per namespace, for the explain command.

Bounded twice: `per_key` answers a key, `max_keys` keys a kind (namespaces come from request
paths, so the least recently answered key goes first). One deque append per forwarded request;
nothing is read on the request path.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

_MESSAGE_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Answer:
    at: float
    """Wall-clock time (Unix seconds)."""
    status: int
    message: str
    """Why it failed ("" for a success): the router's own Status message, or what the tenant's
    answer says (see `upstream_message`)."""
    answered: bool = True
    """The tenant's metrics server gave this answer (False: the router answered for it)."""

    @property
    def error(self) -> bool:
        return self.status >= 400

    @property
    def unavailable(self) -> bool:
        """No answer came from the tenant's metrics server (unreachable, hung, broken)."""
        return not self.answered and self.status >= 500 and self.status != 429


class _Rings:
    def __init__(self, per_key: int, max_keys: int) -> None:
        self._per_key = per_key
        self._max_keys = max_keys
        self._rings: collections.OrderedDict[str, collections.deque[Answer]] = (
            collections.OrderedDict()
        )

    def add(self, key: str, answer: Answer) -> None:
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= self._max_keys:
                self._rings.popitem(last=False)
            ring = self._rings[key] = collections.deque(maxlen=self._per_key)
        else:
            self._rings.move_to_end(key)
        ring.append(answer)

    def get(self, key: str) -> list[Answer]:
        ring = self._rings.get(key)
        return list(ring) if ring is not None else []


class RecentAnswers:
    def __init__(
        self, per_key: int = 20, max_keys: int = 1024, clock: Callable[[], float] = time.time
    ) -> None:
        self._tenants = _Rings(per_key, max_keys)
        self._namespaces = _Rings(per_key, max_keys)
        self._clock = clock

    def record(
        self, tenant: str, namespace: str, status: int, message: str = "", *, answered: bool
    ) -> None:
        answer = Answer(self._clock(), status, message[:_MESSAGE_LIMIT], answered)
        if tenant:
            self._tenants.add(tenant, answer)
        if namespace:
            self._namespaces.add(namespace, answer)

    def of_tenant(self, tenant: str) -> list[Answer]:
        return self._tenants.get(tenant)

    def of_namespace(self, namespace: str) -> list[Answer]:
        return self._namespaces.get(namespace)


def upstream_message(status: int, body: bytes | bytearray) -> str:
    """What a tenant's error answer says, without its message: a scaler's error may quote a
    connection string, and the explain output must hold no Secret. Its Status `reason`
    (`NotFound`, `InternalError`, ...) and code are kept; the message is in the tenant's logs."""
    reason = ""
    try:
        parsed = json.loads(body[:65536])
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
        reason = parsed["reason"][:64]
    return f"the metrics server answered {status}{' ' + reason if reason else ''}"
