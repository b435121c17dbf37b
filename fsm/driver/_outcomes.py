"""How a link ended, as the lifecycle must hear it: retry, reject or shut down.

A refused handshake is judged by its HTTP status, a close by its code and reason (the
adapter's ``classify_status`` and ``classify_close`` say which :class:`~fsm.protocols.Verdict`),
and the verdict is recorded on the link as the event its task will report: ``reject``
(fatal), ``shutdown``, or a retryable loss (``fail`` while dialing, ``drop`` once open).
A close the client's own transport made (a message too large, invalid UTF-8) is never
the server's verdict: it is retried. Causes are redacted and say what to do.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import trio
import trio_websocket

from fsm.adapters._base import Verdict, retry_after_seconds
from fsm.core._redact import redact, redact_url

if TYPE_CHECKING:
    from fsm.driver._host import Host
    from fsm.driver._link import Link

__all__ = ["classify", "closed", "rejected_handshake"]

_STATUS_HINTS: Final = {
    400: "the server did not take the handshake request; check the URL and the protocol",
    401: "the server wants credentials; pass a token",
    403: "the server refuses these credentials or this client",
    404: "no WebSocket endpoint at this URL; check the host, port and path",
    405: "the server does not take a WebSocket handshake (GET) at this URL; check the URL",
    410: "the endpoint is gone; check the URL",
    426: "the server wants another protocol at this URL; check the scheme and the path",
}


def rejected_handshake(
    connector: Host, link: Link, ws_url: str, exc: trio_websocket.ConnectionRejected
) -> None:
    """A refused handshake: fatal or retried by its status (DESIGN.md section 6)."""
    status = exc.status_code
    verdict = connector.protocol.classify_status(status)
    where = redact_url(ws_url)
    phrase = _status_phrase(status)
    if verdict is Verdict.REJECT:
        hint = _STATUS_HINTS.get(status, "retrying cannot help")
        cause = f"{where} answered the WebSocket handshake with HTTP {status}{phrase}: {hint}"
    else:
        cause = f"handshake refused with HTTP {status}{phrase} by {where}"
        for name, value in exc.headers:
            if name.lower() == b"retry-after":
                link.retry_after = retry_after_seconds(value)
    classify(link, verdict, cause)


def classify(link: Link, verdict: Verdict, cause: str) -> None:
    if verdict is Verdict.REJECT:
        link.set_end("reject", cause)
    elif verdict is Verdict.SHUTDOWN:
        link.set_end("shutdown", cause)
    else:
        link.lost(cause)


def closed(connector: Host, link: Link, exc: trio_websocket.ConnectionClosed) -> None:
    code = getattr(exc.reason, "code", None)
    reason = getattr(exc.reason, "reason", None)
    cause = f"closed with code {code}" + (f" ({redact(reason)})" if reason else "")
    if not _peer_closed(link.ws):
        # The client's own transport closed (1007 for invalid UTF-8, 1009 for a message
        # over its limit, 1006 for a lost socket): what the server sent was broken, the
        # server refused nothing. Retried like any loss.
        link.lost(cause)
        return
    classify(link, connector.protocol.classify_close(code, reason), cause)


def _root_cause(exc: BaseException) -> BaseException:
    """The exception that says what happened: trio reports a failed connect as an OSError
    without errno, caused by a group of the per-address errors; one of those (say
    ``ConnectionRefusedError: [Errno 111] ...``) is what a person wants to read."""
    group = exc.__cause__
    if isinstance(exc, OSError) and exc.errno is None and isinstance(group, BaseExceptionGroup):
        leaves = [leaf for leaf in group.exceptions if isinstance(leaf, OSError)]
        if leaves:
            return leaves[-1]
    return exc


def _status_phrase(status: int) -> str:
    try:
        return f" {HTTPStatus(status).phrase}"
    except ValueError:
        return ""


def _peer_closed(ws: trio_websocket.WebSocketConnection | None) -> bool:
    """Whether the server started the close (sent a close frame first).

    trio-websocket 0.12.2 reports its own closes (a protocol error, a message over its
    limit) with the same ConnectionClosed as the peer's; the event it sets when a close
    frame arrives first tells them apart. Without it, every close counts as the peer's.
    """
    event = getattr(ws, "_for_testing_peer_closed_connection", None)
    return not isinstance(event, trio.Event) or event.is_set()


def _is_wire_protocol_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the HTTP/WebSocket parsers (h11, wsproto)."""
    return any(cls.__module__.split(".")[0] in ("h11", "wsproto") for cls in type(exc).__mro__)
