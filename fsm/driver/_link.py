"""One link: an attempt and, once ready, the open connection it became.

A :class:`Link` is what the connector makes for each ``Dial`` and what adapters are
handed (it satisfies :class:`fsm.protocols.AdapterLink`). It holds the attempt's cancel
scope (whose deadline is the connect time-out until ready, then the close time-out once
a graceful close starts), the WebSocket once there is one, the outbox the sender task
reads (flushes, requests, the close command and the one "send what is unsent" marker),
and how the link ended: the first cause recorded wins, and the connector turns it into
exactly one lifecycle event when the link's task ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from fsm.core._effects import Flush
from fsm.core._errors import NotConnected
from fsm.core._frames import encode_frame

__all__ = ["Link"]


class _Request:
    __slots__ = ("data", "done", "error", "op", "result")

    def __init__(self, op: str, data: Any) -> None:
        self.op = op
        self.data = data
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.result: Any = None


class _CloseCommand:
    __slots__ = ()


class _SendUnsent:
    __slots__ = ()


_CLOSE = _CloseCommand()
# Posted once for any number of edits made while OPEN: the sender takes them all from
# the buffer when it gets there, so a cell typed into meanwhile goes out once, latest.
_SEND_UNSENT = _SendUnsent()
_Outgoing = Flush | _Request | _CloseCommand | _SendUnsent


class Link:
    """One attempt and, once ready, the open connection it became.

    Adapters use :meth:`send_frame`, :meth:`acknowledge`, ``session_id``,
    ``url`` (as given to :func:`~fsm.open_connector`) and ``context`` (a dict for
    their own per-link state).
    """

    def __init__(
        self, attempt: int, *, session_id: str, url: str, on_ack: Callable[[int], None]
    ) -> None:
        self.attempt = attempt
        self.session_id = session_id
        self.url = url
        self._on_ack = on_ack  # the connector's: an ack counts where the buffer lives
        self.context: dict[str, Any] = {}
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.scope = trio.CancelScope()
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[_Outgoing](math.inf)
        self.opened_at: float | None = None
        self.unsent_posted = False  # a _SEND_UNSENT is in the outbox
        self.abandoned = False
        self.closing = False
        #: Seconds a refused handshake's ``Retry-After`` asked to wait, if it did.
        self.retry_after: float | None = None
        self.gated = False  # admitted by a dial gate that has not heard how it ended
        # How the link ended: (lifecycle event, cause); the first cause recorded wins.
        self.end: tuple[str, BaseException | str] | None = None

    async def send_frame(self, op: str, data: Any) -> None:
        """Send one protocol frame on this link's WebSocket."""
        if self.ws is None:
            raise NotConnected("the link has no WebSocket yet")
        await self.ws.send_message(encode_frame(op, data))

    def acknowledge(self, seq: int) -> None:
        """Mark ``seq`` acknowledged (for adapters whose acks are not frames)."""
        self._on_ack(seq)

    def post(self, item: _Outgoing) -> bool:
        """Queue ``item`` for the sender; False if the outbox is closed.

        A closed outbox means the link is lost and being released: a buffered edit
        waits for the next flush, and the link reports how it ended on its own.
        """
        try:
            self.outbox_send.send_nowait(item)
        except trio.ClosedResourceError:
            return False
        return True

    def set_end(self, event: str, cause: BaseException | str) -> None:
        if self.end is None:
            self.end = (event, cause)

    @property
    def is_lost(self) -> bool:
        """Whether the link already ended in a retryable loss (``fail`` or ``drop``)."""
        return self.end is not None and self.end[0] in ("fail", "drop")

    def lost(self, cause: BaseException | str) -> None:
        """The link failed in a retryable way: ``fail`` while dialing, ``drop`` once open."""
        self.set_end("fail" if self.opened_at is None else "drop", cause)


def _lost_before_sent(op: str) -> NotConnected:
    return NotConnected(f"the connection was lost before request {op!r} completed; send it again")
