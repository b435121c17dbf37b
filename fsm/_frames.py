"""The wire format of the reference kernel protocol: one JSON object per text frame.

Every frame is ``{"op": str, "data": object}`` (DESIGN.md section 6). This module is
pure: it encodes and decodes, and turns anything malformed into :class:`BadFrame`
with a short, loggable reason, so that neither the client nor the server ever
crashes on what a peer sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Frames larger than this (in characters of text) are refused before parsing.
MAX_FRAME_SIZE = 1 << 20


class BadFrame(ValueError):
    """A frame that does not follow the protocol; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    op: str
    data: Any


def encode_frame(op: str, data: Any) -> str:
    """Encode ``op`` and ``data`` as the JSON text of one frame."""
    return json.dumps({"op": op, "data": data}, separators=(",", ":"))


def decode_frame(message: str | bytes, *, max_size: int = MAX_FRAME_SIZE) -> Frame:
    """Decode one WebSocket message, raising :class:`BadFrame` when it is not a frame."""
    if isinstance(message, bytes | bytearray):
        raise BadFrame("binary frame")
    if len(message) > max_size:
        raise BadFrame(f"frame of {len(message)} characters exceeds the limit of {max_size}")
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise BadFrame(f"JSON {type(obj).__name__}, not an object")
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise BadFrame("missing or non-string 'op'")
    return Frame(op, obj.get("data"))
