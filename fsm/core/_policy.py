"""The retry policy: how often, how long between, and how long each attempt may take."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a connection cycle retries, and when it gives up.

    The defaults are chosen against published anchors (all times in seconds):

    ``max_attempts = 25``
        The seed's health check gives up after 25 tries; gRPC never gives up. We keep
        the seed's bound so that a dead server ends in ``CLOSED(GAVE_UP)``, which the
        user can always leave with ``connect()``.
    ``initial_delay = 1.0``
        gRPC's initial backoff. With full jitter the first wait is 0.5 s on average;
        a smaller first step (the seed's 100 ms, our earlier 0.5 s) packs the first
        retries of many clients that lost the same server into a shorter window
        (see the reconnect storm in ``docs/benchmarks.md``).
    ``multiplier = 1.6``
        gRPC's factor; websockets uses 1.618, the seed 1.2, partysocket 1.3.
    ``max_delay = 10.0``
        partysocket's cap; gRPC (120 s) and websockets (90 s) cap much later, which
        leaves a person staring at "connecting" for minutes. With these values the
        whole schedule of 24 waits is at most about 3.4 minutes (half that on average).
    ``jitter = 1.0``
        Full jitter: each delay is drawn uniformly from ``[(1 - jitter) * d, d]``
        where ``d`` is the nominal delay. AWS's study of backoff found full jitter
        halves the work of contending clients against no jitter; gRPC uses ±0.2.
        ``0`` disables jitter (deterministic delays).
    ``connect_timeout = 10.0``
        One attempt (health check, handshake and the ready frame together).
        websockets' open_timeout is 10 s, gRPC's minimum connect time-out 20 s,
        partysocket's 4 s.
    ``min_uptime = 5.0``
        partysocket's value: a connection that stays OPEN this long resets the attempt
        count when it is lost; one dropped sooner counts as a failed attempt, so a
        server that accepts and drops at once still ends in ``GAVE_UP``.
    ``max_retry_after = 120.0``
        The longest wait a server's ``Retry-After`` (on a 408, 429 or 5xx handshake) may
        impose: the wait after such a failure is ``max(schedule delay, min(retry_after,
        max_retry_after))``. A server's request is honoured, but a misconfigured one
        (``Retry-After: 86400``) cannot park a client for a day; 120 s is gRPC's cap. A
        person can always cut the wait short with ``connect()``.

    Invalid values raise :class:`ValueError` naming the field.
    """

    max_attempts: int = 25
    initial_delay: float = 1.0
    multiplier: float = 1.6
    max_delay: float = 10.0
    jitter: float = 1.0
    connect_timeout: float = 10.0
    min_uptime: float = 5.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"RetryPolicy.{field.name} must be a number, got {value!r}"
                )
            if not math.isfinite(value):
                raise ValueError(f"RetryPolicy.{field.name} must be finite, got {value!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be an integer >= 1, got {self.max_attempts!r}"
            )
        for name in ("initial_delay", "max_delay", "connect_timeout", "min_uptime",
                     "max_retry_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RetryPolicy.{name} must be > 0, got {getattr(self, name)!r}")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"RetryPolicy.max_delay ({self.max_delay!r}) must be >= "
                f"initial_delay ({self.initial_delay!r})"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter!r}")

    def nominal_delay(self, failures: int) -> float:
        """The un-jittered wait after the ``failures``-th failed attempt (1-based)."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures!r}")
        try:
            growth = self.multiplier ** (failures - 1)
        except OverflowError:  # 3.0 ** 1000 overflows a float: far past any cap
            return self.max_delay
        return min(self.max_delay, self.initial_delay * growth)

    def backoff(self, failures: int, rng: random.Random | None) -> float:
        """The wait after the ``failures``-th failed attempt, jittered by ``rng`` if given.

        Raises :class:`ValueError` when ``rng.random()`` gives anything but a number in
        [0, 1) (see :func:`check_draw`).
        """
        if rng is None or self.jitter == 0:
            return self.nominal_delay(failures)
        draw = rng.random()
        problem = check_draw(draw)
        if problem is not None:
            raise ValueError(problem)
        return self.jittered(failures, draw)

    def jittered(self, failures: int, draw: float) -> float:
        """The wait after the ``failures``-th failed attempt for a uniform ``draw`` in [0, 1)."""
        return self.nominal_delay(failures) * (1 - self.jitter * draw)

    def honour_retry_after(self, delay: float, retry_after: float | None) -> float:
        """A scheduled ``delay`` raised to a server's ``Retry-After`` (at most max_retry_after)."""
        if retry_after is None:
            return delay
        return max(delay, min(retry_after, self.max_retry_after))

    def delays(self, rng: random.Random | None = None) -> list[float]:
        """The waits of one full cycle: one after each failed attempt but the last.

        Pure: without ``rng`` the nominal schedule, with it a jittered one drawn from it.
        """
        return [self.backoff(n, rng) for n in range(1, self.max_attempts)]


def check_draw(draw: object) -> str | None:
    """None if ``draw`` is a usable jitter draw (a real number in [0, 1)), else what is wrong.

    An injected ``rng`` cannot be checked when it is passed in without drawing from it,
    so each draw is checked instead: ``random()`` returning ``2.0`` or ``nan`` would
    otherwise make a negative or NaN wait.
    """
    if isinstance(draw, bool) or not isinstance(draw, int | float) or not 0 <= draw < 1:
        return f"rng.random() returned {draw!r}; it must return a float in [0, 1)"
    return None
