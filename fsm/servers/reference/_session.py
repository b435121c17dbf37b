"""The reference server's sessions: what an accepted WebSocket does, frame by frame.

Theory of operation
-------------------

:func:`run_session` serves one accepted connection (its ``_Conn``): unless the
connection was fenced on arrival, it sends ``kernel-ready`` (the session's highest seq,
the cells, ``max_frame_size``), then the fault's ``bad_frames``, then reads client
frames until a close is requested (by the server, a fault, a fence or a frame it will
not take) or the client goes. It always keeps reading: trio-websocket's reader stops
answering pings and closes while its one-slot queue is full. A close request cancels
only the idle wait for the next message, never a send, and the close handshake is done
here, by the task that owns the reader.

Each frame goes to :func:`_dispatch`: a fenced connection's frames are counted and
dropped (one writer per session); binary (1003), oversized (1009) and undecodable
(1007) frames close the connection; ``instantiate`` and ``edit`` update the cells by
seq (per session and cell, only a greater seq writes) and are acked (except the last
frame of ``close_after_frames``); any other op goes to the handler
(:func:`default_handler` unless the server was given one).
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from fsm.core._frames import BadFrame, Frame, decode_frame, encode_frame
from fsm.core._logging import get_logger
from fsm.servers.reference._faults import Faults

__all__ = ["Handler", "ServerState", "Session", "SessionState", "default_handler", "run_session"]

log = get_logger("fsm.server")

#: What a handler may be: a plain function or a coroutine function (its result is awaited).
Handler = Callable[["Session", Frame], Awaitable[None] | None]


@dataclass(eq=False)
class _Conn:
    """Book-keeping for one TCP connection, from accept to close."""

    raw: trio.abc.Stream
    faults: Faults
    planned: bool
    #: TCP accept order: of two connections of one session, the later accepted is newer.
    order: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    session_id: str | None = None
    ws: WebSocketConnection | None = None
    #: Set when the server wants this WebSocket closed; the session task performs the close
    #: itself, because trio-websocket's close handshake needs its reader task alive.
    close_request: tuple[int, str] | None = None
    #: Wraps only the idle wait in get_message(), so a close request never interrupts a send.
    recv_scope: trio.CancelScope | None = None
    frames: int = 0
    #: Set when a newer connection for the same session was accepted: nothing this one
    #: carries is applied any more (protocol v2's one writer per session).
    fenced: bool = False


@dataclass(eq=False)
class SessionState:
    """What the server remembers of one session across its connections (protocol v2)."""

    #: The highest seq received from the session's writer (0 if none); sent in kernel-ready.
    seq: int = 0
    #: Per cell, the seq of the frame whose code the server holds for this session.
    cell_seqs: dict[str, int] = field(default_factory=dict)
    #: The accept order of the session's writer (the newest connection accepted for it).
    writer: int = 0
    #: Frames that arrived on a fenced connection and were not applied.
    fenced_frames: int = 0
    #: Cell codes not applied because the frame's seq was not above the one held.
    stale_codes: int = 0


class ServerState(Protocol):
    """What sessions read, write and call of the :class:`~fsm.server.KernelServer` that
    accepted them (which satisfies this structurally: this module need not import the
    server module, which imports it). ``Session.server`` is that server."""

    cells: dict[str, str]
    sessions: dict[str, SessionState]
    max_frame_size: int
    close_timeout: float
    handler: Handler
    frames_received: collections.Counter[str]
    bad_frames_received: int
    received: list[tuple[str, Frame]]
    acks_sent: list[int]
    client_close_codes: list[int]

    def _notify(self) -> None: ...

    def _request_close(self, conn: _Conn, code: int, reason: str) -> None: ...


class Session:
    """What a handler sees of one accepted WebSocket connection."""

    def __init__(self, server: ServerState, conn: _Conn, ws: WebSocketConnection) -> None:
        self.server = server
        self._conn = conn
        self._ws = ws

    @property
    def session_id(self) -> str:
        """The ``session_id`` of the handshake (generated when the client sent none)."""
        assert self._conn.session_id is not None
        return self._conn.session_id

    async def send(self, op: str, data: Any) -> None:
        """Send one frame; raises ``trio_websocket.ConnectionClosed`` if the peer is gone."""
        await self._ws.send_message(encode_frame(op, data))

    async def send_raw(self, message: str | bytes) -> None:
        """Send one message verbatim (text for ``str``, binary for ``bytes``)."""
        await self._ws.send_message(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Ask for the connection to be closed with ``code``/``reason`` once the handler returns."""
        self.server._request_close(self._conn, code, reason)


async def default_handler(session: Session, frame: Frame) -> None:
    """Answer ``run`` with a ``cell-op`` echoing the cell's code; log any other op."""
    if frame.op != "run":
        log.warning("unknown_op", session_id=session.session_id, op=frame.op)
        return
    cell_id = frame.data.get("cell_id") if isinstance(frame.data, dict) else None
    if not isinstance(cell_id, str):
        log.warning("bad_frame", session_id=session.session_id, reason="run: no 'cell_id'")
        return
    code = session.server.cells.get(cell_id)
    if code is None:
        await session.send("cell-op", {"cell_id": cell_id, "output": None, "error": "unknown cell"})
    else:
        output = {"mimetype": "text/plain", "data": code}
        await session.send("cell-op", {"cell_id": cell_id, "output": output})


async def run_session(server: ServerState, conn: _Conn, ws: WebSocketConnection) -> None:
    """Serve one accepted WebSocket until it closes: kernel-ready, then its frames."""
    faults = conn.faults
    session = Session(server, conn, ws)
    try:
        if conn.fenced:
            pass  # a newer connection of this session was accepted first: close at once
        elif not faults.skip_kernel_ready:
            state = server.sessions.get(session.session_id)
            ready = {
                "session_id": session.session_id,
                "cell_ids": list(server.cells),
                "codes": list(server.cells.values()),
                "seq": state.seq if state is not None else 0,
                "max_frame_size": server.max_frame_size,
            }
            await ws.send_message(encode_frame("kernel-ready", ready))
        else:
            log.info("fault_injected", fault="skip_kernel_ready", session_id=session.session_id)
        for bad in faults.bad_frames if not conn.fenced else ():
            await ws.send_message(bad)
        if faults.close_after_frames == 0:
            server._request_close(conn, faults.close_code, faults.close_reason)
        while conn.close_request is None:
            message: str | bytes | None = None
            # Always keep draining get_message(): trio-websocket's reader blocks (and stops
            # answering pings and closes) while its one-slot queue is full.
            with trio.CancelScope() as conn.recv_scope:
                message = await ws.get_message()
            conn.recv_scope = None
            if message is None:
                break  # cancelled by a close request
            conn.frames += 1
            last = (
                faults.close_after_frames is not None
                and conn.frames >= faults.close_after_frames
            )
            await _dispatch(server, session, message, ack=not last)
            if last:
                log.info(
                    "fault_injected", fault="close_after_frames", session_id=session.session_id
                )
                server._request_close(conn, faults.close_code, faults.close_reason)
    except ConnectionClosed:
        pass  # the client closed or vanished (or trio-websocket closed 1009); reported below
    closed = ws.closed
    if closed is not None and closed.code == 1009 and conn.close_request is None:
        # trio-websocket refused an oversized message itself, before _dispatch saw it.
        _refused(server, conn, 1009, "frame too large")
    if conn.close_request is not None and ws.closed is None:
        code, reason = conn.close_request
        with trio.move_on_after(server.close_timeout):
            await ws.aclose(code, reason)
        log.info(
            "connection_closed",
            session_id=session.session_id,
            code=code,
            reason=reason,
            by="server",
        )
    else:
        closed = ws.closed
        log.info(
            "connection_closed",
            session_id=session.session_id,
            code=closed.code if closed else None,
            reason=closed.reason if closed else None,
            by="client",
        )

def _refused(server: ServerState, conn: _Conn, code: int, reason: str) -> None:
    """Close ``conn`` for a frame the server will not take (1003, 1007, 1009)."""
    server.client_close_codes.append(code)
    server.bad_frames_received += 1
    log.warning("frame_refused", session_id=conn.session_id, code=code, reason=reason)
    server._request_close(conn, code, reason)


async def _dispatch(
    server: ServerState, session: Session, message: str | bytes, *, ack: bool
) -> None:
    conn = session._conn
    if conn.fenced:
        # A newer connection of this session was accepted: this one is no longer the
        # writer, and a late frame must never overwrite what the newer one sent.
        state = server.sessions.get(session.session_id)
        if state is not None:
            state.fenced_frames += 1
        log.info("fenced_frame_ignored", session_id=session.session_id)
        server._notify()
        return
    if isinstance(message, bytes | bytearray):
        _refused(server, conn, 1003, "binary frames are not accepted")
        return
    if len(message) > server.max_frame_size // 4 and (
        len(message.encode("utf-8", "surrogatepass")) > server.max_frame_size
    ):
        _refused(server, conn, 1009, "frame too large")
        return
    try:
        frame = decode_frame(message, max_size=server.max_frame_size)
        update = _parse_update(frame) if frame.op in ("instantiate", "edit") else None
    except BadFrame as exc:
        if exc.close_code is not None:
            _refused(server, conn, exc.close_code, exc.reason[:100])
            return
        server.bad_frames_received += 1
        log.warning("bad_frame", session_id=session.session_id, reason=exc.reason)
        server._notify()
        return
    server.frames_received[frame.op] += 1
    server.received.append((session.session_id, frame))
    server._notify()
    if update is not None:
        seq, codes = update
        state = server.sessions.setdefault(session.session_id, SessionState())
        state.seq = max(state.seq, seq)
        held = state.cell_seqs
        for cell_id, code in codes.items():
            if seq > held.get(cell_id, 0):
                held[cell_id] = seq
                server.cells[cell_id] = code  # new cells append in the sent order
            else:
                state.stale_codes += 1
                log.info("stale_code_ignored", session_id=session.session_id,
                         cell_id=cell_id, seq=seq, held=held[cell_id])
        server._notify()
        if ack:
            await session.send("ack", {"seq": seq})
            server.acks_sent.append(seq)
            server._notify()
    else:
        result = server.handler(session, frame)
        if inspect.isawaitable(result):
            await result
        server._notify()


def _parse_update(frame: Frame) -> tuple[int, dict[str, str]]:
    """Validate an ``instantiate`` or ``edit`` frame's data: ``(seq, {cell_id: code})``."""
    data = frame.data
    if not isinstance(data, dict):
        raise BadFrame(f"{frame.op}: data is not an object")
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadFrame(f"{frame.op}: 'seq' is not an integer")
    if frame.op == "edit":
        cell_id, code = data.get("cell_id"), data.get("code")
        if not isinstance(cell_id, str) or not isinstance(code, str):
            raise BadFrame("edit: 'cell_id' and 'code' must be strings")
        return seq, {cell_id: code}
    codes = data.get("codes")
    if not isinstance(codes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in codes.items()
    ):
        raise BadFrame("instantiate: 'codes' must map cell ids to strings")
    return seq, codes
