"""The reference kernel server: the peer of the reference kernel protocol, with fault injection.

This is a small, real WebSocket server (trio + trio-websocket) that speaks the protocol of
DESIGN.md section 6 and can be told to misbehave in every way a connector must survive.
It is used by the test-suite, by demos, and by ``fsm serve --port P`` (see :func:`main`).

Protocol (server side), JSON text frames ``{"op": str, "data": object}`` over one WebSocket
at ``ws://HOST:PORT/ws?session_id=ID``:

* after the handshake the server sends first ``{"op": "kernel-ready", "data": {"session_id":
  ID, "cell_ids": [...], "codes": [...], "seq": N, "max_frame_size": M}}``, where ``seq`` is
  the highest seq received for this session (0 if none) and ``max_frame_size`` the largest
  client frame it takes (:data:`~fsm._frames.MAX_FRAME_SIZE` unless configured);
* **one writer per session, fenced** (protocol v2): accepting a connection for a session
  first stops applying frames from every older connection of that session, then sends
  ``kernel-ready``; the older ones are closed with 1008, reason ``replaced``;
* ``instantiate`` (``{"seq": N, "codes": {cell_id: code}, "auto_run": true}``, merging: cells
  absent keep their code) and ``edit`` (``{"seq": N, "cell_id": ..., "code": ...}``) update
  :attr:`KernelServer.cells` **by seq**: per session and cell the server keeps the seq of the
  code it holds and applies a cell's code only from a frame with a greater seq; every such
  frame is answered with ``{"op": "ack", "data": {"seq": N}}``, applied or not;
* every other op goes to the *handler* (see :data:`Handler`); the default one,
  :func:`default_handler`, answers ``run`` (``{"cell_id": ...}``) with a ``cell-op`` frame
  ``{"cell_id": ..., "output": {"mimetype": "text/plain", "data": CODE}}`` that echoes the
  cell's current code (``"output": null, "error": "unknown cell"`` for a cell it does not
  know), and logs any other op as ``unknown_op``;
* frames it will not take close the connection: 1003 for a binary frame, 1007 for text that
  is not JSON or not a JSON object, 1009 for a frame over ``max_frame_size`` (in UTF-8 bytes);
  an object without an ``op``, or an ``instantiate``/``edit`` whose data is malformed, is
  logged once as ``bad_frame`` and the connection is kept.

:meth:`KernelServer.lose_state` simulates a restart that lost everything (cells back to the
initial ones, every session's seqs forgotten, every connection reset), so a client's
full-document resend can be tested end to end.

Plain HTTP on the same port: ``GET /health`` answers 200 ``{"status":"healthy"}`` (no token
needed, like marimo); any other non-upgrade request gets 404 (426 on ``/ws``). An upgrade
request for a path other than ``/ws`` is rejected with 404; when the server has a token, a
handshake without ``?token=T`` or ``Authorization: Bearer T`` is rejected with 401.

Faults (:class:`Faults`) are injected through the mutable :attr:`KernelServer.faults`, which is
read when a TCP connection arrives (so a change applies to subsequent connections), except
``freeze`` and the ``refuse_handshakes`` counter, which are live. For a scripted sequence,
:attr:`KernelServer.fault_plan` holds one :class:`Faults` per future connection.
:meth:`KernelServer.close_all` and :meth:`KernelServer.drop_all` act on current connections.

Observable state for tests is public (counters, :attr:`~KernelServer.cells`, ...) and
:meth:`KernelServer.wait_until` wakes on every change the server makes, so tests never sleep.

This module imports only the standard library, trio, trio-websocket, structlog and
:mod:`fsm._frames`: it must stay usable while the client side is being rewritten, and it
must never share code paths with the client it is meant to test.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hmac
import inspect
import json
import signal
import socket
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from fsm._frames import MAX_FRAME_SIZE, BadFrame, Frame, decode_frame, encode_frame
from fsm._handshake import is_upgrade, is_valid_websocket
from fsm._logging import get_logger

__all__ = [
    "DEFAULT_HOST",
    "Faults",
    "Handler",
    "KernelServer",
    "Session",
    "SessionState",
    "default_handler",
    "main",
    "malformed_frames",
]

log = get_logger("fsm.server")

#: The server binds loopback only unless told otherwise: it is a test and demo peer.
DEFAULT_HOST: Final = "127.0.0.1"

#: The largest HTTP request head we read ourselves; a real client sends well under 1 KiB.
_MAX_HEAD: Final = 64 * 1024

#: What a handler may be: a plain function or a coroutine function (its result is awaited).
Handler = Callable[["Session", Frame], Awaitable[None] | None]


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


class Session:
    """What a handler sees of one accepted WebSocket connection."""

    def __init__(self, server: KernelServer, conn: _Conn, ws: WebSocketConnection) -> None:
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


class _ServerStream(trio.abc.Stream):
    """The TCP stream as trio-websocket sees it.

    It first replays the HTTP request head that the server already read itself (to route,
    authenticate and inject handshake faults before wsproto sees anything), and its
    ``receive_some`` blocks while the connection is frozen. Bytes that arrive while a
    receive was already pending are held back too, so a ping sent just after ``freeze`` is
    set is not answered either.
    """

    def __init__(
        self, raw: trio.abc.Stream, prefix: bytes, gate: Callable[[], Awaitable[None]]
    ) -> None:
        self._raw = raw
        self._prefix = prefix
        self._gate = gate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._raw.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            # The handshake request is never frozen: freeze means "pings go unanswered".
            n = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:n], self._prefix[n:]
            return chunk
        await self._gate()
        data = await self._raw.receive_some(max_bytes)
        await self._gate()
        return data

    async def aclose(self) -> None:
        await self._raw.aclose()


@dataclass(frozen=True)
class _Request:
    """The parts of an HTTP request head the server decides on."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_upgrade(self) -> bool:
        return is_upgrade(self.headers)

    @property
    def is_valid_websocket(self) -> bool:
        return is_valid_websocket(self.method, self.headers)


def _parse_head(head: bytes) -> _Request | None:
    """Parse an HTTP/1.1 request head; ``None`` if it is not one."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        key = name.strip().lower()
        # Repeated headers are joined as RFC 9110 allows for list-valued fields.
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    parts = urllib.parse.urlsplit(target)
    return _Request(method, parts.path, urllib.parse.parse_qs(parts.query), headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def _http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_phrase(status)}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class KernelServer:
    """A reference kernel server with fault injection (see the module docstring).

    Public, observable state (all mutated only by the server, and every mutation wakes
    :meth:`wait_until`):

    * ``cells``: ``dict[str, str]``, last writer wins, insertion order is cell order;
    * ``handshakes``: HTTP upgrade requests seen (refused, hung and accepted ones);
    * ``connections_opened``: WebSocket handshakes accepted; ``open_connections``: live ones;
    * ``frames_received``: ``Counter`` of well-formed client frames by op;
      ``bad_frames_received``: count of client frames logged as ``bad_frame``;
      ``received``: ``(session_id, Frame)`` for every well-formed client frame, in order;
    * ``acks_sent``: the ``seq`` of every ack sent, in order;
    * ``sessions_seen``: session ids of accepted WebSockets;
    * ``sessions``: :class:`SessionState` by session id (seqs, fenced and stale counts);
    * ``rejections``: HTTP statuses of every refused upgrade request, in order;
    * ``client_close_codes``: the code of every close the server started because of what a
      client sent (1003, 1007, 1009), in order.

    ``cells`` is the kernel's one document, shared by every session; seqs order the writes of
    one session (one writer per session). ``max_frame_size`` (UTF-8 bytes) is announced in
    ``kernel-ready`` and enforced with 1009. ``fence=False`` (tests only) leaves older
    connections of a session open and applied, by seq.
    """

    def __init__(
        self,
        cells: dict[str, str] | None = None,
        *,
        token: str | None = None,
        handler: Handler | None = None,
        faults: Faults | None = None,
        close_timeout: float = 2.0,
        handshake_timeout: float = 10.0,
        max_frame_size: int = MAX_FRAME_SIZE,
        fence: bool = True,
    ) -> None:
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int) or (
            max_frame_size < 64
        ):
            raise ValueError(f"max_frame_size must be an integer >= 64, got {max_frame_size!r}")
        self.max_frame_size = max_frame_size
        #: Protocol v2 fences older connections; tests turn it off to prove that the seqs
        #: alone keep a late frame from overwriting newer code.
        self.fence = fence
        self._initial_cells: dict[str, str] = dict(cells or {})
        self.cells: dict[str, str] = dict(self._initial_cells)
        self._token = token
        self.handler: Handler = handler or default_handler
        self.faults = faults if faults is not None else Faults()
        self.faults._on_change = self._notify
        #: One :class:`Faults` per future TCP connection, used instead of ``faults`` while
        #: non-empty (its ``refuse_handshakes`` > 0 just means "refuse this one").
        self.fault_plan: collections.deque[Faults] = collections.deque()
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout

        self.host = DEFAULT_HOST
        self.port = 0
        self.handshakes = 0
        self.connections_opened = 0
        self.frames_received: collections.Counter[str] = collections.Counter()
        self.bad_frames_received = 0
        self.received: list[tuple[str, Frame]] = []
        self.acks_sent: list[int] = []
        self.sessions_seen: set[str] = set()
        self.sessions: dict[str, SessionState] = {}
        self.rejections: list[int] = []
        self.client_close_codes: list[int] = []

        self._conns: set[_Conn] = set()
        self._changed = trio.Event()
        self._accept_scope = trio.CancelScope()
        self._listening = False
        self._not_listening = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()
        self._anonymous = 0
        self._accepted = 0

    # ------------------------------------------------------------------ observation

    @property
    def url(self) -> str:
        """The WebSocket endpoint, ``ws://HOST:PORT/ws`` (no query)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/ws"

    def url_for(self, session_id: str, token: str | None = None) -> str:
        """The endpoint with ``session_id`` (and ``token``, when given) in the query."""
        query = {"session_id": session_id} | ({"token": token} if token is not None else {})
        return f"{self.url}?{urllib.parse.urlencode(query)}"

    @property
    def open_connections(self) -> int:
        """How many accepted WebSockets are currently open."""
        return sum(1 for c in self._conns if c.ws is not None)

    @property
    def tcp_connections(self) -> int:
        """How many TCP connections are currently held (including unfinished handshakes)."""
        return len(self._conns)

    @property
    def listening(self) -> bool:
        """Whether the server currently accepts connections."""
        return self._listening

    def _notify(self) -> None:
        # One Event per "generation": setting it wakes every waiter, and replacing it arms
        # the next wait. Cheaper and simpler than a trio.Condition, and callable from sync code.
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[KernelServer], bool]) -> None:
        """Return as soon as ``predicate(self)`` is true, re-checking after every state change."""
        while not predicate(self):
            await self._changed.wait()

    # ------------------------------------------------------------------ lifecycle

    async def serve(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        task_status: trio.TaskStatus[KernelServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 = ephemeral) and serve until :meth:`shutdown`.

        Meant for ``await nursery.start(server.serve)``, which returns the server once it is
        bound and accepting. Returns after :meth:`shutdown` has closed every connection.
        """
        if self._listening or self._stopped.is_set():
            raise RuntimeError("a KernelServer serves once")
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.host = host
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._listening = True
                nursery.start_soon(self._listen, listeners, nursery)
                log.info("listening", host=host, port=self.port)
                task_status.started(self)
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._listening = False
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()
            self._notify()

    async def _listen(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        try:
            with self._accept_scope:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, nursery)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)  # that is "stop listening"
            self._listening = False
            self._not_listening.set()
            self._notify()

    async def shutdown(self, code: int = 1000, reason: str = "SHUTDOWN") -> None:
        """Stop listening, close every WebSocket with ``code``/``reason``, drop the rest.

        Idempotent; returns once no connection is left (each close handshake is bounded by
        ``close_timeout``) and, when :meth:`serve` runs, once it has returned its listeners.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        log.info("shutdown", code=code, reason=reason)
        self._accept_scope.cancel()
        if self._listening:
            await self._not_listening.wait()
        for conn in list(self._conns):
            if conn.ws is None:
                conn.scope.cancel()  # handshake not finished (or hung): nothing to close politely
            else:
                self._request_close(conn, code, reason)
        await self.wait_until(lambda s: not s._conns)
        self._stopped.set()
        self._notify()

    async def close_all(self, code: int, reason: str = "") -> None:
        """Close every open WebSocket with ``code``/``reason`` and wait until they are gone."""
        targets = [c for c in self._conns if c.ws is not None]
        for conn in targets:
            self._request_close(conn, code, reason)
        await self.wait_until(lambda s: not any(c in s._conns for c in targets))

    async def drop_all(self) -> None:
        """Abort every current TCP connection with a reset (no close frame): a simulated crash."""
        targets = list(self._conns)
        for conn in targets:
            log.info("connection_dropped", session_id=conn.session_id)
            if isinstance(conn.raw, trio.SocketStream):
                with contextlib.suppress(OSError):
                    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    conn.raw.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                # Closing the trio socket synchronously wakes every task blocked on it with
                # ClosedResourceError, so trio-websocket's reader aborts without sending
                # anything.
                conn.raw.socket.close()
            # (An in-memory stream is closed, without a close frame, as the scope unwinds.)
            conn.scope.cancel()
        await self.wait_until(lambda s: not any(c in s._conns for c in targets))

    async def lose_state(self) -> None:
        """Simulate a restart that lost its state: reset every connection, forget every
        session's seqs and put :attr:`cells` back to the cells the server was built with.

        The server keeps listening, so clients reconnect at once and meet a server whose
        ``kernel-ready`` seq is 0: below what they saw acknowledged.
        """
        log.info("state_lost", sessions=len(self.sessions))
        self.sessions.clear()
        self.cells = dict(self._initial_cells)
        self._notify()
        await self.drop_all()

    def _fence(self, conn: _Conn) -> None:
        """Make ``conn`` the session's only writer: older connections stop being applied.

        "Older" is by TCP accept order, so a handshake that was held up on the way and
        completes after a newer connection's is itself the one fenced (at once).
        """
        assert conn.session_id is not None
        state = self.sessions.setdefault(conn.session_id, SessionState())
        if not self.fence:
            return
        if conn.order < state.writer:
            self._fence_one(conn)
            return
        state.writer = conn.order
        for other in self._conns:
            # Only older ones: a newer connection still in its handshake will fence this
            # one when it is accepted.
            if (
                other.order < conn.order
                and other.session_id == conn.session_id
                and not other.fenced
            ):
                self._fence_one(other)

    def _fence_one(self, conn: _Conn) -> None:
        conn.fenced = True
        log.info("connection_fenced", session_id=conn.session_id)
        self._request_close(conn, 1008, "replaced")

    def _request_close(self, conn: _Conn, code: int, reason: str) -> None:
        if conn.close_request is None:
            conn.close_request = (code, reason)
        if conn.recv_scope is not None:
            conn.recv_scope.cancel()
        self._notify()  # also thaws a frozen stream, so the close handshake can complete

    # ------------------------------------------------------------------ per connection

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections one by one, numbering them in the order the kernel accepted
        them: a handler task's start order is trio's to shuffle, and the fence needs the
        real order."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: wait a little rather than spin (as serve_listeners does).
                log.warning("accept_failed", error=repr(exc))
                await trio.sleep(0.1)
                continue
            self._accepted += 1
            nursery.start_soon(self._handle_tcp, stream, self._accepted)

    async def handle_stream(self, raw: trio.abc.Stream) -> None:
        """Serve one client over ``raw``: a TCP stream, or an in-memory one in tests.

        With ``trio.testing.memory_stream_pair()`` and a connector's ``open_stream``
        hook, client and server run with no real I/O, so on ``MockClock`` too.
        """
        self._accepted += 1
        await self._handle_tcp(raw, self._accepted)

    async def _handle_tcp(self, raw: trio.abc.Stream, order: int) -> None:
        planned = bool(self.fault_plan)
        faults = self.fault_plan.popleft() if planned else self.faults._snapshot()
        conn = _Conn(raw=raw, faults=faults, planned=planned, order=order)
        self._conns.add(conn)
        self._notify()
        try:
            with conn.scope:
                await self._serve_tcp(conn)
        except Exception as exc:
            # One broken connection must never take the server down.
            if _is_transport_loss(exc):
                # A reset, or trio-websocket refusing to answer a ping while it closes:
                # the peer went away, nothing is wrong with the server.
                log.info("connection_lost", session_id=conn.session_id, error=repr(exc)[:200])
            else:
                log.warning("connection_error", session_id=conn.session_id, error=repr(exc))
        finally:
            self._conns.discard(conn)
            await trio.aclose_forcefully(raw)
            self._notify()

    async def _serve_tcp(self, conn: _Conn) -> None:
        faults = conn.faults
        if faults.silent:
            log.info("fault_injected", fault="silent")
            await self._drain(conn.raw)
            return
        with trio.move_on_after(self.handshake_timeout):
            got = await self._read_head(conn.raw)
        if got is None:
            return
        head, rest = got
        request = _parse_head(head)
        if request is None:
            await conn.raw.send_all(_http_response(400, b'{"error":"bad request"}'))
            return
        if not request.is_upgrade:
            await self._plain_http(conn, request)
            return
        self.handshakes += 1
        self._notify()
        if faults.hang_handshake:
            log.info("fault_injected", fault="hang_handshake")
            await self._drain(conn.raw)
            return
        if faults.http_200:
            log.info("fault_injected", fault="http_200")
            await conn.raw.send_all(_http_response(200, b"not a websocket\n", "text/plain"))
            return
        if not request.is_valid_websocket:
            await self._refuse_raw(conn, 400)
            return
        session_id = (request.query.get("session_id") or [""])[0]
        if not session_id:
            self._anonymous += 1
            session_id = f"anonymous-{self._anonymous}"
        conn.session_id = session_id
        status = self._handshake_status(conn, request)
        stream = _ServerStream(conn.raw, head + rest, functools.partial(self._thawed, conn))
        async with trio.open_nursery() as nursery:
            ws_request: WebSocketRequest | None = None
            with trio.move_on_after(self.handshake_timeout):
                # We validated the request ourselves, so wsproto yields it at once; the
                # time-out only guards against a wsproto refusal we failed to foresee.
                # trio-websocket counts characters; _dispatch checks the UTF-8 size itself.
                ws_request = await wrap_server_stream(
                    nursery, stream, max_message_size=self.max_frame_size
                )
            if ws_request is None:
                log.warning("handshake_timeout", session_id=session_id)
            elif status is None:
                ws = await ws_request.accept()
                # Fenced before anything else happens on the new connection, so no frame of
                # an older one can be applied once the new writer has been told the seq.
                self._fence(conn)
                conn.ws = ws
                self.connections_opened += 1
                self.sessions_seen.add(session_id)
                log.info("connection_opened", session_id=session_id)
                self._notify()
                await self._run_session(conn, ws)
            else:
                self.rejections.append(status)
                log.info("handshake_rejected", session_id=session_id, status=status)
                body = json.dumps({"error": _phrase(status)}).encode()
                retry_after = conn.faults.refuse_retry_after
                headers = [(b"Retry-After", retry_after.encode())] if retry_after else None
                await ws_request.reject(status, extra_headers=headers, body=body)
                self._notify()
            # The reader task has nothing left to do once the session (or rejection) is over.
            nursery.cancel_scope.cancel()

    def _handshake_status(self, conn: _Conn, request: _Request) -> int | None:
        """The HTTP status to reject this upgrade with, or ``None`` to accept it."""
        if conn.planned:
            if conn.faults.refuse_handshakes > 0:
                return conn.faults.refuse_status
        elif self.faults.refuse_handshakes > 0:
            # The live counter: "refuse the next N" must count across connections.
            self.faults.refuse_handshakes -= 1
            return self.faults.refuse_status
        if request.path != "/ws":
            return 404
        if self._token is not None and not self._authorized(request):
            return 401
        return None

    def _authorized(self, request: _Request) -> bool:
        assert self._token is not None
        offered = list(request.query.get("token", []))
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        expected = self._token.encode()
        # Constant-time comparison: the token is a secret (and is never logged).
        return any(hmac.compare_digest(t.encode(), expected) for t in offered)

    async def _refuse_raw(self, conn: _Conn, status: int) -> None:
        self.rejections.append(status)
        log.info("handshake_rejected", session_id=conn.session_id, status=status)
        await conn.raw.send_all(_http_response(status, b'{"error":"bad websocket handshake"}'))
        self._notify()

    async def _plain_http(self, conn: _Conn, request: _Request) -> None:
        if request.method == "GET" and request.path == "/health":
            await conn.raw.send_all(_http_response(200, b'{"status":"healthy"}'))
        elif request.path == "/ws":
            await conn.raw.send_all(_http_response(426, b'{"error":"upgrade required"}'))
        else:
            await conn.raw.send_all(_http_response(404, b'{"error":"not found"}'))

    @staticmethod
    async def _read_head(raw: trio.abc.Stream) -> tuple[bytes, bytes] | None:
        """Read up to the end of the HTTP request head; ``None`` on EOF or an oversized head."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HEAD:
                return None
            chunk = await raw.receive_some(4096)
            if not chunk:
                return None
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n", rest

    @staticmethod
    async def _drain(raw: trio.abc.Stream) -> None:
        """Swallow bytes until the peer hangs up: holding a connection without answering."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await raw.receive_some(4096):
                pass

    async def _thawed(self, conn: _Conn) -> None:
        """Block while ``conn`` is frozen; a connection being closed is never frozen."""

        def thawed(s: KernelServer) -> bool:
            if conn.close_request is not None:
                return True
            return not (s.faults.freeze or (conn.planned and conn.faults.freeze))

        await self.wait_until(thawed)

    async def _run_session(self, conn: _Conn, ws: WebSocketConnection) -> None:
        faults = conn.faults
        session = Session(self, conn, ws)
        try:
            if conn.fenced:
                pass  # a newer connection of this session was accepted first: close at once
            elif not faults.skip_kernel_ready:
                state = self.sessions.get(session.session_id)
                ready = {
                    "session_id": session.session_id,
                    "cell_ids": list(self.cells),
                    "codes": list(self.cells.values()),
                    "seq": state.seq if state is not None else 0,
                    "max_frame_size": self.max_frame_size,
                }
                await ws.send_message(encode_frame("kernel-ready", ready))
            else:
                log.info("fault_injected", fault="skip_kernel_ready", session_id=session.session_id)
            for bad in faults.bad_frames if not conn.fenced else ():
                await ws.send_message(bad)
            if faults.close_after_frames == 0:
                self._request_close(conn, faults.close_code, faults.close_reason)
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
                await self._dispatch(session, message, ack=not last)
                if last:
                    log.info(
                        "fault_injected", fault="close_after_frames", session_id=session.session_id
                    )
                    self._request_close(conn, faults.close_code, faults.close_reason)
        except ConnectionClosed:
            pass  # the client closed or vanished (or trio-websocket closed 1009); reported below
        closed = ws.closed
        if closed is not None and closed.code == 1009 and conn.close_request is None:
            # trio-websocket refused an oversized message itself, before _dispatch saw it.
            self._refused(conn, 1009, "frame too large")
        if conn.close_request is not None and ws.closed is None:
            code, reason = conn.close_request
            with trio.move_on_after(self.close_timeout):
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

    def _refused(self, conn: _Conn, code: int, reason: str) -> None:
        """Close ``conn`` for a frame the server will not take (1003, 1007, 1009)."""
        self.client_close_codes.append(code)
        self.bad_frames_received += 1
        log.warning("frame_refused", session_id=conn.session_id, code=code, reason=reason)
        self._request_close(conn, code, reason)

    async def _dispatch(self, session: Session, message: str | bytes, *, ack: bool) -> None:
        conn = session._conn
        if conn.fenced:
            # A newer connection of this session was accepted: this one is no longer the
            # writer, and a late frame must never overwrite what the newer one sent.
            state = self.sessions.get(session.session_id)
            if state is not None:
                state.fenced_frames += 1
            log.info("fenced_frame_ignored", session_id=session.session_id)
            self._notify()
            return
        if isinstance(message, bytes | bytearray):
            self._refused(conn, 1003, "binary frames are not accepted")
            return
        if len(message) > self.max_frame_size // 4 and (
            len(message.encode("utf-8", "surrogatepass")) > self.max_frame_size
        ):
            self._refused(conn, 1009, "frame too large")
            return
        try:
            frame = decode_frame(message, max_size=self.max_frame_size)
            update = _parse_update(frame) if frame.op in ("instantiate", "edit") else None
        except BadFrame as exc:
            if exc.close_code is not None:
                self._refused(conn, exc.close_code, exc.reason[:100])
                return
            self.bad_frames_received += 1
            log.warning("bad_frame", session_id=session.session_id, reason=exc.reason)
            self._notify()
            return
        self.frames_received[frame.op] += 1
        self.received.append((session.session_id, frame))
        self._notify()
        if update is not None:
            seq, codes = update
            state = self.sessions.setdefault(session.session_id, SessionState())
            state.seq = max(state.seq, seq)
            held = state.cell_seqs
            for cell_id, code in codes.items():
                if seq > held.get(cell_id, 0):
                    held[cell_id] = seq
                    self.cells[cell_id] = code  # new cells append in the sent order
                else:
                    state.stale_codes += 1
                    log.info("stale_code_ignored", session_id=session.session_id,
                             cell_id=cell_id, seq=seq, held=held[cell_id])
            self._notify()
            if ack:
                await session.send("ack", {"seq": seq})
                self.acks_sent.append(seq)
                self._notify()
        else:
            result = self.handler(session, frame)
            if inspect.isawaitable(result):
                await result
            self._notify()


def _is_transport_loss(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) is a connection going away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_transport_loss(e) for e in exc.exceptions)
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | ConnectionError):
        return True
    # wsproto's LocalProtocolError: trio-websocket 0.12.2 answers a ping that arrives while
    # it closes, which wsproto refuses (DESIGN.md section 9).
    return type(exc).__name__ == "LocalProtocolError" and type(exc).__module__.startswith(
        "wsproto"
    )


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


async def main(port: int, host: str = DEFAULT_HOST, token: str | None = None) -> None:
    """Serve on ``host:port``, print the URL, and shut down gracefully on Ctrl-C or SIGTERM.

    The printed URL never contains the token.
    """
    server = KernelServer(token=token)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.serve, host=host, port=port))
        print(server.url, flush=True)
        # Catching the signal (rather than letting KeyboardInterrupt unwind) lets clients see
        # a clean 1000 "SHUTDOWN" close instead of a reset.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        await server.shutdown()
