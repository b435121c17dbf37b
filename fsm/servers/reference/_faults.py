"""The reference server's faults: every way it can misbehave, as data.

A :class:`Faults` says how to treat one TCP connection; every field's default means
"behave". The server reads :attr:`~fsm.server.KernelServer.faults` when a connection
arrives (a snapshot: a change applies to later connections), except ``freeze`` and the
``refuse_handshakes`` counter, which are live; :attr:`~fsm.server.KernelServer.fault_plan`
holds one ``Faults`` per future connection, for a scripted sequence. Assigning a field
wakes the server's waiters (``wait_until``) and thaws frozen connections at once, so
tests never poll. Handshake-level faults act in the HTTP front
(:mod:`fsm.servers.reference._front`), before the WebSocket handshake is parsed;
WebSocket-level ones in the session (:mod:`fsm.servers.reference._session`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fsm.core._frames import MAX_FRAME_SIZE, encode_frame

__all__ = ["Faults", "malformed_frames"]


def malformed_frames(*, oversize: int = MAX_FRAME_SIZE + 1) -> dict[str, str | bytes]:
    """Return named samples of malformed server frames, ready for :attr:`Faults.bad_frames`.

    ``oversized`` is a syntactically valid frame of more than ``oversize`` characters; with
    trio-websocket's default ``max_message_size`` (1 MiB) a client closes with 1009 before it
    ever decodes it, so a test that wants the client to *decode* it must raise that limit.
    """
    filler = "x" * max(oversize, 0)
    return {
        "not_json": "{this is not json",
        "json_array": "[1, 2, 3]",
        "json_scalar": "42",
        "missing_op": json.dumps({"data": {}}),
        "binary": b"\x00\x01\x02 binary frame",
        "oversized": encode_frame("cell-op", {"cell_id": "big", "output": filler}),
        "unknown_op": encode_frame("no-such-op", {"x": 1}),
        "unknown_ack": encode_frame("ack", {"seq": 987_654_321}),
        "second_kernel_ready": encode_frame(
            "kernel-ready", {"session_id": "bogus", "cell_ids": [], "codes": []}
        ),
    }


@dataclass
class Faults:
    """Misbehaviour to inject; every field's default means "behave".

    Assigning a field wakes :meth:`KernelServer.wait_until` waiters and frozen connections,
    so flipping ``freeze`` back to False takes effect at once.

    Handshake level (checked in this order, before routing and the token check):

    * ``silent``: accept TCP and never read nor send anything (the handshake is not counted);
      the connection is held until the client hangs up or the server stops.
    * ``hang_handshake``: read the HTTP upgrade request (counted in ``handshakes``), never answer.
    * ``http_200``: answer the upgrade request with a plain ``200 OK`` and close.
    * ``refuse_handshakes`` / ``refuse_status``: reject the next N upgrade requests with that
      HTTP status; the live counter on :attr:`KernelServer.faults` is decremented per refusal.
      ``refuse_retry_after``, if set, is sent as the refusal's ``Retry-After`` header.

    WebSocket level (after a successful handshake):

    * ``skip_kernel_ready``: never send ``kernel-ready`` (client frames are still served).
    * ``bad_frames``: messages (``str`` → text frame, ``bytes`` → binary frame) sent verbatim
      right after ``kernel-ready``; see :func:`malformed_frames`.
    * ``close_after_frames``: close once this many client frames have been received; ``0``
      closes right after ``kernel-ready`` (and ``bad_frames``). The K-th frame is applied
      (cells updated, handler called) but its ack is *not* sent: the hardest case for a client.
    * ``close_code`` / ``close_reason``: the close frame used by ``close_after_frames``.
    * ``freeze`` (live, every connection): stop reading client bytes, so pings go unanswered
      and frames are not served; the handshake request of a new connection is still read.
    """

    silent: bool = False
    hang_handshake: bool = False
    http_200: bool = False
    refuse_handshakes: int = 0
    refuse_status: int = 503
    refuse_retry_after: str | None = None
    skip_kernel_ready: bool = False
    bad_frames: list[str | bytes] = field(default_factory=list)
    close_after_frames: int | None = None
    close_code: int = 1011
    close_reason: str = "FAULT"
    freeze: bool = False
    _on_change: Callable[[], None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # Test code mutates faults directly; waking the server here is what lets a frozen
        # connection thaw, and wait_until() re-check, without any polling.
        hook = self.__dict__.get("_on_change")
        if hook is not None and name != "_on_change":
            hook()

    def reset(self) -> None:
        """Restore every fault to its default (behave)."""
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            if f.default_factory is not dataclasses.MISSING:
                setattr(self, f.name, f.default_factory())
            else:
                setattr(self, f.name, f.default)

    def _snapshot(self) -> Faults:
        # dataclasses.replace() goes through __init__, so the copy carries no change hook.
        return dataclasses.replace(self, bad_frames=list(self.bad_frames))
