"""Gateway sessions, and the upstream connector each one edits through.

A :class:`Session` is what a client session id names: the cells it holds, the highest
seq its writer sent, the client frames waiting for the upstream's acks, the recent
upstream messages (for replay), and at most one attached :class:`ClientLink`.

An :class:`Upstream` owns one lazy :class:`~fsm.connector.Connector` (opened through
:func:`open_upstream`) and the sessions that use it: one session per upstream with the
reference protocol, every session with marimo (one editing session per notebook).
It runs as one task holding the connector, plus two children: one forwards upstream
messages to its sessions, the other wakes on every change of the connector (an ack, a
transition) and sends the client acks that became true. Transitions reach the sessions
through a synchronous lifecycle observer, so none is missed.

The ack rule (DESIGN.md section 10): a client frame is acked once, for each of its
cells, the upstream has acknowledged that code or a newer one. Every code a session
takes goes into the connector at once, so "a cell is no longer pending upstream" means
the upstream acknowledged the latest code the gateway gave it, which is that code or a
newer one. A cell typed into without pause keeps its frames waiting until the upstream
catches up: acks may come late, never early.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Container
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from fsm.adapters._base import KernelProtocol
from fsm.core._errors import ConnectionFailed, LifecycleError, NotConnected, RequestFailed
from fsm.core._frames import Frame, encode_frame
from fsm.core._logging import get_logger
from fsm.core._policy import RetryPolicy
from fsm.core._redact import redact
from fsm.core._types import ConnState, Phase, Transition
from fsm.driver._connector import Connector, open_connector
from fsm.driver._transport import StreamOpener

if TYPE_CHECKING:
    from fsm.servers.gateway._metrics import GatewayMetrics

log = get_logger("fsm.gateway")


class GatewayHost(Protocol):
    """What sessions and upstreams read and call of the :class:`fsm.gateway.Gateway` that
    holds them (which satisfies this structurally: this module need not import the
    server module, which imports it)."""

    upstream: str
    policy: RetryPolicy | None
    heartbeat_interval: float | None
    close_timeout: float
    open_stream: StreamOpener | None
    max_frame_size: int
    send_queue: int
    replay_limit: int
    max_requests: int
    metrics: GatewayMetrics
    _detached: dict[str, Session]

    def _notify(self) -> None: ...

    def _wake_reaper(self) -> None: ...

    def _upstream_failed(self, session: Session) -> None: ...

#: What ``data.reason`` of an ``error`` frame can be, besides a CloseReason's value.
REASON_BUSY = "busy"  # too many requests waiting for this session's upstream
REASON_NOT_CONNECTED = "not_connected"  # lost before it was sent, or CLOSING/CLOSED
REASON_REFUSED = "refused"  # the upstream refused this one request
REASON_BAD_FRAME = "bad_frame"  # a known op in an unknown shape, or no op
REASON_EDIT_REFUSED = "edit_refused"  # the upstream's buffer is full or the edit too large
REASON_SHUTDOWN = "shutdown"  # the gateway is shutting down


@asynccontextmanager
async def open_upstream(
    url: str,
    *,
    protocol: KernelProtocol,
    policy: RetryPolicy | None,
    session_id: str,
    gate: Any = None,
    heartbeat_interval: float | None = 20.0,
    close_timeout: float = 2.0,
    open_stream: StreamOpener | None = None,
) -> AsyncIterator[Connector]:
    """The one place a session's upstream connector is made (lazy, never dialled here).

    ``gate`` is the shared view of this upstream (``fsm.servers.gateway._shared``), handed to the
    connector as its ``dial_gate``; ``None`` lets every session dial on its own.
    """
    extra: dict[str, Any] = {} if gate is None else {"dial_gate": gate}
    async with open_connector(
        url,
        protocol=protocol,
        policy=policy,
        session_id=session_id,
        heartbeat_interval=heartbeat_interval,
        close_timeout=close_timeout,
        open_stream=open_stream,
        **extra,
    ) as conn:
        yield conn


def parse_update(frame: Frame) -> tuple[int, dict[str, str]]:
    """``(seq, {cell_id: code})`` of an ``instantiate`` or ``edit``; ValueError if malformed."""
    data = frame.data
    if not isinstance(data, dict):
        raise ValueError(f"{frame.op}: data must be an object")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"{frame.op}: 'seq' must be a positive integer")
    if frame.op == "edit":
        cell_id, code = data.get("cell_id"), data.get("code")
        if not isinstance(cell_id, str) or not cell_id or not isinstance(code, str):
            raise ValueError("edit: 'cell_id' must be a non-empty string and 'code' a string")
        return seq, {cell_id: code}
    codes = data.get("codes", {})
    if not isinstance(codes, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in codes.items()
    ):
        raise ValueError("instantiate: 'codes' must map cell ids to strings")
    return seq, codes


_ACK = '{"op":"ack","data":{"seq":%d}}'


def error_frame(op: str | None, message: str, reason: str, **extra: Any) -> str:
    """An ``error`` frame: ``{"op", "message", "reason"}`` plus ``id`` or ``seq``."""
    return encode_frame("error", {"op": op, **extra, "message": message, "reason": reason})


class ClientLink:
    """One client WebSocket attached to a session: a bounded send queue and its close."""

    def __init__(self, ws: WebSocketConnection, session: Session, queue_size: int) -> None:
        self.ws = ws
        self.session = session
        self.queue_send, self.queue_receive = trio.open_memory_channel[tuple[str, int]](
            queue_size
        )
        self.read_scope = trio.CancelScope()
        self.write_scope = trio.CancelScope()
        self.keepalive_scope = trio.CancelScope()
        #: (code, reason, cause) once the gateway decided to close this client.
        self.close_request: tuple[int, str, str] | None = None

    def push(self, text: str, message_no: int = 0) -> None:
        """Queue one frame; a client whose queue is full is closed with 1013 (never waited on)."""
        if self.close_request is not None:
            return
        try:
            self.queue_send.send_nowait((text, message_no))
        except trio.WouldBlock:
            self.close(1013, "send queue full", "slow_client")
        except trio.ClosedResourceError:
            pass

    def close(self, code: int, reason: str, cause: str) -> None:
        """Close this client (asynchronously): its reader stops at once, its writer after
        the frame it is sending (a 1013 client is not waited for)."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason, cause)
        self.read_scope.cancel()
        self.keepalive_scope.cancel()
        self.queue_send.close()
        if code == 1013:
            self.write_scope.cancel()

    async def keepalive(self, interval: float, timeout: float) -> None:
        """Ping every ``interval`` s; a client that does not answer within ``timeout`` is
        closed, so that a vanished peer frees its session for reattach and expiry."""
        with self.keepalive_scope:
            try:
                while True:
                    await trio.sleep(interval)
                    with trio.move_on_after(timeout) as waited:
                        await self.ws.ping()
                    if waited.cancelled_caught:
                        self.close(1011, "no pong", "no_pong")
                        self.write_scope.cancel()  # a peer that does not answer: not waited on
                        return
            except ConnectionClosed:
                return  # the reader reports how it closed

    async def write(self) -> None:
        """The writer task: send queued frames in order, record messages delivered."""
        with self.write_scope:
            try:
                async for text, message_no in self.queue_receive:
                    await self.ws.send_message(text)
                    if message_no and self.session.client is self:
                        self.session.delivered = max(self.session.delivered, message_no)
            except ConnectionClosed:
                self.read_scope.cancel()


class Session:
    """One client session id's state; see the module docstring."""

    def __init__(self, gateway: GatewayHost, session_id: str, upstream: Upstream) -> None:
        self.gateway = gateway
        self.session_id = session_id
        self.upstream = upstream
        self.cell_seqs: dict[str, int] = {}  # per cell, the seq of the code it holds
        self.seq = 0  # the highest seq received from this session's writers
        self.waiting: collections.deque[tuple[int, tuple[str, ...]]] = collections.deque()
        self.client: ClientLink | None = None
        self.detached_at: float | None = trio.current_time()
        self.history: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=gateway.replay_limit
        )
        self.messages_seen = 0
        self.delivered = 0
        self.requests_waiting = 0
        self.closed = False
        self._log = log.bind(session_id=session_id)

    @property
    def doc(self) -> dict[str, str]:
        """The cells this session holds (shared by every session of a marimo upstream)."""
        return self.upstream.doc

    @property
    def pending(self) -> int:
        """Cells this session's upstream has not acknowledged yet."""
        conn = self.upstream.conn
        return len(conn.lifecycle.buffer) if conn is not None else 0

    # -- clients ----------------------------------------------------------------------

    def attach(self, client: ClientLink) -> None:
        """Make ``client`` the session's one writer, fencing the previous one, and greet it."""
        old = self.client
        if old is not None:
            # Fenced before kernel-ready goes out: the old reader checks `session.client`
            # before applying anything, so no frame of it applies from here on.
            old.close(1008, "replaced", "replaced")
            self._log.info("client_replaced")
        self.client = client
        self.detached_at = None
        self.gateway._detached.pop(self.session_id, None)
        # Acks owed to an older connection mean nothing to this one: its client re-sends
        # whatever was never acked, under new seqs, in its flush.
        self.waiting.clear()
        cells = self.doc
        ready = {
            "session_id": self.session_id,
            "cell_ids": list(cells),
            "codes": list(cells.values()),
            "seq": self.seq,
            "max_frame_size": self.gateway.max_frame_size,
            "upstream": self.upstream.view(),
        }
        client.push(encode_frame("kernel-ready", ready))
        missed = [(n, text) for n, text in self.history if n > self.delivered]
        # Never more than the queue holds next to kernel-ready: the newest ones.
        missed = missed[len(missed) - min(len(missed), self.gateway.send_queue - 1):]
        for n, text in missed:
            client.push(text, n)
        self._log.info("client_attached", replayed=len(missed), upstream=self.upstream.conn_state)

    def detach(self, client: ClientLink) -> None:
        """``client`` is gone; the session waits ``session_ttl`` for a new one."""
        if self.client is not client:
            return
        self.client = None
        self.waiting.clear()
        if not self.closed:
            self.detached_at = trio.current_time()
            self.gateway._detached[self.session_id] = self
            self.gateway._wake_reaper()
        self._log.info("client_detached")

    def push(self, text: str) -> None:
        if self.client is not None:
            self.client.push(text)

    # -- what the upstream says ---------------------------------------------------------

    def deliver(self, text: str) -> None:
        """One upstream message: kept for replay, and sent to the client if attached."""
        self.messages_seen += 1
        self.history.append((self.messages_seen, text))
        if self.client is not None:
            self.client.push(text, self.messages_seen)
        self.gateway._notify()

    def check_acks(self, pending: Container[str] | None = None) -> None:
        """Ack every waiting client frame whose cells the upstream no longer holds pending."""
        if not self.waiting or self.client is None:
            return
        held = pending if pending is not None else self.upstream.pending_cells()
        keep: collections.deque[tuple[int, tuple[str, ...]]] = collections.deque()
        for seq, cells in self.waiting:
            if any(cell in held for cell in cells):
                keep.append((seq, cells))
            else:
                self.client.push(_ACK % seq)  # encode_frame("ack", {"seq": seq}), faster
        self.waiting = keep

    # -- what the client says -------------------------------------------------------------

    def take_edit(self, frame: Frame) -> None:
        """An ``instantiate`` or ``edit``: into the upstream connector, acked later."""
        try:
            seq, codes = parse_update(frame)
        except ValueError as exc:
            self.push(error_frame(frame.op, str(exc), REASON_BAD_FRAME))
            return
        self.gateway.metrics.edits.inc()
        self.seq = max(self.seq, seq)
        conn = self.upstream.conn
        assert conn is not None
        superseded = False
        held: dict[str, str] | None = None
        for cell_id, code in codes.items():
            if seq <= self.cell_seqs.get(cell_id, 0):
                superseded = True  # a late frame: what the session holds is newer
                continue
            if self.doc.get(cell_id) == code:
                # A client re-sending what it never saw acked (it reconnected): if the
                # upstream already acknowledged this code, there is nothing to send.
                if held is None:
                    held = self.upstream.pending_cells()
                if cell_id not in held:
                    self.cell_seqs[cell_id] = seq
                    superseded = True
                    continue
            try:
                conn.edit(cell_id, code)
            except (LifecycleError, ValueError) as exc:
                self._log.warning("edit_refused", seq=seq, cell_id=cell_id, cause=str(exc))
                self.push(
                    error_frame(frame.op, redact(str(exc)), REASON_EDIT_REFUSED, seq=seq)
                )
                return
            self.doc[cell_id] = code
            self.cell_seqs[cell_id] = seq
        self.waiting.append((seq, tuple(codes)))
        if superseded or not codes:
            self.check_acks()
        self.gateway._notify()

    def take_request(self, frame: Frame) -> None:
        """Any other op: forwarded upstream once OPEN, starting it if needed (at most once)."""
        data = frame.data
        request_id = data.get("id") if isinstance(data, dict) else None
        if self.requests_waiting >= self.gateway.max_requests:
            self.gateway.metrics.requests.labels("busy").inc()
            self.push(error_frame(
                frame.op,
                f"{self.requests_waiting} requests are already waiting for the upstream;"
                " wait for an answer and send it again",
                REASON_BUSY,
                id=request_id,
            ))
            return
        nursery = self.upstream.nursery
        if nursery is None:
            self.push(error_frame(
                frame.op, "the session is closing", REASON_SHUTDOWN, id=request_id
            ))
            return
        self.requests_waiting += 1
        nursery.start_soon(self._forward, frame.op, data, request_id)

    async def _forward(self, op: str, data: Any, request_id: Any) -> None:
        conn = self.upstream.conn
        assert conn is not None
        reason: str | None = None
        message = ""
        try:
            if op == "connect":
                self._log.info("connect_requested", upstream=conn.state.value)
                await conn.connect()
            else:
                await conn.request(op, data)
        except ConnectionFailed as exc:
            reason, message = exc.reason.value, str(exc)
        except RequestFailed as exc:
            reason, message = REASON_REFUSED, str(exc)
        except NotConnected as exc:
            # Refused while CLOSED (USER, REJECTED, ERROR): the reason says what to do.
            closed = conn.close_reason if conn.state is ConnState.CLOSED else None
            reason = closed.value if closed is not None else REASON_NOT_CONNECTED
            message = str(exc)
        except LifecycleError as exc:
            reason, message = REASON_NOT_CONNECTED, str(exc)
        except Exception as exc:
            # An adapter failing on this request: the request fails, the session stays.
            self._log.error("request_error", op=op, error=repr(exc))
            reason, message = REASON_REFUSED, f"request {op!r} failed: {exc}"
        finally:
            self.requests_waiting -= 1
        self.gateway.metrics.requests.labels(reason or "sent").inc()
        if reason is not None:
            self._log.info("request_failed", op=op, reason=reason)
            self.push(error_frame(op, redact(message), reason, id=request_id))

    def status(self) -> dict[str, Any]:
        """This session's entry in ``GET /status``."""
        return {
            "session_id": self.session_id,
            "client": self.client is not None,
            "upstream": self.upstream.view(),
            "pending": self.pending,
        }


class Upstream:
    """One upstream connector and the sessions using it; see the module docstring."""

    def __init__(
        self, gateway: GatewayHost, session_id: str, protocol: KernelProtocol, gate: Any = None
    ) -> None:
        self.gateway = gateway
        self.session_id = session_id
        self.protocol = protocol
        self.gate = gate
        self.sessions: set[Session] = set()
        self.doc: dict[str, str] = {}
        self.conn: Connector | None = None
        self.nursery: trio.Nursery | None = None
        self.scope = trio.CancelScope()
        self.delay: float | None = None
        self.started = trio.Event()  # set once ``conn`` exists, or the task ended without one
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connector for as long as the upstream is used; closes it politely."""
        gw = self.gateway
        try:
            with self.scope:
                async with open_upstream(
                    gw.upstream,
                    protocol=self.protocol,
                    policy=gw.policy,
                    session_id=self.session_id,
                    gate=self.gate,
                    heartbeat_interval=gw.heartbeat_interval,
                    close_timeout=gw.close_timeout,
                    open_stream=gw.open_stream,
                ) as conn:
                    self.conn = conn
                    self.started.set()
                    conn.lifecycle.observers.append(self._on_transition)
                    async with trio.open_nursery() as nursery:
                        self.nursery = nursery
                        nursery.start_soon(self._pump_messages, conn)
                        nursery.start_soon(self._watch_acks, conn)
                        task_status.started()
        except Exception as exc:
            # An upstream that breaks in an unforeseen way ends its own sessions (their
            # clients reconnect to fresh ones), never the gateway.
            log.error("upstream_failed", session_id=self.session_id, error=repr(exc))
            for session in list(self.sessions):
                gw._upstream_failed(session)
        finally:
            self.nursery = None
            self.started.set()
            self.done.set()

    def close(self) -> None:
        """End the upstream task; the connector closes gracefully, bounded."""
        self.scope.cancel()

    def view(self) -> dict[str, Any]:
        """``{"state", "phase", "attempts", "max_attempts", "delay", "reason"}``."""
        conn = self.conn
        policy = self.gateway.policy or RetryPolicy()
        if conn is None:
            return {
                "state": ConnState.NOT_STARTED.value, "phase": None, "attempts": 0,
                "max_attempts": policy.max_attempts, "delay": None, "reason": None,
            }
        phase = conn.phase
        reason = conn.close_reason if conn.state is ConnState.CLOSED else None
        return {
            "state": conn.state.value,
            "phase": phase.value if phase is not None else None,
            "attempts": conn.attempts,
            "max_attempts": conn.policy.max_attempts,
            "delay": self.delay if phase is Phase.BACKING_OFF else None,
            "reason": reason.value if reason is not None else None,
        }

    @property
    def conn_state(self) -> str:
        return self.conn.state.value if self.conn is not None else ConnState.NOT_STARTED.value

    def pending_cells(self) -> dict[str, str]:
        return self.conn.pending_edits if self.conn is not None else {}

    def _on_transition(self, change: Transition) -> None:
        self.delay = change.delay
        self.gateway.metrics.transition(change)
        frame = encode_frame("upstream", self.view())
        for session in self.sessions:
            session.push(frame)

    async def _pump_messages(self, conn: Connector) -> None:
        async for frame in conn.messages():
            text = encode_frame(frame.op, frame.data)
            for session in list(self.sessions):
                session.deliver(text)

    async def _watch_acks(self, conn: Connector) -> None:
        while True:
            waiting = [s for s in self.sessions if s.waiting and s.client is not None]
            if waiting:
                pending = conn.pending_edits
                for session in waiting:
                    session.check_acks(pending)
            await conn.wait_changed()  # the next ack or transition


