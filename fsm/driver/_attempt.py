"""The attempt and the open connection it becomes: one task per link.

Theory of operation
-------------------

:func:`run_link` is the task a ``Dial`` starts. Under the link's cancel scope (its
deadline the connect time-out) it runs the adapter's ``prepare``, the WebSocket
handshake (:func:`fsm.driver._transport.open_websocket`), and waits for the ready frame
(frames before it are served). On ready the deadline is lifted, the lifecycle hears
``ready`` (and flushes), and the same task serves the open connection: the reader
here, the sender (:mod:`fsm.driver._sender`) and the heartbeat
(:mod:`fsm.driver._heartbeat`) beside it, in one nursery.

Every way out (a refusal, a close, a time-out, a lost socket, an adapter's verdict, a
cancellation from outside, an unexpected exception) is recorded on the link
(:mod:`fsm.driver._outcomes`), the adapter's ``release`` runs (shielded, bounded), the
requests still queued fail, and the link's end becomes **exactly one** lifecycle event
(``fail``, ``drop``, ``reject``, ``shutdown`` or ``close_finished``), unless the
lifecycle abandoned the link first. So CONNECTING is never left without an attempt.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio
import trio_websocket

from fsm.adapters._base import AttemptFailed, AttemptRejected
from fsm.core._frames import Frame
from fsm.core._redact import describe, redact
from fsm.driver._heartbeat import run_heartbeat
from fsm.driver._outcomes import (
    _is_wire_protocol_error,
    _root_cause,
    closed,
    rejected_handshake,
)
from fsm.driver._sender import fail_waiting_requests, run_sender
from fsm.driver._transport import open_websocket

if TYPE_CHECKING:
    from fsm.driver._host import Host
    from fsm.driver._link import Link

__all__ = ["run_link"]

# Hooks that free resources run shielded but must still end.
_RELEASE_TIMEOUT = 2.0


async def run_link(connector: Host, link: Link, timeout: float) -> None:
    link.scope.deadline = trio.current_time() + timeout
    interrupted = True  # until the link's own scope is left normally
    try:
        with link.scope:
            await _dial_and_serve(connector, link)
        interrupted = False
    finally:
        # Also when the task itself is cancelled from outside (the connector's
        # nursery is being cancelled): the lifecycle must still hear how the link
        # ended, or a pending aclose() would wait for a close that never reports.
        fail_waiting_requests(link)
        with trio.CancelScope(shield=True), trio.move_on_after(_RELEASE_TIMEOUT):
            try:
                await connector.protocol.release(link)
            except Exception as exc:
                connector._log.warning("release_failed", cause=redact(describe(exc)))
        if link.end is None:
            if interrupted:
                cause = "the connection task was cancelled"
                if link.closing:
                    link.set_end("close_finished", cause)
                else:
                    link.lost(cause)
            elif link.closing:
                link.set_end(
                    "close_finished", f"close timed out after {connector.close_timeout:g} s"
                )
            elif link.opened_at is None:
                link.lost(f"attempt timed out after {timeout:g} s")
        if link.gated:
            link.gated = False
            failed = not link.abandoned and link.end is not None and link.end[0] == "fail"
            assert connector._dial_gate is not None
            connector._dial_gate.finished(
                connector, trio.current_time(), False if failed else None
            )
        _finish(connector, link)


def _finish(connector: Host, link: Link) -> None:
    if link.abandoned or connector._link is not link:
        return
    connector._link = None
    event, cause = link.end if link.end is not None else ("", "ended without a cause")
    if link.closing:
        connector._report(connector._lc.close_finished)
    elif event == "reject":
        connector._report(connector._lc.reject, cause)
    elif event == "shutdown":
        connector._report(connector._lc.shutdown, cause)
    elif link.opened_at is None:
        connector._report(connector._lc.fail, cause, retry_after=link.retry_after)
    else:
        uptime = trio.current_time() - link.opened_at
        connector._report(connector._lc.drop, uptime, cause)


async def _dial_and_serve(connector: Host, link: Link) -> None:
    try:
        await connector.protocol.prepare(link)
        ws_url = connector.protocol.websocket_url(connector.url, connector.session_id)
        async with open_websocket(connector, link, ws_url) as ws:
            link.ws = ws
            frame = await _await_ready(connector, link, ws)
            await connector.protocol.on_ready(link, frame)
            # is_ready() checked these; kernel-ready's seq and frame limit (protocol v2).
            seq, max_frame_size = connector.protocol.ready_info(frame)
            del frame  # it can hold every cell's code; the adapter kept what it needs
            if link.abandoned or connector._link is not link:
                # Abandoned while its ready frame was on the way (a cancellation is
                # only delivered at the next checkpoint): a newer cycle owns the state.
                return
            if link.scope.cancel_called:
                # The connect time-out fired in the tick the ready frame arrived:
                # lifting the deadline cannot take back a cancellation already
                # delivered, so the attempt ends as timed out, not as an OPEN link
                # that drops at its first checkpoint.
                return
            link.scope.deadline = math.inf
            link.opened_at = trio.current_time()
            if link.gated:
                link.gated = False
                assert connector._dial_gate is not None
                connector._dial_gate.finished(connector, link.opened_at, True)
            connector._report(connector._lc.ready, seq, max_frame_size)
            if connector._link is link:
                await _serve(connector, link, ws)
    except AttemptRejected as exc:
        link.set_end("reject", redact(str(exc)))
    except AttemptFailed as exc:
        link.lost(redact(str(exc)))
    except trio_websocket.ConnectionRejected as exc:
        rejected_handshake(connector, link, ws_url, exc)
    except trio_websocket.ConnectionClosed as exc:
        closed(connector, link, exc)
    except trio_websocket.HandshakeError as exc:
        link.lost(_root_cause(exc.__cause__ or exc))
    except OSError as exc:
        # The exception itself, so that ConnectionFailed can chain it (its __cause__);
        # the lifecycle redacts it for log lines and Transition records.
        link.lost(_root_cause(exc))
    except Exception as exc:
        if _is_wire_protocol_error(exc) and not link.closing:
            # h11/wsproto refused what the server sent (trio-websocket 0.12.2 lets
            # these escape): a broken peer, not a bug of ours.
            what = "invalid handshake answer" if link.opened_at is None else "protocol error"
            link.lost(f"{what}: {redact(describe(exc))}")
        elif link.closing:  # e.g. a Pong arriving during aclose() (DESIGN.md section 9)
            connector._log.debug("close_error", cause=redact(describe(exc)))
            link.set_end("close_finished", "closed by the client")
        else:
            connector._log.error(
                "unexpected_error", cause=redact(describe(exc)), attempt=link.attempt
            )
            link.lost(redact(describe(exc)))


async def _receive(
    connector: Host, ws: trio_websocket.WebSocketConnection
) -> tuple[Frame, bool | None]:
    """The next frame that decodes, and whether it is a ready frame (None: a malformed one,
    logged). Frames that do not decode are logged and skipped."""
    while True:
        frame = connector._decode(await ws.get_message())
        if frame is not None:
            return frame, connector._is_ready(frame)


async def _await_ready(
    connector: Host, link: Link, ws: trio_websocket.WebSocketConnection
) -> Frame:
    while True:
        frame, ready = await _receive(connector, ws)
        if ready:
            return frame
        if ready is not None:
            connector._on_frame(link, frame)


async def _serve(connector: Host, link: Link, ws: trio_websocket.WebSocketConnection) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_sender, connector, link, ws, nursery.cancel_scope)
        if connector.heartbeat_interval is not None:
            nursery.start_soon(run_heartbeat, connector, link, ws, nursery.cancel_scope)
        finishing_close = False
        try:
            while True:
                frame, ready = await _receive(connector, ws)
                if ready:
                    connector._bad_frame("a second ready frame while open")
                elif ready is not None:
                    connector._on_frame(link, frame)
        except trio_websocket.ConnectionClosed as exc:
            if link.closing:
                # Our own close started (aclose() ends the message stream at once):
                # let the sender finish the close handshake, which the link's
                # close_timeout bounds; the sender ends this nursery when done.
                finishing_close = True
            else:
                closed(connector, link, exc)
        finally:
            if not finishing_close:
                nursery.cancel_scope.cancel()
