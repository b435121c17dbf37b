"""The fast path agrees with a plain per-instance python-statemachine engine, everywhere.

A lifecycle normally builds no engine: its events go to the one engine of
``_LifecycleMachine`` shared by every lifecycle, through the cache of that engine's
decisions (``fsm._engine``). A lifecycle whose ``machine`` was asked for drives its own
engine instead: plain python-statemachine, no cache. The exhaustive check below takes
every configuration the model check reaches (``tests/test_model_check.py``, both of its
policies) and every input of the model check, and applies the input three times to the
same state: through the fast path twice (the first may be a miss, which the shared
engine decides and the cache records; the second is then a hit) and through a plain
per-instance engine. All three must agree on everything a caller or the driver can
see: the effects returned, in order; the error raised (type, message, allowed events);
the observer records; and the whole state of the lifecycle afterwards, down to its
edit buffer and its rng (so the same draws were made). A hypothesis test does the same
along random event sequences, and two tests use lifecycles from two threads at once.
"""

from __future__ import annotations

import pickle
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_model_check import EVENTS, MAX_ATTEMPTS, Config, apply, config_of, explore

import fsm.lifecycle
from fsm import ConnectionLifecycle, InvalidTransition, Phase, RetryPolicy, Transition
from fsm._engine import DecisionCache
from fsm._machine import _LifecycleMachine

# Not part of a lifecycle's own state: its engine, its observers, its (frozen) policy.
_NOT_STATE = ("_machine", "observers", "policy")


@pytest.fixture
def cache() -> Iterator[DecisionCache]:
    """A fresh decision cache for the fast path, so that misses and hits both happen."""
    fresh = DecisionCache(_LifecycleMachine, ConnectionLifecycle(log_transitions=False))
    saved = list(fsm.lifecycle._load_decisions())
    fsm.lifecycle._DECISIONS[0] = fresh
    try:
        yield fresh
    finally:
        fsm.lifecycle._DECISIONS[:] = saved


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


def state_of(lc: ConnectionLifecycle) -> Any:
    """Everything the lifecycle holds, but its engine and observers, as comparable bytes.

    Both sides start from the same bytes and run the same callbacks, so equal states
    pickle to equal bytes; :func:`plain` shows the difference when they do not.
    """
    fields = {k: v for k, v in vars(lc).items() if k not in _NOT_STATE and k != "_rng"}
    return pickle.dumps((fields, lc._rng.getstate()))


def dump(lc: ConnectionLifecycle) -> bytes:
    return state_of(lc)


def load(lc: ConnectionLifecycle, blob: bytes, records: list[Transition]) -> ConnectionLifecycle:
    """Put ``lc`` in the state ``blob`` holds (a per-instance engine follows ``lc._config``)."""
    rng = lc._rng
    for name in [k for k in vars(lc) if k not in _NOT_STATE]:
        delattr(lc, name)
    fields, rng_state = pickle.loads(blob)
    vars(lc).update(fields)
    rng.setstate(rng_state)
    lc._rng = rng
    lc.observers = [records.append]
    return lc


def outcome_of(lc: ConnectionLifecycle, event: str, n: int) -> Any:
    """What applying ``event`` did: effects or error (with its message and fields)."""
    outcome = apply(lc, event, n)
    error = outcome.error
    if error is None:
        return ("ok", plain(outcome.effects))
    fields: tuple[Any, ...] = ()
    if isinstance(error, InvalidTransition):
        fields = (error.event, error.state, error.allowed)
    return ("error", type(error).__name__, str(error), plain(fields))


class Trial:
    """Two fast-path lifecycles and one with its own engine, reloaded for every input."""

    def __init__(self, policy: RetryPolicy) -> None:
        def new() -> ConnectionLifecycle:
            return ConnectionLifecycle(policy, random.Random(0), log_transitions=False)

        self.fast = [new(), new()]
        self.reference = new()
        assert self.reference.machine is not None  # builds its own engine: plain path
        assert all(lc._machine is None for lc in self.fast)

    def compare(self, cache: DecisionCache, blob: bytes, event: str, n: int) -> None:
        results = []
        for i, lc in enumerate([*self.fast, self.reference]):
            records: list[Transition] = []
            load(lc, blob, records)
            misses = cache.misses
            outcome = outcome_of(lc, event, n)
            if i == 1:
                assert cache.misses == misses, f"{event}: the same decision missed twice"
            results.append((outcome, plain(records), state_of(lc)))
        where = f"{config_of(self.reference)} after {event}"
        fast_first, fast_again, reference = results
        for name, result in (("fast path", fast_first), ("fast path (cached)", fast_again)):
            for part, mine, theirs in zip(("outcome", "records", "state"), result, reference,
                                          strict=True):
                if part == "state" and mine != theirs:
                    mine, theirs = plain(pickle.loads(mine)), plain(pickle.loads(theirs))
                assert mine == theirs, f"{where}: {name} {part} differs from the engine's"
        assert self.reference._machine is not None
        assert all(lc._machine is None for lc in self.fast)


def states_by_config(max_attempts: int) -> tuple[RetryPolicy, dict[Config, bytes]]:
    """The state of a lifecycle in each reachable configuration, reached by its path."""
    graph = explore(max_attempts)
    by_path = {path: config for config, path in graph.paths.items()}
    lc = ConnectionLifecycle(graph.policy, random.Random(0), log_transitions=False)
    blobs: dict[Config, bytes] = {config_of(lc): dump(lc)}
    assert set(blobs) == {by_path[()]}
    for path, config in sorted(by_path.items(), key=lambda item: len(item[0])):
        if not path:
            continue
        load(lc, blobs[by_path[path[:-1]]], [])
        outcome = apply(lc, path[-1], len(path) - 1)
        assert outcome.error is None and config_of(lc) == config, (path, config_of(lc))
        blobs[config] = dump(lc)
    return graph.policy, blobs


@pytest.mark.parametrize("max_attempts", MAX_ATTEMPTS)
def test_the_fast_path_agrees_with_a_per_instance_engine_everywhere(
    cache: DecisionCache, max_attempts: int
) -> None:
    """In every reachable configuration, every input does exactly what a plain engine does."""
    policy, blobs = states_by_config(max_attempts)
    trial = Trial(policy)
    compared = 0
    for _, blob in sorted(blobs.items()):
        for event in EVENTS:
            trial.compare(cache, blob, event, 10**6 + compared)
            compared += 1
    print(
        f"\nengine equivalence, max_attempts={max_attempts}: {len(blobs)} configurations x "
        f"{len(EVENTS)} inputs = {compared} compared; decision cache: {cache.misses} misses, "
        f"{cache.hits} hits, {len(cache.roots)} keys"
    )
    assert compared == len(blobs) * len(EVENTS) == explore(max_attempts).configurations * len(
        EVENTS
    )
    # Every decision of this machine can be cached: nothing falls back to the engine.
    assert cache.uncacheable == set()
    assert cache.hits > cache.misses > 0


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
    fast_records: list[Transition] = []
    reference_records: list[Transition] = []
    fast.observers.append(fast_records.append)
    reference.observers.append(reference_records.append)
    for n, event in enumerate(events):
        assert outcome_of(fast, event, n) == outcome_of(reference, event, n), (n, event)
        mine, theirs = state_of(fast), state_of(reference)
        if mine != theirs:
            assert plain(pickle.loads(mine)) == plain(pickle.loads(theirs)), (n, event)
    assert plain(fast_records) == plain(reference_records)
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
    """Each event is atomic: fails and retries from two threads alternate, none is lost."""
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
