"""Recognise KEDA's metrics adapter answering that the operator's gRPC service went away.

KEDA's adapter answers every external-metrics request by asking the operator over gRPC, and
the operator's gRPC server stops without draining when the operator exits (a rolled pod, a
namespace change). A request the old operator had accepted then fails in the adapter with a
gRPC `Unavailable` status, which the adapter's apiserver library turns into a 500 `Status`
whose message is the gRPC error: `rpc error: code = Unavailable desc = ...` (a plain error,
not an APIStatus, so `reason` is empty). The next attempt waits in the adapter for the new
operator (`WaitForConnectionReady`) and is served. Only that answer is recognised: status 500,
a `Status` of code 500 whose message starts with that prefix, encoded as JSON or as Kubernetes
protobuf (the HPA controller asks for protobuf). Anything else, a gzipped body included, is not.
"""

from __future__ import annotations

import json

_PREFIX = "rpc error: code = Unavailable desc = "
_PROTOBUF_MAGIC = b"k8s\x00"
_MAX_BODY = 64 * 1024  # the adapter's Status is a few hundred bytes


def is_operator_unavailable(body: bytes | bytearray) -> bool:
    """Whether a 500's body is the adapter's Status for a gRPC Unavailable from the operator."""
    if len(body) > _MAX_BODY:
        return False
    if body[:4] == _PROTOBUF_MAGIC:
        return _protobuf_status_unavailable(bytes(body[4:]))
    if body[:1] != b"{":
        return False
    try:
        status = json.loads(body)
    except ValueError:
        return False
    if not isinstance(status, dict):
        return False
    message = status.get("message")
    return (
        status.get("kind") == "Status"
        and status.get("code") == 500
        and isinstance(message, str)
        and message.startswith(_PREFIX)
    )


def _protobuf_status_unavailable(data: bytes) -> bool:
    # runtime.Unknown: 1 typeMeta {1 apiVersion, 2 kind}, 2 raw (the Status message).
    unknown = _fields(data)
    if unknown is None:
        return False
    type_meta = _fields(unknown.get(1, b""))
    raw = unknown.get(2)
    if type_meta is None or type_meta.get(2) != b"Status" or not isinstance(raw, bytes):
        return False
    # metav1.Status: 3 message, 6 code.
    status = _fields(raw)
    if status is None or status.get(6) != 500:
        return False
    message = status.get(3)
    return isinstance(message, bytes) and message.startswith(_PREFIX.encode())


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
