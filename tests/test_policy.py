"""Tests of RetryPolicy: defaults, validation, and the pure back-off schedule."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fsm import RetryPolicy
from fsm.core._policy import check_draw

FIELDS = (
    "max_attempts",
    "initial_delay",
    "multiplier",
    "max_delay",
    "jitter",
    "connect_timeout",
    "min_uptime",
    "max_retry_after",
)

# Field values that are never valid, whatever the field.
NEVER_VALID: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    "1",
    None,
    [1],
    -1,
    -0.5,
]
# Zero is invalid for every field but jitter.
ZERO_INVALID = [f for f in FIELDS if f != "jitter"]


@st.composite
def policies(draw: st.DrawFn, max_attempts: st.SearchStrategy[int] | None = None) -> RetryPolicy:
    """Any valid RetryPolicy."""
    initial = draw(st.floats(min_value=1e-3, max_value=100.0))
    return RetryPolicy(
        max_attempts=draw(
            max_attempts if max_attempts is not None else st.integers(min_value=1, max_value=60)
        ),
        initial_delay=initial,
        multiplier=draw(st.floats(min_value=1.0, max_value=10.0)),
        max_delay=initial * draw(st.floats(min_value=1.0, max_value=1e4)),
        jitter=draw(st.floats(min_value=0.0, max_value=1.0)),
        connect_timeout=draw(st.floats(min_value=1e-3, max_value=600.0)),
        min_uptime=draw(st.floats(min_value=1e-3, max_value=600.0)),
    )


# -- defaults ----------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    """Defaults: 25 attempts, 1 s x1.6 up to 10 s, full jitter, 10 s per attempt, 5 s uptime."""
    policy = RetryPolicy()
    assert policy.max_attempts == 25
    assert policy.initial_delay == 1.0
    assert policy.multiplier == 1.6
    assert policy.max_delay == 10.0
    assert policy.jitter == 1.0
    assert policy.connect_timeout == 10.0
    assert policy.min_uptime == 5.0
    assert policy.max_retry_after == 120.0


def test_default_schedule_is_bounded() -> None:
    """The default schedule has 24 waits from 1 s up to 10 s, at most about 3.5 minutes in all."""
    delays = RetryPolicy().delays()
    assert len(delays) == 24
    assert delays[0] == 1.0
    assert delays[1] == pytest.approx(1.6)
    assert delays[-1] == 10.0
    assert sum(delays) <= 3.5 * 60


def test_policy_is_frozen() -> None:
    """A RetryPolicy cannot be changed after it is made."""
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]


def test_policies_compare_by_value() -> None:
    """Two policies with the same fields are equal and hash alike."""
    assert RetryPolicy(max_attempts=3) == RetryPolicy(max_attempts=3)
    assert hash(RetryPolicy(max_attempts=3)) == hash(RetryPolicy(max_attempts=3))
    assert RetryPolicy(max_attempts=3) != RetryPolicy(max_attempts=4)


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", NEVER_VALID, ids=repr)
def test_invalid_values_raise_value_error_naming_the_field(field: str, value: Any) -> None:
    """NaN, infinities, bools, non-numbers and negatives raise ValueError naming the field."""
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: value})


@pytest.mark.parametrize("field", ZERO_INVALID)
def test_zero_is_invalid_except_for_jitter(field: str) -> None:
    """Zero raises ValueError naming the field for every field but jitter."""
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: 0})


@pytest.mark.parametrize("value", [2.5, 25.0])
def test_max_attempts_must_be_an_integer(value: float) -> None:
    """A float max_attempts raises ValueError naming max_attempts, even when it is whole."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999999])
def test_multiplier_below_one_is_invalid(value: float) -> None:
    """A multiplier below 1 (a shrinking back-off) raises ValueError naming multiplier."""
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=value)


def test_max_delay_below_initial_delay_is_invalid() -> None:
    """max_delay below initial_delay raises ValueError naming both fields."""
    with pytest.raises(ValueError, match="max_delay") as info:
        RetryPolicy(initial_delay=5.0, max_delay=1.0)
    assert "initial_delay" in str(info.value)


@pytest.mark.parametrize("value", [-0.01, 1.01, 2.0])
def test_jitter_outside_the_unit_interval_is_invalid(value: float) -> None:
    """jitter outside [0, 1] raises ValueError naming jitter."""
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"multiplier": 1.0},
        {"initial_delay": 2.0, "max_delay": 2.0},
        {"max_attempts": 1},
        {"connect_timeout": 1e-6, "min_uptime": 1e-6},
    ],
    ids=repr,
)
def test_boundary_values_are_valid(kwargs: dict[str, Any]) -> None:
    """The edges of each valid range are accepted."""
    policy = RetryPolicy(**kwargs)
    for name, value in kwargs.items():
        assert getattr(policy, name) == value


@given(
    field=st.sampled_from(ZERO_INVALID),
    value=st.floats(max_value=0.0) | st.integers(max_value=0),
)
def test_any_non_positive_value_is_rejected(field: str, value: Any) -> None:
    """Any value <= 0 for a field that must be positive raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: value})


def test_nominal_delay_needs_a_positive_failure_count() -> None:
    """nominal_delay(0) raises ValueError: the first wait follows the first failure."""
    with pytest.raises(ValueError, match="failures"):
        RetryPolicy().nominal_delay(0)


# -- the schedule ------------------------------------------------------------------------


@given(policies())
def test_delays_is_pure(policy: RetryPolicy) -> None:
    """delays() without an rng returns the same schedule every time."""
    assert policy.delays() == policy.delays()


@given(policies())
def test_delays_has_one_wait_per_failure_but_the_last(policy: RetryPolicy) -> None:
    """delays() has max_attempts - 1 entries, with or without an rng."""
    assert len(policy.delays()) == policy.max_attempts - 1
    assert len(policy.delays(random.Random(0))) == policy.max_attempts - 1


@given(policies())
def test_nominal_delays_are_non_decreasing_and_capped(policy: RetryPolicy) -> None:
    """Without an rng the waits never shrink and stay within [initial_delay, max_delay]."""
    delays = policy.delays()
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert all(policy.initial_delay <= d <= policy.max_delay for d in delays)
    if delays:
        assert delays[0] == policy.initial_delay


@given(policies(), st.integers(min_value=0, max_value=2**64))
def test_jittered_delays_lie_within_the_jitter_band(policy: RetryPolicy, seed: int) -> None:
    """With an rng each wait lies within [(1 - jitter) * nominal, nominal]."""
    nominal = policy.delays()
    jittered = policy.delays(random.Random(seed))
    for d, n in zip(jittered, nominal, strict=True):
        low = (1 - policy.jitter) * n
        assert low * (1 - 1e-12) <= d <= n


@given(policies(), st.integers(min_value=0, max_value=2**64))
def test_jittered_delays_are_deterministic_given_a_seed(policy: RetryPolicy, seed: int) -> None:
    """Two random.Random(seed) with the same seed give the same jittered schedule."""
    assert policy.delays(random.Random(seed)) == policy.delays(random.Random(seed))


@given(policies(max_attempts=st.integers(min_value=2, max_value=60)))
def test_zero_jitter_ignores_the_rng(policy: RetryPolicy) -> None:
    """With jitter 0 the rng changes nothing: the schedule is the nominal one."""
    policy = dataclasses.replace(policy, jitter=0.0)
    assert policy.delays(random.Random(1)) == policy.delays()


@given(policies(), st.integers(min_value=0, max_value=2**32))
def test_delays_never_touch_the_global_random(policy: RetryPolicy, seed: int) -> None:
    """delays() with or without an rng leaves the global random state as it was."""
    state = random.getstate()
    policy.delays()
    policy.delays(random.Random(seed))
    assert random.getstate() == state


def test_full_jitter_draws_differ_by_seed() -> None:
    """With full jitter two different seeds give different schedules (the rng is used)."""
    policy = RetryPolicy()
    assert policy.delays(random.Random(1)) != policy.delays(random.Random(2))


# Regression: multiplier ** min(failures - 1, 1000) overflows for multiplier > ~2.03.
@given(policies(), st.integers(min_value=1, max_value=10**6))
@example(RetryPolicy(multiplier=3.0), 1001)
@example(RetryPolicy(multiplier=1e300), 3)
def test_nominal_delay_never_overflows(policy: RetryPolicy, failures: int) -> None:
    """nominal_delay lies within [initial_delay, max_delay] for any failure count, never raising."""
    delay = policy.nominal_delay(failures)
    assert policy.initial_delay <= delay <= policy.max_delay
    assert math.isfinite(delay)


# Regression: multiplier ** min(failures - 1, 1000) overflows for multiplier > ~2.03.
def test_long_schedules_with_a_steep_multiplier_are_capped() -> None:
    """A long cycle with multiplier 3 ends at max_delay instead of overflowing."""
    delays = RetryPolicy(max_attempts=1100, multiplier=3.0).delays()
    assert delays[-1] == 10.0


# -- Retry-After and the rng's draws ---------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 2.0), (0.0, 2.0), (1.5, 2.0), (30.0, 30.0), (120.0, 120.0), (3600.0, 120.0)],
)
def test_retry_after_raises_the_wait_up_to_its_cap(
    retry_after: float | None, expected: float
) -> None:
    """A Retry-After raises the scheduled wait to at least itself, never past max_retry_after."""
    assert RetryPolicy().honour_retry_after(2.0, retry_after) == expected


def test_jittered_is_backoff_for_a_given_draw() -> None:
    """jittered(n, u) is the wait backoff(n, rng) draws when rng.random() returns u."""
    policy = RetryPolicy()
    for n in range(1, 8):
        rng = random.Random(n)
        u = random.Random(n).random()
        assert policy.backoff(n, rng) == policy.jittered(n, u)


@pytest.mark.parametrize("draw", [0.0, 0.5, math.nextafter(1.0, 0.0), 0])
def test_a_draw_in_the_unit_interval_is_usable(draw: float) -> None:
    """check_draw accepts every real number in [0, 1)."""
    assert check_draw(draw) is None


@pytest.mark.parametrize("draw", [1.0, 2.0, -0.1, float("nan"), float("inf"), True, "0.5", None])
def test_a_draw_outside_the_unit_interval_is_named(draw: object) -> None:
    """check_draw names what rng.random() returned and what it must return."""
    problem = check_draw(draw)
    assert problem == f"rng.random() returned {draw!r}; it must return a float in [0, 1)"


@pytest.mark.parametrize("draw", [2.0, float("nan"), -1.0])
def test_backoff_refuses_a_bad_draw_instead_of_a_bad_wait(draw: float) -> None:
    """backoff raises ValueError naming the draw rather than return a negative or NaN wait."""

    class Broken(random.Random):
        def random(self) -> float:
            return draw

    with pytest.raises(ValueError, match="must return a float in"):
        RetryPolicy().backoff(1, Broken())
