"""Stateful property tests of the sans-IO core against an independent model (DESIGN.md section 8).

``LifecycleModel`` drives a ConnectionLifecycle with every event in every state, with
edits and acknowledgements, and a model server that applies what it receives in order
(and may restart without its state, answering the next ``kernel-ready`` with seq 0).
The rng may start returning values outside [0, 1) and recover. It predicts each
event's outcome from the contract in DESIGN.md sections 3 and 6 (not from the
implementation) and checks the core's invariants after every step.

``HealthyServer`` checks that from every reachable state a user connect reaches OPEN
when the server is healthy (invariant 2, core part).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

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
    NotConnected,
    Phase,
    RetryPolicy,
    SendEdit,
    Transition,
)
from fsm.lifecycle import EVENTS

CELLS = st.sampled_from(["a", "b", "c", "d", "e"])
CODES = st.text(alphabet="xyz= 01", max_size=6)
UPTIMES = st.sampled_from([0.0, 1.0, 4.999, 5.0, 30.0])
#: Retry-After values of a failure: none, below, within and above the policy's cap.
RETRY_AFTERS = st.sampled_from([None, None, 0.0, 3.0, 500.0])
MIN_UPTIME = 5.0
MAX_RETRY_AFTER = 60.0
DEFER_DELAY = 0.75
STATEFUL = settings(stateful_step_count=50)

NS, CN, OP, CG, CD = (
    ConnState.NOT_STARTED,
    ConnState.CONNECTING,
    ConnState.OPEN,
    ConnState.CLOSING,
    ConnState.CLOSED,
)
DIALING, BACKING_OFF = Phase.DIALING, Phase.BACKING_OFF


@dataclass
class Expected:
    """The model's prediction for one event."""

    state: ConnState
    phase: Phase | None
    attempts: int
    reason: CloseReason | None
    reconnect: bool
    effects: list[type]  # the kinds of effect, in order
    # Back-off waits since the cycle began or a connection that stayed up was lost:
    # the n-th wait carries the n-th delay of the schedule.
    waits: int = 0


class BadRandom:
    """An rng whose ``random()`` returns a value outside [0, 1)."""

    def random(self) -> float:
        return float("nan")


@dataclass
class Model:
    """What the contract says the lifecycle's state is."""

    max_attempts: int
    state: ConnState = NS
    phase: Phase | None = None
    attempts: int = 0
    reason: CloseReason | None = None
    reconnect: bool = False
    waits: int = 0
    # The jitter draw made when the attempt in progress started was bad.
    draw_bad: bool = False

    def valid(self, event: str) -> bool:
        return self.predict(event, 0.0) is not None

    def predict(self, event: str, uptime: float) -> Expected | None:
        """The outcome of ``event`` per DESIGN.md section 3, or None if it is invalid."""
        s, p, a, r, rec = self.state, self.phase, self.attempts, self.reason, self.reconnect
        w = self.waits
        stop = CloseReason.ERROR

        def to(
            state: ConnState,
            phase: Phase | None = None,
            *,
            attempts: int = a,
            reason: CloseReason | None = None,
            reconnect: bool = False,
            effects: tuple[type, ...] = (),
            waits: int = w,
        ) -> Expected:
            return Expected(state, phase, attempts, reason, reconnect, list(effects), waits)

        def failure(attempts: int) -> Expected:
            if attempts < self.max_attempts:
                return to(CN, BACKING_OFF, attempts=attempts, effects=(Backoff,), waits=w + 1)
            return to(CD, attempts=attempts, reason=CloseReason.GAVE_UP)

        if event in ("connect", "request"):
            if s is NS:
                return to(CN, DIALING, attempts=0, effects=(Dial,), waits=0)
            if p is BACKING_OFF and event == "connect":
                # Retry now: the timer is abandoned, a new cycle dials at once.
                return to(CN, DIALING, attempts=0, effects=(HangUp, Dial), waits=0)
            if s in (CN, OP):
                return to(s, p, reason=r)
            if s is CG:
                return to(CG, reconnect=True) if event == "connect" else None
            if s is CD:
                heals = r in (CloseReason.GAVE_UP, CloseReason.SHUTDOWN)
                if event == "connect" or heals:
                    return to(CN, DIALING, attempts=0, effects=(Dial,), waits=0)
                return None
        if event == "ready" and p is DIALING:
            return to(OP, effects=(Flush,))
        if event == "fail" and p is DIALING:
            return to(CD, reason=stop) if self.draw_bad else failure(a + 1)
        if event == "defer" and p is DIALING:
            return to(CN, BACKING_OFF, effects=(Backoff,))  # no failure, no wait counted
        if event == "retry":
            # From a timer that was cancelled but fired anyway, a no-op.
            if p is BACKING_OFF:
                return to(CN, DIALING, effects=(Dial,))
            return to(s, p, reason=r, reconnect=rec)
        if event == "drop" and s is OP:
            if self.draw_bad:
                return to(CD, reason=stop)
            if uptime >= MIN_UPTIME:
                return to(CN, BACKING_OFF, attempts=0, effects=(Backoff,), waits=1)
            return failure(a + 1)
        if event in ("reject", "shutdown") and (p is DIALING or s is OP):
            reason = CloseReason.REJECTED if event == "reject" else CloseReason.SHUTDOWN
            return to(CD, reason=reason)
        if event == "close":
            if s is NS:
                return to(CD, reason=CloseReason.USER)
            if s is CN:
                return to(CD, reason=CloseReason.USER, effects=(HangUp,))
            if s is OP:
                return to(CG, effects=(HangUp,))
            if s is CG:
                return to(CG, reconnect=False)
            return to(CD, reason=r)
        if event == "close_finished" and s is CG:
            if rec:
                return to(CN, DIALING, attempts=0, effects=(Dial,), waits=0)
            return to(CD, reason=CloseReason.USER)
        return None


@dataclass
class Outstanding:
    """What the driver has in flight: the last Dial or Backoff not yet resolved."""

    effect: Dial | Backoff | None = None
    history: list[Effect] = field(default_factory=list)

    def resolve(self, event: str, before: ConnState, effects: list[Effect]) -> None:
        """Update from one accepted event and its effects, asserting nothing is doubled."""
        if before is CN and event in ("ready", "fail", "defer", "reject", "shutdown"):
            assert isinstance(self.effect, Dial), (event, self.effect)
            self.effect = None
        if event == "retry" and effects:  # without effects: a timer cancelled, firing late
            assert isinstance(self.effect, Backoff), (event, self.effect)
            self.effect = None
        for effect in effects:
            self.history.append(effect)
            if isinstance(effect, HangUp) and not effect.graceful:
                assert self.effect is not None, "HangUp(graceful=False) with nothing in flight"
                self.effect = None
            if isinstance(effect, Dial | Backoff):
                assert self.effect is None, f"{effect} while {self.effect} is still in flight"
                self.effect = effect


class LifecycleModel(RuleBasedStateMachine):
    """Random events, edits and acks against a model; the invariants hold at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.lc: ConnectionLifecycle

    @initialize(
        max_attempts=st.integers(min_value=1, max_value=4),
        jitter=st.sampled_from([0.0, 0.5, 1.0]),
        seed=st.integers(min_value=0, max_value=2**32 - 1),
    )
    def start(self, max_attempts: int, jitter: float, seed: int) -> None:
        """A fresh lifecycle with a small random policy and a seeded rng starts NOT_STARTED."""
        policy = RetryPolicy(
            max_attempts=max_attempts, jitter=jitter, min_uptime=MIN_UPTIME,
            max_retry_after=MAX_RETRY_AFTER,
        )  # fmt: skip
        self.transitions: list[Transition] = []
        self.rng = random.Random(seed)
        self.lc = ConnectionLifecycle(
            policy, self.rng, observers=[self.transitions.append], log_transitions=False,
        )  # fmt: skip
        self.mirror = random.Random(seed)  # draws what the lifecycle's rng must draw
        self.draw = 0.0  # the mirror's draw for the attempt in progress
        self.model = Model(max_attempts)
        self.out = Outstanding()
        self.started = False  # a connect or request was accepted
        self.events_sent = False  # any event method was called
        self.entries_into_open = 0
        self.flushes = 0
        # Edits: the client's latest code per cell, the cells the buffer must hold (in
        # first-edit order), and for each the seq of the message carrying its latest
        # code (None while not sent on the current connection).
        self.latest: dict[str, str] = {}
        self.order: list[str] = []
        self.carried_by: dict[str, int | None] = {}
        # The model server: what it holds, and what is on the wire to it, in order.
        self.server: dict[str, str] = {}
        self.wire: list[tuple[int, dict[str, str]]] = []
        self.seqs_sent: list[int] = []
        # Seqs sent on the current connection and not acked yet: each is acked once.
        self.awaiting: set[int] = set()
        self.retired: set[int] = set()  # awaited when the last connection was lost
        # Protocol v2: the highest seq the server received (what its kernel-ready says),
        # the highest the client saw acked, the cells acknowledged in order of their first
        # ack, and whether the server restarted without its state since the last flush.
        self.server_seq = 0
        self.max_acked = 0
        self.acked_order: list[str] = []
        self.server_lost = False

    # -- events ------------------------------------------------------------------------------

    def send(self, event: str, uptime: float, retry_after: float | None = None) -> None:
        lc, model = self.lc, self.model
        self.events_sent = True
        before = (lc.state, lc.phase, lc.attempts, lc.close_reason, lc.pending_edits)
        expected_pending = self.expected_flush() if event == "ready" else lc.pending_edits
        expected = model.predict(event, uptime)
        n_transitions = len(self.transitions)
        if expected is None:
            error = NotConnected if event == "request" else InvalidTransition
            with pytest.raises(error) as info:
                self.call(event, uptime, retry_after)
            if isinstance(info.value, InvalidTransition):
                assert info.value.event == event
                assert info.value.state is model.state
                assert event in str(info.value) and model.state.value in str(info.value)
            assert (lc.state, lc.phase, lc.attempts, lc.close_reason, lc.pending_edits) == before
            assert len(self.transitions) == n_transitions
            return

        effects = self.call(event, uptime, retry_after)
        assert [type(e) for e in effects] == expected.effects, (event, effects)
        # One transition record per accepted event, except request's fast path (which
        # stays out of the engine while CONNECTING or OPEN) and a retry with no timer.
        fast_path = (event == "request" and model.state in (CN, OP)) or (
            event == "retry" and model.phase is not BACKING_OFF
        )
        assert len(self.transitions) == n_transitions + (0 if fast_path else 1)
        if expected.reason is CloseReason.ERROR and model.state is not CD:
            assert "must return a float in [0, 1)" in str(lc.last_cause)
        self.check_effects(event, effects, expected, expected_pending, retry_after)
        self.out.resolve(event, model.state, effects)
        if event in ("connect", "request"):
            self.started = True
        if model.state is OP and expected.state is not OP:
            self.connection_lost()
        if expected.state is OP and model.state is not OP:
            self.entries_into_open += 1
        model.state, model.phase, model.attempts = expected.state, expected.phase, expected.attempts
        model.reason, model.reconnect = expected.reason, expected.reconnect
        model.waits = expected.waits

    def call(self, event: str, uptime: float, retry_after: float | None = None) -> list[Effect]:
        lc = self.lc
        if event == "drop":
            return lc.drop(uptime=uptime, cause="reset")
        if event == "fail":
            return lc.fail(cause="fail cause", retry_after=retry_after)
        if event == "defer":
            return lc.defer(DEFER_DELAY)
        if event == "ready":
            return lc.ready(seq=self.server_seq)  # what the server received
        if event in ("reject", "shutdown"):
            return getattr(lc, event)(cause=f"{event} cause")  # type: ignore[no-any-return]
        return getattr(lc, event)()  # type: ignore[no-any-return]

    def lost_state(self) -> bool:
        """The next kernel-ready's seq is below what the client saw acknowledged."""
        return self.server_seq < self.max_acked

    def expected_flush(self) -> dict[str, str]:
        """What the next flush must carry: every unacknowledged edit, in first-edit order,
        latest code; for a server that lost its state, first every acknowledged cell."""
        order = self.order
        if self.lost_state():
            order = self.acked_order + [c for c in order if c not in self.acked_order]
        return {c: self.latest[c] for c in order}

    def check_effects(
        self,
        event: str,
        effects: list[Effect],
        expected: Expected,
        pending: dict[str, str],
        retry_after: float | None,
    ) -> None:
        policy = self.lc.policy
        for effect in effects:
            if isinstance(effect, Dial):
                assert effect == Dial(expected.attempts + 1, policy.connect_timeout)
                # Each attempt draws the jitter of the wait that may follow it.
                self.model.draw_bad = bool(policy.jitter) and self.lc._rng is not self.rng
                if policy.jitter and not self.model.draw_bad:
                    self.draw = self.mirror.random()
            elif isinstance(effect, Backoff):
                if event == "defer":
                    delay = DEFER_DELAY
                else:
                    delay = policy.nominal_delay(expected.waits) * (1 - policy.jitter * self.draw)
                    if retry_after is not None and event == "fail":
                        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
                assert effect == Backoff(expected.attempts, delay)
            elif isinstance(effect, HangUp):
                assert effect.graceful is (expected.state is CG)
            elif isinstance(effect, Flush):
                assert event == "ready"
                self.flushes += 1
                # Every edit not acknowledged (every cell, for a server that lost its
                # state), in order, latest code; one frame under the default limit.
                batch = effect.batch
                assert list(batch.codes.items()) == list(pending.items())
                assert len(batch.frames) == 1 and batch.frames[0].auto_run
                assert batch.seq > max(self.seqs_sent, default=0)
                assert batch.seq > self.server_seq
                if self.lost_state():
                    self.order = list(batch.codes)
                self.server_lost = False
                self.seqs_sent.append(batch.seq)
                self.awaiting.add(batch.seq)
                self.wire.append((batch.seq, dict(batch.codes)))
                for cell in batch.codes:
                    self.carried_by[cell] = batch.seq
            else:
                raise AssertionError(f"unexpected effect {effect!r} from {event}")

    def connection_lost(self) -> None:
        """Leaving OPEN: whatever was on the wire is gone; in-flight edits are unsent again."""
        self.wire.clear()
        # Their acks may still come while the link closes: expected once, forgetting nothing.
        self.retired = set(self.awaiting)
        self.awaiting.clear()
        for cell in self.carried_by:
            self.carried_by[cell] = None

    @rule(event=st.sampled_from(EVENTS), uptime=UPTIMES, retry_after=RETRY_AFTERS)
    def any_event(self, event: str, uptime: float, retry_after: float | None) -> None:
        """Any of the events, valid or not in the current state."""
        self.send(event, uptime, retry_after)

    @rule(data=st.data(), uptime=UPTIMES, retry_after=RETRY_AFTERS)
    def valid_event(self, data: st.DataObject, uptime: float, retry_after: float | None) -> None:
        """An event the current state accepts (keeps runs moving)."""
        events = [e for e in EVENTS if self.model.valid(e)]
        self.send(data.draw(st.sampled_from(events), label="event"), uptime, retry_after)

    @rule(bad=st.booleans())
    def rng_changes(self, bad: bool) -> None:
        """The rng starts returning NaN, or returns to good values (nothing else changes)."""
        self.lc._rng = BadRandom() if bad else self.rng  # type: ignore[assignment]

    @precondition(lambda self: self.model.state is not OP)
    @rule()
    def server_restarts(self) -> None:
        """The server restarts without its state: its next kernel-ready says seq 0."""
        self.server.clear()
        self.server_seq = 0
        self.server_lost = True

    @rule(uptime=UPTIMES)
    def towards_open(self, uptime: float) -> None:
        """The event a healthy server and a patient user send next (keeps runs reaching OPEN)."""
        model = self.model
        if model.state is OP:
            event = "drop"
        elif model.phase is DIALING:
            event = "ready"
        elif model.phase is BACKING_OFF:
            event = "retry"
        elif model.state is CG and model.reconnect:
            event = "close_finished"
        else:
            event = "connect"
        self.send(event, uptime)

    @precondition(lambda self: self.model.reason is CloseReason.GAVE_UP)
    @rule()
    def recover_after_giving_up(self) -> None:
        """From CLOSED(GAVE_UP) connect enters CONNECTING with attempts 0."""
        self.send("connect", 0.0)
        assert self.lc.state is CN
        assert self.lc.phase is DIALING
        assert self.lc.attempts == 0

    # -- edits and acks ----------------------------------------------------------------------

    @rule(cell=CELLS, code=CODES)
    def edit(self, cell: str, code: str) -> None:
        """An edit is sent at once while OPEN and buffered otherwise."""
        result = self.lc.edit(cell, code)
        self.latest[cell] = code
        if cell not in self.order:
            self.order.append(cell)
        if self.model.state is OP:
            assert isinstance(result, SendEdit)
            assert (result.cell_id, result.code) == (cell, code)
            assert result.seq not in self.seqs_sent
            self.seqs_sent.append(result.seq)
            self.awaiting.add(result.seq)
            self.wire.append((result.seq, {cell: code}))
            self.carried_by[cell] = result.seq
        else:
            assert result is None
            self.carried_by[cell] = None

    @precondition(lambda self: bool(self.wire))
    @rule(ack=st.booleans())
    def deliver(self, ack: bool) -> None:
        """The server applies the oldest message on the wire, then acks it (or the ack is lost)."""
        seq, codes = self.wire.pop(0)
        self.server.update(codes)
        self.server_seq = max(self.server_seq, seq)
        if not ack:
            return
        acked = [c for c in self.order if self.carried_by.get(c) == seq]
        # Expected once, even when every edit it carried was superseded since.
        assert self.lc.ack(seq) is (seq in self.awaiting)
        if seq in self.awaiting:
            self.max_acked = max(self.max_acked, seq)
        self.awaiting.discard(seq)
        for cell in acked:
            self.order.remove(cell)
            del self.carried_by[cell]
            if cell not in self.acked_order:
                self.acked_order.append(cell)

    @rule(seq=st.integers(min_value=-3, max_value=200))
    def ack_unknown(self, seq: int) -> None:
        """An ack of a seq nothing is waiting on returns False and forgets nothing."""
        if seq in self.awaiting or seq in self.retired:
            return
        before = self.lc.pending_edits
        assert self.lc.ack(seq) is False
        assert self.lc.pending_edits == before

    @precondition(lambda self: bool(self.seqs_sent))
    @rule(data=st.data())
    def ack_stale(self, data: st.DataObject) -> None:
        """A late ack of a seq sent before the last connection loss is expected once; one
        from an earlier connection, or already acked, returns False. Neither forgets an edit."""
        stale = [s for s in self.seqs_sent if s not in self.awaiting]
        if not stale:
            return
        seq = data.draw(st.sampled_from(stale), label="seq")
        before = self.lc.pending_edits
        assert self.lc.ack(seq) is (seq in self.retired)
        if seq in self.retired:
            self.max_acked = max(self.max_acked, seq)
        self.retired.discard(seq)
        assert self.lc.pending_edits == before

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def state_is_one_of_five(self) -> None:
        """Invariant 1: one of the five states; can_interact exactly in NOT_STARTED and OPEN."""
        lc = self.lc
        assert lc.state in set(ConnState)
        assert lc.can_interact is (lc.state in (NS, OP))
        assert lc.is_not_started is (lc.state is NS)
        assert (lc.phase is not None) is (lc.state is CN)
        assert (lc.close_reason is not None) is (lc.state is CD)

    @invariant()
    def matches_the_model(self) -> None:
        """State, phase, attempts and close reason are what the contract predicts."""
        lc, model = self.lc, self.model
        assert (lc.state, lc.phase, lc.attempts, lc.close_reason) == (
            model.state, model.phase, model.attempts, model.reason,
        )  # fmt: skip
        if lc.phase is not None:
            assert lc.phase.value in lc.machine.configuration_values

    @invariant()
    def connecting_has_exactly_one_thing_in_flight(self) -> None:
        """Invariant 3 (core): CONNECTING has one attempt or one timer in flight, per its phase."""
        lc, effect = self.lc, self.out.effect
        assert (lc.state is CN) is (effect is not None)
        if lc.phase is DIALING:
            assert isinstance(effect, Dial)
        if lc.phase is BACKING_OFF:
            assert isinstance(effect, Backoff)

    @invariant()
    def attempts_are_bounded(self) -> None:
        """Invariant 4: attempts never exceed max_attempts; reaching it means CLOSED(GAVE_UP)."""
        lc = self.lc
        assert 0 <= lc.attempts <= lc.policy.max_attempts
        if lc.attempts == lc.policy.max_attempts:
            assert lc.state is CD
            assert lc.close_reason is CloseReason.GAVE_UP

    @invariant()
    def no_edit_is_lost(self) -> None:
        """Invariant 5 (core): every cell's latest code is pending, or acked and at the server."""
        pending = self.lc.pending_edits
        assert list(pending) == self.order
        for cell, code in self.latest.items():
            if cell in pending:
                assert pending[cell] == code
            elif not self.server_lost:  # until the next flush gives it everything again
                assert self.server.get(cell) == code

    @invariant()
    def one_flush_per_entry_into_open(self) -> None:
        """Invariant 6: exactly one Flush per entry into OPEN, and none otherwise."""
        entries = sum(1 for t in self.transitions if t.target is OP and t.source is not OP)
        assert self.flushes == self.entries_into_open == entries

    @invariant()
    def lazy_until_first_use(self) -> None:
        """Invariant 7 (core): before the first connect/request no Dial or Backoff was emitted."""
        if not self.started:
            assert not any(isinstance(e, Dial | Backoff) for e in self.out.history)
        if not self.events_sent:
            assert self.lc._machine is None


TestLifecycleModel = LifecycleModel.TestCase
TestLifecycleModel.settings = STATEFUL


def healthy_connect(lc: ConnectionLifecycle, out: Outstanding) -> None:
    """A user connect against a server that is always ready: answer what is in flight."""
    before = lc.state
    effects = lc.connect()
    out.resolve("connect", before, effects)
    if lc.state is CG:
        effects = lc.close_finished()  # the graceful close ends
        out.resolve("close_finished", CG, effects)
    for _ in range(3):
        if lc.state is OP:
            return
        if isinstance(out.effect, Dial):
            out.resolve("ready", CN, lc.ready())
        elif isinstance(out.effect, Backoff):
            out.resolve("retry", CN, lc.retry())  # the timer fires
    raise AssertionError(f"still {lc.state} {lc.phase} after a healthy connect")


class HealthyServer(RuleBasedStateMachine):
    """Invariant 2 (core): from every reachable state, connect reaches OPEN on a healthy server."""

    def __init__(self) -> None:
        super().__init__()
        self.lc = ConnectionLifecycle(
            RetryPolicy(max_attempts=2), random.Random(0), log_transitions=False
        )
        self.out = Outstanding()

    @rule(event=st.sampled_from(EVENTS), uptime=UPTIMES)
    def anything_happens(self, event: str, uptime: float) -> None:
        """Any event, accepted or refused, moves the lifecycle somewhere reachable."""
        before = self.lc.state
        try:
            if event == "drop":
                effects: list[Effect] = self.lc.drop(uptime=uptime)
            elif event == "defer":
                effects = self.lc.defer(DEFER_DELAY)
            else:
                effects = getattr(self.lc, event)()
        except (InvalidTransition, NotConnected):
            return
        self.out.resolve(event, before, effects)

    @rule()
    def user_connects(self) -> None:
        """connect (and the end of a graceful close) reaches OPEN when the server is healthy."""
        healthy_connect(self.lc, self.out)
        assert self.lc.state is OP
        assert self.lc.can_interact


TestHealthyServer = HealthyServer.TestCase
# Every state is reachable within a few steps (max_attempts=2): short runs suffice.
TestHealthyServer.settings = settings(stateful_step_count=25)
