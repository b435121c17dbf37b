"""The reference server's HTTP front: one request head, then a fault, a reply or an upgrade.

Theory of operation
-------------------

Every TCP connection starts in :func:`serve_connection`, with the :class:`Faults` it was
given on arrival (the next one of the fault plan, else a snapshot of the live faults).
Handshake-level faults act before trio-websocket (wsproto) parses anything, in this
order:

1. ``silent``: nothing is read or sent; the connection is held until the peer hangs up;
2. the request head is read with h11 (:func:`fsm.servers._http.read_request`, bounded in
   size and by ``handshake_timeout``); a head h11 refuses gets 400;
3. a request that is not an upgrade is plain HTTP: ``GET /health`` 200, ``/ws`` 426,
   anything else 404;
4. an upgrade is counted in ``handshakes``; then ``hang_handshake`` (read, never
   answered), ``http_200`` (200 without an upgrade, then close), and a request wsproto
   would refuse gets 400 (trio-websocket would otherwise wait for it forever);
5. the handshake's status: a refusal of the fault plan or of the live
   ``refuse_handshakes`` counter, 404 for a path other than ``/ws``, 401 without the
   token; else accepted.

The upgrade is then handed to trio-websocket over a :class:`~fsm.servers._http.ReplayStream`
that replays the bytes already read and holds later ones back while the connection is
frozen (``freeze``: pings go unanswered). An accepted connection fences the session's
older ones, then becomes a session (:func:`fsm.servers.reference._session.run_session`);
a refused one is answered through wsproto, with ``Retry-After`` when the fault says so.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio_websocket import WebSocketRequest, wrap_server_stream

from fsm.core._logging import get_logger
from fsm.servers import _http
from fsm.servers.reference._session import ServerState, run_session

if TYPE_CHECKING:
    from fsm.servers.reference._faults import Faults
    from fsm.servers.reference._session import _Conn

__all__ = ["serve_connection"]


class FrontHost(ServerState, Protocol):
    """What the HTTP front reads, writes and calls of the
    :class:`~fsm.server.KernelServer` it serves (structurally: no import of the server
    module, which imports this one)."""

    faults: Faults
    handshake_timeout: float
    handshakes: int
    connections_opened: int
    sessions_seen: set[str]
    rejections: list[int]
    _token: str | None

    def _anonymous_id(self) -> str: ...

    def _fence(self, conn: _Conn) -> None: ...

    async def wait_until(self, predicate: Callable[[Any], bool]) -> None: ...

log = get_logger("fsm.server")

#: The largest HTTP request head read; a real client sends well under 1 KiB.
MAX_HEAD = 64 * 1024


async def serve_connection(server: FrontHost, conn: _Conn) -> None:
    """Serve one TCP connection: its handshake-level faults, then HTTP or a WebSocket."""
    faults = conn.faults
    if faults.silent:
        log.info("fault_injected", fault="silent")
        await _drain(conn.raw)
        return
    request: _http.Request | None = None
    with trio.move_on_after(server.handshake_timeout):
        try:
            request = await _http.read_request(conn.raw, max_head=MAX_HEAD)
        except _http.BadRequest:
            await conn.raw.send_all(_http.response(400, b'{"error":"bad request"}'))
            return
    if request is None:
        return
    if not request.is_upgrade:
        await _plain_http(conn, request)
        return
    server.handshakes += 1
    server._notify()
    if faults.hang_handshake:
        log.info("fault_injected", fault="hang_handshake")
        await _drain(conn.raw)
        return
    if faults.http_200:
        log.info("fault_injected", fault="http_200")
        await conn.raw.send_all(_http.response(200, b"not a websocket\n", "text/plain"))
        return
    if not request.is_valid_websocket:
        await _refuse_raw(server, conn, 400)
        return
    session_id = request.first("session_id") or server._anonymous_id()
    conn.session_id = session_id
    status = _handshake_status(server, conn, request)
    stream = _http.ReplayStream(
        conn.raw, request.raw, gate=functools.partial(_thawed, server, conn)
    )
    async with trio.open_nursery() as nursery:
        ws_request: WebSocketRequest | None = None
        with trio.move_on_after(server.handshake_timeout):
            # We validated the request ourselves, so wsproto yields it at once; the
            # time-out only guards against a wsproto refusal we failed to foresee.
            # trio-websocket counts characters; the session checks the UTF-8 size itself.
            ws_request = await wrap_server_stream(
                nursery, stream, max_message_size=server.max_frame_size
            )
        if ws_request is None:
            log.warning("handshake_timeout", session_id=session_id)
        elif status is None:
            ws = await ws_request.accept()
            # Fenced before anything else happens on the new connection, so no frame of
            # an older one can be applied once the new writer has been told the seq.
            server._fence(conn)
            conn.ws = ws
            server.connections_opened += 1
            server.sessions_seen.add(session_id)
            log.info("connection_opened", session_id=session_id)
            server._notify()
            await run_session(server, conn, ws)
        else:
            server.rejections.append(status)
            log.info("handshake_rejected", session_id=session_id, status=status)
            body = json.dumps({"error": _http.phrase(status)}).encode()
            retry_after = conn.faults.refuse_retry_after
            headers = [(b"Retry-After", retry_after.encode())] if retry_after else None
            await ws_request.reject(status, extra_headers=headers, body=body)
            server._notify()
        # The reader task has nothing left to do once the session (or rejection) is over.
        nursery.cancel_scope.cancel()


def _handshake_status(server: FrontHost, conn: _Conn, request: _http.Request) -> int | None:
    """The HTTP status to reject this upgrade with, or ``None`` to accept it."""
    if conn.planned:
        if conn.faults.refuse_handshakes > 0:
            return conn.faults.refuse_status
    elif server.faults.refuse_handshakes > 0:
        # The live counter: "refuse the next N" must count across connections.
        server.faults.refuse_handshakes -= 1
        return server.faults.refuse_status
    if request.path != "/ws":
        return 404
    # Constant-time comparison: the token is a secret (and is never logged).
    if not _http.authorized(request, server._token):
        return 401
    return None


async def _refuse_raw(server: FrontHost, conn: _Conn, status: int) -> None:
    server.rejections.append(status)
    log.info("handshake_rejected", session_id=conn.session_id, status=status)
    await conn.raw.send_all(_http.response(status, b'{"error":"bad websocket handshake"}'))
    server._notify()


async def _plain_http(conn: _Conn, request: _http.Request) -> None:
    if request.method == "GET" and request.path == "/health":
        await conn.raw.send_all(_http.response(200, b'{"status":"healthy"}'))
    elif request.path == "/ws":
        await conn.raw.send_all(_http.response(426, b'{"error":"upgrade required"}'))
    else:
        await conn.raw.send_all(_http.response(404, b'{"error":"not found"}'))


async def _drain(raw: trio.abc.Stream) -> None:
    """Swallow bytes until the peer hangs up: holding a connection without answering."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await raw.receive_some(4096):
            pass


async def _thawed(server: FrontHost, conn: _Conn) -> None:
    """Block while ``conn`` is frozen; a connection being closed is never frozen."""

    def thawed(s: FrontHost) -> bool:
        if conn.close_request is not None:
            return True
        return not (s.faults.freeze or (conn.planned and conn.faults.freeze))

    await server.wait_until(thawed)
