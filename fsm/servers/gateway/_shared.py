"""A shared view of one upstream: how the sessions of a gateway take turns to dial it.

Theory of operation
-------------------

A gateway holds one lifecycle per client session, and every one of them dials the same
kernel server. Alone, each would learn on its own that the server is down and retry on
its own schedule: 10,000 sessions make 10,000 handshakes per round against a dead host.
An :class:`UpstreamGate` is what they learn together. Each session's connector asks it
before every attempt (``admit``) and tells it how the attempt ended (``finished``); the
gate answers "dial now" (``0.0``) or "wait this long first", and the connector then
reports ``defer(delay)`` to its lifecycle, which shows BACKING_OFF with that wait and
counts no failure. The gate never decides a transition: python-statemachine does, the
gate only supplies the delay.

The rules (all times are the caller's clock, passed in: this class is sans-IO and
never reads a clock, sleeps or imports trio):

- **Never more than** ``max_in_flight`` **dials in flight** to the upstream.
- **Healthy** (the last fresh outcome was a success, or none yet): dials start at a
  pace of at most ``rate`` per second. A session that would start too soon is given a
  *slot*: the next free time on the pace, and waits until it. A session that wakes at
  its own slot dials (the slot was kept for it).
- **Failing** (the last fresh outcome was a failed attempt): one dial at a time, the
  *probe*, at most once per shared back-off (``probe``, a :class:`~fsm.RetryPolicy`
  whose delay grows with the failures the gate has seen). Every other session is given
  a slot behind the next probe, on the same pace, so that when a probe succeeds the
  sessions come back at ``rate`` per second, not all at once; a session that wakes
  while the upstream is still failing is given a slot behind the next probe again.
  Only *fresh* outcomes teach the gate: a failure of a dial started before the gate
  last learned something (one of a burst that was in flight together) is not counted
  again.
- **A person's Connect** (``urgent``) dials at once when a slot of ``max_in_flight``
  is free, ahead of the pace and of the probe schedule, and its outcome teaches the
  gate like a probe's. When every slot is busy the session waits ``busy_wait`` and is
  then the next to dial: the first slot that frees is kept for it.

What a session's lifecycle shows stays honest: ``attempts`` counts its own failed
attempts only (a deferral is not an attempt), and every wait, the gate's or its own,
is a BACKING_OFF with the delay it will wait. A session behind a failing gate makes
few attempts of its own, so it gives up (after ``max_attempts`` of them) much later
than it would alone; a person's Connect always dials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fsm.core._policy import RetryPolicy

if TYPE_CHECKING:
    import random
    from collections.abc import Hashable

__all__ = ["GatePolicy", "UpstreamGate"]

#: The shared probe schedule: gRPC's multiplier, jitter 0.2 (gateway processes probing one
#: host drift apart; each wait is 80-100 % of nominal), a short cap (one probe
#: every few seconds is nothing for a host, and bounds how late the fleet learns it is
#: back), and no give-up (sessions give up on their own attempts).
DEFAULT_PROBE: Final = RetryPolicy(
    max_attempts=10**9, initial_delay=0.5, multiplier=1.6, max_delay=5.0, jitter=0.2
)


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """How the sessions of one upstream share it; see :mod:`fsm.servers.gateway._shared`.

    ``max_in_flight = 16``
        Dials in flight to the upstream at once, never more.
    ``rate = 1000.0``
        Dial starts per second while healthy, and the pace at which waiting sessions
        come back after an outage: 10,000 sessions return within 10 s of the probe
        that found the upstream back (a kernel server handles a few hundred to a few
        thousand handshakes per second per core).
    ``probe``
        The shared back-off between probes while failing (its ``backoff(n)`` after the
        n-th failure the gate saw; ``max_attempts`` is not used).
    ``busy_wait = 0.1``
        How long a person's Connect waits when every slot is busy, before it is first.
    """

    max_in_flight: int = 16
    rate: float = 1000.0
    probe: RetryPolicy = field(default=DEFAULT_PROBE)
    busy_wait: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or (
            self.max_in_flight < 1
        ):
            raise ValueError(
                f"GatePolicy.max_in_flight must be an integer >= 1, got {self.max_in_flight!r}"
            )
        for name in ("rate", "busy_wait"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 < value < math.inf
            ):
                raise ValueError(f"GatePolicy.{name} must be a positive number, got {value!r}")
        if not isinstance(self.probe, RetryPolicy):
            raise TypeError(
                f"GatePolicy.probe must be a RetryPolicy, got {type(self.probe).__name__}"
            )


class UpstreamGate:
    """The shared view of one upstream (sans-IO): admits, paces and defers dials.

    Sessions are any hashable keys (the connector passes itself). ``rng`` jitters the
    probe schedule (several gateway processes probing one host then spread out).
    """

    def __init__(self, policy: GatePolicy | None = None, rng: random.Random | None = None) -> None:
        if policy is not None and not isinstance(policy, GatePolicy):
            raise TypeError(f"policy must be a GatePolicy, got {type(policy).__name__}")
        self.policy = policy if policy is not None else GatePolicy()
        self._rng = rng
        self._spacing = 1.0 / self.policy.rate
        #: Fresh failures seen since the last success (0: healthy).
        self.failures = 0
        self._probe_at = -math.inf  # while failing: no probe before this time
        self._pace_next = -math.inf  # the next free slot on the pace
        # Admitted dials not finished yet: session -> the failure count when admitted,
        # which tells a fresh outcome from a stale one.
        self._in_flight: dict[Hashable, int] = {}
        self._slots: dict[Hashable, float] = {}  # sessions waiting for their slot
        self._first: dict[Hashable, None] = {}  # a person's Connect, waiting for a slot
        #: Counters: dials admitted, deferrals given, outcomes learned.
        self.stats = {"admitted": 0, "deferred": 0, "succeeded": 0, "failed": 0, "stale": 0}

    # -- reads ---------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Whether the last fresh outcome was a success (or there was none yet)."""
        return self.failures == 0

    @property
    def in_flight(self) -> int:
        """Dials admitted and not finished."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Sessions holding a slot or waiting to dial first."""
        return len(self._slots) + len(self._first)

    @property
    def next_probe(self) -> float | None:
        """While failing, the earliest time of the next probe; None while healthy."""
        return None if self.failures == 0 else self._probe_at

    # -- the three calls a driver makes --------------------------------------------------

    def admit(self, session: Hashable, now: float, *, urgent: bool = False) -> float:
        """May ``session`` start a dial at ``now``? ``0.0``: yes (it is now in flight
        until :meth:`finished`); otherwise the seconds it must wait first (> 0)."""
        if session in self._in_flight:
            raise ValueError(f"session {session!r} already has a dial in flight")
        limit = self.policy.max_in_flight
        if urgent or session in self._first:
            self._slots.pop(session, None)
            if len(self._in_flight) < limit:
                self._first.pop(session, None)
                return self._start(session)
            self._first[session] = None
            return self._defer(self.policy.busy_wait)
        slot = self._slots.pop(session, None)
        free = limit - len(self._in_flight) - len(self._first)
        if self.failures == 0:
            if free > 0 and (slot is not None or now >= self._pace_next):
                if slot is None:
                    self._pace_next = now + self._spacing
                return self._start(session)
            earliest = now if free > 0 else now + self.policy.busy_wait
            return self._reserve(session, now, earliest)
        if not self._in_flight and now >= self._probe_at and free > 0:
            return self._start(session)  # the probe
        if self._in_flight or now >= self._probe_at:
            # A probe is out (or could not start): its failure would push the next one
            # this far out, the soonest anything can change.
            earliest = now + self.policy.probe.nominal_delay(self.failures + 1)
        else:
            earliest = self._probe_at
        return self._reserve(session, now, earliest)

    def finished(self, session: Hashable, now: float, ok: bool | None) -> None:
        """``session``'s admitted dial ended at ``now``: ``True`` the upstream answered
        ready, ``False`` the attempt failed in a retryable way, ``None`` neither (it was
        rejected, abandoned or closed: nothing learned about reachability)."""
        try:
            seen = self._in_flight.pop(session)
        except KeyError:
            raise ValueError(f"session {session!r} has no dial in flight") from None
        if ok is None:
            return
        if ok:
            self.stats["succeeded"] += 1
            self.failures = 0
            self._probe_at = -math.inf
        elif seen != self.failures:
            self.stats["stale"] += 1  # the gate learned something since it started
        else:
            self.stats["failed"] += 1
            self.failures += 1
            self._probe_at = now + self.policy.probe.backoff(self.failures, self._rng)

    def forget(self, session: Hashable) -> None:
        """``session`` no longer waits (its timer was cancelled, it closed): free its slot."""
        self._slots.pop(session, None)
        self._first.pop(session, None)

    # -- internals -----------------------------------------------------------------------

    def _start(self, session: Hashable) -> float:
        self._in_flight[session] = self.failures
        self.stats["admitted"] += 1
        return 0.0

    def _reserve(self, session: Hashable, now: float, earliest: float) -> float:
        slot = max(self._pace_next, earliest, now + self._spacing)
        self._pace_next = slot + self._spacing
        self._slots[session] = slot
        return self._defer(slot - now)

    def _defer(self, delay: float) -> float:
        self.stats["deferred"] += 1
        return delay
