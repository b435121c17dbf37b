"""The sender: the one task that writes to an open link, in order.

Everything an open link sends goes through its outbox to this task, so frames never
interleave: the flush on entering OPEN (the adapter sends its frames), requests (their
callers wait for the answer or the error), the edits made while OPEN (one marker takes
every edit not sent yet from the buffer, latest code only), and the close command,
after which it closes the WebSocket (1000) and ends the link. A send that fails ends
the link as the failure says; a request that can no longer be sent wakes its caller
with :class:`~fsm.NotConnected`, never leaves it waiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
import trio_websocket

from fsm.adapters._base import AttemptFailed, AttemptRejected
from fsm.core._effects import Flush
from fsm.core._errors import RequestFailed
from fsm.core._redact import describe, redact
from fsm.driver._link import _SEND_UNSENT, _lost_before_sent, _Request
from fsm.driver._outcomes import closed

if TYPE_CHECKING:
    from fsm.driver._host import Host
    from fsm.driver._link import Link

__all__ = ["fail_waiting_requests", "run_sender"]


async def run_sender(
    connector: Host,
    link: Link,
    ws: trio_websocket.WebSocketConnection,
    done: trio.CancelScope,
) -> None:
    """Send what ``link``'s outbox holds, in order, until it closes; a failure ends ``done``."""
    try:
        async for item in link.outbox_receive:
            if isinstance(item, Flush):
                await connector.protocol.flush(link, item.batch)
            elif item is _SEND_UNSENT:
                link.unsent_posted = False  # edits made during the sends post anew
                for edit in connector._lc.take_unsent():
                    await connector.protocol.send_edit(link, edit)
            elif isinstance(item, _Request):
                answered = False
                try:
                    item.result = await connector.protocol.request(link, item.op, item.data)
                    answered = True
                except (AttemptFailed, AttemptRejected, ValueError) as exc:
                    item.error = RequestFailed(
                        f"request {item.op!r} failed: {redact(str(exc))}"
                    )
                finally:
                    # Out of the outbox already: whatever else ends this send (a lost
                    # link, a cancellation) must still wake the caller.
                    if not answered and item.error is None:
                        item.error = _lost_before_sent(item.op)
                    item.done.set()
            else:
                await ws.aclose(1000, "client closing")
                link.set_end("close_finished", "closed by the client")
                done.cancel()
                return
    except trio_websocket.ConnectionClosed as exc:
        closed(connector, link, exc)
        done.cancel()
    except AttemptRejected as exc:
        link.set_end("reject", redact(str(exc)))
        done.cancel()
    except (AttemptFailed, OSError) as exc:
        link.lost(redact(describe(exc)))
        done.cancel()
    except Exception as exc:
        connector._log.error("unexpected_error", cause=redact(describe(exc)), task="sender")
        link.lost(redact(describe(exc)))
        done.cancel()


def fail_waiting_requests(link: Link) -> None:
    link.outbox_send.close()
    while True:
        try:
            item = link.outbox_receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        if isinstance(item, _Request) and not item.done.is_set():
            item.error = _lost_before_sent(item.op)
            item.done.set()
