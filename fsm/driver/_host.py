"""What the parts of a connector see of it.

The attempt (:mod:`fsm.driver._attempt`), the sender, the heartbeat and the outcome
handlers are functions of the connector's state, split out of
:class:`~fsm.Connector` by responsibility. They are written against :class:`Host`, the
members of a connector they use, which :class:`~fsm.Connector` satisfies structurally:
so they never import the connector module, which imports them. :class:`DialGate` lives
here for the same reason: the attempt consults it and the connector takes one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from fsm.driver._transport import Dialer

if TYPE_CHECKING:
    from fsm.core._effects import Effect
    from fsm.core._frames import Frame
    from fsm.core._lifecycle import ConnectionLifecycle
    from fsm.driver._link import Link

__all__ = ["DialGate", "Host"]


class DialGate(Protocol):
    """What a connector asks before every attempt when it shares an upstream with
    others (``dial_gate=``); :class:`fsm.gateway.UpstreamGate` is the one that ships.

    ``admit`` answers ``0.0`` (dial now) or the seconds to wait first, which the
    connector reports as ``defer(delay)``; ``urgent`` marks a person's ``connect()``.
    ``finished`` is called once per admitted dial: ``True`` ready, ``False`` a
    retryable failure, ``None`` anything else. ``forget``: the session stopped waiting.
    ``session`` is the connector asking (any hashable key will do for a gate).
    """

    def admit(self, session: Hashable, now: float, *, urgent: bool = False) -> float: ...

    def finished(self, session: Hashable, now: float, ok: bool | None) -> None: ...

    def forget(self, session: Hashable) -> None: ...


class Host(Dialer, Protocol):
    """The members of a :class:`~fsm.Connector` its attempt, sender, heartbeat and
    outcome handlers read, write and call."""

    url: str
    session_id: str
    heartbeat_interval: float | None
    heartbeat_timeout: float
    _lc: ConnectionLifecycle
    _link: Link | None
    _dial_gate: DialGate | None
    _log: Any

    def __hash__(self) -> int: ...  # a gate keys its sessions by their connector

    def _report(self, event: Callable[..., list[Effect]], *args: Any, **kwargs: Any) -> None: ...

    def _decode(self, message: str | bytes) -> Frame | None: ...

    def _is_ready(self, frame: Frame) -> bool | None: ...

    def _bad_frame(self, reason: str) -> None: ...

    def _on_frame(self, link: Link, frame: Frame) -> None: ...
