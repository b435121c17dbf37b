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
while the next attempt waits for its timer. ``_LifecycleMachine`` below declares
every transition in one place (python-statemachine), and the diagrams in the docs
are generated from it.

The core is sans-IO and synchronous: it never sleeps, opens a socket, reads a
clock or touches a global RNG. Its driver tells it what happened by calling an
event method (``connect()``, ``ready()``, ``fail()``, ...), and every event method
returns the list of **effects** the driver must now carry out:

- :class:`Dial` -- start an attempt, bounded by ``timeout``; report ``ready``,
  ``fail``, ``reject`` or ``shutdown``.
- :class:`Backoff` -- wait ``delay`` seconds, then report ``retry``.
- :class:`Flush` -- send this batch of buffered edits (entering OPEN, exactly once).
- :class:`SendEdit` -- send one edit now (an edit made while OPEN).
- :class:`HangUp` -- ``graceful``: close the socket politely, then report
  ``close_finished``; otherwise abandon whatever attempt or timer is in flight
  and report nothing about it.

Entering DIALING always yields a ``Dial`` and entering BACKING_OFF always yields a
``Backoff``, so CONNECTING is never without an attempt or a timer in flight.

Edits are not machine events: an engine event costs about 200 µs, an edit must
cost a dict assignment. :meth:`ConnectionLifecycle.edit` and
:meth:`ConnectionLifecycle.ack` go straight to the :class:`~fsm.EditBuffer`, and
``state``/``can_interact`` read a cached value. The engine itself is built on the
first event, so an idle NOT_STARTED lifecycle costs only a few small objects.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from fsm._buffer import DEFAULT_EDIT_LIMIT, EditBuffer, FlushBatch
from fsm._errors import InvalidTransition, NotConnected
from fsm._policy import RetryPolicy
from fsm._redact import describe, redact
from fsm._types import CloseReason, ConnState, Phase, Transition

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


# -- effects: what the driver must do next ---------------------------------------


@dataclass(frozen=True, slots=True)
class Dial:
    """Start attempt number ``attempt`` of this cycle; it must end within ``timeout``."""

    attempt: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait ``delay`` seconds, then send ``retry``; ``attempt`` failed attempts so far."""

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class Flush:
    """Send every edit not yet acknowledged, as one batch (on entering OPEN)."""

    batch: FlushBatch


@dataclass(frozen=True, slots=True)
class SendEdit:
    """Send one edit made while OPEN."""

    seq: int
    cell_id: str
    code: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """Close the socket gracefully (then ``close_finished``), or abandon what is in flight."""

    graceful: bool


Effect = Dial | Backoff | Flush | SendEdit | HangUp


# -- the machine: every lifecycle transition --------------------------------------

# Which public state and phase each engine state (by id) stands for.
_STATE_OF: Final[dict[str, tuple[ConnState, Phase | None]]] = {
    "not_started": (ConnState.NOT_STARTED, None),
    "connecting": (ConnState.CONNECTING, Phase.DIALING),
    "dialing": (ConnState.CONNECTING, Phase.DIALING),
    "backing_off": (ConnState.CONNECTING, Phase.BACKING_OFF),
    "open": (ConnState.OPEN, None),
    "closing": (ConnState.CLOSING, None),
    "closed": (ConnState.CLOSED, None),
}

#: Every lifecycle event, in the order the machine declares them.
EVENTS: Final = (
    "connect",
    "request",
    "ready",
    "fail",
    "retry",
    "drop",
    "reject",
    "shutdown",
    "close",
    "close_finished",
)

# The reason CLOSED records, by the event that led there.
_REASON_BY_EVENT: Final[dict[str, CloseReason]] = {
    "fail": CloseReason.GAVE_UP,
    "drop": CloseReason.GAVE_UP,
    "reject": CloseReason.REJECTED,
    "shutdown": CloseReason.SHUTDOWN,
    "close": CloseReason.USER,
    "close_finished": CloseReason.USER,
}


class _LifecycleMachine(StateMachine):
    """The declarative lifecycle; callbacks read and write the owning ConnectionLifecycle."""

    not_started = State("NOT_STARTED", value="NOT_STARTED", initial=True)

    class connecting(State.Compound, name="CONNECTING"):
        dialing = State("DIALING", value="DIALING", initial=True)
        backing_off = State("BACKING_OFF", value="BACKING_OFF")

    open = State("OPEN", value="OPEN")
    closing = State("CLOSING", value="CLOSING")
    closed = State("CLOSED", value="CLOSED")

    # A user action: start lazily, or recover from CLOSED whatever the reason.
    connect = (
        not_started.to(connecting, cond="is_not_started")
        | closed.to(connecting, on="start_new_cycle")
        | closing.to.itself(internal=True, on="request_reconnect")  # type: ignore[no-untyped-call]
        # No-ops on the leaves: an internal self-transition on the compound state
        # re-enters its initial substate (SCXML), which would dial again.
        | connecting.dialing.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | connecting.backing_off.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | open.to.itself(internal=True)  # type: ignore[no-untyped-call]
    )
    # The first use of a lazy connection starts it; later ones need nothing.
    request = (
        not_started.to(connecting, cond="is_not_started")
        | connecting.dialing.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | connecting.backing_off.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | open.to.itself(internal=True, cond="can_interact")  # type: ignore[no-untyped-call]
    )
    # The server said it is ready: the edit buffer is flushed on this transition.
    ready = connecting.dialing.to(open, on="flush_edits")
    # Transitions sharing an event are tried in the order written here.
    fail = connecting.dialing.to(
        connecting.backing_off, cond="attempts_left", on="count_failure"
    ) | connecting.dialing.to(closed, on="count_failure")
    retry = connecting.backing_off.to(connecting.dialing)
    drop = (
        open.to(connecting.backing_off, cond="stayed_up", on="reset_attempts")
        | open.to(connecting.backing_off, cond="attempts_left", on="count_failure")
        | open.to(closed, on="count_failure")
    )
    reject = connecting.dialing.to(closed) | open.to(closed)
    shutdown = connecting.dialing.to(closed) | open.to(closed)
    close = (
        not_started.to(closed)
        | connecting.to(closed, on="abandon_attempt")
        | open.to(closing, on="hang_up")
        | closing.to.itself(internal=True, on="cancel_reconnect")  # type: ignore[no-untyped-call]
        | closed.to.itself(internal=True)  # type: ignore[no-untyped-call]
    )
    close_finished = closing.to(connecting, cond="reconnect_requested", on="start_new_cycle") | (
        closing.to(closed)
    )

    def __init__(self, owner: ConnectionLifecycle) -> None:
        self._owner = owner
        super().__init__()

    # guards ---------------------------------------------------------------------

    @property
    def is_not_started(self) -> bool:
        return self._owner.is_not_started

    @property
    def can_interact(self) -> bool:
        return self._owner.can_interact

    @property
    def reconnect_requested(self) -> bool:
        return self._owner._reconnect_after_close

    def attempts_left(self) -> bool:
        # Evaluated before count_failure runs: is this failure not yet the last allowed?
        return self._owner._attempts + 1 < self._owner.policy.max_attempts

    def stayed_up(self, uptime: float = 0.0) -> bool:
        return uptime >= self._owner.policy.min_uptime

    # actions --------------------------------------------------------------------

    def start_new_cycle(self) -> None:
        owner = self._owner
        owner._attempts = 0
        owner._reconnect_after_close = False

    def request_reconnect(self) -> None:
        self._owner._reconnect_after_close = True

    def cancel_reconnect(self) -> None:
        self._owner._reconnect_after_close = False

    def count_failure(self) -> None:
        self._owner._attempts += 1

    def reset_attempts(self) -> None:
        self._owner._attempts = 0

    def flush_edits(self) -> None:
        self._owner._effects.append(Flush(self._owner.buffer.take_flush()))

    def abandon_attempt(self) -> None:
        self._owner._effects.append(HangUp(graceful=False))

    def hang_up(self) -> None:
        self._owner._effects.append(HangUp(graceful=True))

    def on_enter_dialing(self) -> None:
        owner = self._owner
        owner._effects.append(Dial(owner._attempts + 1, owner.policy.connect_timeout))

    def on_enter_backing_off(self) -> None:
        owner = self._owner
        failures = max(1, owner._attempts)
        owner._delay = owner.policy.backoff(failures, owner._rng)
        owner._effects.append(Backoff(owner._attempts, owner._delay))

    def on_exit_open(self) -> None:
        # Whatever was in flight may be lost with the socket: the next flush resends it.
        self._owner.buffer.requeue()

    def on_enter_closed(self, event: str) -> None:
        self._owner._close_reason = _REASON_BY_EVENT[event]

    def on_exit_closed(self) -> None:
        self._owner._close_reason = None

    def after_transition(self, event: str, source: State, target: State) -> None:
        # ``event`` is the engine's BoundEvent (a str subclass that holds the machine
        # and reprs as BoundEvent(...)): records and logs get the plain name.
        self._owner._after_transition(str(event), source.id, target.id)


# -- the public core ----------------------------------------------------------------


class TransitionLogger:
    """Logs each transition as one structlog event with stable keys.

    The log event is the lifecycle event's name; the keys are ``source``,
    ``target``, ``attempt`` and, where they apply, ``phase``, ``delay``,
    ``reason`` and ``cause`` (secrets redacted). Bind ``session_id`` (or anything
    else) on the logger you pass.
    """

    __slots__ = ("_logger",)

    def __init__(self, logger: Any = None) -> None:
        self._logger = logger if logger is not None else structlog.get_logger("fsm")

    def __call__(self, change: Transition) -> None:
        warn = change.source is not ConnState.CLOSED and change.reason in (
            CloseReason.GAVE_UP,
            CloseReason.REJECTED,
        )
        # structlog's filtering loggers (and stdlib ones, via structlog.stdlib) say
        # whether a level is on; building the fields of a dropped line is wasted work.
        enabled = getattr(self._logger, "is_enabled_for", None)
        if enabled is not None and not enabled(logging.WARNING if warn else logging.INFO):
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
            self._logger.warning(change.event, **fields)
        else:
            self._logger.info(change.event, **fields)


# Hot paths compare against these: on Python 3.11 ``ConnState.OPEN`` is an attribute
# lookup through the enum metaclass (~200 ns); a module global is ~10 ns.
_NOT_STARTED: Final = ConnState.NOT_STARTED
_CONNECTING: Final = ConnState.CONNECTING
_OPEN: Final = ConnState.OPEN
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED

_log = structlog.get_logger("fsm")


class ConnectionLifecycle:
    """The sans-IO connection lifecycle (see the module docstring).

    ``policy`` sets retries and time-outs; ``rng`` draws the back-off jitter (pass
    ``random.Random(seed)`` for reproducible delays; without one a private
    ``random.Random()`` is made, never the global one); ``edit_limit`` bounds the
    edit buffer; ``logger`` is the structlog logger transitions are logged to
    (``None``: ``structlog.get_logger("fsm")``). ``observers`` are called with a
    :class:`~fsm.Transition` after every transition.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        *,
        edit_limit: int = DEFAULT_EDIT_LIMIT,
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
        self.policy = policy if policy is not None else RetryPolicy()
        self._rng = rng if rng is not None else random.Random()
        self.buffer = EditBuffer(edit_limit)
        self.observers: list[Callable[[Transition], None]] = list(observers or ())
        if log_transitions:
            self.observers.append(TransitionLogger(logger))
        self._machine: _LifecycleMachine | None = None
        self._state = ConnState.NOT_STARTED
        self._phase: Phase | None = None
        self._attempts = 0
        self._delay: float | None = None
        self._close_reason: CloseReason | None = None
        self._reconnect_after_close = False
        self._effects: list[Effect] = []
        self._cause: BaseException | str | None = None
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
    def machine(self) -> StateMachine:
        """The python-statemachine instance (built on first use); for diagrams and tests."""
        return self._engine()

    # -- events (rare: through the engine) ---------------------------------------------

    def connect(self) -> list[Effect]:
        """User action: start, or start a new cycle from CLOSED; a no-op while CONNECTING/OPEN."""
        return self._send("connect")

    def request(self) -> list[Effect]:
        """A request needs the connection: starts a lazy one; raises NotConnected when closed."""
        state = self._state
        # Fast path: the declared internal transitions in CONNECTING and OPEN do nothing.
        if state is _OPEN or state is _CONNECTING:
            return []
        if state is _CLOSED or state is _CLOSING:
            reason = f" ({self._close_reason.value})" if self._close_reason else ""
            raise NotConnected(
                f"cannot send a request while {state.value}{reason}; call connect() first"
            )
        return self._send("request")

    def ready(self) -> list[Effect]:
        """The attempt succeeded: the server sent its ready frame."""
        return self._send("ready")

    def fail(self, cause: BaseException | str | None = None) -> list[Effect]:
        """The attempt failed in a way worth retrying (refused, time-out, 5xx, reset)."""
        return self._send("fail", cause=cause)

    def retry(self) -> list[Effect]:
        """The back-off timer fired."""
        return self._send("retry")

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

    def edit(self, cell_id: str, code: str) -> SendEdit | None:
        """Record an edit; while OPEN, return the SendEdit the driver must send now."""
        if self._state is _OPEN:
            return SendEdit(self.buffer.send(cell_id, code), cell_id, code)
        self.buffer.put(cell_id, code)
        return None

    def ack(self, seq: int) -> bool:
        """The server acknowledged ``seq``; False if nothing was waiting on it."""
        return self.buffer.ack(seq)

    # -- internals ------------------------------------------------------------------------

    def _engine(self) -> _LifecycleMachine:
        if self._machine is None:
            self._machine = _LifecycleMachine(self)
        return self._machine

    def _send(self, event: str, *, cause: BaseException | str | None = None, **kwargs: Any) -> (
        list[Effect]
    ):
        machine = self._engine()
        previous_cause = self.last_cause
        if cause is not None:
            self.last_cause = cause  # set first, so that observers see it
        self._cause = cause
        try:
            machine.send(event, **kwargs)
        except TransitionNotAllowed:
            self._effects.clear()
            self.last_cause = previous_cause
            allowed = [e.id for e in machine.allowed_events]
            raise InvalidTransition(event, self._state, allowed) from None
        finally:
            self._cause = None
        effects, self._effects = self._effects, []
        return effects

    def _after_transition(self, event: str, source_id: str, target_id: str) -> None:
        source, _ = _STATE_OF[source_id]
        target, phase = _STATE_OF[target_id]
        self._state = target
        self._phase = phase
        change = Transition(
            source=source,
            target=target,
            event=event,
            attempt=self._attempts,
            delay=self._delay if phase is Phase.BACKING_OFF else None,
            reason=self._close_reason,
            phase=phase,
            cause=None if self._cause is None else redact(describe(self._cause)),
        )
        for observer in self.observers:
            try:
                observer(change)
            except Exception:
                # The transition has happened and its effects must reach the driver:
                # a failing observer is logged, never allowed to break the lifecycle.
                _log.exception("observer_failed", observer=repr(observer))
