"""An exhaustive model check of the sans-IO core (DESIGN.md section 8).

Every configuration of :class:`fsm.ConnectionLifecycle` reachable from a fresh one is
enumerated by breadth-first search. A configuration is the tuple (state, phase,
attempts, close reason, reconnect-after-close flag, edit buffer status, whether the
buffer holds acknowledged code, whether the jitter draw of the attempt in progress is
bad); the buffer status is ``empty``, ``pending``
(edits recorded while not OPEN, none in flight) or ``in-flight`` (sent, not yet
acknowledged). The draw is only read while DIALING or OPEN (entering DIALING draws
anew), so elsewhere it is not part of the configuration. The arguments of events are
not part of a configuration either: ``drop`` comes with an uptime just under
``min_uptime`` and one exactly at it, ``ready`` with the seq of a server that kept its
state, of one that lost it (0) and of one ahead of the client, ``fail`` with and without
a ``Retry-After``, and ``connect`` and ``retry`` (which dial) with an rng whose draw is
outside [0, 1) (``connect(bad draw)``: the rng returns 2.0 for that one event; an rng
bad for good is a sequence of such inputs).

All the lifecycles of one exploration share one python-statemachine engine (a
lifecycle gives its engine its own configuration before every event, as the shared
engine of ``fsm.core._engine`` is given it; the exploration sets the owner). A configuration
is re-entered either by replaying the shortest event path that first reached it on a
fresh lifecycle (used for the small policy), or by a deep copy of a lifecycle that is
in it, its engine left out (used for the default policy, faster); a test checks that
both explore exactly the same graph. (A lifecycle with its own engine cannot simply be
deep-copied: the engine re-evaluates its guards while its owner is half restored.)

Each edge of the graph is checked against the invariants (1, 3, 4, 6, 7 of section 8),
each configuration for "connect, then a healthy server, reaches OPEN" (invariant 2,
core part), every invalid event for "raises InvalidTransition naming the event and
the state, and changes nothing", and the whole exploration for taking every transition
declared on ``_LifecycleMachine`` at least once.

Run ``python tests/test_model_check.py`` to print the figures the README quotes.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

from fsm import (
    Backoff,
    CloseReason,
    ConnectionLifecycle,
    ConnState,
    Dial,
    EditTooLarge,
    Effect,
    Flush,
    HangUp,
    InvalidTransition,
    NotConnected,
    Phase,
    RetryPolicy,
    SendEdit,
)
from fsm.core._engine import config_value
from fsm.core._frames import encode_frame
from fsm.core._machine import _LifecycleMachine

#: The policies explored: a small one and the default (25 attempts).
MAX_ATTEMPTS = (4, 25)
#: The one cell edited: the buffer status, not the cell count, is what the core branches on.
CELL = "cell-1"
#: The cause passed with every event that takes one.
CAUSE = "model-check cause"
#: A sequence number never issued (what an ack of nothing in flight carries).
UNKNOWN_SEQ = 10**9
#: The Retry-After of ``fail(retry_after)``: above every scheduled delay, below the cap.
RETRY_AFTER = 30.0
#: The delay of ``defer``.
DEFER_DELAY = 2.5
#: How far ahead of the client ``ready(ahead)``'s server is (a client restarted with the
#: same session id).
AHEAD = 1000
#: The frame limit every server of the exploration announces (small, so that an edit too
#: large for it is cheap to build and to measure).
FRAME_LIMIT = 4096
#: What a broken rng returns.
BAD_DRAW = 2.0


class BadRandom:
    """An rng whose ``random()`` returns a value outside [0, 1)."""

    def random(self) -> float:
        return BAD_DRAW

EMPTY, PENDING, IN_FLIGHT = "empty", "pending", "in-flight"

#: Every input of the core: the lifecycle events (``request`` both through its public fast
#: path and through the engine), both uptime classes of ``drop``, ``ready`` from a server
#: that kept its state, lost it or is ahead, ``fail`` with a Retry-After, dials whose
#: jitter draw is bad, an edit, one too large for any frame, and an ack.
EVENTS = (
    "connect",
    "connect(bad draw)",
    "request",
    "request(engine)",
    "ready",
    "ready(lost)",
    "ready(ahead)",
    "fail",
    "fail(retry_after)",
    "defer",
    "retry",
    "retry(bad draw)",
    "drop(uptime<min)",
    "drop(uptime>=min)",
    "reject",
    "shutdown",
    "close",
    "close_finished",
    "edit",
    "edit(too large)",
    "ack",
)
#: Inputs that never reach the engine (retry: only in BACKING_OFF; request: only outside
#: CONNECTING and OPEN, checked separately).
NOT_ENGINE = ("edit", "edit(too large)", "ack")

INTERACTIVE = {ConnState.NOT_STARTED, ConnState.OPEN}

# What the driver has in flight, as the effects say: an attempt, a back-off timer, an
# open socket, or a socket being closed gracefully (None: nothing).
DIAL, TIMER, SOCKET, HANGING_UP = "attempt", "timer", "socket", "graceful close"
IN_FLIGHT_FOR: dict[tuple[ConnState, Phase | None], str | None] = {
    (ConnState.NOT_STARTED, None): None,
    (ConnState.CONNECTING, Phase.DIALING): DIAL,
    (ConnState.CONNECTING, Phase.BACKING_OFF): TIMER,
    (ConnState.OPEN, None): SOCKET,
    (ConnState.CLOSING, None): HANGING_UP,
    (ConnState.CLOSED, None): None,
}
# The engine states (by id) each (state, phase) stands for: the active leaf and its parent.
ENGINE_IDS: dict[tuple[ConnState, Phase | None], set[str]] = {
    (ConnState.NOT_STARTED, None): {"not_started"},
    (ConnState.CONNECTING, Phase.DIALING): {"connecting", "dialing"},
    (ConnState.CONNECTING, Phase.BACKING_OFF): {"connecting", "backing_off"},
    (ConnState.OPEN, None): {"open"},
    (ConnState.CLOSING, None): {"closing"},
    (ConnState.CLOSED, None): {"closed"},
}


@dataclass(frozen=True, order=True)
class Config:
    """One configuration of the core, as the model check sees it."""

    state: ConnState
    phase: Phase | None
    attempts: int
    close_reason: CloseReason | None
    reconnect_after_close: bool
    buffer: str
    acked: bool = False
    draw_bad: bool = False

    def __str__(self) -> str:
        where = self.phase.value if self.phase else self.state.value
        reason = f"({self.close_reason.value})" if self.close_reason else ""
        flag = " +reconnect" if self.reconnect_after_close else ""
        flag += " +acked" if self.acked else ""
        flag += " +draw-bad" if self.draw_bad else ""
        return f"{where}{reason} attempts={self.attempts} buffer={self.buffer}{flag}"


def buffer_status(lc: ConnectionLifecycle) -> str:
    unsent = lc.buffer.unsent
    in_flight = lc.buffer.in_flight_seqs
    assert not (unsent and in_flight), "edits both unsent and in flight"
    if in_flight:
        return IN_FLIGHT
    return PENDING if unsent else EMPTY


def config_of(lc: ConnectionLifecycle) -> Config:
    draw_read = lc.phase is Phase.DIALING or lc.state is ConnState.OPEN
    return Config(
        lc.state,
        lc.phase,
        lc.attempts,
        lc.close_reason,
        lc._reconnect_after_close,
        buffer_status(lc),
        bool(lc.buffer.acknowledged),
        draw_read and lc._draw_problem is not None,
    )


# -- the declared transitions, and which one each event takes --------------------------


def declared_transitions() -> list[Any]:
    """Every transition declared on the machine class (not the compound's initial one)."""
    return [
        t
        for state in _LifecycleMachine.states_map.values()
        for t in state.transitions
        if not t.initial
    ]


def describe_transition(t: Any) -> tuple[str, str, str, tuple[str, ...]]:
    """(event, source id, target id, guards) of a declared transition."""
    return (
        ",".join(e.id for e in t.events),
        t.source.id,
        t.target.id,
        tuple(str(c) for c in t.cond),
    )


class TransitionRecorder:
    """A machine listener noting every declared transition the engine takes."""

    def __init__(self) -> None:
        self.taken: list[Any] = []

    def after_transition(self, transition: Any) -> None:
        self.taken.append(transition)


# -- applying one input ------------------------------------------------------------------


@dataclass
class Outcome:
    """What one input did: its effects, or the error it raised."""

    effects: list[Effect] = field(default_factory=list)
    error: Exception | None = None


def apply(lc: ConnectionLifecycle, event: str, n: int) -> Outcome:
    """Apply input ``event`` (the ``n``-th of its path) to ``lc``."""
    policy = lc.policy
    try:
        if event == "edit":
            effect = lc.edit(CELL, f"code {n}")
            return Outcome([effect] if effect is not None else [])
        if event == "edit(too large)":
            lc.edit(CELL, "x" * lc.max_frame_size)
            raise AssertionError("an edit larger than any frame was accepted")
        if event.endswith("(bad draw)"):
            rng, lc._rng = lc._rng, BadRandom()  # type: ignore[assignment]
            try:
                return apply(lc, event.removesuffix("(bad draw)"), n)
            finally:
                lc._rng = rng
        if event == "ready":
            # A server that kept its state has received every seq this client sent.
            return Outcome(lc.ready(seq=lc.buffer.last_seq, max_frame_size=FRAME_LIMIT))
        if event == "ready(lost)":
            return Outcome(lc.ready(seq=0, max_frame_size=FRAME_LIMIT))
        if event == "ready(ahead)":
            return Outcome(lc.ready(seq=lc.buffer.last_seq + AHEAD, max_frame_size=FRAME_LIMIT))
        if event == "fail(retry_after)":
            return Outcome(lc.fail(cause=CAUSE, retry_after=RETRY_AFTER))
        if event == "defer":
            return Outcome(lc.defer(DEFER_DELAY))
        if event == "ack":
            seqs = sorted(lc.buffer.in_flight_seqs)
            if not seqs:
                assert lc.ack(UNKNOWN_SEQ) is False
                return Outcome(error=LookupError("nothing in flight to acknowledge"))
            assert lc.ack(seqs[0]) is True
            return Outcome()
        if event == "request(engine)":
            return Outcome(lc._send("request"))
        if event == "drop(uptime<min)":
            return Outcome(lc.drop(math.nextafter(policy.min_uptime, 0.0), cause=CAUSE))
        if event == "drop(uptime>=min)":
            return Outcome(lc.drop(policy.min_uptime, cause=CAUSE))
        if event in ("fail", "reject", "shutdown"):
            return Outcome(getattr(lc, event)(cause=CAUSE))
        method: Callable[[], list[Effect]] = getattr(lc, event)
        return Outcome(method())
    except (InvalidTransition, NotConnected, EditTooLarge) as exc:
        return Outcome(error=exc)


# -- the exploration ---------------------------------------------------------------------


@dataclass
class Edge:
    source: Config
    event: str
    target: Config
    effects: list[Effect]


@dataclass
class Graph:
    """The result of exploring one policy."""

    policy: RetryPolicy
    paths: dict[Config, tuple[str, ...]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    refused: list[tuple[Config, str]] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    liveness_checked: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def configurations(self) -> int:
        return len(self.paths)


class Explorer:
    """Breadth-first search over configurations; ``fork`` says how a configuration is re-entered.

    Every lifecycle that lands in a configuration not yet explored is kept to stand for it;
    when none is left, ``"replay"`` replays the configuration's shortest path on a fresh
    lifecycle (simple and robust) and ``"clone"`` deep-copies the last kept one, the engine
    after its owner (copying them in the other order is what breaks ``copy.deepcopy``).
    Both give the same graph (a test compares them); ``"clone"`` is several times faster.
    """

    def __init__(self, policy: RetryPolicy, fork: str = "replay") -> None:
        assert fork in ("replay", "clone")
        self.graph = Graph(policy)
        self.fork_by = fork
        self.recorder = TransitionRecorder()
        self.declared = {id(t): t for t in declared_transitions()}
        self.forks = 0
        self.serial = 0
        self.engine: _LifecycleMachine | None = None
        # Lifecycles standing for each configuration not yet explored.
        self.kept: dict[Config, list[ConnectionLifecycle]] = {}

    def fresh(self) -> ConnectionLifecycle:
        lc = ConnectionLifecycle(
            self.graph.policy, random.Random(0), max_frame_size=FRAME_LIMIT, log_transitions=False
        )
        if self.engine is None:
            self.engine = lc.machine
            self.engine.add_listener(self.recorder)  # type: ignore[no-untyped-call]
        else:
            lc._machine = self.engine
        return lc

    def use(self, lc: ConnectionLifecycle) -> ConnectionLifecycle:
        """Make the exploration's one engine ``lc``'s before ``lc`` gets an input.

        ``ConnectionLifecycle`` gives its engine its own configuration before every event
        (as the shared engine of :mod:`fsm.core._engine` is given it); the owner is the one
        thing left to set. Building an engine per lifecycle, and deep-copying one, cost
        milliseconds each: most of what an exploration would otherwise spend.
        """
        assert self.engine is not None and lc._machine is self.engine
        self.engine._owner = lc
        return lc

    def replay(self, path: tuple[str, ...]) -> ConnectionLifecycle:
        lc = self.use(self.fresh())
        for n, event in enumerate(path):
            outcome = apply(lc, event, n)
            assert outcome.error is None, f"replaying {path} failed at {event}: {outcome.error}"
        return lc

    def clone(self, lc: ConnectionLifecycle) -> ConnectionLifecycle:
        copied = ConnectionLifecycle.__new__(ConnectionLifecycle)
        memo: dict[int, Any] = {id(lc): copied, id(self.recorder): self.recorder}
        # The rng is shared: a configuration depends on whether it draws bad values, not on
        # which good ones (and copying its state is most of the cost of a copy).
        memo[id(lc._rng)] = lc._rng
        memo[id(lc.policy)] = lc.policy
        fields = {k: v for k, v in vars(lc).items() if k != "_machine"}
        vars(copied).update(copy.deepcopy(fields, memo))
        copied._machine = self.engine  # shared: it holds no state of its own between events
        return copied

    def fork(self, config: Config) -> ConnectionLifecycle:
        """A lifecycle in ``config``: one kept there, else a clone or a replay."""
        kept = self.kept.get(config, [])
        if len(kept) > (1 if self.fork_by == "clone" else 0):
            return kept.pop()  # clone mode keeps the last one to copy from
        self.forks += 1
        if self.fork_by == "clone":
            lc = self.clone(kept[0])
        else:
            lc = self.replay(self.graph.paths[config])
        assert config_of(lc) == config, f"fork of {config} is in {config_of(lc)}"
        return lc

    def run(self) -> Graph:
        started, cpu_started = time.perf_counter(), time.process_time()
        graph = self.graph
        root = self.fresh()
        start = config_of(root)
        graph.paths[start] = ()
        self.kept[start] = [root]
        queue = deque([start])
        explored: set[Config] = set()
        while queue:
            config = queue.popleft()
            explored.add(config)
            path = graph.paths[config]
            lc: ConnectionLifecycle | None = None
            for event in EVENTS:
                if lc is None:
                    lc = self.fork(config)
                target = self.step(lc, config, event)
                if target is None or target == config:
                    continue  # refused or a no-op: lc still stands for config
                if target not in graph.paths:
                    graph.paths[target] = (*path, event)
                    queue.append(target)
                if target not in explored:
                    # Any lifecycle in a configuration stands for it: keeping this one
                    # saves a copy or a replay when target is explored.
                    self.kept.setdefault(target, []).append(lc)
                lc = None
            if lc is None:
                kept = self.kept.get(config)
                lc = kept.pop() if kept else self.fork(config)  # config's last use
            self.check_recovery(lc, config)
            self.kept.pop(config, None)
        graph.seconds = time.perf_counter() - started
        graph.cpu_seconds = time.process_time() - cpu_started
        return graph

    def step(self, lc: ConnectionLifecycle, before: Config, event: str) -> Config | None:
        """Apply ``event`` in ``before``; check the edge; return the new configuration."""
        self.serial += 1
        n = 10**6 + self.serial  # numbers the code of an edit: every edit's code is new
        self.use(lc)
        unsent = lc.buffer.unsent
        pending = lc.pending_edits
        acknowledged = lc.buffer.acknowledged
        last_seq = lc.buffer.last_seq
        last_cause = lc.last_cause
        self.recorder.taken.clear()
        outcome = apply(lc, event, n)
        after = config_of(lc)
        taken = list(self.recorder.taken)
        if outcome.error is not None:
            check_refused(lc, before, event, outcome.error, after, last_cause, pending)
            assert taken == [], f"{event} refused in {before} yet took {taken}"
            self.graph.refused.append((before, event))
            return None
        check_edge(
            self.graph.policy,
            before,
            event,
            outcome.effects,
            after,
            Buffers(unsent, pending, lc.pending_edits, acknowledged, last_seq, lc._waits),
            n,
        )
        check_seqs(lc, event, outcome.effects, last_seq)
        check_state(lc, after, f"{before} --{event}--> {after}")
        check_taken(event, before, after, taken, self.declared)
        self.graph.taken.update(id(t) for t in taken)
        self.graph.edges.append(Edge(before, event, after, outcome.effects))
        return after

    def check_recovery(self, lc: ConnectionLifecycle, config: Config) -> None:
        """Invariant 2 (core part): connect, then a healthy server, reaches OPEN, losing nothing."""
        self.use(lc)
        pending = lc.pending_edits
        steps = ["connect"]
        effects = lc.connect()
        if lc.state is ConnState.CLOSING:
            steps.append("close_finished")
            effects += lc.close_finished()
        if lc.state is ConnState.CONNECTING:
            # connect never leaves a wait in place: from BACKING_OFF it dials at once.
            assert lc.phase is Phase.DIALING, f"{config}: {steps} left {config_of(lc)}"
            steps.append("ready")
            # A healthy server that kept its state.
            effects += lc.ready(seq=lc.buffer.last_seq, max_frame_size=FRAME_LIMIT)
        assert lc.state is ConnState.OPEN, f"{config}: {steps} ended in {config_of(lc)}"
        assert len(steps) <= 3
        assert lc.pending_edits == pending, f"{config}: edits lost on the way to OPEN"
        assert not lc.buffer.unsent, f"{config}: OPEN with edits never flushed"
        flushes = [e for e in effects if isinstance(e, Flush)]
        if config.state is ConnState.OPEN:
            assert flushes == []
        else:
            assert len(flushes) == 1, f"{config}: {steps} flushed {len(flushes)} times"
        self.graph.liveness_checked += 1


# -- the checks --------------------------------------------------------------------------


def check_refused(
    lc: ConnectionLifecycle,
    before: Config,
    event: str,
    error: Exception,
    after: Config,
    last_cause: object,
    pending: dict[str, str],
) -> None:
    """An input refused in ``before`` raised the right error and changed nothing."""
    assert after == before, f"{event} refused in {before} but moved to {after}"
    assert lc.pending_edits == pending, f"refused {event} in {before} changed the edits"
    assert lc.last_cause == last_cause, f"refused {event} recorded its cause"
    assert lc._effects == [], f"refused {event} left effects queued"
    name = event.removesuffix("(engine)")
    if isinstance(error, InvalidTransition):
        base = name.split("(")[0]
        assert error.event == base and error.state is before.state, (before, event, error)
        assert base in str(error) and before.state.value in str(error), error
        if base != "request":  # request is declared in CLOSED, behind heals_on_use
            assert base not in error.allowed, (before, event, error)
        assert error.allowed, f"no way out of {before}"
        if base == "request":
            assert refuses_requests(before), (before, event)
    elif isinstance(error, NotConnected):
        # request() refuses CLOSING and CLOSED(USER, REJECTED, ERROR), pointing at connect().
        assert event == "request", error
        assert refuses_requests(before), (before, error)
        assert "connect()" in str(error)
        if before.close_reason is not None:
            assert f"CLOSED({before.close_reason.value})" in str(error), error
    elif isinstance(error, EditTooLarge):
        assert event == "edit(too large)", error
        assert error.cell_id == CELL and error.limit == lc.max_frame_size < error.size, error
        assert str(error.size) in str(error) and str(error.limit) in str(error), error
    else:
        assert event == "ack" and before.buffer != IN_FLIGHT, error


def refuses_requests(config: Config) -> bool:
    """Where the table of DESIGN.md section 3 says request() raises NotConnected."""
    return config.state is ConnState.CLOSING or (
        config.state is ConnState.CLOSED
        and config.close_reason not in (CloseReason.GAVE_UP, CloseReason.SHUTDOWN)
    )


def check_state(lc: ConnectionLifecycle, config: Config, where: str) -> None:
    """Invariant 1, and the coherence of every read with the engine."""
    assert isinstance(config.state, ConnState), where
    assert lc.can_interact is (config.state in INTERACTIVE), where
    assert lc.is_not_started is (config.state is ConnState.NOT_STARTED), where
    assert (config.phase is not None) is (config.state is ConnState.CONNECTING), where
    assert (config.close_reason is not None) is (config.state is ConnState.CLOSED), where
    assert (config.state, config.phase) in ENGINE_IDS, where
    # The cached state and phase (the fast reads) agree with the configuration the engine
    # last left this lifecycle in (the one it is given before the next event).
    machine = lc.machine
    machine.current_state_value = config_value(lc._config)
    active = {s.id for s in machine.configuration}
    assert active == ENGINE_IDS[(config.state, config.phase)], f"{where}: engine in {active}"
    if config.reconnect_after_close:
        assert config.state is ConnState.CLOSING, where
    # Edits are in flight only while OPEN, and never unsent while OPEN.
    if config.state is ConnState.OPEN:
        assert config.buffer != PENDING, f"{where}: unsent edits while OPEN"
    else:
        assert config.buffer != IN_FLIGHT, f"{where}: edits in flight while not OPEN"


def driver_after(before: str | None, event: str, effects: list[Effect]) -> str | None:
    """What the driver has in flight once it reported ``event`` and carried out ``effects``."""
    now = before
    name = event.split("(")[0]
    if name == "ready":
        assert now == DIAL, "ready without an attempt in flight"
        now = SOCKET
    elif name == "fail":
        assert now == DIAL, "fail without an attempt in flight"
        now = None
    elif name in ("reject", "shutdown"):
        assert now in (DIAL, SOCKET)
        now = None
    elif name == "drop":
        assert now == SOCKET, "drop without an open socket"
        now = None
    elif name == "retry":
        if now == TIMER:
            now = None
        else:
            # A timer cancelled (or never started) that fires anyway: nothing happens.
            assert effects == [], "a retry without a timer did something"
    elif name == "defer":
        assert now == DIAL, "defer without a dial to put off"
        now = None  # the attempt was never started
    elif name == "close_finished":
        assert now == HANGING_UP, "close_finished without a close in progress"
        now = None
    for effect in effects:
        if isinstance(effect, Dial):
            assert now is None, f"Dial while {now} is in flight"
            now = DIAL
        elif isinstance(effect, Backoff):
            assert now is None, f"Backoff while {now} is in flight"
            now = TIMER
        elif isinstance(effect, HangUp) and effect.graceful:
            assert now == SOCKET, "graceful hang-up without a socket"
            now = HANGING_UP
        elif isinstance(effect, HangUp):
            assert now in (DIAL, TIMER), f"abandoning {now}"
            now = None
        else:
            assert isinstance(effect, Flush | SendEdit)
            assert now == SOCKET, f"{type(effect).__name__} without an open socket"
    return now


@dataclass
class Buffers:
    """What the edit buffer held before an input (and ``pending_after``, after it)."""

    unsent: dict[str, str]
    pending: dict[str, str]
    pending_after: dict[str, str]
    acknowledged: dict[str, str]
    last_seq: int
    waits_after: int


def check_seqs(lc: ConnectionLifecycle, event: str, effects: list[Effect], last_seq: int) -> None:
    """Protocol v2: every new frame's seq is above the client's last one and kernel-ready's."""
    floor = last_seq
    if event == "ready(ahead)":
        floor = last_seq + AHEAD
    seqs: list[int] = []
    for effect in effects:
        if isinstance(effect, SendEdit):
            seqs.append(effect.seq)
        if isinstance(effect, Flush):
            seqs.extend(frame.seq for frame in effect.batch.frames)
    assert seqs == sorted(set(seqs)), f"{event}: seqs {seqs} not increasing"
    assert all(seq > floor for seq in seqs), f"{event}: seqs {seqs} not above {floor}"
    assert lc.buffer.last_seq == (seqs[-1] if seqs else last_seq), event


def check_flush(
    event: str, batch: Any, buffers: Buffers, limit: int, where: str
) -> None:
    """A flush carries every unsent edit (every edited cell for a server that lost its
    state) in cell order, latest code, in frames under the limit, auto_run on the last."""
    expected = dict(buffers.unsent)
    if event == "ready(lost)" and buffers.acknowledged:
        expected = {**buffers.acknowledged, **buffers.unsent}
    assert batch.codes == expected, where
    assert list(batch.codes) == list(expected), where
    assert batch.undeliverable == (), where
    assert [f.auto_run for f in batch.frames] == [False] * (len(batch.frames) - 1) + [True]
    for frame in batch.frames:
        text = encode_frame(
            "instantiate", {"seq": frame.seq, "codes": frame.codes, "auto_run": frame.auto_run}
        )
        assert len(text.encode("utf-8")) <= limit, where


def check_edge(
    policy: RetryPolicy,
    before: Config,
    event: str,
    effects: list[Effect],
    after: Config,
    buffers: Buffers,
    n: int,
) -> None:
    """Invariants 3, 4, 6 and 7 on one edge of the graph, the recovery table of DESIGN.md
    section 3, and no edit lost."""
    where = f"{before} --{event}--> {after}: {effects}"
    name = event.split("(")[0]
    max_attempts = policy.max_attempts
    pending, pending_after = buffers.pending, buffers.pending_after

    # 3: CONNECTING always has exactly an attempt or a timer in flight, as the effects say.
    try:
        in_flight = driver_after(IN_FLIGHT_FOR[(before.state, before.phase)], event, effects)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    assert in_flight == IN_FLIGHT_FOR[(after.state, after.phase)], where
    for effect in effects:
        if isinstance(effect, Dial):
            assert effect.attempt == after.attempts + 1 <= max_attempts, where
            assert effect.timeout == policy.connect_timeout, where
        if isinstance(effect, Backoff):
            assert effect.attempt == after.attempts, where
            if event == "defer":
                assert effect.delay == DEFER_DELAY, where  # exactly the driver's delay
                continue
            nominal = policy.nominal_delay(buffers.waits_after)
            if event == "fail(retry_after)":
                assert effect.delay == max(RETRY_AFTER, nominal) == RETRY_AFTER, where
            else:
                assert (1 - policy.jitter) * nominal <= effect.delay <= nominal, where

    # 4: at most max_attempts failed attempts per cycle, then CLOSED(GAVE_UP).
    assert 0 <= after.attempts <= max_attempts, where
    if after.state is ConnState.CLOSED and after.close_reason is CloseReason.GAVE_UP:
        assert after.attempts == max_attempts, where
    else:
        assert after.attempts < max_attempts, where
    new_cycle = (
        (name in ("connect", "request") and before.state is ConnState.CLOSED)
        or (name == "close_finished" and after.state is ConnState.CONNECTING)
        or (name == "connect" and before.phase is Phase.BACKING_OFF)  # retry now
    )
    stopped = after.close_reason is CloseReason.ERROR and before.state is not ConnState.CLOSED
    if stopped:
        # A bad jitter draw, and only that, ends a cycle on a failure or drop with ERROR.
        assert name in ("fail", "drop") and before.draw_bad, where
        expected = before.attempts
    elif name == "fail" or event == "drop(uptime<min)":
        expected = before.attempts + 1
    elif event == "drop(uptime>=min)" or new_cycle:
        expected = 0
    else:
        expected = before.attempts
    assert after.attempts == expected, where
    if after.attempts == max_attempts:
        assert after.close_reason is CloseReason.GAVE_UP, where
    if name in ("fail", "drop") and before.draw_bad:
        assert after.close_reason is CloseReason.ERROR, where

    # The recovery table of DESIGN.md section 3.
    if name == "connect" and before.phase is Phase.BACKING_OFF:
        assert effects == [HangUp(graceful=False), Dial(1, policy.connect_timeout)], where
    if name == "request":
        if before.state is ConnState.CLOSED:
            assert before.close_reason in (CloseReason.GAVE_UP, CloseReason.SHUTDOWN), where
            assert effects == [Dial(1, policy.connect_timeout)], where
        if before.state is ConnState.CONNECTING:
            assert effects == [] and after == before, where  # never resets the budget
    if name == "retry" and before.phase is not Phase.BACKING_OFF:
        assert effects == [] and after == before, where
    if name == "defer":
        assert before.phase is Phase.DIALING and after.phase is Phase.BACKING_OFF, where

    # 6: exactly one flush per entry into OPEN (on ready), carrying every unsent edit.
    flushes = [e for e in effects if isinstance(e, Flush)]
    entered_open = after.state is ConnState.OPEN and before.state is not ConnState.OPEN
    assert len(flushes) == (1 if entered_open else 0), where
    assert (name == "ready") is entered_open, where
    if flushes:
        check_flush(event, flushes[0].batch, buffers, FRAME_LIMIT, where)
    sends = [e for e in effects if isinstance(e, SendEdit)]
    if name == "edit":
        assert len(sends) == (1 if before.state is ConnState.OPEN else 0), where
        assert sends == [] or (sends[0].cell_id, sends[0].code) == (CELL, f"code {n}")
    else:
        assert sends == [], where

    # 7 (core part): nothing is dialed before the first connect or request.
    if before.state is ConnState.NOT_STARTED and name not in ("connect", "request"):
        assert effects == [], where
    if before.state is ConnState.NOT_STARTED and name in ("connect", "request"):
        assert effects == [Dial(1, policy.connect_timeout)], where

    # Edits are never lost: an edit replaces its cell's code, only an ack forgets one; a
    # server that lost its state makes every acknowledged cell pending again.
    if name == "edit":
        assert pending_after == {**pending, CELL: f"code {n}"}, where
    elif name == "ack":
        assert pending_after.items() < pending.items(), where
    elif event == "ready(lost)" and buffers.acknowledged:
        assert pending_after == {**buffers.acknowledged, **pending}, where
    else:
        assert pending_after == pending, where


def check_taken(
    event: str, before: Config, after: Config, taken: list[Any], declared: dict[int, Any]
) -> None:
    """The engine took exactly the one declared transition this input names (or none)."""
    name = event.split("(")[0]
    if (
        event in NOT_ENGINE
        or (event == "request" and before.state in (ConnState.CONNECTING, ConnState.OPEN))
        or (name == "retry" and before.phase is not Phase.BACKING_OFF)
    ):
        assert taken == [], f"{event} in {before} went through the engine"
        return
    assert len(taken) == 1, f"{event} in {before} took {taken}"
    transition = taken[0]
    assert id(transition) in declared, f"undeclared transition {transition}"
    assert name in {e.id for e in transition.events}
    assert transition.source.id in ENGINE_IDS[(before.state, before.phase)]
    assert transition.target.id in ENGINE_IDS[(after.state, after.phase)]


# -- the tests ---------------------------------------------------------------------------


#: How each policy is explored: the small one by replay, the default one by cloning.
FORK_BY = {4: "replay", 25: "clone"}


def explore(max_attempts: int, fork: str | None = None) -> Graph:
    """Explore (once per session) every configuration reachable under ``max_attempts``."""
    return _explore(max_attempts, fork or FORK_BY[max_attempts])


@cache
def _explore(max_attempts: int, fork: str) -> Graph:
    return Explorer(RetryPolicy(max_attempts=max_attempts), fork).run()


def summary(max_attempts: int = 25) -> dict[str, Any]:
    """The figures of one exploration, for the README."""
    graph = explore(max_attempts)
    declared = declared_transitions()
    covered = sum(1 for t in declared if id(t) in graph.taken)
    return {
        "max_attempts": max_attempts,
        "configurations": graph.configurations,
        "transitions": len(graph.edges),
        "refused_inputs": len(graph.refused),
        "declared_transitions": len(declared),
        "declared_transitions_taken": covered,
        "recoveries_checked": graph.liveness_checked,
        "fork_by": FORK_BY[max_attempts],
        "seconds": round(graph.seconds, 2),
        "cpu_seconds": round(graph.cpu_seconds, 2),
    }


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_every_reachable_configuration_keeps_the_invariants(max_attempts: int) -> None:
    """Every edge of the reachable graph keeps invariants 1, 3, 4, 6 and 7 of DESIGN.md."""
    graph = explore(max_attempts)
    figures = summary(max_attempts)
    print(
        f"\nmodel check, max_attempts={max_attempts}: {figures['configurations']} configurations,"
        f" {figures['transitions']} transitions, {figures['refused_inputs']} refused inputs,"
        f" {figures['declared_transitions_taken']}/{figures['declared_transitions']} declared"
        f" transitions taken, in {figures['seconds']} s ({figures['cpu_seconds']} s CPU)"
    )
    assert graph.edges
    states = {c.state for c in graph.paths}
    assert states == set(ConnState)
    assert max(c.attempts for c in graph.paths) == max_attempts


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_the_reachable_configurations_are_exactly_the_expected_ones(max_attempts: int) -> None:
    """The reachable set is exactly what the design allows, so no configuration hides or leaks."""
    n = max_attempts
    expected: set[Config] = set()
    for buffer in (EMPTY, PENDING):
        # Nothing was ever acknowledged before the first connection.
        expected.add(Config(ConnState.NOT_STARTED, None, 0, None, False, buffer, False))
        for acked in (False, True):
            def add(*fields: Any, draw_bad: bool = False) -> None:
                expected.add(Config(*fields, buffer, acked, draw_bad))  # noqa: B023

            for a in range(n):
                for draw_bad in (False, True):
                    add(ConnState.CONNECTING, Phase.DIALING, a, None, False, draw_bad=draw_bad)
                add(ConnState.CONNECTING, Phase.BACKING_OFF, a, None, False)
                for flag in (False, True):
                    add(ConnState.CLOSING, None, a, None, flag)
                for reason in (
                    CloseReason.USER, CloseReason.REJECTED, CloseReason.SHUTDOWN, CloseReason.ERROR
                ):
                    add(ConnState.CLOSED, None, a, reason, False)
            add(ConnState.CLOSED, None, n, CloseReason.GAVE_UP, False)
    for buffer in (EMPTY, IN_FLIGHT):
        for acked in (False, True):
            for a in range(n):
                for draw_bad in (False, True):
                    fields = (ConnState.OPEN, None, a, None, False, buffer)
                    expected.add(Config(*fields, acked, draw_bad))
    reached = set(explore(max_attempts).paths)
    assert sorted(reached - expected, key=str) == []
    assert sorted(expected - reached, key=str) == []


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_connect_then_a_healthy_server_reaches_open_from_every_configuration(
    max_attempts: int,
) -> None:
    """From every reachable configuration, connect and a healthy server reach OPEN in ≤ 4 steps."""
    graph = explore(max_attempts)
    assert graph.liveness_checked == graph.configurations


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_every_declared_transition_is_taken(max_attempts: int) -> None:
    """The exploration takes every transition declared on _LifecycleMachine at least once."""
    graph = explore(max_attempts)
    missed = [describe_transition(t) for t in declared_transitions() if id(t) not in graph.taken]
    assert missed == []


def test_the_declared_transitions_are_the_expected_ones() -> None:
    """The declared transitions that coverage counts are all distinct, guarded branches included."""
    described = {describe_transition(t) for t in declared_transitions()}
    assert len(described) == len(declared_transitions()) >= 31
    assert ("drop", "open", "backing_off", ("stayed_up",)) in described
    assert ("drop", "open", "backing_off", ("attempts_left",)) in described
    assert ("connect", "not_started", "connecting", ("is_not_started",)) in described
    assert ("request", "open", "open", ("can_interact",)) in described
    # The recovery table and the new events of issue 11.
    assert ("connect", "backing_off", "dialing", ()) in described
    assert ("request", "closed", "connecting", ("heals_on_use",)) in described
    assert ("defer", "dialing", "backing_off", ()) in described
    assert ("fail", "dialing", "closed", ("!rng_ok",)) in described
    assert ("drop", "open", "closed", ("!rng_ok",)) in described


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_an_event_is_accepted_exactly_where_the_machine_declares_it(max_attempts: int) -> None:
    """An engine event is accepted in a configuration iff its state declares a transition for it."""
    graph = explore(max_attempts)
    sources: dict[str, set[str]] = {}
    for t in declared_transitions():
        for e in t.events:
            sources.setdefault(e.id, set()).add(t.source.id)
    outcomes = [(edge.source, edge.event, True) for edge in graph.edges]
    outcomes += [(config, event, False) for config, event in graph.refused]
    seen = set()
    for config, event, accepted in outcomes:
        if event in NOT_ENGINE or event == "request" or event.startswith("retry"):
            continue  # not engine events (request, retry: public fast paths, checked apart)
        base = event.removesuffix("(engine)").split("(")[0]
        declared = bool(ENGINE_IDS[(config.state, config.phase)] & sources[base])
        if base == "request" and config.state is ConnState.CLOSED:
            # Declared there behind heals_on_use: taken exactly when the cycle gave up
            # or the server shut down.
            declared = config.close_reason in (CloseReason.GAVE_UP, CloseReason.SHUTDOWN)
        assert accepted is declared, f"{event} in {config}: accepted={accepted}"
        seen.add((config, event))
    engine_events = [
        e for e in EVENTS if e not in NOT_ENGINE and e != "request" and not e.startswith("retry")
    ]
    assert len(seen) == graph.configurations * len(engine_events)


def test_retry_is_a_no_op_wherever_no_timer_runs() -> None:
    """A retry outside BACKING_OFF (a cancelled timer firing anyway) is accepted, does nothing."""
    graph = explore(MAX_ATTEMPTS[0])
    retries = [e for e in graph.edges if e.event == "retry"]
    assert {e.source for e in retries} == set(graph.paths)
    for edge in retries:
        if edge.source.phase is not Phase.BACKING_OFF:
            assert edge.effects == [] and edge.target == edge.source, edge


def test_request_heals_exactly_the_closed_states_the_table_says() -> None:
    """request starts a new cycle from CLOSED(GAVE_UP/SHUTDOWN) and is refused in every other
    CLOSED reason and in CLOSING (DESIGN.md section 3)."""
    graph = explore(MAX_ATTEMPTS[0])
    healed = {e.source.close_reason for e in graph.edges
              if e.event == "request" and e.source.state is ConnState.CLOSED}  # fmt: skip
    refused = {(c.state, c.close_reason) for c, event in graph.refused if event == "request"}
    assert healed == {CloseReason.GAVE_UP, CloseReason.SHUTDOWN}
    assert refused == {
        (ConnState.CLOSING, None),
        (ConnState.CLOSED, CloseReason.USER),
        (ConnState.CLOSED, CloseReason.REJECTED),
        (ConnState.CLOSED, CloseReason.ERROR),
    }


def test_nothing_is_dialed_before_the_first_connect_or_request() -> None:
    """Invariant 7 (core part): the first Dial of every path comes from connect or request."""
    graph = explore(MAX_ATTEMPTS[0])
    for config, path in graph.paths.items():
        lc = ConnectionLifecycle(
            graph.policy, random.Random(0), max_frame_size=FRAME_LIMIT, log_transitions=False
        )
        for n, event in enumerate(path):
            started = not lc.is_not_started
            outcome = apply(lc, event, n)
            dials = [e for e in outcome.effects if isinstance(e, Dial | Backoff)]
            if not started and dials:
                assert event.split("(")[0] in ("connect", "request"), (config, path)
            if not started and lc.is_not_started:
                # Edits alone never even build the engine.
                assert lc._machine is None, (config, path)


def normalised(effect: Effect) -> object:
    """An effect without what depends on a lifecycle's history (jitter draws, edit numbers)."""
    if isinstance(effect, Backoff):
        return ("Backoff", effect.attempt)
    if isinstance(effect, Flush):
        return ("Flush", tuple(effect.batch.codes), len(effect.batch.frames))
    if isinstance(effect, SendEdit):
        return ("SendEdit", effect.cell_id)
    return effect


def test_cloning_and_replaying_explore_the_same_graph() -> None:
    """Entering configurations by deep copy gives exactly the graph that replaying paths gives."""
    small = MAX_ATTEMPTS[0]
    replayed, cloned = explore(small, "replay"), explore(small, "clone")

    def edges(graph: Graph) -> list[tuple[Any, ...]]:
        return [
            (e.source, e.event, e.target, [normalised(x) for x in e.effects]) for e in graph.edges
        ]

    assert edges(cloned) == edges(replayed)
    assert cloned.refused == replayed.refused
    assert cloned.paths == replayed.paths
    assert cloned.taken == replayed.taken


def test_a_lifecycle_cannot_simply_be_deep_copied() -> None:
    """copy.deepcopy of a started lifecycle fails: hence the exploration replays or clones."""
    lc = ConnectionLifecycle(RetryPolicy(max_attempts=4), random.Random(0), log_transitions=False)
    lc.connect()
    try:
        copied = copy.deepcopy(lc)
    except AttributeError:
        return  # python-statemachine re-evaluates guards on a half-copied owner
    # Should a future version copy cleanly, the copy must at least be independent.
    copied.fail()
    assert lc.phase is Phase.DIALING and copied.phase is Phase.BACKING_OFF


if __name__ == "__main__":
    for attempts in MAX_ATTEMPTS:
        print(summary(attempts))
    replayed = Explorer(RetryPolicy(max_attempts=MAX_ATTEMPTS[-1]), "replay").run()
    print(
        f"(max_attempts={MAX_ATTEMPTS[-1]} by replay instead: {replayed.seconds:.2f} s,"
        f" {replayed.cpu_seconds:.2f} s CPU)"
    )
