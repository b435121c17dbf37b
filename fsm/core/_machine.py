"""Every lifecycle transition, declared in one python-statemachine class.

This is the whole machine: its states, the events that move between them, the
guards that choose among transitions sharing an event, and the actions that run on
the way. ``fsm diagrams`` draws ``diagrams/lifecycle.{mmd,dot,svg}`` from this class
(the docs publish them), and a test fails when they no longer match it.

How the machine is driven (effects, and the hot paths that bypass it) is explained in
:mod:`fsm.core._lifecycle`, which imports this module when a lifecycle receives its first
event: building the class costs several milliseconds that ``import fsm`` need not pay.

Callbacks read and write the owning :class:`~fsm.ConnectionLifecycle` (``self._owner``,
typed by :class:`_Owner`: the fields they touch, so that this module need not import
the lifecycle that imports it) and their arguments, never the engine's own
configuration: one instance of this class serves every lifecycle, and the decisions it
made are replayed on other lifecycles without it (:mod:`fsm.core._engine`). The effects
they append are what the event method returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from statemachine import State, StateMachine

from fsm.core._effects import Backoff, Dial, Effect, Flush, HangUp
from fsm.core._logging import get_logger
from fsm.core._policy import RetryPolicy, check_draw
from fsm.core._types import CloseReason

if TYPE_CHECKING:
    import random

    from fsm.core._buffer import EditBuffer

__all__ = ["_LifecycleMachine"]

_log = get_logger("fsm")

# The reason CLOSED records, by the event that led there.
_REASON_BY_EVENT: Final[dict[str, CloseReason]] = {
    "fail": CloseReason.GAVE_UP,
    "drop": CloseReason.GAVE_UP,
    "reject": CloseReason.REJECTED,
    "shutdown": CloseReason.SHUTDOWN,
    "close": CloseReason.USER,
    "close_finished": CloseReason.USER,
}


class _Owner(Protocol):
    """What the callbacks read and write: the fields of a ConnectionLifecycle."""

    policy: RetryPolicy
    buffer: EditBuffer
    last_cause: BaseException | str | None
    _rng: random.Random
    _attempts: int
    _waits: int
    _delay: float | None
    _draw: float
    _draw_problem: str | None
    _close_reason: CloseReason | None
    _reconnect_after_close: bool
    _effects: list[Effect]

    @property
    def is_not_started(self) -> bool: ...

    @property
    def can_interact(self) -> bool: ...


class _EngineModel:
    """Where the engine keeps its state value; it starts in NOT_STARTED."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: object = "NOT_STARTED"


class _LifecycleMachine(StateMachine):
    """The declarative lifecycle; callbacks read and write the owning ConnectionLifecycle."""

    not_started = State("NOT_STARTED", value="NOT_STARTED", initial=True)

    class connecting(State.Compound, name="CONNECTING"):
        dialing = State("DIALING", value="DIALING", initial=True)
        backing_off = State("BACKING_OFF", value="BACKING_OFF")

    open = State("OPEN", value="OPEN")
    closing = State("CLOSING", value="CLOSING")
    closed = State("CLOSED", value="CLOSED")

    # A person's action: start lazily, retry now, or recover from CLOSED whatever the reason.
    connect = (
        not_started.to(connecting, cond="is_not_started")
        | closed.to(connecting, on="start_new_cycle")
        | closing.to.itself(internal=True, on="request_reconnect")  # type: ignore[no-untyped-call]
        # Retry now: the timer is abandoned (HangUp(graceful=False)), a new cycle dials.
        | connecting.backing_off.to(connecting.dialing, on="retry_now")
        # No-ops on the leaves: an internal self-transition on the compound state
        # re-enters its initial substate (SCXML), which would dial again.
        | connecting.dialing.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | open.to.itself(internal=True)  # type: ignore[no-untyped-call]
    )
    # A program's use: starts a lazy connection, and heals one that gave up or whose
    # server shut down; it never resets the budget of a cycle in progress. A server
    # that said no (REJECTED), a person's close (USER) and a client fault (ERROR) are
    # undone only by connect(): request() raises NotConnected there.
    request = (
        not_started.to(connecting, cond="is_not_started")
        | closed.to(connecting, cond="heals_on_use", on="start_new_cycle")
        | connecting.dialing.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | connecting.backing_off.to.itself(internal=True)  # type: ignore[no-untyped-call]
        | open.to.itself(internal=True, cond="can_interact")  # type: ignore[no-untyped-call]
    )
    # The server said it is ready: the edit buffer is flushed on this transition.
    ready = connecting.dialing.to(open, on="flush_edits")
    # Transitions sharing an event are tried in the order written here. A bad jitter
    # draw (rng.random() outside [0, 1)) ends the cycle rather than make a bad wait.
    fail = (
        connecting.dialing.to(closed, unless="rng_ok", on="stop_on_bad_draw")
        | connecting.dialing.to(connecting.backing_off, cond="attempts_left", on="count_failure")
        | connecting.dialing.to(closed, on="count_failure")
    )
    # The driver put the attempt off before starting it: no failure counted.
    defer = connecting.dialing.to(connecting.backing_off)
    retry = connecting.backing_off.to(connecting.dialing)
    drop = (
        open.to(closed, unless="rng_ok", on="stop_on_bad_draw")
        | open.to(connecting.backing_off, cond="stayed_up", on="reset_attempts")
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

    def __init__(self, owner: _Owner) -> None:
        self._owner = owner
        # A model whose state is already set is one python-statemachine resumes from
        # (its documented way to restore a persisted machine): it skips activating the
        # initial state, about a quarter of building an engine. NOT_STARTED has no entry
        # action, so nothing is lost.
        super().__init__(model=_EngineModel())

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

    @property
    def heals_on_use(self) -> bool:
        # A cycle that gave up, or a server that shut down: the next use tries again.
        reason = self._owner._close_reason
        return reason is CloseReason.GAVE_UP or reason is CloseReason.SHUTDOWN

    @property
    def rng_ok(self) -> bool:
        return self._owner._draw_problem is None

    def attempts_left(self) -> bool:
        # Evaluated before count_failure runs: is this failure not yet the last allowed?
        return self._owner._attempts + 1 < self._owner.policy.max_attempts

    def stayed_up(self, uptime: float = 0.0) -> bool:
        return uptime >= self._owner.policy.min_uptime

    # actions --------------------------------------------------------------------

    def start_new_cycle(self) -> None:
        self.reset_attempts()
        self._owner._reconnect_after_close = False

    def retry_now(self) -> None:
        self._owner._effects.append(HangUp(graceful=False))  # cancel the back-off timer
        self.start_new_cycle()

    def stop_on_bad_draw(self) -> None:
        owner = self._owner
        problem = owner._draw_problem
        owner._close_reason = CloseReason.ERROR
        owner.last_cause = ValueError(problem)
        _log.error("rng_draw_invalid", problem=problem, attempt=owner._attempts)

    def request_reconnect(self) -> None:
        self._owner._reconnect_after_close = True

    def cancel_reconnect(self) -> None:
        self._owner._reconnect_after_close = False

    def count_failure(self) -> None:
        self._owner._attempts += 1

    def reset_attempts(self) -> None:
        owner = self._owner
        owner._attempts = 0
        owner._waits = 0

    def flush_edits(self, seq: int | None = 0, max_frame_size: int | None = None) -> None:
        owner = self._owner
        buffer = owner.buffer
        buffer.ready(seq, max_frame_size)
        batch = buffer.take_flush()
        owner._effects.append(Flush(batch))
        if batch.undeliverable:
                _log.warning(
                "edits_undeliverable",
                cells=list(batch.undeliverable),
                max_frame_size=buffer.max_frame_size,
            )

    def abandon_attempt(self) -> None:
        self._owner._effects.append(HangUp(graceful=False))

    def hang_up(self) -> None:
        self._owner._effects.append(HangUp(graceful=True))

    def on_enter_dialing(self) -> None:
        owner = self._owner
        policy = owner.policy
        owner._effects.append(Dial(owner._attempts + 1, policy.connect_timeout))
        # The jitter of the wait that may follow this attempt is drawn now and checked,
        # so that the guards of fail and drop can say whether it is usable.
        problem = None
        draw: object = 0.0
        if policy.jitter:
            try:
                draw = owner._rng.random()
            except Exception as exc:
                problem = f"rng.random() raised {type(exc).__name__}: {exc}"
            else:
                problem = check_draw(draw)
        owner._draw = draw if problem is None else 0.0  # type: ignore[assignment]
        owner._draw_problem = problem

    def on_enter_backing_off(
        self, event: str, retry_after: float | None = None, deferred_for: float = 0.0
    ) -> None:
        owner = self._owner
        if event == "defer":
            # Exactly the driver's delay; not a failure, so the schedule does not advance.
            owner._delay = deferred_for
        else:
            # The n-th wait since the cycle started, or since a connection that stayed up
            # was lost, takes the n-th delay of the schedule: after such a drop the count
            # of failed attempts restarts at 0 but the waits still grow, which spreads out
            # a crowd of clients that all lost the same server.
            owner._waits += 1
            policy = owner.policy
            wait = policy.jittered(owner._waits, owner._draw)
            owner._delay = policy.honour_retry_after(wait, retry_after)
        owner._effects.append(Backoff(owner._attempts, owner._delay))

    def on_exit_open(self) -> None:
        # Whatever was in flight may be lost with the socket: the next flush resends it.
        self._owner.buffer.requeue()

    def on_enter_closed(self, event: str) -> None:
        owner = self._owner
        if owner._close_reason is None:  # stop_on_bad_draw may have said ERROR already
            owner._close_reason = _REASON_BY_EVENT[event]

    def on_exit_closed(self) -> None:
        self._owner._close_reason = None
