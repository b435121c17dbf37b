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
    """A frame that does not follow the protocol; ``reason`` says why, briefly.

    ``close_code`` is the WebSocket close code a receiver that will not take the frame
    closes with (DESIGN.md section 6): 1003 binary, 1007 not JSON or not a JSON object,
    1009 over the size limit; ``None`` for an object that is merely not a well-formed frame
    (no ``op``), which a receiver may log and skip.
    """

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


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
        raise BadFrame("binary frame", 1003)
    if len(message) > max_size:
        raise BadFrame(
            f"frame of {len(message)} characters exceeds the limit of {max_size}", 1009
        )
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"not JSON: {exc.__class__.__name__}", 1007) from None
    if not isinstance(obj, dict):
        raise BadFrame(f"JSON {type(obj).__name__}, not an object", 1007)
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise BadFrame("missing or non-string 'op'")
    return Frame(op, obj.get("data"))
