"""The connection lifecycle: every transition, in one declarative machine.

Theory of operation
-------------------

A client's connection to a kernel server is in exactly one of five states::

    NOT_STARTED --connect/request--> CONNECTING --ready--> OPEN --close--> CLOSING --> CLOSED
                                       |    ^                |
                                 DIALING <-> BACKING_OFF <---+ drop
                                       |
                                       +--fail (no attempts left)/reject/shutdown--> CLOSED

CONNECTING is a compound state: DIALING while an attempt is in flight, BACKING_OFF
while the next attempt waits for its timer. ``_LifecycleMachine`` in
:mod:`fsm.core._machine` declares every transition in one place (python-statemachine),
and the diagrams in the docs are generated from it.

The core is sans-IO and synchronous: it never sleeps, opens a socket, reads a
clock or touches a global RNG. Its driver tells it what happened by calling an
event method (``connect()``, ``ready()``, ``fail()``, ...), and every event method
returns the list of **effects** the driver must now carry out:

- :class:`Dial` -- start an attempt, bounded by ``timeout``; report ``ready``,
  ``fail``, ``reject`` or ``shutdown``. Before starting it, synchronously, the driver
  may report ``defer(delay)`` instead (a gateway sharing one upstream between many
  sessions): the attempt is then not made, and the lifecycle backs off for exactly
  ``delay`` without counting a failure.
- :class:`Backoff` -- wait ``delay`` seconds, then report ``retry``.
- :class:`Flush` -- send this batch of buffered edits (entering OPEN, exactly once):
  its ``frames`` in order, each an ``instantiate`` frame under the server's frame
  limit, each acknowledged on its own (see :class:`~fsm.FlushBatch`).
- :class:`SendEdit` -- send one edit now (an edit made while OPEN).
- :class:`HangUp` -- ``graceful``: close the socket politely, then report
  ``close_finished``; otherwise abandon whatever attempt or timer is in flight
  and report nothing about it.

Entering DIALING always yields a ``Dial`` and entering BACKING_OFF always yields a
``Backoff``, so CONNECTING is never without an attempt or a timer in flight. A
person's ``connect()`` while BACKING_OFF retries now: it returns
``[HangUp(graceful=False), Dial(1, ...)]``, the hang-up telling the driver to cancel
its back-off timer; a ``retry`` from a timer that was cancelled but fired anyway
(any phase but BACKING_OFF) returns ``[]`` and changes nothing.

What ``connect()`` (a person) and ``request()`` (a program's use) do, by state
(DESIGN.md section 3; guarded transitions of the machine, so the diagram shows them):

=============================  ================================  ===============================
state                          ``connect()``                     ``request()``
=============================  ================================  ===============================
NOT_STARTED                    starts a cycle                    starts a cycle
DIALING                        no-op                             no-op (waits for OPEN)
BACKING_OFF                    retry now: a new cycle            no-op (never resets the budget)
OPEN                           no-op                             no-op (sent)
CLOSING                        reconnects once closed            raises NotConnected
CLOSED(GAVE_UP, SHUTDOWN)      starts a new cycle                starts a new cycle
CLOSED(USER, REJECTED, ERROR)  starts a new cycle                raises NotConnected (says why)
=============================  ================================  ===============================

Jitter draws are checked: ``rng.random()`` is drawn when an attempt starts (for the
back-off that may follow it), and a value outside [0, 1) (or an exception) makes the
cycle's next failure or drop end in ``CLOSED(ERROR)`` with ``last_cause`` saying what
the rng returned, instead of a negative or NaN wait. The core never raises from
inside the engine.

No lifecycle builds an engine. Every lifecycle's events go to the one engine of
``_LifecycleMachine``, shared by all of them, through the cache of that engine's
decisions (:mod:`fsm.core._engine`): the engine decides each (configuration, event, guard
values) the first time it occurs, with this lifecycle as its owner, and later
identical keys replay the callbacks it ran, on their own lifecycle, in its order. So
python-statemachine decides every transition, an active lifecycle costs a few
kilobytes instead of tens, and a transition a fraction of an engine event. Events run
one at a time under one lock (the engine is not re-entrant; a lifecycle may be used
from several threads). :attr:`ConnectionLifecycle.machine` builds a per-instance
engine on demand, for inspection and tests; from then on that lifecycle's events go
through it, plain python-statemachine (``tests/test_engine_equivalence.py`` proves
both paths agree on every reachable configuration and input).

Edits are not machine events: an edit must cost a dict assignment.
:meth:`ConnectionLifecycle.edit` and :meth:`ConnectionLifecycle.ack` go straight to
the :class:`~fsm.EditBuffer`, and ``state``/``can_interact`` read a cached value.

After each event the lifecycle records where the engine's decision led as a
:class:`~fsm.Transition` and hands that to the observers, the transition logger
among them, once the event is done (outside the lock). No generic per-transition
hook is registered on the engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from statemachine.exceptions import TransitionNotAllowed

from fsm.core._buffer import DEFAULT_EDIT_LIMIT, EditBuffer
from fsm.core._effects import Backoff, Dial, Effect, Flush, HangUp, SendEdit
from fsm.core._errors import InvalidTransition, NotConnected
from fsm.core._frames import MAX_FRAME_SIZE
from fsm.core._logging import LibraryLogger, get_logger
from fsm.core._policy import RetryPolicy
from fsm.core._types import CloseReason, ConnState, Phase, Transition

if TYPE_CHECKING:
    import random

    from fsm.core._machine import _LifecycleMachine

__all__ = [
    "EVENTS",
    "Backoff",
    "ConnectionLifecycle",
    "Dial",
    "Effect",
    "Flush",
    "HangUp",
    "SendEdit",
    "TransitionLogger",
]




#: Every lifecycle event, in the order the machine declares them.
EVENTS: Final = (
    "connect",
    "request",
    "ready",
    "fail",
    "retry",
    "defer",
    "drop",
    "reject",
    "shutdown",
    "close",
    "close_finished",
)

# -- the public core ----------------------------------------------------------------

# Hot paths compare against these: on Python 3.11 ``ConnState.OPEN`` is an attribute
# lookup through the enum metaclass (~200 ns); a module global is ~10 ns.
_NOT_STARTED: Final = ConnState.NOT_STARTED
_CONNECTING: Final = ConnState.CONNECTING
_OPEN: Final = ConnState.OPEN
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED
_BACKING_OFF: Final = Phase.BACKING_OFF
_GAVE_UP: Final = CloseReason.GAVE_UP
_REJECTED: Final = CloseReason.REJECTED
_ERROR: Final = CloseReason.ERROR
_INFO: Final = logging.INFO
_WARNING: Final = logging.WARNING


class TransitionLogger:
    """Logs each transition as one structlog event with stable keys.

    The log event is the lifecycle event's name; the keys are ``source``,
    ``target``, ``attempt`` (the number of *failed* attempts in the current cycle
    after the transition: 0 on the first dial, 1 once the first attempt failed),
    and, where they apply, ``phase``, ``delay`` (the back-off wait, seconds),
    ``reason`` and ``cause`` (secrets redacted). Bind ``session_id`` (or anything
    else) on the logger you pass. Without one, the library's logger ``fsm`` is
    used, which is silent until the application configures logging: the
    application's structlog configuration if it has one, else stdlib ``logging``
    (logger ``fsm``). Transitions are INFO, a give-up or rejection WARNING.
    """

    __slots__ = ("_logger", "_settled")

    def __init__(self, logger: Any = None) -> None:
        self._logger = logger if logger is not None else get_logger("fsm")
        self._settled = False

    def _settle(self) -> None:
        # structlog.get_logger() returns a lazy proxy that assembles a logger from the
        # configuration on every call (about 1.4 µs), unless the configuration says
        # cache_logger_on_first_use: then the proxy hands out one logger for good, and
        # keeping that one ourselves changes nothing but the cost. Decided on the first
        # line, so that configuring structlog after creating a lifecycle still applies.
        self._settled = True
        logger = self._logger
        if callable(getattr(logger, "bind", None)):
            # Looked up twice: a caching proxy replaces its own ``bind`` on first use.
            first = logger.bind()
            if logger.bind() is first:
                self._logger = first

    def __call__(self, change: Transition) -> None:
        if not self._settled:
            self._settle()
        logger = self._logger
        if type(logger) is LibraryLogger:
            logger = logger.current()  # resolved once per line, not per call below
        warn = change.source is not _CLOSED and (
            change.reason is _GAVE_UP or change.reason is _REJECTED or change.reason is _ERROR
        )
        # structlog's filtering loggers (and stdlib ones, via structlog.stdlib) say
        # whether a level is on; building the fields of a dropped line is wasted work.
        enabled = getattr(logger, "is_enabled_for", None)
        if enabled is not None and not enabled(_WARNING if warn else _INFO):
            return
        fields: dict[str, Any] = {
            "source": change.source.value,
            "target": change.target.value,
            "attempt": change.attempt,
        }
        if change.phase is not None:
            fields["phase"] = change.phase.value
        if change.delay is not None:
            fields["delay"] = round(change.delay, 6)
        if change.reason is not None:
            fields["reason"] = change.reason.value
        if change.cause is not None:
            fields["cause"] = change.cause
        if warn:
            logger.warning(change.event, **fields)
        else:
            logger.info(change.event, **fields)


_log = get_logger("fsm")
# Frozen, so one instance serves every lifecycle built without a policy (validating a
# new one costs tens of microseconds per connection).
_DEFAULT_POLICY: Final = RetryPolicy()


class ConnectionLifecycle:
    """The sans-IO connection lifecycle (see the module docstring).

    ``policy`` sets retries and time-outs; ``rng`` draws the back-off jitter (pass
    ``random.Random(seed)`` for reproducible delays; without one a private
    ``random.Random()`` is made, never the global one); ``edit_limit`` bounds the
    edit buffer; ``max_frame_size`` is the server's frame limit assumed until a
    ``kernel-ready`` says it (bytes; 1 MiB, the protocol's default); ``logger`` is the
    structlog logger transitions are logged to
    (``None``: the library's logger ``fsm``, silent until the application configures
    structlog or stdlib ``logging``; ``None`` does not mean "no logging").
    ``log_transitions=False`` logs no transition at all (for a server holding
    thousands of lifecycles that counts them some other way). ``observers`` are
    called with a :class:`~fsm.Transition` after every transition.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        *,
        edit_limit: int = DEFAULT_EDIT_LIMIT,
        max_frame_size: int = MAX_FRAME_SIZE,
        logger: Any = None,
        observers: list[Callable[[Transition], None]] | None = None,
        log_transitions: bool = True,
    ) -> None:
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a RetryPolicy, got {type(policy).__name__}")
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError(
                f"rng must be a random.Random (anything with a random() method), "
                f"got {type(rng).__name__}"
            )
        if rng is None:
            import random  # here, not at import: ``import fsm`` need not load it

            rng = random.Random()
        self.policy = policy if policy is not None else _DEFAULT_POLICY
        self._rng = rng
        self.buffer = EditBuffer(edit_limit, max_frame_size=max_frame_size)
        self.observers: list[Callable[[Transition], None]] = list(observers or ())
        if log_transitions:
            self.observers.append(TransitionLogger(logger))
        self._machine: _LifecycleMachine | None = None
        self._state = ConnState.NOT_STARTED
        self._phase: Phase | None = None
        self._attempts = 0
        self._waits = 0  # back-off waits since the cycle began or a long-lived link dropped
        self._delay: float | None = None
        self._close_reason: CloseReason | None = None
        self._reconnect_after_close = False
        # The jitter draw made when the current attempt started, and what was wrong
        # with it (None: nothing); the back-off after that attempt uses it.
        self._draw = 0.0
        self._draw_problem: str | None = None
        self._effects: list[Effect] = []
        #: The cause of the most recent failure, rejection or shutdown, if reported.
        self.last_cause: BaseException | str | None = None

    # -- reads (fast paths: no engine) ----------------------------------------------

    @property
    def state(self) -> ConnState:
        """The current state."""
        return self._state

    @property
    def phase(self) -> Phase | None:
        """DIALING or BACKING_OFF while CONNECTING, else None."""
        return self._phase

    @property
    def can_interact(self) -> bool:
        """True exactly in NOT_STARTED and OPEN: the user may edit and run."""
        state = self._state
        return state is _NOT_STARTED or state is _OPEN

    @property
    def is_not_started(self) -> bool:
        """True until the first connect or request."""
        return self._state is _NOT_STARTED

    @property
    def attempts(self) -> int:
        """Failed attempts in the current cycle."""
        return self._attempts

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the lifecycle is CLOSED; None in every other state."""
        return self._close_reason

    @property
    def pending_edits(self) -> dict[str, str]:
        """Edits not yet acknowledged by the server: cell id to latest code."""
        return self.buffer.pending

    @property
    def max_frame_size(self) -> int:
        """The server's frame limit known now, in bytes: 1 MiB until a ``kernel-ready`` says."""
        return self.buffer.max_frame_size

    @property
    def undeliverable(self) -> dict[str, str]:
        """Accepted edits no frame under the current limit can carry (see EditBuffer)."""
        return self.buffer.undeliverable

    @property
    def machine(self) -> _LifecycleMachine:
        """A python-statemachine engine of this lifecycle's own, for inspection and tests.

        Built on first use, in the lifecycle's current configuration; from then on this
        lifecycle's events go through it (plain python-statemachine, slower, about 60
        KiB) instead of the shared engine. Diagrams are drawn from the machine class.
        """
        return self._engine()

    # -- events (rare: through the engine) ---------------------------------------------

    def connect(self) -> list[Effect]:
        """User action: start; retry now while BACKING_OFF; a new cycle from CLOSED.

        A no-op while DIALING or OPEN; while CLOSING, reconnects once the close is done.
        """
        return self._send("connect")

    def request(self) -> list[Effect]:
        """A use needs the connection: starts a lazy one, heals CLOSED(GAVE_UP/SHUTDOWN).

        A no-op while CONNECTING or OPEN (a use never resets the attempt budget); raises
        :class:`~fsm.NotConnected` while CLOSING and in CLOSED(USER, REJECTED, ERROR),
        saying why and what to do.
        """
        state = self._state
        # Fast path: the declared internal transitions in CONNECTING and OPEN do nothing.
        if state is _OPEN or state is _CONNECTING:
            return []
        try:
            return self._send("request")
        except InvalidTransition as exc:
            raise NotConnected(self._refusal()) from exc

    def _refusal(self) -> str:
        """Why a request cannot be served now, and what to do."""
        if self._state is _CLOSING:
            return (
                "cannot send a request while CLOSING: the connection is being closed;"
                " call connect() to reconnect once the close is done"
            )
        reason = self._close_reason
        cause = ""
        if self.last_cause is not None and reason is not CloseReason.USER:
            from fsm.core._redact import describe, redact

            cause = f"; last cause: {redact(describe(self.last_cause))}"
        if reason is CloseReason.REJECTED:
            return (
                f"cannot send a request: the server rejected the connection (CLOSED(REJECTED))"
                f"{cause}; a request does not ask a server that said no again: fix what it"
                f" refused (credentials, URL, notebook), then call connect()"
            )
        if reason is CloseReason.ERROR:
            return (
                f"cannot send a request: the connection cycle stopped on an error in the"
                f" client (CLOSED(ERROR)){cause}; fix it, then call connect()"
            )
        what = reason.value if reason is not None else self._state.value
        return (
            f"cannot send a request: the connection was closed by the user (CLOSED({what}));"
            f" call connect() to open it again"
        )

    def ready(self, seq: int | None = 0, max_frame_size: int | None = None) -> list[Effect]:
        """The attempt succeeded: the server sent ``kernel-ready``; flush the buffered edits.

        ``seq`` is kernel-ready's seq (the highest the server received for this session:
        new frames are numbered above it; one below what this client saw acknowledged
        means the server lost its state, and the flush carries every cell edited);
        ``max_frame_size`` its frame limit in bytes (None: 1 MiB). ``seq=None`` is for a
        peer that has no seqs (marimo): no loss of state can then be detected. Values no
        server sends raise ValueError before anything changes.
        """
        EditBuffer.check_ready(seq, max_frame_size)
        return self._send("ready", seq=seq, max_frame_size=max_frame_size)

    def fail(
        self, cause: BaseException | str | None = None, *, retry_after: float | None = None
    ) -> list[Effect]:
        """The attempt failed in a way worth retrying (refused, time-out, 408/429/5xx, reset).

        ``retry_after`` (seconds, a server's ``Retry-After``) raises the wait that follows
        to at least that much, capped at ``policy.max_retry_after``.
        """
        if retry_after is not None:
            _check_seconds("retry_after", retry_after)
        return self._send("fail", cause=cause, retry_after=retry_after)

    def retry(self) -> list[Effect]:
        """The back-off timer fired; outside BACKING_OFF (a cancelled timer) a no-op: ``[]``."""
        if self._phase is not _BACKING_OFF:
            return []
        try:
            return self._send("retry")
        except InvalidTransition:
            # Another thread left BACKING_OFF between the check and the event (the
            # engine's declared retry has no guard): this timer is just as stale.
            return []

    def defer(self, delay: float) -> list[Effect]:
        """Put off the attempt just dialed: back off for exactly ``delay`` s, no failure counted.

        For a driver that, on receiving :class:`Dial`, decides synchronously not to start
        the attempt yet (a gateway sharing one upstream). Returns
        ``[Backoff(attempts, delay)]``; a ``connect()`` meanwhile is a person's retry-now.
        """
        _check_seconds("delay", delay)
        # Not ``delay=``: python-statemachine's send() takes that for a delayed event.
        return self._send("defer", deferred_for=delay)

    def drop(self, uptime: float, cause: BaseException | str | None = None) -> list[Effect]:
        """An OPEN connection was lost after ``uptime`` seconds."""
        return self._send("drop", uptime=uptime, cause=cause)

    def reject(self, cause: BaseException | str | None = None) -> list[Effect]:
        """The server refused for good (401/403, 1008, 3000-3999): no automatic retry."""
        return self._send("reject", cause=cause)

    def shutdown(self, cause: BaseException | str | None = None) -> list[Effect]:
        """The server announced its shutdown."""
        return self._send("shutdown", cause=cause)

    def close(self) -> list[Effect]:
        """User action: close; graceful from OPEN, immediate elsewhere; idempotent."""
        return self._send("close")

    def close_finished(self) -> list[Effect]:
        """The graceful close ended (cleanly or by its time-out)."""
        return self._send("close_finished")

    # -- edits (frequent: never through the engine) ------------------------------------

    def edit(self, cell_id: str, code: str, *, hold: bool = False) -> SendEdit | None:
        """Record an edit; while OPEN, return the SendEdit the driver must send now.

        With ``hold=True`` an edit made while OPEN is kept unsent instead, until the
        driver calls :meth:`take_unsent` (when its writer is free): edits to the same
        cell meanwhile replace each other, and only the latest code goes out.
        """
        if self._state is _OPEN and not hold:
            return SendEdit(self.buffer.send(cell_id, code), cell_id, code)
        self.buffer.put(cell_id, code)
        return None

    def take_unsent(self) -> list[SendEdit]:
        """While OPEN: the edits not sent yet, each now in flight under its own seq.

        Elsewhere nothing: the flush on entering OPEN carries them.
        """
        if self._state is not _OPEN:
            return []
        return [SendEdit(seq, cell_id, code) for seq, cell_id, code in self.buffer.send_unsent()]

    def ack(self, seq: int) -> bool:
        """The server acknowledged ``seq``; False if nothing was waiting on it."""
        return self.buffer.ack(seq)

    # -- internals ------------------------------------------------------------------------

    # The engine's configuration (a state value, or a tuple of them in CONNECTING); a
    # class attribute until the first transition, so an idle lifecycle stores nothing.
    _config: Any = "NOT_STARTED"

    def _engine(self) -> _LifecycleMachine:
        # A per-instance engine, built on demand for inspection and tests: once built,
        # this lifecycle's events go through it (plain python-statemachine, no cache).
        if self._machine is None:
            from fsm.core._engine import config_value
            from fsm.core._machine import _LifecycleMachine

            machine = _LifecycleMachine(self)
            machine.current_state_value = config_value(self._config)
            self._machine = machine
        return self._machine

    def _decide(self, decisions: Any, event: str, kwargs: dict[str, Any]) -> Any:
        """The engine's decision for ``event``: the new configuration, or a Refusal."""
        machine = self._machine
        if machine is None:
            if decisions is not None:
                return decisions.decide(self, self._config, event, kwargs)
            machine = self._engine()
        from fsm.core._engine import Refusal, config_key, config_value

        if config_key(machine.current_state_value) != self._config:
            machine.current_state_value = config_value(self._config)
        try:
            machine.send(event, **kwargs)
        except TransitionNotAllowed:
            return Refusal([e.id for e in machine.allowed_events])
        return config_key(machine.current_state_value)

    def _send(self, event: str, *, cause: BaseException | str | None = None, **kwargs: Any) -> (
        list[Effect]
    ):
        decisions, lock = _DECISIONS or _load_decisions()
        # One event at a time, whatever the thread: the shared engine is not re-entrant,
        # and the lifecycle's own fields change together. Observers run after.
        with lock:
            previous_cause = self.last_cause
            if cause is not None:
                self.last_cause = cause  # set first, so that observers see it
            source = self._state
            outcome = self._decide(decisions, event, kwargs)
            if type(outcome) is not str and type(outcome) is not tuple:
                # Refused (the engine raised TransitionNotAllowed): nothing changed.
                self._effects.clear()
                self.last_cause = previous_cause
                raise InvalidTransition(event, self._state, outcome.allowed)
            # A StateMachine refuses an event that takes no transition, so exactly one
            # was taken: its outcome is where it led, with no per-transition engine hook.
            self._config = outcome
            target, phase = _state_of(outcome)
            self._state = target
            self._phase = phase
            effects, self._effects = self._effects, []
            change = self._record(source, target, phase, event, cause) if self.observers else None
        if change is not None:
            self._notify(change)
        return effects

    def _record(
        self,
        source: ConnState,
        target: ConnState,
        phase: Phase | None,
        event: str,
        cause: BaseException | str | None,
    ) -> Transition:
        if cause is not None:
            from fsm.core._redact import describe, redact  # only failures carry a cause

            cause = redact(describe(cause))
        return Transition(  # positional: about twice as fast as by keyword
            source,
            target,
            event,
            self._attempts,
            self._delay if phase is _BACKING_OFF else None,
            self._close_reason,
            phase,
            cause,
        )

    def _notify(self, change: Transition) -> None:
        for observer in self.observers:
            try:
                observer(change)
            except Exception:
                # The transition has happened and its effects must reach the driver:
                # a failing observer is logged, never allowed to break the lifecycle.
                _log.exception("observer_failed", observer=repr(observer))


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


# The public state and phase each engine state value stands for. In CONNECTING the
# engine's value is the set of active states: the compound state and one leaf.
_STATE_BY_VALUE: Final[dict[str, tuple[ConnState, Phase | None]]] = {
    "NOT_STARTED": (ConnState.NOT_STARTED, None),
    "OPEN": (ConnState.OPEN, None),
    "CLOSING": (ConnState.CLOSING, None),
    "CLOSED": (ConnState.CLOSED, None),
}
_DIALING_STATE: Final = (ConnState.CONNECTING, Phase.DIALING)
_BACKING_OFF_STATE: Final = (ConnState.CONNECTING, Phase.BACKING_OFF)


def _state_of(value: Any) -> tuple[ConnState, Phase | None]:
    if type(value) is str:
        return _STATE_BY_VALUE[value]
    return _BACKING_OFF_STATE if "BACKING_OFF" in value else _DIALING_STATE


# The shared engine and decision cache of _LifecycleMachine (fsm.core._engine) and the lock
# every event runs under, loaded on the first event: [cache, lock]; the cache is None
# when the machine needs one engine per lifecycle.
_DECISIONS: list[Any] = []


def _load_decisions() -> list[Any]:
    from fsm.core._engine import cache_for, lock
    from fsm.core._machine import _LifecycleMachine

    with lock():
        if not _DECISIONS:
            placeholder = ConnectionLifecycle(log_transitions=False)
            _DECISIONS[:] = [cache_for(_LifecycleMachine, placeholder), lock()]
    return _DECISIONS
