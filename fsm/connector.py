"""The trio driver: executes the lifecycle's effects over trio-websocket.

Theory of operation
-------------------

The :class:`~fsm.ConnectionLifecycle` decides; the :class:`Connector` acts. Every
event method of the lifecycle returns effects, and :meth:`Connector._apply`
carries them out:

- ``Dial`` starts a :class:`Link` task: one attempt (adapter ``prepare``, the
  WebSocket handshake, the ready frame) under one cancel scope whose deadline is
  the connect time-out. When the ready frame arrives the deadline is lifted and
  the same task serves the open connection (a reader, a sender and a heartbeat).
  When the task ends, the way it ended becomes **exactly one** lifecycle event
  (``fail``, ``drop``, ``reject``, ``shutdown`` or ``close_finished``), unless
  the lifecycle abandoned it first. Unexpected exceptions are caught, logged and
  reported like any other loss, so CONNECTING is never left without an attempt.
- ``Backoff`` starts a timer task that reports ``retry``.
- ``Flush`` (a batch of one or more frames; the adapter sends them) and requests go,
  in order, through the link's outbox to its sender task.
  Edits never block: the buffer keeps them until acknowledged, and while OPEN one
  marker in the outbox has the sender take every edit not sent yet (``take_unsent``).
- ``HangUp`` closes gracefully (the link's deadline becomes ``close_timeout``) or
  abandons the attempt or timer in flight.

Nothing runs before the first ``connect()`` or ``request()``: the connector's
nursery holds no task, no socket and no timer until then (lazy by default).
"""

from __future__ import annotations

import collections
import functools
import math
import random
import secrets
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Final, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import sniffio
import trio
import trio_websocket

from fsm._buffer import DEFAULT_EDIT_LIMIT
from fsm._errors import (
    ConnectionFailed,
    InvalidTransition,
    LifecycleError,
    NotConnected,
    RequestFailed,
)
from fsm._frames import MAX_FRAME_SIZE, BadFrame, Frame, decode_frame, encode_frame
from fsm._logging import get_logger
from fsm._policy import RetryPolicy
from fsm._redact import describe, redact, redact_url
from fsm._types import CloseReason, ConnState, Phase, Transition
from fsm.lifecycle import (
    Backoff,
    ConnectionLifecycle,
    Dial,
    Effect,
    Flush,
    HangUp,
)
from fsm.protocols import (
    AttemptFailed,
    AttemptRejected,
    KernelProtocol,
    ReferenceProtocol,
    Verdict,
    check_session_id,
    normalise_url,
    retry_after_seconds,
)

__all__ = [
    "Connector",
    "DialGate",
    "Link",
    "MessageStream",
    "StreamOpener",
    "TransitionStream",
    "open_connector",
    "open_tcp",
]

# trio-websocket closes the socket (1009) above this; our decoder refuses (and
# logs) frames above MAX_FRAME_SIZE, so frames in between are skipped, not fatal.
_TRANSPORT_MAX_MESSAGE = 4 * MAX_FRAME_SIZE
# Hooks that free resources run shielded but must still end.
_RELEASE_TIMEOUT = 2.0


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


_OPEN: Final = ConnState.OPEN  # a module global: the enum attribute costs ~200 ns per edit
_CLOSE = _CloseCommand()
# Posted once for any number of edits made while OPEN: the sender takes them all from
# the buffer when it gets there, so a cell typed into meanwhile goes out once, latest.
_SEND_UNSENT = _SendUnsent()

# The stream sets of a connector nobody has asked for streams yet: shared, always empty
# (a WeakSet costs about 0.9 KiB and 4 µs, and most connectors never get a stream).
# Never add to it: the first stream of a connector gives it a set of its own.
_NO_STREAMS: weakref.WeakSet[Any] = weakref.WeakSet()
_Outgoing = Flush | _Request | _CloseCommand | _SendUnsent


class Link:
    """One attempt and, once ready, the open connection it became.

    Adapters use :meth:`send_frame`, :meth:`acknowledge`, ``session_id``,
    ``url`` (as given to :func:`open_connector`) and ``context`` (a dict for
    their own per-link state).
    """

    def __init__(self, connector: Connector, attempt: int) -> None:
        self.connector = connector
        self.attempt = attempt
        self.session_id = connector.session_id
        self.url = connector.url
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
        self.connector._on_ack(seq)

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


_T = TypeVar("_T")


class _Feed(Generic[_T]):
    """A bounded, weakly held subscription: what a consumer has not read yet.

    The connector holds its feeds in a ``WeakSet``, so a feed the application dropped
    (an ``async for`` left by ``break``, a cancelled task) is freed with its buffer and
    stops receiving at once; a feed still referenced but not read holds at most
    ``maxlen`` items. Pushing never blocks and never waits for a consumer.
    """

    def __init__(self, maxlen: int, *, drop_oldest: bool) -> None:
        self._buffer: collections.deque[_T] = collections.deque()
        self._maxlen = maxlen
        self._drop_oldest = drop_oldest
        self._closed = False
        self._wakeup: trio.Event | None = None
        #: Items this stream lost because its consumer fell ``maxlen`` items behind.
        self.dropped = 0

    def __len__(self) -> int:
        """How many items are buffered, unread."""
        return len(self._buffer)

    def _push(self, item: _T) -> bool:
        """Buffer ``item``; False if the buffer was full and an item was dropped."""
        if self._closed:
            return True
        buffer = self._buffer
        kept = True
        if len(buffer) >= self._maxlen:
            self.dropped += 1
            kept = False
            if not self._drop_oldest:
                return False
            buffer.popleft()
        buffer.append(item)
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()
        return kept

    def _end(self) -> None:
        """No more items: a consumer gets what is buffered, then the end."""
        self._closed = True
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def receive_nowait(self) -> _T:
        """The next item; ``trio.WouldBlock`` if none is buffered, ``trio.EndOfChannel``
        once the stream has ended."""
        if self._buffer:
            return self._buffer.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> _T:
        """The next item, waiting for it; ``trio.EndOfChannel`` once the stream has ended."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._buffer:
            while not self._buffer:
                if self._closed:
                    raise trio.EndOfChannel
                if self._wakeup is None:
                    self._wakeup = trio.Event()
                await self._wakeup.wait()
            return self._buffer.popleft()
        item = self._buffer.popleft()
        # A schedule point that cannot lose the item, as trio's memory channels do.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self) -> _Feed[_T]:
        return self

    async def __anext__(self) -> _T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; what was buffered is dropped."""
        self._buffer.clear()
        self._end()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> _Feed[_T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class TransitionStream(_Feed[Transition]):
    """An async iterator of :class:`~fsm.Transition` records, from its creation on.

    For a slow consumer it keeps the newest ``maxlen`` records (default 1,000) and drops
    the oldest, counting them in :attr:`dropped`: the latest state is the one that
    matters. A stream the application no longer references is freed and stops receiving.
    """

    def __init__(self, connector: Connector, maxlen: int = 1_000) -> None:
        super().__init__(maxlen, drop_oldest=True)
        if connector._subscribers is _NO_STREAMS:
            connector._subscribers = weakref.WeakSet()
        connector._subscribers.add(self)
        if not connector._running:
            self._end()


class MessageStream(_Feed[Frame]):
    """An async iterator of decoded server messages, from its creation on; see
    :meth:`Connector.messages`."""

    def __init__(self, connector: Connector, maxlen: int) -> None:
        super().__init__(maxlen, drop_oldest=False)
        backlog = connector._backlog
        if backlog and not connector._message_streams:
            # Messages that arrived while nobody listened go to the first listener.
            self._buffer.extend(backlog)
            backlog.clear()
        if connector._message_streams is _NO_STREAMS:
            connector._message_streams = weakref.WeakSet()
        connector._message_streams.add(self)
        if not connector._running:
            self._end()


class Connector:
    """A lazily started, self-healing connection to a kernel server; see the module docstring.

    Create it with :func:`open_connector`; every argument is documented there.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: KernelProtocol | None = None,
        policy: RetryPolicy | None = None,
        session_id: str | None = None,
        heartbeat_interval: float | None = 20.0,
        heartbeat_timeout: float = 20.0,
        close_timeout: float = 5.0,
        rng: random.Random | None = None,
        edit_limit: int = DEFAULT_EDIT_LIMIT,
        message_buffer: int = 10_000,
        logger: Any = None,
        open_stream: StreamOpener | None = None,
        dial_gate: DialGate | None = None,
        ssl_context: ssl.SSLContext | None = None,
        extra_headers: Any = None,
    ) -> None:
        self.url = normalise_url(url)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        self._extra_headers = _check_headers(extra_headers)
        if dial_gate is not None and not callable(getattr(dial_gate, "admit", None)):
            raise TypeError(f"dial_gate must be a DialGate, got {type(dial_gate).__name__}")
        self._dial_gate = dial_gate
        self._urgent = False  # the Dial being applied comes from a person's connect()
        if open_stream is not None and not callable(open_stream):
            raise TypeError(f"open_stream must be callable, got {type(open_stream).__name__}")
        if open_stream is not None and ssl_context is not None:
            raise ValueError("pass ssl_context or open_stream, not both (open_stream does TLS)")
        self._open_stream: StreamOpener = (
            open_stream if open_stream is not None
            else functools.partial(open_tcp, ssl_context=ssl_context)
        )
        if protocol is not None and not isinstance(protocol, KernelProtocol):
            raise TypeError(f"protocol must be a KernelProtocol, got {type(protocol).__name__}")
        self.protocol = protocol if protocol is not None else ReferenceProtocol()
        if session_id is None:
            session_id = f"s_{secrets.token_hex(6)}"
        self.session_id = check_session_id(session_id)
        if heartbeat_interval is not None:
            _check_positive("heartbeat_interval", heartbeat_interval)
        _check_positive("heartbeat_timeout", heartbeat_timeout)
        _check_positive("close_timeout", close_timeout)
        if isinstance(message_buffer, bool) or not isinstance(message_buffer, int) or (
            message_buffer < 1
        ):
            raise ValueError(f"message_buffer must be an integer >= 1, got {message_buffer!r}")
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.close_timeout = close_timeout
        base = logger if logger is not None else get_logger("fsm")
        self._log = base.bind(session_id=session_id)
        self._lc = ConnectionLifecycle(
            policy,
            rng,
            edit_limit=edit_limit,
            logger=self._log,
            observers=[self._on_transition],
        )
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._link: Link | None = None
        self._timer: trio.CancelScope | None = None
        self._changed = trio.Event()
        # Weakly held: a stream the application dropped costs nothing (invariant 10).
        self._subscribers: weakref.WeakSet[TransitionStream] = _NO_STREAMS
        self._message_streams: weakref.WeakSet[MessageStream] = _NO_STREAMS
        self._message_buffer = message_buffer
        # Messages that arrived while no message stream existed, for the first one.
        self._backlog: collections.deque[Frame] = collections.deque()
        #: Counters for observability and tests.
        self.stats = {"dials": 0, "bad_frames": 0, "messages_dropped": 0, "unknown_acks": 0,
                      "deferrals": 0}

    # -- state (fast reads) ----------------------------------------------------------

    @property
    def lifecycle(self) -> ConnectionLifecycle:
        """The sans-IO core this connector drives."""
        return self._lc

    @property
    def state(self) -> ConnState:
        return self._lc.state

    @property
    def phase(self) -> Phase | None:
        return self._lc.phase

    @property
    def can_interact(self) -> bool:
        return self._lc.can_interact

    @property
    def is_not_started(self) -> bool:
        return self._lc.is_not_started

    @property
    def attempts(self) -> int:
        return self._lc.attempts

    @property
    def close_reason(self) -> CloseReason | None:
        return self._lc.close_reason

    @property
    def pending_edits(self) -> dict[str, str]:
        """Edits not yet acknowledged by the server: cell id to latest code."""
        return self._lc.pending_edits

    @property
    def policy(self) -> RetryPolicy:
        return self._lc.policy

    # -- the public API -----------------------------------------------------------------

    def edit(self, cell_id: str, code: str) -> None:
        """Record an edit; sent as soon as the link's writer is free if OPEN, else
        buffered until OPEN. Never blocks. Edits made to one cell before the writer
        gets to them go out once, with the latest code.

        Raises the same "not running" :class:`~fsm.LifecycleError` as ``connect()``
        outside the ``async with open_connector(...)`` block."""
        if not self._running:
            raise _not_running()
        self._lc.edit(cell_id, code, hold=True)
        link = self._link
        if link is not None and not link.unsent_posted and self._lc.state is _OPEN:
            # If the outbox is closed the link is being released: the edit waits for
            # the next flush, like every other unacknowledged one.
            link.unsent_posted = link.post(_SEND_UNSENT)

    async def connect(self) -> None:
        """Start, retry now (while BACKING_OFF), or restart from CLOSED; return once OPEN.

        While BACKING_OFF the back-off timer is cancelled and an attempt starts at once,
        in a new cycle (a person pressing Connect). A no-op while DIALING or OPEN.
        Raises :class:`~fsm.ConnectionFailed` when the cycle ends in CLOSED instead
        (gave up, rejected, shut down or closed meanwhile).
        """
        self._check_running()
        self._urgent = True  # a dial gate lets a person's Connect dial first
        try:
            self._apply(self._lc.connect())
        finally:
            self._urgent = False
        await self._until_open()

    async def request(self, op: str, data: Any = None) -> Any:
        """Send a request, starting a lazy connection and waiting for OPEN first.

        From CLOSED(GAVE_UP) or CLOSED(SHUTDOWN) it starts a new cycle (a program heals
        on its next use); while BACKING_OFF it waits for the scheduled attempt without
        resetting the attempt budget. Raises :class:`~fsm.NotConnected` while CLOSING and
        in CLOSED(USER) or CLOSED(REJECTED) (saying why; call ``connect()``), or if the
        connection is lost before the request was sent, and
        :class:`~fsm.ConnectionFailed` if the cycle it waited for gives up.
        :class:`~fsm.RequestFailed` means the server refused this request itself.
        """
        if not isinstance(op, str) or not op:
            raise ValueError(f"op must be a non-empty str, got {op!r}")
        self._check_running()
        self._apply(self._lc.request())
        while True:
            await self._until_open()
            link = self._link
            if link is not None and link.end is None:
                break
            # Still OPEN, but the link has just ended and its loss is being reported:
            # wait for the lifecycle to move on (and reconnect) rather than fail.
            await self._changed.wait()
        request = _Request(op, data)
        if not link.post(request):
            raise _lost_before_sent(op)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    async def wait_for(self, state: ConnState) -> None:
        """Return once the lifecycle is in ``state`` (bound it with ``trio.fail_after``)."""
        state = ConnState(state)
        while self._lc.state is not state:
            await self._changed.wait()

    async def wait_acked(self) -> None:
        """Return once OPEN with every edit acknowledged (bound it with ``trio.fail_after``)."""
        while self._lc.state is not ConnState.OPEN or self._lc.buffer:
            await self._changed.wait()

    def messages(self) -> MessageStream:
        """Decoded server messages other than ready frames and acks, from now on.

        Every stream gets every message that arrives while it exists; messages that
        arrived while no stream existed (at most ``message_buffer``) go to the first
        stream made. For a slow consumer a stream holds at most ``message_buffer``
        unread messages; beyond that new ones are dropped for that stream, counted in
        ``stats["messages_dropped"]`` with a ``messages_dropped`` warning. The reader
        never waits for a consumer. A stream the application no longer references (an
        ``async for`` left by ``break``, a cancelled task) is freed and stops receiving.
        """
        return MessageStream(self, self._message_buffer)

    def transitions(self, *, maxlen: int = 1_000) -> TransitionStream:
        """Every transition from now on, as :class:`~fsm.Transition` records.

        A consumer that falls behind keeps the newest ``maxlen`` records (the oldest are
        dropped and counted in the stream's ``dropped``); a stream the application no
        longer references is freed and stops receiving.
        """
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be an integer >= 1, got {maxlen!r}")
        return TransitionStream(self, maxlen)

    async def aclose(self) -> None:
        """Close: gracefully from OPEN (bounded by ``close_timeout``), at once elsewhere.

        Idempotent. The connector can be started again with ``connect()`` while its
        ``async with`` block is running; a ``connect()`` made while CLOSING takes
        effect once the close is done, and ``aclose()`` returns then.
        """
        state = self._lc.state
        if state is ConnState.CLOSED:
            return
        self._apply(self._lc.close())
        if self._lc.state is ConnState.CLOSING:
            with trio.move_on_after(self.close_timeout + _RELEASE_TIMEOUT + 1):
                while self._lc.state is ConnState.CLOSING:
                    await self._changed.wait()
            if self._lc.state is ConnState.CLOSING:  # pragma: no cover - deadline passed twice
                self._abandon()
                self._apply(self._lc.close_finished())

    # -- executing effects ---------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running or self._nursery is None:
            raise _not_running()

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Dial):
                self._dial(effect)
            elif isinstance(effect, Backoff):
                self._start_timer(effect.delay)
            elif isinstance(effect, Flush):
                if self._link is not None:
                    self._link.post(effect)
            elif isinstance(effect, HangUp):
                if effect.graceful:
                    self._hang_up()
                else:
                    self._abandon()

    def _dial(self, effect: Dial) -> None:
        assert self._nursery is not None
        gate = self._dial_gate
        if gate is not None:
            delay = gate.admit(self, trio.current_time(), urgent=self._urgent)
            if delay > 0:
                # The shared view holds this attempt back: BACKING_OFF for exactly that
                # long, no failure counted, before any attempt starts.
                self.stats["deferrals"] += 1
                self._apply(self._lc.defer(delay))
                return
        link = Link(self, effect.attempt)
        link.gated = gate is not None
        self._link = link
        self.stats["dials"] += 1
        self._nursery.start_soon(self._run_link, link, effect.timeout)

    def _start_timer(self, delay: float) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._timer = scope
        self._nursery.start_soon(self._backoff, scope, delay)

    async def _backoff(self, scope: trio.CancelScope, delay: float) -> None:
        with scope:
            await trio.sleep(delay)
        if scope.cancelled_caught or self._timer is not scope:
            return
        self._timer = None
        self._report(self._lc.retry)

    def _hang_up(self) -> None:
        link = self._link
        if link is None:
            return
        link.closing = True
        link.scope.deadline = min(link.scope.deadline, trio.current_time() + self.close_timeout)
        link.post(_CLOSE)  # if closed, the ending link reports close_finished itself

    def _abandon(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.abandoned = True
            link.scope.cancel()
            if link.gated:  # now, not when its task ends: a new cycle may dial at once
                link.gated = False
                assert self._dial_gate is not None
                self._dial_gate.finished(self, trio.current_time(), None)
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if self._dial_gate is not None:
                self._dial_gate.forget(self)

    def _report(self, event: Callable[..., list[Effect]], *args: Any, **kwargs: Any) -> None:
        """Feed one driver-side outcome to the lifecycle and carry out what follows."""
        try:
            effects = event(*args, **kwargs)
        except InvalidTransition as exc:  # a driver bug; log it rather than kill the nursery
            self._log.error("driver_event_rejected", error=str(exc))
            return
        self._apply(effects)

    # -- one link: attempt, then open connection --------------------------------------

    async def _run_link(self, link: Link, timeout: float) -> None:
        link.scope.deadline = trio.current_time() + timeout
        interrupted = True  # until the link's own scope is left normally
        try:
            with link.scope:
                await self._dial_and_serve(link)
            interrupted = False
        finally:
            # Also when the task itself is cancelled from outside (the connector's
            # nursery is being cancelled): the lifecycle must still hear how the link
            # ended, or a pending aclose() would wait for a close that never reports.
            self._fail_waiting_requests(link)
            with trio.CancelScope(shield=True), trio.move_on_after(_RELEASE_TIMEOUT):
                try:
                    await self.protocol.release(link)
                except Exception as exc:
                    self._log.warning("release_failed", cause=redact(describe(exc)))
            if link.end is None:
                if interrupted:
                    cause = "the connection task was cancelled"
                    if link.closing:
                        link.set_end("close_finished", cause)
                    else:
                        link.lost(cause)
                elif link.closing:
                    link.set_end(
                        "close_finished", f"close timed out after {self.close_timeout:g} s"
                    )
                elif link.opened_at is None:
                    link.lost(f"attempt timed out after {timeout:g} s")
            if link.gated:
                link.gated = False
                failed = not link.abandoned and link.end is not None and link.end[0] == "fail"
                assert self._dial_gate is not None
                self._dial_gate.finished(self, trio.current_time(), False if failed else None)
            self._finish_link(link)

    def _finish_link(self, link: Link) -> None:
        if link.abandoned or self._link is not link:
            return
        self._link = None
        event, cause = link.end if link.end is not None else ("", "ended without a cause")
        if link.closing:
            self._report(self._lc.close_finished)
        elif event == "reject":
            self._report(self._lc.reject, cause)
        elif event == "shutdown":
            self._report(self._lc.shutdown, cause)
        elif link.opened_at is None:
            self._report(self._lc.fail, cause, retry_after=link.retry_after)
        else:
            uptime = trio.current_time() - link.opened_at
            self._report(self._lc.drop, uptime, cause)

    async def _dial_and_serve(self, link: Link) -> None:
        try:
            await self.protocol.prepare(link)
            ws_url = self.protocol.websocket_url(self.url, self.session_id)
            async with self._open_websocket(link, ws_url) as ws:
                link.ws = ws
                frame = await self._await_ready(link, ws)
                await self.protocol.on_ready(link, frame)
                # is_ready() checked these; kernel-ready's seq and frame limit (protocol v2).
                seq, max_frame_size = self.protocol.ready_info(frame)
                del frame  # it can hold every cell's code; the adapter kept what it needs
                if link.abandoned or self._link is not link:
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
                    assert self._dial_gate is not None
                    self._dial_gate.finished(self, link.opened_at, True)
                self._report(self._lc.ready, seq, max_frame_size)
                if self._link is link:
                    await self._serve(link, ws)
        except AttemptRejected as exc:
            link.set_end("reject", redact(str(exc)))
        except AttemptFailed as exc:
            link.lost(redact(str(exc)))
        except trio_websocket.ConnectionRejected as exc:
            self._rejected_handshake(link, ws_url, exc)
        except trio_websocket.ConnectionClosed as exc:
            self._closed(link, exc)
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
                self._log.debug("close_error", cause=redact(describe(exc)))
                link.set_end("close_finished", "closed by the client")
            else:
                self._log.error(
                    "unexpected_error", cause=redact(describe(exc)), attempt=link.attempt
                )
                link.lost(redact(describe(exc)))

    @asynccontextmanager
    async def _open_websocket(
        self, link: Link, ws_url: str
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        """One WebSocket over a TCP stream that this connector owns and always closes.

        trio-websocket 0.12.2 leaves the socket open when a handshake is refused or
        cancelled (it is closed only when the garbage collector finds it), so the
        stream is opened here, the reader runs in a nursery of its own, and the
        stream is closed on every way out. The link's own deadline bounds the
        handshake. A link already known to be lost (no pong, a send failed) is not
        closed politely: waiting for a close handshake on a dead connection would
        only delay the reconnect.
        """
        host, port, resource, secure = _websocket_target(ws_url)
        stream = await self._open_stream(host, port, secure)
        default_port = 443 if secure else 80
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header = f"{host_header}:{port}"
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,  # type: ignore[arg-type]  # any trio Stream works; typed narrowly
                    host_header,
                    resource,
                    extra_headers=self.protocol.extra_headers() + self._extra_headers,
                    message_queue_size=64,
                    max_message_size=_TRANSPORT_MAX_MESSAGE,
                )
                try:
                    yield ws
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    try:
                        if not link.is_lost:
                            with trio.move_on_after(self.close_timeout):
                                await ws.aclose()
                    finally:
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Re-raise the one exception that matters, so that callers can catch it
            # by type: the body's own, else the reader's (a refused handshake, say).
            raise _single_exception(group, body_error) from None
        finally:
            await trio.aclose_forcefully(stream)

    def _rejected_handshake(
        self, link: Link, ws_url: str, exc: trio_websocket.ConnectionRejected
    ) -> None:
        """A refused handshake: fatal or retried by its status (DESIGN.md section 6)."""
        status = exc.status_code
        verdict = self.protocol.classify_status(status)
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
        self._classify(link, verdict, cause)

    def _classify(self, link: Link, verdict: Verdict, cause: str) -> None:
        if verdict is Verdict.REJECT:
            link.set_end("reject", cause)
        elif verdict is Verdict.SHUTDOWN:
            link.set_end("shutdown", cause)
        else:
            link.lost(cause)

    def _closed(self, link: Link, exc: trio_websocket.ConnectionClosed) -> None:
        code = getattr(exc.reason, "code", None)
        reason = getattr(exc.reason, "reason", None)
        cause = f"closed with code {code}" + (f" ({redact(reason)})" if reason else "")
        if not _peer_closed(link.ws):
            # The client's own transport closed (1007 for invalid UTF-8, 1009 for a message
            # over its limit, 1006 for a lost socket): what the server sent was broken, the
            # server refused nothing. Retried like any loss.
            link.lost(cause)
            return
        self._classify(link, self.protocol.classify_close(code, reason), cause)

    async def _await_ready(
        self, link: Link, ws: trio_websocket.WebSocketConnection
    ) -> Frame:
        while True:
            frame = self._decode(await ws.get_message())
            if frame is None:
                continue
            ready = self._is_ready(frame)
            if ready:
                return frame
            if ready is not None:
                self._on_frame(link, frame)

    async def _serve(self, link: Link, ws: trio_websocket.WebSocketConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender, link, ws, nursery.cancel_scope)
            if self.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat, link, ws, nursery.cancel_scope)
            finishing_close = False
            try:
                while True:
                    frame = self._decode(await ws.get_message())
                    if frame is None:
                        continue
                    ready = self._is_ready(frame)
                    if ready:
                        self._bad_frame("a second ready frame while open")
                    elif ready is not None:
                        self._on_frame(link, frame)
            except trio_websocket.ConnectionClosed as exc:
                if link.closing:
                    # Our own close started (aclose() ends the message stream at once):
                    # let the sender finish the close handshake, which the link's
                    # close_timeout bounds; the sender ends this nursery when done.
                    finishing_close = True
                else:
                    self._closed(link, exc)
            finally:
                if not finishing_close:
                    nursery.cancel_scope.cancel()

    async def _sender(
        self, link: Link, ws: trio_websocket.WebSocketConnection, done: trio.CancelScope
    ) -> None:
        try:
            async for item in link.outbox_receive:
                if isinstance(item, Flush):
                    await self.protocol.flush(link, item.batch)
                elif item is _SEND_UNSENT:
                    link.unsent_posted = False  # edits made during the sends post anew
                    for edit in self._lc.take_unsent():
                        await self.protocol.send_edit(link, edit)
                elif isinstance(item, _Request):
                    answered = False
                    try:
                        item.result = await self.protocol.request(link, item.op, item.data)
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
            self._closed(link, exc)
            done.cancel()
        except AttemptRejected as exc:
            link.set_end("reject", redact(str(exc)))
            done.cancel()
        except (AttemptFailed, OSError) as exc:
            link.lost(redact(describe(exc)))
            done.cancel()
        except Exception as exc:
            self._log.error("unexpected_error", cause=redact(describe(exc)), task="sender")
            link.lost(redact(describe(exc)))
            done.cancel()

    async def _heartbeat(
        self, link: Link, ws: trio_websocket.WebSocketConnection, done: trio.CancelScope
    ) -> None:
        assert self.heartbeat_interval is not None
        try:
            while True:
                await trio.sleep(self.heartbeat_interval)
                with trio.move_on_after(self.heartbeat_timeout) as waited:
                    await ws.ping()
                if waited.cancelled_caught:
                    link.lost(f"no pong within {self.heartbeat_timeout:g} s")
                    done.cancel()
                    return
        except trio_websocket.ConnectionClosed:
            return  # the reader reports how it closed

    def _fail_waiting_requests(self, link: Link) -> None:
        link.outbox_send.close()
        while True:
            try:
                item = link.outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, _Request) and not item.done.is_set():
                item.error = _lost_before_sent(item.op)
                item.done.set()

    # -- frames -----------------------------------------------------------------------------

    def _decode(self, message: str | bytes) -> Frame | None:
        try:
            return decode_frame(message)
        except BadFrame as exc:
            self._bad_frame(exc.reason)
            return None

    def _is_ready(self, frame: Frame) -> bool | None:
        """Whether ``frame`` is the ready frame; None (logged) if it is a malformed one."""
        try:
            return self.protocol.is_ready(frame)
        except ValueError as exc:
            self._bad_frame(str(exc))
            return None

    def _bad_frame(self, reason: str) -> None:
        self.stats["bad_frames"] += 1
        self._log.warning("bad_frame", reason=reason)

    def _on_frame(self, link: Link, frame: Frame) -> None:
        try:
            seq = self.protocol.ack_seq(frame)
        except ValueError as exc:
            self._bad_frame(str(exc))
            return
        if seq is not None:
            self._on_ack(seq)
            return
        streams = self._message_streams
        if not streams:
            backlog = self._backlog
            if len(backlog) < self._message_buffer:
                backlog.append(frame)
                return
            full = True
        else:
            full = False
            for stream in list(streams):
                if not stream._push(frame):
                    full = True
        if full:
            self.stats["messages_dropped"] += 1
            self._log.warning("messages_dropped", op=frame.op, reason="message buffer full")

    def _on_ack(self, seq: int) -> None:
        if self._lc.ack(seq):
            self._wake()
        else:
            self.stats["unknown_acks"] += 1
            self._log.warning("unknown_ack", seq=seq)

    # -- waiting on transitions ------------------------------------------------------------

    def _wake(self) -> None:
        # One Event per generation: setting it wakes every waiter, replacing it arms the next.
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _on_transition(self, change: Transition) -> None:
        self._wake()
        for subscriber in list(self._subscribers):
            subscriber._push(change)

    async def _until_open(self) -> None:
        while True:
            state = self._lc.state
            if state is ConnState.OPEN:
                return
            if state is ConnState.CLOSED:
                if not self._running:
                    # The async with block exited while this call waited: the same
                    # error a call made after the block gets.
                    raise _not_running()
                reason = self._lc.close_reason or CloseReason.USER
                cause = self._lc.last_cause
                error = ConnectionFailed(reason, self._lc.attempts, cause)
                if isinstance(cause, BaseException):
                    raise error from cause
                raise error
            await self._changed.wait()

    # -- running -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # From here on no connect() or request() may start a new cycle.
        self._running = False
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.close_timeout + _RELEASE_TIMEOUT + 1):
                await self.aclose()
            self._abandon()
            # Whatever happened meanwhile, the lifecycle ends CLOSED with nothing in flight.
            if self._lc.state is ConnState.CLOSING:  # pragma: no cover - deadline passed
                self._report(self._lc.close_finished)
            if self._lc.state is not ConnState.CLOSED:  # pragma: no cover - defensive
                self._report(self._lc.close)
            self._abandon()
        for stream in list(self._message_streams):
            stream._end()
        for subscriber in list(self._subscribers):
            subscriber._end()
        self._subscribers.clear()
        self._message_streams.clear()
        self._backlog.clear()


#: Opens the byte stream one WebSocket runs over: ``(host, port, secure) -> Stream``.
StreamOpener = Callable[[str, int, bool], Awaitable[trio.abc.Stream]]


class DialGate(Protocol):
    """What a connector asks before every attempt when it shares an upstream with
    others (``dial_gate=``); :class:`fsm.gateway.UpstreamGate` is the one that ships.

    ``admit`` answers ``0.0`` (dial now) or the seconds to wait first, which the
    connector reports as ``defer(delay)``; ``urgent`` marks a person's ``connect()``.
    ``finished`` is called once per admitted dial: ``True`` ready, ``False`` a
    retryable failure, ``None`` anything else. ``forget``: the session stopped waiting.
    """

    def admit(self, session: Connector, now: float, *, urgent: bool = False) -> float: ...

    def finished(self, session: Connector, now: float, ok: bool | None) -> None: ...

    def forget(self, session: Connector) -> None: ...


async def open_tcp(
    host: str, port: int, secure: bool, *, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """The default :data:`StreamOpener`: TCP, with TLS for ``wss://`` (``ssl_context``,
    or the system's default trust store when it is None)."""
    if secure:
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
        try:
            # Now, not on the first send: a certificate the context does not trust is
            # then this attempt's error (an ssl.SSLError, an OSError), not a hang that
            # ends in the connect time-out.
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc.__cause__, ssl.SSLError):
                raise exc.__cause__ from None
            raise OSError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        return stream
    return await trio.open_tcp_stream(host, port)


def _refuse_asyncio() -> None:
    """Fail at once, with what to do, when called from asyncio code (trio would fail deep
    inside itself): trio's guest mode runs trio tasks under an asyncio loop, and those
    are trio's (sniffio says which library the current task belongs to)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if library != "trio":
        raise LifecycleError(
            f"fsm.open_connector() runs under trio, and this is {library}: from asyncio "
            "code use `async with fsm.aio.open_connector(...)` (trio in guest mode), or "
            "run the trio code with trio.run() in a thread of its own"
        )


def _not_running() -> LifecycleError:
    return LifecycleError(
        "the connector is not running: use it inside `async with open_connector(...)` "
        "(its block has exited, or has not been entered)"
    )


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


def _check_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """``extra_headers`` (a mapping or (name, value) pairs of str or bytes) as bytes pairs."""
    if headers is None:
        return []
    items = list(headers.items()) if hasattr(headers, "items") else list(headers)
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"extra_headers must map names to values, got {item!r}")
        name, value = (v.encode("latin-1") if isinstance(v, str) else v for v in item)
        if not isinstance(name, bytes) or not isinstance(value, bytes) or not name:
            raise TypeError("extra_headers names and values must be str or bytes")
        if b"\r" in name + value or b"\n" in name + value:
            raise ValueError("extra_headers must not contain line breaks")
        pairs.append((name, value))
    return pairs


_STATUS_HINTS: Final = {
    400: "the server did not take the handshake request; check the URL and the protocol",
    401: "the server wants credentials; pass a token",
    403: "the server refuses these credentials or this client",
    404: "no WebSocket endpoint at this URL; check the host, port and path",
    405: "the server does not take a WebSocket handshake (GET) at this URL; check the URL",
    410: "the endpoint is gone; check the URL",
    426: "the server wants another protocol at this URL; check the scheme and the path",
}


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


def _lost_before_sent(op: str) -> NotConnected:
    return NotConnected(f"the connection was lost before request {op!r} completed; send it again")


def _websocket_target(ws_url: str) -> tuple[str, int, str, bool]:
    """``(host, port, resource, secure)`` of a ``ws://`` or ``wss://`` URL."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {redact_url(ws_url)}")
    secure = parts.scheme == "wss"
    port = parts.port if parts.port is not None else (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource = f"{resource}?{parts.query}"
    return parts.hostname, port, resource, secure


def _single_exception(
    group: BaseExceptionGroup[BaseException], preferred: BaseException | None
) -> BaseException:
    """The exception to raise for ``group``: ``preferred`` if it is in it, else the only
    exception that is not a cancellation, else ``group`` itself (trio's cancel scopes
    take the ``Cancelled`` out of a group)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    if preferred is not None and any(leaf is preferred for leaf in leaves):
        return preferred
    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    return errors[0] if errors else group


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


@asynccontextmanager
async def open_connector(
    url: str,
    *,
    protocol: KernelProtocol | None = None,
    policy: RetryPolicy | None = None,
    lazy: bool = True,
    session_id: str | None = None,
    heartbeat_interval: float | None = 20.0,
    heartbeat_timeout: float = 20.0,
    close_timeout: float = 5.0,
    rng: random.Random | None = None,
    edit_limit: int = DEFAULT_EDIT_LIMIT,
    message_buffer: int = 10_000,
    logger: Any = None,
    open_stream: StreamOpener | None = None,
    dial_gate: DialGate | None = None,
    ssl_context: ssl.SSLContext | None = None,
    extra_headers: Any = None,
) -> AsyncIterator[Connector]:
    """Open a :class:`Connector` to the kernel server at ``url``.

    ``url`` is ``ws://``, ``wss://``, ``http://`` or ``https://`` with a host
    (anything else is a ``ValueError`` here, not a retry loop). ``protocol`` is
    the adapter (default :class:`~fsm.ReferenceProtocol`); ``policy`` the
    :class:`~fsm.RetryPolicy`. With ``lazy=True`` (the default) nothing happens
    until the first ``connect()`` or ``request()``; ``lazy=False`` starts
    connecting on entry without waiting. ``session_id`` defaults to a random one.
    Every ``heartbeat_interval`` seconds (``None``: never) a ping must be answered
    within ``heartbeat_timeout`` or the connection counts as dropped. A graceful
    close waits at most ``close_timeout``. ``rng`` draws back-off jitter;
    ``edit_limit`` bounds the edit buffer; ``message_buffer`` bounds unread
    messages; ``logger`` is a structlog-style logger (``session_id`` is bound to
    it; default: the library's logger ``fsm``, silent until the application configures
    structlog or stdlib ``logging``).
    ``open_stream(host, port, secure)`` opens the byte stream each WebSocket runs
    over (default: TCP, TLS for ``wss``); tests pass in-memory streams, so that a
    whole fleet can run on ``trio.testing.MockClock`` with no real I/O.
    ``dial_gate`` (a :class:`DialGate`, such as :class:`fsm.gateway.UpstreamGate`)
    is asked before every attempt by the connectors sharing one upstream; a wait it
    imposes shows as BACKING_OFF with that delay and counts no failed attempt.
    ``ssl_context`` verifies ``wss://`` servers (default: the system's trust store;
    pass, say, a context trusting a private CA). ``extra_headers`` (a mapping, or
    (name, value) pairs) are sent with every WebSocket handshake, after the
    adapter's own; they never reach a log line.

    This is trio's: under asyncio it raises at once (use :func:`fsm.aio.open_connector`,
    which runs it in trio's guest mode). ``connect()`` and ``request()`` wait at most
    until the cycle ends: with the default policy, the back-off waits of
    ``fsm schedule`` plus ``connect_timeout`` per attempt; bound them with
    ``trio.fail_after`` for less. A call still waiting when the block exits (from a
    task outside it) raises the same "not running" :class:`~fsm.LifecycleError` as a
    call made after it.

    On leaving the block the connector closes (gracefully if OPEN, shielded and
    bounded by ``close_timeout``) and every task and socket it started is gone.
    """
    _refuse_asyncio()
    connector = Connector(
        url,
        protocol=protocol,
        policy=policy,
        session_id=session_id,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        close_timeout=close_timeout,
        rng=rng,
        edit_limit=edit_limit,
        message_buffer=message_buffer,
        logger=logger,
        open_stream=open_stream,
        dial_gate=dial_gate,
        ssl_context=ssl_context,
        extra_headers=extra_headers,
    )
    if not isinstance(lazy, bool):
        raise TypeError(f"lazy must be a bool, got {lazy!r}")
    connector._log.debug("connector_opened", url=redact_url(url), lazy=lazy)
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        connector._nursery = nursery
        connector._running = True
        try:
            if not lazy:
                connector._apply(connector._lc.connect())
            yield connector
        except BaseException as exc:
            # Re-raised below, outside the nursery, so callers see their own
            # exception rather than an ExceptionGroup wrapping it.
            body_error = exc
        finally:
            await connector._shutdown()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
