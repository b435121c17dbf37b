"""Unit tests of the sans-IO ConnectionLifecycle: every transition, guard and effect."""

# mypy narrows lc.state after an assert and does not see events change it:
# mypy: disable-error-code="comparison-overlap"

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

import fsm
from fsm import (
    Backoff,
    CloseReason,
    ConnectionLifecycle,
    ConnState,
    Dial,
    Effect,
    Flush,
    HangUp,
    InvalidTransition,
    LifecycleError,
    NotConnected,
    Phase,
    RetryPolicy,
    SendEdit,
)
from fsm.core._frames import encode_frame
from fsm.core._machine import _LifecycleMachine
from fsm.lifecycle import EVENTS


def make(seed: int = 0, *, edit_limit: int = 10_000, **policy: float) -> ConnectionLifecycle:
    return ConnectionLifecycle(
        RetryPolicy(**policy),  # type: ignore[arg-type]
        random.Random(seed),
        edit_limit=edit_limit,
        log_transitions=False,
    )


def fire(lc: ConnectionLifecycle, event: str) -> list[Effect]:
    """Send ``event`` through its public method (``drop`` after a short uptime)."""
    if event == "drop":
        return lc.drop(uptime=0.0)
    if event == "defer":
        return lc.defer(1.0)
    method: Callable[[], list[Effect]] = getattr(lc, event)
    return method()


def not_started() -> ConnectionLifecycle:
    return make()


def dialing() -> ConnectionLifecycle:
    lc = make()
    lc.connect()
    return lc


def backing_off() -> ConnectionLifecycle:
    lc = dialing()
    lc.fail()
    return lc


def open_() -> ConnectionLifecycle:
    lc = dialing()
    lc.ready()
    return lc


def closing() -> ConnectionLifecycle:
    lc = open_()
    lc.close()
    return lc


def closed_user() -> ConnectionLifecycle:
    lc = make()
    lc.close()
    return lc


def closed_gave_up() -> ConnectionLifecycle:
    lc = make(max_attempts=1)
    lc.connect()
    lc.fail()
    return lc


def closed_rejected() -> ConnectionLifecycle:
    lc = dialing()
    lc.reject()
    return lc


def closed_shutdown() -> ConnectionLifecycle:
    lc = open_()
    lc.shutdown()
    return lc


BUILDERS: dict[str, Callable[[], ConnectionLifecycle]] = {
    "NOT_STARTED": not_started,
    "DIALING": dialing,
    "BACKING_OFF": backing_off,
    "OPEN": open_,
    "CLOSING": closing,
    "CLOSED_USER": closed_user,
    "CLOSED_GAVE_UP": closed_gave_up,
    "CLOSED_REJECTED": closed_rejected,
    "CLOSED_SHUTDOWN": closed_shutdown,
}

# The events each situation accepts (request in CLOSING and some CLOSED raises NotConnected
# instead; retry is accepted everywhere: outside BACKING_OFF, from a cancelled timer, a no-op).
VALID: dict[str, set[str]] = {
    "NOT_STARTED": {"connect", "request", "close", "retry"},
    "DIALING": {"connect", "request", "ready", "fail", "defer", "reject", "shutdown", "close",
                "retry"},
    "BACKING_OFF": {"connect", "request", "retry", "close"},
    "OPEN": {"connect", "request", "drop", "reject", "shutdown", "close", "retry"},
    "CLOSING": {"connect", "close", "close_finished", "request", "retry"},
    "CLOSED_USER": {"connect", "close", "request", "retry"},
    "CLOSED_GAVE_UP": {"connect", "close", "request", "retry"},
    "CLOSED_REJECTED": {"connect", "close", "request", "retry"},
    "CLOSED_SHUTDOWN": {"connect", "close", "request", "retry"},
}

INVALID = [(name, event) for name in BUILDERS for event in EVENTS if event not in VALID[name]]


def snapshot(lc: ConnectionLifecycle) -> tuple[object, ...]:
    """Everything an event must not change when it is refused or a no-op."""
    return (
        lc.state,
        lc.phase,
        lc.attempts,
        lc.close_reason,
        lc.pending_edits,
        lc.buffer.in_flight_seqs,
        frozenset(lc.machine.configuration_values),
    )


# -- the initial state and laziness ---------------------------------------------------


def test_initial_state_is_not_started() -> None:
    """A new lifecycle is NOT_STARTED, interactive, with no attempts and no close reason."""
    lc = ConnectionLifecycle()
    assert lc.state is ConnState.NOT_STARTED
    assert lc.phase is None
    assert lc.can_interact is True
    assert lc.is_not_started is True
    assert lc.attempts == 0
    assert lc.close_reason is None
    assert lc.pending_edits == {}
    assert lc.policy == RetryPolicy()


def test_reads_and_edits_do_not_build_the_engine() -> None:
    """Reading the state and editing before the first event never builds the engine."""
    lc = ConnectionLifecycle(rng=random.Random(0))
    assert lc.edit("a", "x = 1") is None
    _ = (lc.state, lc.phase, lc.can_interact, lc.is_not_started, lc.attempts, lc.close_reason)
    assert lc.ack(1) is False
    assert lc.pending_edits == {"a": "x = 1"}
    assert lc._machine is None


def test_policy_must_be_a_retry_policy() -> None:
    """Passing something other than a RetryPolicy raises TypeError naming the type."""
    with pytest.raises(TypeError, match="dict"):
        ConnectionLifecycle(policy={"max_attempts": 3})  # type: ignore[arg-type]


def test_without_rng_the_global_random_is_untouched() -> None:
    """Without an injected rng the back-off draws from a private RNG, never the global one."""
    state = random.getstate()
    lc = ConnectionLifecycle(log_transitions=False)
    lc.connect()
    lc.fail()
    assert random.getstate() == state


# -- guards and reads per state ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "state", "phase", "interactive"),
    [
        ("NOT_STARTED", ConnState.NOT_STARTED, None, True),
        ("DIALING", ConnState.CONNECTING, Phase.DIALING, False),
        ("BACKING_OFF", ConnState.CONNECTING, Phase.BACKING_OFF, False),
        ("OPEN", ConnState.OPEN, None, True),
        ("CLOSING", ConnState.CLOSING, None, False),
        ("CLOSED_USER", ConnState.CLOSED, None, False),
        ("CLOSED_GAVE_UP", ConnState.CLOSED, None, False),
    ],
)
def test_state_phase_and_can_interact_per_state(
    name: str, state: ConnState, phase: Phase | None, interactive: bool
) -> None:
    """can_interact is true exactly in NOT_STARTED and OPEN; is_not_started only in NOT_STARTED."""
    lc = BUILDERS[name]()
    assert lc.state is state
    assert lc.phase is phase
    assert lc.can_interact is interactive
    assert lc.is_not_started is (state is ConnState.NOT_STARTED)


def test_guards_are_declared_on_the_machine_transitions() -> None:
    """is_not_started guards leaving NOT_STARTED and can_interact guards request in OPEN."""

    def conds(state: object, event: str) -> list[list[str]]:
        return [
            [str(spec.func) for spec in t.cond]
            for t in state.transitions  # type: ignore[attr-defined]
            if event in t.events
        ]

    assert conds(_LifecycleMachine.not_started, "connect")[0] == ["is_not_started"]
    assert conds(_LifecycleMachine.not_started, "request")[0] == ["is_not_started"]
    assert ["can_interact"] in conds(_LifecycleMachine.open, "request")


def test_phase_matches_the_engine_configuration() -> None:
    """The cached phase names the active substate of CONNECTING in the engine."""
    lc = dialing()
    assert "DIALING" in lc.machine.configuration_values
    lc.fail()
    assert "BACKING_OFF" in lc.machine.configuration_values
    lc.retry()
    assert "DIALING" in lc.machine.configuration_values


# -- starting -----------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["connect", "request"])
def test_first_connect_or_request_dials_attempt_one(event: str) -> None:
    """connect or request from NOT_STARTED enters CONNECTING/DIALING and dials attempt 1."""
    lc = make(connect_timeout=3.5)
    effects = fire(lc, event)
    assert effects == [Dial(attempt=1, timeout=3.5)]
    assert lc.state is ConnState.CONNECTING
    assert lc.phase is Phase.DIALING
    assert lc.attempts == 0
    assert lc.is_not_started is False


def test_ready_enters_open_with_exactly_one_flush() -> None:
    """ready from DIALING enters OPEN and returns one Flush, even with nothing buffered."""
    lc = dialing()
    effects = lc.ready()
    assert lc.state is ConnState.OPEN
    assert lc.phase is None
    assert len(effects) == 1
    assert isinstance(effects[0], Flush)
    assert effects[0].batch.codes == {}


# Regression: an internal self-transition on the compound CONNECTING re-enters
# its initial substate, so connect/request while CONNECTING dials again.
@pytest.mark.parametrize("name", ["DIALING", "OPEN"])
def test_connect_while_dialing_or_open_is_a_no_op(name: str) -> None:
    """connect while DIALING or OPEN returns no effects and changes nothing."""
    lc = BUILDERS[name]()
    before = snapshot(lc)
    assert lc.connect() == []
    assert snapshot(lc) == before


# Regression: an internal self-transition on the compound CONNECTING re-enters
# its initial substate, so connect/request while CONNECTING dials again.
def test_connect_while_backing_off_retries_now_in_a_new_cycle() -> None:
    """connect in BACKING_OFF abandons the timer and dials attempt 1 of a new cycle at once."""
    lc = make(max_attempts=5)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.fail()
    assert (lc.phase, lc.attempts) == (Phase.BACKING_OFF, 2)
    effects = lc.connect()
    assert effects == [HangUp(graceful=False), Dial(attempt=1, timeout=lc.policy.connect_timeout)]
    assert (lc.state, lc.phase, lc.attempts) == (ConnState.CONNECTING, Phase.DIALING, 0)


def test_a_retry_from_the_cancelled_timer_is_a_no_op() -> None:
    """After a retry-now, the old timer firing anyway returns [] and leaves the attempt alone."""
    lc = backing_off()
    lc.connect()
    before = snapshot(lc)
    assert lc.retry() == []
    assert snapshot(lc) == before
    assert [type(e) for e in lc.fail()] == [Backoff]
    assert lc.attempts == 1


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "BACKING_OFF"])
def test_retry_outside_backing_off_is_never_an_error(name: str) -> None:
    """retry outside BACKING_OFF (a timer cancelled too late) returns [] and changes nothing."""
    lc = BUILDERS[name]()
    before = snapshot(lc)
    assert lc.retry() == []
    assert snapshot(lc) == before


def test_retry_now_after_giving_up_budget_is_whole_again() -> None:
    """After a retry-now the new cycle may fail max_attempts - 1 times before it gives up."""
    lc = make(max_attempts=3)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.fail()
    lc.connect()  # retry now: attempts back to 0
    for _ in range(2):
        assert [type(e) for e in lc.fail()] == [Backoff]
        lc.retry()
    assert lc.fail() == []
    assert lc.close_reason is CloseReason.GAVE_UP


def test_connect_while_dialing_keeps_the_attempt() -> None:
    """After a no-op connect in DIALING the attempt in flight can still succeed or fail."""
    lc = dialing()
    lc.connect()
    effects = lc.fail()
    assert [type(e) for e in effects] == [Backoff]
    assert lc.phase is Phase.BACKING_OFF
    assert lc.attempts == 1


@pytest.mark.parametrize("name", ["DIALING", "BACKING_OFF", "OPEN"])
def test_request_while_connecting_or_open_returns_no_effects(name: str) -> None:
    """request while CONNECTING or OPEN needs nothing new: no effects, nothing changes."""
    lc = BUILDERS[name]()
    before = snapshot(lc)
    assert lc.request() == []
    assert snapshot(lc) == before


# Regression: an internal self-transition on the compound CONNECTING re-enters
# its initial substate, so connect/request while CONNECTING dials again.
@pytest.mark.parametrize("name", ["DIALING", "BACKING_OFF", "OPEN"])
def test_request_through_the_engine_equals_the_fast_path(name: str) -> None:
    """Sending request through the engine leaves the same state and no effects as request()."""
    fast = BUILDERS[name]()
    fast.request()
    slow = BUILDERS[name]()
    slow.machine.send("request")
    assert slow._effects == []
    assert snapshot(slow) == snapshot(fast)


@pytest.mark.parametrize(
    ("name", "reason", "advice"),
    [
        ("CLOSING", None, "once the close is done"),
        ("CLOSED_USER", "USER", "closed by the user"),
        ("CLOSED_REJECTED", "REJECTED", "fix what it refused"),
    ],
)
def test_request_while_closing_or_closed_by_a_person_or_a_refusal_raises_not_connected(
    name: str, reason: str | None, advice: str
) -> None:
    """request in CLOSING, CLOSED(USER) or CLOSED(REJECTED) raises NotConnected: why, what to do."""
    lc = BUILDERS[name]()
    before = snapshot(lc)
    with pytest.raises(NotConnected) as info:
        lc.request()
    assert isinstance(info.value, LifecycleError)
    message = str(info.value)
    assert lc.state.value in message
    assert "connect()" in message
    assert advice in message
    if reason is not None:
        assert f"CLOSED({reason})" in message
    assert isinstance(info.value.__cause__, InvalidTransition)  # the engine refused it
    assert snapshot(lc) == before


def test_request_after_a_rejection_names_the_cause_without_secrets() -> None:
    """The NotConnected of a rejected lifecycle quotes the last cause, tokens redacted."""
    lc = dialing()
    lc.reject("HTTP 403 from ws://h/ws?token=s3cret")
    with pytest.raises(NotConnected) as info:
        lc.request()
    assert "HTTP 403" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("name", ["CLOSED_GAVE_UP", "CLOSED_SHUTDOWN"])
def test_request_after_giving_up_or_a_shutdown_starts_a_new_cycle(name: str) -> None:
    """request in CLOSED(GAVE_UP) or CLOSED(SHUTDOWN) dials attempt 1 of a new cycle."""
    lc = BUILDERS[name]()
    effects = lc.request()
    assert effects == [Dial(attempt=1, timeout=lc.policy.connect_timeout)]
    assert (lc.state, lc.phase, lc.attempts, lc.close_reason) == (
        ConnState.CONNECTING, Phase.DIALING, 0, None,
    )  # fmt: skip


def test_request_while_backing_off_never_resets_the_budget() -> None:
    """request in BACKING_OFF returns [] and keeps the failed attempts counted."""
    lc = make(max_attempts=2)
    lc.connect()
    lc.fail()
    assert lc.request() == []
    assert lc.attempts == 1
    lc.retry()
    assert lc.fail() == []
    assert lc.close_reason is CloseReason.GAVE_UP


# -- retries and giving up -------------------------------------------------------------------


def test_fail_with_attempts_left_backs_off_with_the_policy_delay() -> None:
    """A failed attempt with attempts left backs off by the policy's delay drawn from the rng."""
    lc = make(seed=7)
    lc.connect()
    effects = lc.fail("refused")
    expected = lc.policy.backoff(1, random.Random(7))
    assert effects == [Backoff(attempt=1, delay=expected)]
    assert lc.state is ConnState.CONNECTING
    assert lc.phase is Phase.BACKING_OFF
    assert lc.attempts == 1
    assert lc.last_cause == "refused"


def test_retry_dials_the_next_attempt() -> None:
    """retry from BACKING_OFF enters DIALING and dials the next attempt number."""
    lc = backing_off()
    assert lc.retry() == [Dial(attempt=2, timeout=lc.policy.connect_timeout)]
    assert lc.phase is Phase.DIALING
    assert lc.attempts == 1


def test_a_full_cycle_follows_the_policy_schedule_then_gives_up() -> None:
    """25 failed attempts dial 1..25, back off by delays(rng) 24 times, then CLOSED(GAVE_UP)."""
    lc = make(seed=42)
    dials: list[Effect] = list(lc.connect())
    backoffs: list[Effect] = []
    for n in range(1, 25):
        backoffs += lc.fail()
        assert lc.attempts == n
        dials += lc.retry()
    assert lc.fail() == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is CloseReason.GAVE_UP
    assert lc.attempts == 25
    timeout = lc.policy.connect_timeout
    assert dials == [Dial(attempt=n, timeout=timeout) for n in range(1, 26)]
    schedule = lc.policy.delays(random.Random(42))
    assert backoffs == [Backoff(attempt=n, delay=d) for n, d in enumerate(schedule, start=1)]


def test_connect_after_giving_up_starts_a_new_cycle_that_can_open() -> None:
    """After 25 failures connect enters CONNECTING with attempts reset, and ready opens it."""
    lc = make()
    lc.connect()
    for _ in range(24):
        lc.fail()
        lc.retry()
    lc.fail()
    assert lc.close_reason is CloseReason.GAVE_UP
    effects = lc.connect()
    assert effects == [Dial(attempt=1, timeout=lc.policy.connect_timeout)]
    assert lc.state is ConnState.CONNECTING
    assert lc.phase is Phase.DIALING
    assert lc.attempts == 0
    assert lc.close_reason is None
    lc.ready()
    assert lc.state is ConnState.OPEN


def test_a_new_cycle_has_all_its_attempts_again() -> None:
    """After recovering from GAVE_UP, a new cycle again allows max_attempts failures."""
    lc = make(max_attempts=3)
    for _cycle in range(3):
        lc.connect()
        lc.fail()
        lc.retry()
        lc.fail()
        assert lc.state is ConnState.CONNECTING
        lc.retry()
        lc.fail()
        assert lc.close_reason is CloseReason.GAVE_UP
        assert lc.attempts == 3


def test_max_attempts_one_gives_up_on_the_first_failure() -> None:
    """With max_attempts=1 the first failure goes straight to CLOSED(GAVE_UP), no Backoff."""
    lc = make(max_attempts=1)
    lc.connect()
    assert lc.fail() == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is CloseReason.GAVE_UP
    assert lc.attempts == 1


def test_zero_jitter_backs_off_by_the_nominal_delays() -> None:
    """With jitter=0 every Backoff delay is the policy's nominal delay."""
    lc = make(max_attempts=6, jitter=0.0)
    lc.connect()
    delays = []
    for _ in range(5):
        (effect,) = lc.fail()
        assert isinstance(effect, Backoff)
        delays.append(effect.delay)
        lc.retry()
    assert delays == lc.policy.delays()
    assert delays == pytest.approx([1.0, 1.6, 2.56, 4.096, 6.5536])


# -- dropped connections ------------------------------------------------------------------


def test_drop_before_min_uptime_counts_a_failed_attempt() -> None:
    """A drop before min_uptime keeps the cycle's count and adds one failed attempt."""
    lc = make(seed=3)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.fail()
    lc.retry()
    lc.ready()
    assert lc.attempts == 2
    rng = random.Random(3)
    lc.policy.backoff(1, rng)
    lc.policy.backoff(2, rng)
    effects = lc.drop(uptime=4.999, cause="reset")
    assert effects == [Backoff(attempt=3, delay=lc.policy.backoff(3, rng))]
    assert lc.state is ConnState.CONNECTING
    assert lc.phase is Phase.BACKING_OFF
    assert lc.attempts == 3
    assert lc.last_cause == "reset"


@pytest.mark.parametrize("uptime", [5.0, 60.0])
def test_drop_after_min_uptime_resets_attempts(uptime: float) -> None:
    """A drop after min_uptime OPEN resets the count and backs off by the first delay."""
    lc = make(seed=5)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.ready()
    rng = random.Random(5)
    lc.policy.backoff(1, rng)
    effects = lc.drop(uptime=uptime)
    assert effects == [Backoff(attempt=0, delay=lc.policy.backoff(1, rng))]
    assert lc.phase is Phase.BACKING_OFF
    assert lc.attempts == 0


def test_waits_after_a_long_lived_drop_keep_growing() -> None:
    """After a drop past min_uptime the waits restart at the first delay and then grow."""
    lc = make(max_attempts=6, jitter=0.0)
    lc.connect()
    lc.ready()
    delays = [effect.delay for effect in lc.drop(uptime=60.0) if isinstance(effect, Backoff)]
    for _ in range(3):
        lc.retry()
        (effect,) = lc.fail()
        assert isinstance(effect, Backoff)
        delays.append(effect.delay)
    # The count of failed attempts restarted at 0, but no wait repeats the first one.
    assert lc.attempts == 3
    assert delays == lc.policy.delays()[:4]


def test_a_new_cycle_restarts_the_waits() -> None:
    """connect() from CLOSED backs off by the first delay again, whatever came before."""
    lc = make(max_attempts=3, jitter=0.0)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.fail()
    lc.retry()
    lc.fail()
    assert lc.state is ConnState.CLOSED
    lc.connect()
    assert lc.fail() == [Backoff(attempt=1, delay=lc.policy.initial_delay)]


def test_a_server_that_drops_at_once_forever_ends_in_gave_up() -> None:
    """Accept-then-drop-at-once repeated ends in CLOSED(GAVE_UP) after max_attempts drops."""
    lc = make(max_attempts=4)
    lc.connect()
    drops = 0
    while lc.state is not ConnState.CLOSED:
        lc.ready()
        lc.drop(uptime=0.0)
        drops += 1
        if lc.state is ConnState.CONNECTING:
            lc.retry()
        assert drops <= 4
    assert drops == 4
    assert lc.close_reason is CloseReason.GAVE_UP
    assert lc.attempts == 4


def test_long_lived_connections_never_give_up() -> None:
    """Drops after min_uptime never exhaust the attempts, however many there are."""
    lc = make(max_attempts=2)
    lc.connect()
    for _ in range(10):
        lc.ready()
        lc.drop(uptime=100.0)
        assert lc.state is ConnState.CONNECTING
        lc.retry()


# -- rejection and shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("start", ["DIALING", "OPEN"])
@pytest.mark.parametrize(
    ("event", "reason"), [("reject", CloseReason.REJECTED), ("shutdown", CloseReason.SHUTDOWN)]
)
def test_reject_and_shutdown_close_without_retry(
    start: str, event: str, reason: CloseReason
) -> None:
    """reject/shutdown from DIALING or OPEN go to CLOSED with their reason and no effects."""
    lc = BUILDERS[start]()
    effects = getattr(lc, event)(cause="1008")
    assert effects == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is reason
    assert lc.last_cause == "1008"


# -- closing ----------------------------------------------------------------------------------


def test_close_before_starting_closes_for_the_user() -> None:
    """close in NOT_STARTED goes to CLOSED(USER) with no effects."""
    lc = make()
    assert lc.close() == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is CloseReason.USER


@pytest.mark.parametrize("name", ["DIALING", "BACKING_OFF"])
def test_close_while_connecting_abandons_what_is_in_flight(name: str) -> None:
    """close while CONNECTING returns HangUp(graceful=False) and goes to CLOSED(USER)."""
    lc = BUILDERS[name]()
    assert lc.close() == [HangUp(graceful=False)]
    assert lc.state is ConnState.CLOSED
    assert lc.phase is None
    assert lc.close_reason is CloseReason.USER


def test_close_while_open_hangs_up_gracefully_then_closes() -> None:
    """close in OPEN hangs up gracefully into CLOSING; close_finished gives CLOSED(USER)."""
    lc = open_()
    assert lc.close() == [HangUp(graceful=True)]
    assert lc.state is ConnState.CLOSING
    assert lc.close_reason is None
    assert lc.close_finished() == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is CloseReason.USER


# Regression: the flush's ack, still on its way when the user closed, was logged as
# unknown_ack by the connector (seen with 200 connectors closed right after OPEN).
def test_an_ack_arriving_while_closing_is_expected_and_keeps_the_edit() -> None:
    """An ack for a flush sent before close() is expected in CLOSING; the edit stays
    pending, so the next connection sends it again."""
    lc = make()
    lc.edit("a", "x = 1")
    lc.connect()
    (flush,) = lc.ready()
    assert isinstance(flush, Flush)
    lc.close()
    assert lc.ack(flush.batch.seq) is True
    assert lc.pending_edits == {"a": "x = 1"}
    lc.close_finished()
    lc.connect()
    (again,) = lc.ready()
    assert isinstance(again, Flush) and again.batch.codes == {"a": "x = 1"}


@pytest.mark.parametrize(
    "name",
    ["CLOSING", "CLOSED_USER", "CLOSED_GAVE_UP", "CLOSED_REJECTED", "CLOSED_SHUTDOWN"],
)
def test_close_is_idempotent(name: str) -> None:
    """close again in CLOSING or CLOSED returns no effects and keeps state and close reason."""
    lc = BUILDERS[name]()
    before = snapshot(lc)
    assert lc.close() == []
    assert lc.close() == []
    assert snapshot(lc) == before


def test_connect_during_closing_reconnects_when_the_close_finishes() -> None:
    """connect in CLOSING is remembered: close_finished then enters CONNECTING at attempt 1."""
    lc = make(max_attempts=3)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.ready()
    lc.close()
    assert lc.connect() == []
    assert lc.state is ConnState.CLOSING
    effects = lc.close_finished()
    assert effects == [Dial(attempt=1, timeout=lc.policy.connect_timeout)]
    assert lc.state is ConnState.CONNECTING
    assert lc.phase is Phase.DIALING
    assert lc.attempts == 0
    assert lc.close_reason is None


def test_close_after_connect_during_closing_cancels_the_reconnect() -> None:
    """close after connect in CLOSING wins: close_finished goes to CLOSED(USER)."""
    lc = closing()
    lc.connect()
    lc.close()
    assert lc.close_finished() == []
    assert lc.state is ConnState.CLOSED
    assert lc.close_reason is CloseReason.USER


def test_a_reconnect_request_does_not_outlive_its_close() -> None:
    """A reconnect requested in one CLOSING does not leak into the next close."""
    lc = closing()
    lc.connect()
    lc.close_finished()
    lc.ready()
    lc.close()
    assert lc.close_finished() == []
    assert lc.state is ConnState.CLOSED


@pytest.mark.parametrize(
    "name", ["CLOSED_USER", "CLOSED_GAVE_UP", "CLOSED_REJECTED", "CLOSED_SHUTDOWN"]
)
def test_connect_from_closed_recovers_whatever_the_reason(name: str) -> None:
    """connect from CLOSED (any reason) dials attempt 1 of a new cycle and clears the reason."""
    lc = BUILDERS[name]()
    assert lc.connect() == [Dial(attempt=1, timeout=lc.policy.connect_timeout)]
    assert lc.state is ConnState.CONNECTING
    assert lc.attempts == 0
    assert lc.close_reason is None
    lc.ready()
    assert lc.state is ConnState.OPEN


# -- close reasons --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CLOSED_USER", CloseReason.USER),
        ("CLOSED_GAVE_UP", CloseReason.GAVE_UP),
        ("CLOSED_REJECTED", CloseReason.REJECTED),
        ("CLOSED_SHUTDOWN", CloseReason.SHUTDOWN),
    ],
)
def test_close_reason_per_path(name: str, reason: CloseReason) -> None:
    """Each way into CLOSED records its reason: USER, GAVE_UP, REJECTED, SHUTDOWN."""
    assert BUILDERS[name]().close_reason is reason


@pytest.mark.parametrize("name", ["NOT_STARTED", "DIALING", "BACKING_OFF", "OPEN", "CLOSING"])
def test_close_reason_is_none_outside_closed(name: str) -> None:
    """close_reason is None in every state but CLOSED."""
    assert BUILDERS[name]().close_reason is None


def test_gave_up_by_drops_records_gave_up() -> None:
    """Running out of attempts by quick drops records GAVE_UP."""
    lc = make(max_attempts=1)
    lc.connect()
    lc.ready()
    assert lc.drop(uptime=0.0) == []
    assert lc.close_reason is CloseReason.GAVE_UP


# -- invalid events -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "event"), INVALID)
def test_invalid_event_raises_and_leaves_the_state_unchanged(name: str, event: str) -> None:
    """An event with no transition raises InvalidTransition naming it and the state; no change."""
    lc = BUILDERS[name]()
    lc.edit("a", "x = 1")
    before = snapshot(lc)
    with pytest.raises(InvalidTransition) as info:
        fire(lc, event)
    error = info.value
    assert isinstance(error, LifecycleError)
    assert error.event == event
    assert error.state is lc.state
    assert repr(event) in str(error)
    assert f"state {lc.state.value}" in str(error)
    assert snapshot(lc) == before


@pytest.mark.parametrize(("name", "event"), INVALID)
def test_invalid_event_returns_no_stray_effects_later(name: str, event: str) -> None:
    """After a refused event the next valid event returns only its own effects."""
    lc = BUILDERS[name]()
    with pytest.raises(InvalidTransition):
        fire(lc, event)
    expected = BUILDERS[name]().close()
    assert lc.close() == expected


def test_invalid_transition_lists_the_allowed_events() -> None:
    """The InvalidTransition message says which events the state does accept."""
    lc = backing_off()
    with pytest.raises(InvalidTransition, match=r"allowed there: .*retry") as info:
        lc.ready()
    assert "retry" in info.value.allowed


# -- effects: flush, send, ack ------------------------------------------------------------------


def test_flush_carries_buffered_edits_in_cell_order_with_latest_code() -> None:
    """The Flush on entering OPEN holds every buffered edit, in first-edit order, latest code."""
    lc = make()
    lc.edit("b", "b = 1")
    lc.edit("a", "a = 1")
    lc.connect()
    lc.edit("c", "c = 1")
    lc.edit("b", "b = 2")
    (effect,) = lc.ready()
    assert isinstance(effect, Flush)
    assert list(effect.batch.codes.items()) == [("b", "b = 2"), ("a", "a = 1"), ("c", "c = 1")]


def test_edits_while_not_open_are_buffered() -> None:
    """edit returns None in every state but OPEN and keeps the edit pending."""
    for name in ("NOT_STARTED", "DIALING", "BACKING_OFF", "CLOSING", "CLOSED_USER"):
        lc = BUILDERS[name]()
        assert lc.edit("a", "x") is None
        assert lc.pending_edits == {"a": "x"}
        assert lc.buffer.in_flight_seqs == frozenset()


def test_edit_while_open_returns_a_send_edit_tracked_until_acked() -> None:
    """An edit while OPEN returns SendEdit with a fresh seq and stays pending until acked."""
    lc = open_()
    first = lc.edit("a", "x = 1")
    second = lc.edit("b", "y = 2")
    assert isinstance(first, SendEdit)
    assert isinstance(second, SendEdit)
    assert (first.cell_id, first.code) == ("a", "x = 1")
    assert second.seq > first.seq
    assert lc.pending_edits == {"a": "x = 1", "b": "y = 2"}
    assert lc.ack(first.seq) is True
    assert lc.pending_edits == {"b": "y = 2"}
    assert lc.ack(first.seq) is False


def test_ack_of_a_superseded_edit_keeps_the_newer_one() -> None:
    """Acking a flush does not forget a cell edited again since; its own ack does."""
    lc = make()
    lc.edit("a", "old")
    lc.edit("b", "b")
    lc.connect()
    (flush,) = lc.ready()
    assert isinstance(flush, Flush)
    newer = lc.edit("a", "new")
    assert isinstance(newer, SendEdit)
    assert lc.ack(flush.batch.seq) is True
    assert lc.pending_edits == {"a": "new"}
    assert lc.ack(newer.seq) is True
    assert lc.pending_edits == {}


def test_held_edits_while_open_coalesce_until_taken() -> None:
    """edit(hold=True) while OPEN keeps the edit unsent; take_unsent sends each cell's
    latest code once, under its own seq, in cell order."""
    lc = open_()
    assert lc.edit("b", "b = 1", hold=True) is None
    assert lc.edit("a", "a = 1", hold=True) is None
    assert lc.edit("b", "b = 2", hold=True) is None
    first, second = lc.take_unsent()
    assert (first.cell_id, first.code, second.cell_id, second.code) == ("b", "b = 2", "a", "a = 1")
    assert second.seq == first.seq + 1
    assert lc.take_unsent() == []
    assert lc.ack(first.seq) and lc.ack(second.seq)
    assert lc.pending_edits == {}


def test_held_edits_are_flushed_when_the_link_drops_first() -> None:
    """An edit held while OPEN and never taken goes out with the flush after a reconnect."""
    lc = make()
    lc.connect()
    lc.ready()
    lc.edit("a", "a = 1", hold=True)
    lc.drop(uptime=60.0)
    assert lc.take_unsent() == []  # not OPEN: nothing to send now
    lc.retry()
    (flush,) = lc.ready()
    assert isinstance(flush, Flush) and flush.batch.codes == {"a": "a = 1"}


def test_ack_of_an_unknown_seq_returns_false() -> None:
    """ack of a seq nothing is waiting on returns False and changes nothing."""
    lc = open_()
    lc.edit("a", "x")
    before = lc.pending_edits
    assert lc.ack(12345) is False
    assert lc.pending_edits == before


def test_unacked_edits_are_flushed_again_after_a_reconnect() -> None:
    """Edits in flight when the connection drops are in the next Flush; late acks forget nothing."""
    lc = make()
    lc.edit("a", "a = 1")
    lc.connect()
    (flush1,) = lc.ready()
    assert isinstance(flush1, Flush)
    sent = lc.edit("b", "b = 1")
    assert isinstance(sent, SendEdit)
    lc.drop(uptime=0.0)
    # Expected (the dropped link may have delivered them), but the edits stay pending.
    assert lc.ack(flush1.batch.seq) is True
    assert lc.ack(sent.seq) is True
    assert lc.pending_edits == {"a": "a = 1", "b": "b = 1"}
    lc.edit("c", "c = 1")
    lc.retry()
    (flush2,) = lc.ready()
    assert isinstance(flush2, Flush)
    assert flush2.batch.codes == {"a": "a = 1", "b": "b = 1", "c": "c = 1"}
    assert flush2.batch.seq not in (flush1.batch.seq, sent.seq)


def test_acked_edits_are_not_flushed_again() -> None:
    """An acknowledged flush is not resent after a reconnect: the next Flush is empty."""
    lc = make()
    lc.edit("a", "a = 1")
    lc.connect()
    (flush1,) = lc.ready()
    assert isinstance(flush1, Flush)
    assert lc.ack(flush1.batch.seq) is True
    lc.drop(uptime=10.0)
    lc.retry()
    (flush2,) = lc.ready(seq=flush1.batch.seq)  # the server kept what it acknowledged
    assert isinstance(flush2, Flush)
    assert flush2.batch.codes == {}


def test_edit_buffer_full_refuses_new_cells_but_not_re_edits() -> None:
    """At the edit limit a new cell raises EditBufferFull; re-editing a buffered cell works."""
    lc = make(edit_limit=2)
    lc.edit("a", "1")
    lc.edit("b", "1")
    with pytest.raises(fsm.EditBufferFull):
        lc.edit("c", "1")
    lc.edit("a", "2")
    assert lc.pending_edits == {"a": "2", "b": "1"}


def test_flush_is_emitted_once_per_entry_into_open_and_never_elsewhere() -> None:
    """Over a long scripted run, Flush appears only from ready, once per entry into OPEN."""
    lc = make(max_attempts=3)
    entries = 0
    flushes_by_event: dict[str, int] = {}
    script = [
        "request", "fail", "retry", "ready", "connect", "request",
        "drop", "retry", "ready", "close", "connect", "close_finished", "ready", "shutdown",
        "connect", "fail", "retry", "fail", "retry", "fail", "connect", "ready", "reject",
        "close", "connect", "close", "connect", "ready", "close", "close", "close_finished",
    ]  # fmt: skip
    for event in script:
        was_open = lc.state is ConnState.OPEN
        effects = fire(lc, event)
        lc.edit(f"cell-{event}", event)
        flushes = sum(isinstance(e, Flush) for e in effects)
        if flushes:
            flushes_by_event[event] = flushes_by_event.get(event, 0) + flushes
        if lc.state is ConnState.OPEN and not was_open:
            entries += 1
            assert flushes == 1
        else:
            assert flushes == 0
    assert entries == 5
    assert flushes_by_event == {"ready": 5}


def test_causes_are_recorded() -> None:
    """fail, reject, shutdown and drop record their cause in last_cause."""
    lc = dialing()
    error = OSError("refused")
    lc.fail(error)
    assert lc.last_cause is error
    lc.retry()
    lc.reject("401")
    assert lc.last_cause == "401"


# -- observers ---------------------------------------------------------------------------------


def test_observers_get_one_transition_record_per_event() -> None:
    """Each event calls every observer once with a Transition record."""
    seen: list[fsm.Transition] = []
    lc = ConnectionLifecycle(rng=random.Random(0), observers=[seen.append], log_transitions=False)
    lc.connect()
    lc.fail()
    lc.retry()
    lc.ready()
    lc.close()
    lc.close_finished()
    assert [(t.event, t.source, t.target, t.phase) for t in seen] == [
        ("connect", ConnState.NOT_STARTED, ConnState.CONNECTING, Phase.DIALING),
        ("fail", ConnState.CONNECTING, ConnState.CONNECTING, Phase.BACKING_OFF),
        ("retry", ConnState.CONNECTING, ConnState.CONNECTING, Phase.DIALING),
        ("ready", ConnState.CONNECTING, ConnState.OPEN, None),
        ("close", ConnState.OPEN, ConnState.CLOSING, None),
        ("close_finished", ConnState.CLOSING, ConnState.CLOSED, None),
    ]
    assert seen[1].delay is not None
    assert seen[-1].reason is CloseReason.USER


# Regression: effects gathered before an observer raised stay queued, and the next
# event returns them as its own (here a second Dial: two attempts in flight).
def test_a_failing_observer_does_not_leak_effects_into_the_next_event() -> None:
    """After an observer raises during one event, the next event returns only its own effects."""
    calls: list[fsm.Transition] = []

    def observer(change: fsm.Transition) -> None:
        calls.append(change)
        if len(calls) == 1:
            raise RuntimeError("observer broke")

    lc = ConnectionLifecycle(rng=random.Random(0), observers=[observer], log_transitions=False)
    with contextlib.suppress(RuntimeError):
        lc.connect()
    assert lc.state is ConnState.CONNECTING
    assert [type(e) for e in lc.fail()] == [Backoff]


# Regression: the engine passes its BoundEvent (a str subclass) as the event name.
def test_transition_records_carry_a_plain_str_event() -> None:
    """Transition.event is a plain str, not an engine object holding the machine alive."""
    seen: list[fsm.Transition] = []
    lc = ConnectionLifecycle(observers=[seen.append], log_transitions=False)
    lc.connect()
    assert type(seen[0].event) is str
    assert "event='connect'" in repr(seen[0])


# -- imports ---------------------------------------------------------------------------------


def test_the_core_does_not_import_trio() -> None:
    """Importing and running fsm.lifecycle and fsm (in a fresh interpreter) never imports trio."""
    code = (
        "import sys, random\n"
        "import fsm.lifecycle\n"
        "import fsm\n"
        "lc = fsm.ConnectionLifecycle(rng=random.Random(0), log_transitions=False)\n"
        "lc.edit('a', 'x'); lc.connect(); lc.fail(); lc.retry(); lc.ready(); lc.close()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'trio_websocket'))\n"
        "assert 'fsm.lifecycle' in sys.modules\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_machine_class_is_built_on_the_first_event() -> None:
    """import fsm leaves the engine's class and redaction unloaded until they are needed."""
    code = (
        "import sys\n"
        "import fsm\n"
        "lc = fsm.ConnectionLifecycle(log_transitions=False)\n"
        "lc.edit('a', 'x')\n"
        "print(sorted(m for m in ('fsm.core._machine', 'fsm.core._redact') if m in sys.modules))\n"
        "lc.connect(); lc.fail(cause='token=abc refused')\n"
        "print(sorted(m for m in ('fsm.core._machine', 'fsm.core._redact') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split("\n")[:2]
    assert before == "[]"
    assert after == "['fsm.core._machine']"


def test_events_lists_every_declared_event_once() -> None:
    """fsm.lifecycle.EVENTS names exactly the events the machine declares, each once."""
    assert len(set(EVENTS)) == len(EVENTS)
    assert set(EVENTS) == {event.id for event in _LifecycleMachine.events}


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(30.0, 30.0), (500.0, 120.0), (0.0, None), (None, None)]
)
def test_a_retry_after_raises_the_wait_up_to_the_cap(
    retry_after: float | None, expected: float | None
) -> None:
    """fail(retry_after=s) waits max(schedule, min(s, max_retry_after)); none keeps the schedule."""
    lc = make(seed=3)
    lc.connect()
    (backoff,) = lc.fail("HTTP 429", retry_after=retry_after)
    scheduled = lc.policy.backoff(1, random.Random(3))
    assert backoff == Backoff(attempt=1, delay=expected if expected is not None else scheduled)


@pytest.mark.parametrize("retry_after", [-1.0, float("nan"), float("inf"), True, "5"])
def test_a_bad_retry_after_is_refused_at_the_call(retry_after: object) -> None:
    """A Retry-After that is not a finite number >= 0 raises ValueError; still DIALING."""
    lc = dialing()
    before = snapshot(lc)
    with pytest.raises(ValueError, match="retry_after"):
        lc.fail(retry_after=retry_after)  # type: ignore[arg-type]
    assert snapshot(lc) == before


# -- defer --------------------------------------------------------------------------------------


def test_defer_backs_off_for_exactly_the_delay_without_counting_a_failure() -> None:
    """defer(d) right after a Dial: BACKING_OFF, Backoff(attempts, d), attempts unchanged."""
    lc = make(max_attempts=3)
    assert lc.connect() == [Dial(1, lc.policy.connect_timeout)]
    assert lc.defer(7.5) == [Backoff(attempt=0, delay=7.5)]
    assert (lc.phase, lc.attempts) == (Phase.BACKING_OFF, 0)
    assert lc.retry() == [Dial(1, lc.policy.connect_timeout)]
    # The schedule did not advance: the first failure waits the first delay.
    (backoff,) = lc.fail()
    assert backoff.delay <= lc.policy.nominal_delay(1)


def test_defer_can_repeat_forever_without_giving_up() -> None:
    """A gateway may defer an attempt any number of times: the budget is never spent."""
    lc = make(max_attempts=1)
    lc.connect()
    for _ in range(50):
        lc.defer(1.0)
        lc.retry()
    assert (lc.phase, lc.attempts) == (Phase.DIALING, 0)


def test_connect_after_a_defer_dials_now() -> None:
    """A person's connect while a deferred attempt waits cancels the wait and dials."""
    lc = dialing()
    lc.defer(30.0)
    assert lc.connect() == [HangUp(graceful=False), Dial(1, lc.policy.connect_timeout)]


@pytest.mark.parametrize("delay", [-0.5, float("nan"), float("inf"), None, False])
def test_a_bad_defer_delay_is_refused_at_the_call(delay: object) -> None:
    """defer with a delay that is not a finite number >= 0 raises ValueError; still DIALING."""
    lc = dialing()
    before = snapshot(lc)
    with pytest.raises(ValueError, match="delay"):
        lc.defer(delay)  # type: ignore[arg-type]
    assert snapshot(lc) == before


# -- protocol v2 through the lifecycle -------------------------------------------------------------


def test_ready_takes_kernel_readys_seq_and_frame_limit() -> None:
    """ready(seq, max_frame_size): the flush is numbered above seq, the limit is known."""
    lc = make()
    lc.edit("a", "1")
    assert lc.max_frame_size == 1 << 20
    lc.connect()
    (flush,) = lc.ready(seq=41, max_frame_size=4096)
    assert isinstance(flush, Flush)
    assert [f.seq for f in flush.batch.frames] == [42]
    assert lc.max_frame_size == 4096
    edit = lc.edit("a", "2")
    assert edit is not None and edit.seq == 43


@pytest.mark.parametrize(("seq", "size"), [(-1, None), (0, 5), ("3", None), (0, True)])
def test_ready_with_values_no_server_sends_raises_and_changes_nothing(
    seq: object, size: object
) -> None:
    """ready with a bad seq or frame limit raises ValueError before the engine; still DIALING."""
    lc = dialing()
    lc.edit("a", "1")
    before = snapshot(lc)
    with pytest.raises(ValueError):
        lc.ready(seq=seq, max_frame_size=size)  # type: ignore[arg-type]
    assert snapshot(lc) == before
    assert lc.buffer.unsent == {"a": "1"}


def test_a_server_that_lost_its_state_gets_the_whole_document() -> None:
    """After a reconnect whose kernel-ready seq is below the acked one, every cell is flushed."""
    lc = make()
    lc.edit("a", "a = 1")
    lc.edit("b", "b = 1")
    lc.connect()
    (flush,) = lc.ready()
    assert isinstance(flush, Flush)
    assert lc.ack(flush.batch.seq)
    lc.edit("b", "b = 2")
    edit = lc.edit("c", "c = 1")
    assert edit is not None and lc.ack(edit.seq)
    lc.drop(uptime=60.0)
    lc.retry()
    (again,) = lc.ready(seq=0)  # restarted without its state
    assert isinstance(again, Flush)
    assert again.batch.codes == {"a": "a = 1", "b": "b = 2", "c": "c = 1"}
    assert lc.pending_edits == again.batch.codes


@pytest.mark.parametrize("state", ["NOT_STARTED", "OPEN"])
def test_edit_refuses_an_edit_too_large_for_any_frame(state: str) -> None:
    """edit() raises EditTooLarge at the call (cell, size, limit); nothing is sent or kept."""
    lc = BUILDERS[state]()
    lc.edit("a", "ok")
    pending = lc.pending_edits
    with pytest.raises(fsm.EditTooLarge) as info:
        lc.edit("a", "x" * lc.max_frame_size)
    assert info.value.cell_id == "a" and info.value.limit == lc.max_frame_size
    assert "'a'" in str(info.value) and str(lc.max_frame_size) in str(info.value)
    assert lc.pending_edits == pending


def test_an_edit_a_lowered_limit_cannot_carry_is_reported_once() -> None:
    """A kernel-ready lowering the limit below a buffered edit: flushed without it, logged,
    listed in lc.undeliverable, not pending (so waiting for acks ends)."""
    lc = make()
    lc.edit("big", "x" * 10_000)
    lc.edit("small", "y")
    lc.connect()
    with capture_logs() as logs:
        (flush,) = lc.ready(seq=0, max_frame_size=2_000)
    assert isinstance(flush, Flush)
    assert flush.batch.undeliverable == ("big",)
    assert flush.batch.codes == {"small": "y"}
    assert lc.undeliverable == {"big": "x" * 10_000}
    assert lc.pending_edits == {"small": "y"}
    warnings = [e for e in logs if e["event"] == "edits_undeliverable"]
    assert warnings == [
        {"event": "edits_undeliverable", "log_level": "warning", "cells": ["big"],
         "max_frame_size": 2_000}
    ]  # fmt: skip
    assert "x" * 100 not in repr(logs)  # the code itself is never logged


# -- bad rng draws --------------------------------------------------------------------------------


class ScriptedRandom(random.Random):
    """An rng whose random() returns the given values (or raises them)."""

    def __init__(self, *values: object) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        value = self.values.pop(0) if self.values else 0.5
        if isinstance(value, BaseException):
            raise value
        return value  # type: ignore[return-value]


@pytest.mark.parametrize(
    "draw", [2.0, float("nan"), -0.25, 1.0, "0.5", RuntimeError("entropy pool empty")], ids=repr
)
def test_a_bad_draw_ends_the_cycle_in_closed_error_not_a_crash(draw: object) -> None:
    """A draw outside [0, 1) (or one that raises) makes the next failure CLOSED(ERROR), saying
    what rng.random() did; connect with a good rng recovers."""
    lc = ConnectionLifecycle(RetryPolicy(), ScriptedRandom(draw), log_transitions=False)
    lc.connect()
    with capture_logs() as logs:
        assert lc.fail("refused") == []
    assert (lc.state, lc.close_reason, lc.attempts) == (ConnState.CLOSED, CloseReason.ERROR, 0)
    assert isinstance(lc.last_cause, ValueError)
    assert "rng.random()" in str(lc.last_cause)
    if not isinstance(draw, BaseException):
        assert f"returned {draw!r}; it must return a float in [0, 1)" in str(lc.last_cause)
    assert [e["event"] for e in logs] == ["rng_draw_invalid"]
    failed = fsm.ConnectionFailed(lc.close_reason, lc.attempts, lc.last_cause)
    assert "error in the client" in str(failed) and "rng.random()" in str(failed)
    with pytest.raises(NotConnected, match=r"CLOSED\(ERROR\)"):
        lc.request()
    lc._rng = random.Random(0)
    assert lc.connect() == [Dial(1, lc.policy.connect_timeout)]
    assert [type(e) for e in lc.fail()] == [Backoff]


def test_a_bad_draw_ends_an_open_connection_on_its_drop() -> None:
    """A bad draw made when the open connection's attempt started turns its drop into ERROR."""
    lc = ConnectionLifecycle(RetryPolicy(), ScriptedRandom(float("nan")), log_transitions=False)
    lc.connect()
    lc.ready()
    assert lc.drop(uptime=60.0) == []
    assert lc.close_reason is CloseReason.ERROR


def test_without_jitter_the_rng_is_never_drawn() -> None:
    """With jitter 0, a broken rng does not matter: no draw is made, waits are nominal."""
    lc = ConnectionLifecycle(
        RetryPolicy(jitter=0.0), ScriptedRandom(RuntimeError("never drawn")),
        log_transitions=False,
    )  # fmt: skip
    lc.connect()
    assert lc.fail() == [Backoff(1, lc.policy.initial_delay)]


def test_a_good_draw_is_used_by_the_wait_after_its_attempt() -> None:
    """The wait after an attempt is jittered by the draw made when that attempt started."""
    lc = ConnectionLifecycle(RetryPolicy(), ScriptedRandom(0.25, 0.75), log_transitions=False)
    lc.connect()
    assert lc.fail() == [Backoff(1, lc.policy.jittered(1, 0.25))]
    lc.retry()
    assert lc.fail() == [Backoff(2, lc.policy.jittered(2, 0.75))]


# -- issue 11's reproductions, at the core --------------------------------------------------------


def test_offline_edits_that_together_exceed_the_limit_all_go_out_under_it() -> None:
    """1,200 offline cells of 1 KB (1.2 MB together) flush as frames of at most 1 MiB each."""
    lc = make()
    codes = {f"cell-{n:04}": f"# {n}\n" + "x" * 1_000 for n in range(1_200)}
    for cell, code in codes.items():
        lc.edit(cell, code)
    lc.connect()
    (flush,) = lc.ready(seq=0)
    assert isinstance(flush, Flush)
    frames = flush.batch.frames
    assert len(frames) == 2
    for frame in frames:
        data = {"seq": frame.seq, "codes": frame.codes, "auto_run": frame.auto_run}
        assert len(encode_frame("instantiate", data).encode()) <= lc.max_frame_size
    assert flush.batch.codes == codes
    for frame in frames:
        assert lc.ack(frame.seq)
    assert lc.pending_edits == {}


def test_one_cell_too_large_is_refused_and_blocks_nothing() -> None:
    """A 2 MiB cell is refused at edit(); the small cells edited with it flush as usual."""
    lc = make()
    lc.edit("small", "x = 1")
    with pytest.raises(fsm.EditTooLarge, match="'big'"):
        lc.edit("big", "y" * (2 << 20))
    lc.connect()
    (flush,) = lc.ready(seq=0)
    assert isinstance(flush, Flush)
    assert flush.batch.codes == {"small": "x = 1"}
