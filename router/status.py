"""Kubernetes `Status` bodies: the one shape every error from the router takes."""

from __future__ import annotations

import json
from dataclasses import dataclass

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True, slots=True)
class StatusError(Exception):
    """A request the router answers itself, with a Status of this code and message."""

    code: int
    message: str

    @property
    def reason(self) -> str:
        return REASONS.get(self.code, "Unknown")

    def body(self) -> bytes:
        return status_body(self.code, self.message)


def status_body(code: int, message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": REASONS.get(code, "Unknown"),
            "code": code,
        },
        separators=(",", ":"),
    ).encode()
