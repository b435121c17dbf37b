"""The fast path agrees with a plain per-instance python-statemachine engine, everywhere.

A lifecycle normally builds no engine: its events go to the one engine of
``_LifecycleMachine`` shared by every lifecycle, through the cache of that engine's
decisions (``fsm.core._engine``). A lifecycle whose ``machine`` was asked for drives its own
engine instead: plain python-statemachine, no cache; the model check's lifecycles do.

The exhaustive check runs the model check's own exploration (``tests/test_model_check.py``,
both of its policies, with all of its checks) and, at every input it applies to one of
its lifecycles, applies the same input to a fast-path twin loaded with that lifecycle's
exact state. Every (reachable configuration, input) pair is thus compared, on the
engine's own reachable states, for everything a caller or the driver can see: the
effects returned, in order; the error raised (type, message, allowed events); the
observer records; and the whole state of the lifecycle afterwards, down to its edit
buffer and its rng (so the same draws were made). A decision the twin's cache missed
is applied once more and must then hit, and agree. A hypothesis test does the same
along random event sequences, and two tests use lifecycles from two threads at once.
"""

from __future__ import annotations

import io
import pickle
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import test_model_check
from hypothesis import given
from hypothesis import strategies as st
from test_model_check import (
    EVENTS,
    FORK_BY,
    MAX_ATTEMPTS,
    Config,
    Explorer,
    Outcome,
    apply,
    config_of,
)

import fsm.lifecycle
from fsm import ConnectionLifecycle, InvalidTransition, Phase, RetryPolicy, Transition
from fsm.core._engine import DecisionCache
from fsm.core._machine import _LifecycleMachine

# Not part of a lifecycle's own state: its engine, its observers, its (frozen) policy.
_NOT_STATE = ("_machine", "observers", "policy")


@pytest.fixture
def cache() -> Iterator[DecisionCache]:
    """A fresh decision cache for the fast path, so that misses and hits both happen."""
    fresh = DecisionCache(_LifecycleMachine, ConnectionLifecycle(log_transitions=False))
    saved = list(fsm.core._lifecycle._load_decisions())
    fsm.core._lifecycle._DECISIONS[0] = fresh
    try:
        yield fresh
    finally:
        fsm.core._lifecycle._DECISIONS[:] = saved


def plain(value: Any) -> Any:
    """A structural copy of ``value`` that compares by content (objects by their fields)."""
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, random.Random):
        return value.getstate()  # a tuple of numbers: the same draws are still to come
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    fields: dict[str, Any] = {}
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(value, name):
                fields[name] = getattr(value, name)
    fields.update(getattr(value, "__dict__", {}))
    return (type(value).__name__, {k: plain(v) for k, v in sorted(fields.items())})


def dumps(value: Any) -> bytes:
    """Pickle without the memo: equal content, equal bytes, whatever objects are shared."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(value)
    return out.getvalue()


def state_of(lc: ConnectionLifecycle) -> bytes:
    """Everything the lifecycle holds, but its engine and observers, as comparable bytes.

    Both sides start from the same bytes and run the same callbacks, so equal states
    pickle to equal bytes; :func:`plain` shows the difference when they do not. A
    ``random.Random`` is kept as its state (what it will draw next).
    """
    fields = {k: v for k, v in vars(lc).items() if k not in _NOT_STATE}
    rng = fields.pop("_rng")
    drawn = ("random", rng.getstate()) if isinstance(rng, random.Random) else ("object", rng)
    return dumps((fields, drawn))


def dump(lc: ConnectionLifecycle) -> bytes:
    return state_of(lc)


def load(lc: ConnectionLifecycle, blob: bytes, records: list[Transition]) -> ConnectionLifecycle:
    """Put ``lc`` in the state ``blob`` holds (a per-instance engine follows ``lc._config``)."""
    rng = lc._rng
    for name in [k for k in vars(lc) if k not in _NOT_STATE]:
        delattr(lc, name)
    fields, (kind, drawn) = pickle.loads(blob)
    vars(lc).update(fields)
    if kind == "random":
        if not isinstance(rng, random.Random):
            rng = random.Random()
        rng.setstate(drawn)
        lc._rng = rng
    else:
        lc._rng = drawn
    lc.observers = [records.append]
    return lc


def described(outcome: Outcome, records: list[Transition]) -> bytes:
    """What an input did (effects, or the error with its message and fields) and the
    observer records, as comparable bytes (:func:`plain` shows a difference)."""
    error = outcome.error
    fields: tuple[Any, ...] = ()
    if isinstance(error, InvalidTransition):
        fields = (error.event, error.state, error.allowed)
    if error is None:
        what: tuple[Any, ...] = ("ok", outcome.effects)
    else:
        what = ("error", type(error).__name__, str(error), fields)
    return dumps((what, records))


def outcome_of(lc: ConnectionLifecycle, event: str, n: int) -> bytes:
    records: list[Transition] = []
    observers, lc.observers = lc.observers, [records.append]
    try:
        return described(apply(lc, event, n), records)
    finally:
        lc.observers = observers


class Twin:
    """Stands in for the model check's ``apply``: the same input on a fast-path twin too."""

    def __init__(self, cache: DecisionCache) -> None:
        self.cache = cache
        self.fast: ConnectionLifecycle | None = None
        self.pairs: set[tuple[Config, str]] = set()
        self.compared = 0
        self.replayed_misses = 0
        self.inside = False

    def apply(self, lc: ConnectionLifecycle, event: str, n: int) -> Outcome:
        if self.inside:
            return apply(lc, event, n)  # an input the model check composes of others
        self.inside = True
        try:
            return self._compare(lc, event, n)
        finally:
            self.inside = False

    def _compare(self, lc: ConnectionLifecycle, event: str, n: int) -> Outcome:
        assert lc._machine is not None, "the model check's lifecycles have their own engine"
        before = state_of(lc)
        config = config_of(lc)
        fast = self.fast
        if fast is None or fast.policy is not lc.policy:
            fast = self.fast = ConnectionLifecycle(lc.policy, log_transitions=False)
        load(fast, before, [])
        misses = self.cache.misses
        fast_after = (outcome_of(fast, event, n), state_of(fast))
        if self.cache.misses != misses:
            # The shared engine decided this one: its recorded decision must replay alike.
            load(fast, before, [])
            misses = self.cache.misses
            replayed = (outcome_of(fast, event, n), state_of(fast))
            assert self.cache.misses == misses, f"{config} {event}: missed twice"
            assert replayed == fast_after, f"{config} {event}: the replay differs"
            self.replayed_misses += 1
        assert fast._machine is None
        theirs: list[Transition] = []
        observers, lc.observers = lc.observers, [theirs.append]
        try:
            outcome = apply(lc, event, n)
        finally:
            lc.observers = observers
        reference = (described(outcome, theirs), state_of(lc))
        where = f"{config} --{event}-->"
        for part, mine, expected in zip(("outcome and records", "state"), fast_after, reference,
                                        strict=True):
            if mine != expected:
                assert plain(pickle.loads(mine)) == plain(pickle.loads(expected)), (
                    f"{where} the fast path's {part} differs from the engine's"
                )
        self.compared += 1
        self.pairs.add((config, event))
        return outcome


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_the_fast_path_agrees_with_a_per_instance_engine_everywhere(
    cache: DecisionCache, monkeypatch: pytest.MonkeyPatch, max_attempts: int
) -> None:
    """In every reachable configuration, every input does exactly what a plain engine does."""
    twin = Twin(cache)
    monkeypatch.setattr(test_model_check, "apply", twin.apply)
    graph = Explorer(RetryPolicy(max_attempts=max_attempts), FORK_BY[max_attempts]).run()
    pairs = {(edge.source, edge.event) for edge in graph.edges} | set(graph.refused)
    print(
        f"\nengine equivalence, max_attempts={max_attempts}: {graph.configurations} "
        f"configurations x {len(EVENTS)} inputs = {len(pairs)} pairs compared "
        f"({twin.compared} inputs in all, path replays included); decision cache: "
        f"{cache.misses} misses (each replayed at once), {cache.hits} hits, "
        f"{len(cache.roots)} keys"
    )
    assert len(pairs) == graph.configurations * len(EVENTS)
    assert pairs <= twin.pairs
    assert twin.replayed_misses == cache.misses > 0
    # Every decision of this machine can be cached: nothing falls back to the engine.
    assert cache.uncacheable == set()
    assert cache.hits > 10 * cache.misses


@given(
    max_attempts=st.sampled_from([1, 2, *MAX_ATTEMPTS]),
    seed=st.integers(0, 2**32 - 1),
    events=st.lists(st.sampled_from(EVENTS), max_size=60),
)
def test_random_event_sequences_agree_with_a_per_instance_engine(
    max_attempts: int, seed: int, events: list[str]
) -> None:
    """Along any sequence of inputs, the fast path and a plain engine stay identical."""
    policy = RetryPolicy(max_attempts=max_attempts)
    fast = ConnectionLifecycle(policy, random.Random(seed), log_transitions=False)
    reference = ConnectionLifecycle(policy, random.Random(seed), log_transitions=False)
    reference.machine  # noqa: B018 - builds its own engine
    for n, event in enumerate(events):
        for mine, theirs in (
            (outcome_of(fast, event, n), outcome_of(reference, event, n)),  # and the records
            (state_of(fast), state_of(reference)),
        ):
            if mine != theirs:
                assert plain(pickle.loads(mine)) == plain(pickle.loads(theirs)), (n, event)
    assert fast._machine is None


def _run_script(lc: ConnectionLifecycle, rounds: int) -> list[Any]:
    outcomes = []
    for n in range(rounds):
        for event in ("connect", "fail", "retry", "ready", "edit", "drop(uptime>=min)", "ack",
                      "retry", "ready", "close", "close_finished"):
            outcomes.append(outcome_of(lc, event, n))
    return outcomes


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    """Let threads switch every microsecond, so that any unguarded step interleaves."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def test_lifecycles_in_two_threads_share_the_engine_safely(tiny_switch_interval: None) -> None:
    """Two threads driving their own lifecycles at once each get the single-threaded result."""
    rounds = 300

    def new() -> ConnectionLifecycle:
        return ConnectionLifecycle(RetryPolicy(max_attempts=3), random.Random(7),
                                   log_transitions=False)

    expected = _run_script(new(), rounds)
    results: dict[int, list[Any]] = {}
    lifecycles = {i: new() for i in range(2)}

    def work(i: int) -> None:
        results[i] = _run_script(lifecycles[i], rounds)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == expected
    assert results[1] == expected
    assert state_of(lifecycles[0]) == state_of(lifecycles[1])


def test_one_lifecycle_used_from_two_threads_at_once_stays_consistent(
    tiny_switch_interval: None,
) -> None:
    """Each event is atomic: fails and retries from two threads alternate, none is lost, and a
    retry that loses the race to the other thread's is a no-op, never an error."""
    lc = ConnectionLifecycle(RetryPolicy(max_attempts=10**9), random.Random(0),
                             log_transitions=False)
    records: list[Transition] = []
    lock = threading.Lock()

    def observe(change: Transition) -> None:
        with lock:
            records.append(change)

    lc.observers.append(observe)
    lc.connect()
    counts = {"fail": 0, "retry": 0}
    effects: dict[str, list[Any]] = {"fail": [], "retry": []}

    def work() -> None:
        for _ in range(3000):
            for event in ("fail", "retry"):
                try:
                    got = getattr(lc, event)()
                except InvalidTransition:
                    continue
                if not got:  # a retry outside BACKING_OFF: a stale timer, a documented no-op
                    continue
                with lock:
                    counts[event] += 1
                    effects[event].append(got)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backing_off = lc.phase is Phase.BACKING_OFF
    assert counts["fail"] == counts["retry"] + (1 if backing_off else 0)
    assert lc.attempts == counts["fail"]
    assert len(records) == 1 + counts["fail"] + counts["retry"]
    # Every successful fail scheduled one back-off, every retry dialed the next attempt.
    assert sorted(e[0].attempt for e in effects["fail"]) == list(range(1, counts["fail"] + 1))
    assert sorted(e[0].attempt for e in effects["retry"]) == list(range(2, counts["retry"] + 2))


def test_an_event_sent_from_inside_a_step_is_decided_by_a_private_engine() -> None:
    """A callback that drives another lifecycle mid-step gets that event decided correctly."""
    other = ConnectionLifecycle(RetryPolicy(), random.Random(1), log_transitions=False)
    nested: list[Any] = []

    class Meddling(random.Random):
        def random(self) -> float:
            if not nested:  # the first jitter draw, inside the shared engine's step
                nested.append(other.connect())
            return super().random()

    lc = ConnectionLifecycle(RetryPolicy(), Meddling(0), log_transitions=False)
    reference = ConnectionLifecycle(RetryPolicy(), random.Random(1), log_transitions=False)
    reference.machine  # noqa: B018 - builds its own engine
    expected = reference.connect()
    effects = lc.connect()
    assert nested == [expected] and other.state is reference.state
    assert state_of(other) == state_of(reference)
    assert [type(e).__name__ for e in effects] == ["Dial"] and lc.phase is Phase.DIALING
    assert lc._machine is None and other._machine is None
