"""AWS event-stream messages (``application/vnd.amazon.eventstream``), as SageMaker's
InvokeEndpointWithResponseStream sends them and botocore's ``EventStream`` reads them.

A message is a prelude (total length, headers length, CRC-32 of those 8 bytes), the headers
(name length, name, value type 7 = string, value length, value), the payload and a CRC-32 of all
that precedes it; integers are big-endian.
"""

from __future__ import annotations

import json
import struct
import zlib

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    encoded = bytearray()
    for name, value in headers.items():
        key, text = name.encode("utf-8"), value.encode("utf-8")
        encoded += struct.pack(">B", len(key)) + key
        encoded += struct.pack(">BH", _STRING, len(text)) + text
    return bytes(encoded)


def message(headers: dict[str, str], payload: bytes) -> bytes:
    head = _headers(headers)
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event: ``data`` is its ``Bytes`` (the event payload)."""
    return message({":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                    ":message-type": "event"}, data)


def stream_exception(kind: str, text: str, *, error_code: str | None = None) -> bytes:
    """A modelled exception event (``ModelStreamError``, ``InternalStreamFailure``): botocore
    raises it from the stream's iterator."""
    payload: dict[str, str] = {"Message": text}
    if error_code:
        payload["ErrorCode"] = error_code
    return message({":exception-type": kind, ":content-type": "application/json",
                    ":message-type": "exception"}, json.dumps(payload).encode("utf-8"))
