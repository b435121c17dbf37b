"""The reference server itself: listening, the connections it holds, and what tests observe.

Theory of operation
-------------------

:class:`KernelServer` owns the listeners, the set of live connections (``_Conn``, one
per TCP connection, from accept to close), the document (``cells``), what it remembers
of each session (:class:`~fsm.server.SessionState`), and the counters tests read. Every
change it makes goes through :meth:`KernelServer._notify`, which wakes
:meth:`KernelServer.wait_until`: tests wait on conditions, never sleep.

Connections are numbered in accept order (the fence needs the kernel's order, not the
order trio starts their tasks in), given their :class:`~fsm.server.Faults`, and served
by the HTTP front (:mod:`fsm.servers.reference._front`). One broken connection never
takes the server down: its exception is logged and the connection released. Closing is
always asked of the task that owns a WebSocket (``_request_close``), because
trio-websocket's close handshake needs its reader alive; ``drop_all`` resets TCP
connections instead (a simulated crash), and ``shutdown`` closes every WebSocket with
1000 ``SHUTDOWN``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import signal
import socket
import struct
import urllib.parse
from collections.abc import Callable
from typing import Final

import trio

from fsm.core._frames import MAX_FRAME_SIZE, Frame
from fsm.core._logging import get_logger
from fsm.servers.reference._faults import Faults
from fsm.servers.reference._front import serve_connection
from fsm.servers.reference._session import (
    Handler,
    SessionState,
    _Conn,
    default_handler,
)

__all__ = ["DEFAULT_HOST", "KernelServer", "main"]

log = get_logger("fsm.server")

#: The server binds loopback only unless told otherwise: it is a test and demo peer.
DEFAULT_HOST: Final = "127.0.0.1"


class KernelServer:
    """A reference kernel server with fault injection (see :mod:`fsm.server`).

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

    def _anonymous_id(self) -> str:
        """A session id for a handshake that sent none."""
        self._anonymous += 1
        return f"anonymous-{self._anonymous}"

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
                await serve_connection(self, conn)
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
