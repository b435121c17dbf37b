"""The trio driver's public API: :func:`open_connector` and the :class:`Connector`.

Theory of operation
-------------------

The :class:`~fsm.ConnectionLifecycle` decides; the :class:`Connector` acts. Every
event method of the lifecycle returns effects, and :meth:`Connector._apply`
carries them out:

- ``Dial`` starts a link task (:mod:`fsm.driver._attempt`): one attempt (adapter ``prepare``, the
  WebSocket handshake, the ready frame) under one cancel scope whose deadline is
  the connect time-out. When the ready frame arrives the deadline is lifted and
  the same task serves the open connection (a reader, the sender of
  :mod:`fsm.driver._sender` and the heartbeat of :mod:`fsm.driver._heartbeat`).
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

The connector is the hub the other modules report to: frames that arrive go through
it (acks to the lifecycle, other messages to its streams, :mod:`fsm.driver._streams`),
and so does every outcome (``_report``). The link (:mod:`fsm.driver._link`), how a link
ended (:mod:`fsm.driver._outcomes`) and the socket under the WebSocket
(:mod:`fsm.driver._transport`) have modules of their own; the public path is
:mod:`fsm.connector`.

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import sniffio
import trio

from fsm.adapters._base import (
    KernelProtocol,
    check_session_id,
    normalise_url,
)
from fsm.adapters._reference import ReferenceProtocol
from fsm.core._buffer import DEFAULT_EDIT_LIMIT
from fsm.core._effects import Backoff, Dial, Effect, Flush, HangUp
from fsm.core._errors import (
    ConnectionFailed,
    InvalidTransition,
    LifecycleError,
)
from fsm.core._frames import BadFrame, Frame, decode_frame
from fsm.core._lifecycle import ConnectionLifecycle
from fsm.core._logging import get_logger
from fsm.core._policy import RetryPolicy
from fsm.core._redact import redact_url
from fsm.core._types import CloseReason, ConnState, Phase, Transition
from fsm.driver._attempt import _RELEASE_TIMEOUT, run_link
from fsm.driver._host import DialGate
from fsm.driver._link import _CLOSE, _SEND_UNSENT, Link, _lost_before_sent, _Request
from fsm.driver._streams import _NO_STREAMS, MessageStream, TransitionStream
from fsm.driver._transport import StreamOpener, _check_headers, open_tcp

__all__ = ["Connector", "DialGate", "open_connector"]

_OPEN: Final = ConnState.OPEN  # a module global: the enum attribute costs ~200 ns per edit


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

    async def wait_changed(self) -> None:
        """Return at the connector's next change: a transition or an acknowledgement.

        For conditions of one's own, as ``wait_for`` and ``wait_acked`` are built:
        check the condition, then ``await conn.wait_changed()``, in a loop. Nothing can
        change between the check and the wait (trio switches tasks only at an await).
        """
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
        link = Link(effect.attempt, session_id=self.session_id, url=self.url, on_ack=self._on_ack)
        link.gated = gate is not None
        self._link = link
        self.stats["dials"] += 1
        self._nursery.start_soon(run_link, self, link, effect.timeout)

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
