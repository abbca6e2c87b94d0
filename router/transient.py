"""Recognise the two answers of KEDA's metrics adapter that a second attempt gets past.

KEDA's adapter answers every external-metrics request by asking the operator over gRPC, and
the adapter's apiserver library turns an error into a 500 `Status` whose message is the gRPC
error (a plain error, not an APIStatus, so `reason` is empty). Two of them are transient:

- `rpc error: code = Unavailable desc = ...`: the operator's gRPC server stops without
  draining when the operator exits (a rolled pod, a namespace change), so a request it had
  accepted fails. The next attempt waits in the adapter for the new operator
  (`WaitForConnectionReady`) and is served.
- `rpc error: code = Unknown desc = error when getting metric values no matching metrics found
  for ...`: KEDA's scalers cache for a ScaledObject is built by whichever comes first, a
  metrics request or the ScaledObject's reconcile (`performGetScalersCache` in
  `pkg/scaling/scale_handler.go`); when both build it at once (a new operator's first moments,
  a ScaledObject update), the later one replaces and closes the cache the request is reading,
  whose scalers then report no metric. The next attempt reads the cache that stayed. It is
  also the answer for a metric the ScaledObject does not have, which a second attempt answers
  the same.

Only those answers are recognised: status 500, a `Status` of code 500 whose message starts
with one of those prefixes, encoded as JSON or as Kubernetes protobuf (the HPA controller asks
for protobuf). Anything else, a gzipped body included, is not.
"""

from __future__ import annotations

import json

_REASONS = (
    ("rpc error: code = Unavailable desc = ", "unavailable"),
    (
        "rpc error: code = Unknown desc = error when getting metric values no matching metrics "
        "found for ",
        "scalers-cache",
    ),
)
_PROTOBUF_MAGIC = b"k8s\x00"
_MAX_BODY = 64 * 1024  # the adapter's Status is a few hundred bytes


def transient_reason(body: bytes | bytearray) -> str | None:
    """`unavailable` or `scalers-cache` when a 500's body is one of the adapter's transient
    Statuses (above); None for anything else."""
    if len(body) > _MAX_BODY:
        return None
    if body[:4] == _PROTOBUF_MAGIC:
        return _reason(_protobuf_status_message(bytes(body[4:])))
    if body[:1] != b"{":
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    if not isinstance(status, dict) or status.get("kind") != "Status" or status.get("code") != 500:
        return None
    message = status.get("message")
    return _reason(message) if isinstance(message, str) else None


def _reason(message: str | None) -> str | None:
    if message is None:
        return None
    return next((reason for prefix, reason in _REASONS if message.startswith(prefix)), None)


def _protobuf_status_message(data: bytes) -> str | None:
    """The message of a protobuf-encoded `Status` of code 500; None for anything else."""
    # runtime.Unknown: 1 typeMeta {1 apiVersion, 2 kind}, 2 raw (the Status message).
    unknown = _fields(data)
    if unknown is None:
        return None
    type_meta = _fields(unknown.get(1, b""))
    raw = unknown.get(2)
    if type_meta is None or type_meta.get(2) != b"Status" or not isinstance(raw, bytes):
        return None
    # metav1.Status: 3 message, 6 code.
    status = _fields(raw)
    if status is None or status.get(6) != 500:
        return None
    message = status.get(3)
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else None


def _fields(data: object) -> dict[int, bytes | int] | None:
    """Top-level fields of a protobuf message (varint and length-delimited; the last of each
    number wins), or None when it is not a well-formed message of those wire types."""
    if not isinstance(data, bytes):
        return None
    fields: dict[int, bytes | int] = {}
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        if key < 0:
            return None
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            if value < 0:
                return None
            fields[number] = value
        elif wire == 2:
            size, i = _varint(data, i)
            if size < 0 or i + size > end:
                return None
            fields[number] = data[i : i + size]
            i += size
        elif wire == 1 and i + 8 <= end:
            i += 8
        elif wire == 5 and i + 4 <= end:
            i += 4
        else:
            return None
    return fields


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """(value, next index), or (-1, i) when truncated or longer than 10 bytes."""
    value = shift = 0
    for j in range(i, min(i + 10, len(data))):
        byte = data[j]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, j + 1
        shift += 7
    return -1, i
