"""What the portal checks of a ``.safetensors`` file before it copies one into the LoRA library:
its header, read from the front of the object (never the tensors).

The format (https://github.com/huggingface/safetensors#format): 8 bytes, little-endian, the
header's length N; N bytes of JSON mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` (begin, end) into the data that follows, plus an optional ``__metadata__``
object. The format caps N at 100 MB; the data ends where the last tensor ends.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER_MAX_BYTES = 100 * 1024 * 1024
METADATA = "__metadata__"


class SafetensorsError(ValueError):
    """Not a readable safetensors file; the message says what is wrong."""


def header_length(head: bytes) -> int:
    """The header length from the file's first 8 bytes."""
    if len(head) < 8:
        raise SafetensorsError("not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= HEADER_MAX_BYTES:
        raise SafetensorsError("not a safetensors file (bad header length)")
    return length


def tensor_entries(header: bytes, *, size: int) -> dict[str, dict[str, Any]]:
    """The tensors a header describes, checked against the file's ``size`` in bytes (the 8-byte
    length, the header, then exactly the tensors' data)."""
    try:
        parsed = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        raise SafetensorsError("its header is not JSON") from None
    if not isinstance(parsed, dict):
        raise SafetensorsError("its header is not a JSON object")
    tensors = {name: entry for name, entry in parsed.items() if name != METADATA}
    end = 0
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1] and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list)):
            raise SafetensorsError(f"tensor {name[:80]!r} has no valid dtype, shape and offsets")
        end = max(end, offsets[1])
    if not tensors:
        raise SafetensorsError("it holds no tensors")
    if 8 + len(header) + end != size:
        raise SafetensorsError(f"it is {size} bytes but its header describes "
                               f"{8 + len(header) + end} (truncated or padded)")
    return tensors
