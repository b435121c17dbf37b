"""Value types shared by the core and the driver: states, close reasons, transition records."""

from __future__ import annotations

import enum

from fsm.core._value import Value, set_field


class ConnState(enum.StrEnum):
    """The five lifecycle states; values equal the seed's names."""

    NOT_STARTED = "NOT_STARTED"
    CONNECTING = "CONNECTING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


class Phase(enum.StrEnum):
    """The substate of CONNECTING: an attempt in flight, or the wait before the next one."""

    DIALING = "DIALING"
    BACKING_OFF = "BACKING_OFF"


class CloseReason(enum.StrEnum):
    """Why a lifecycle is CLOSED."""

    USER = "USER"  #: the user closed it
    GAVE_UP = "GAVE_UP"  #: max_attempts failed attempts in one cycle
    REJECTED = "REJECTED"  #: the server refused for good (401/403, 1008, 3000-3999)
    SHUTDOWN = "SHUTDOWN"  #: the server announced its shutdown (1000 "SHUTDOWN")
    #: the cycle could not go on because of a fault in the client, not the server: an
    #: injected ``rng`` whose ``random()`` gave a value outside [0, 1) (``last_cause``
    #: says which); ``request()`` does not heal it, ``connect()`` tries again
    ERROR = "ERROR"


class Transition(Value):
    """One lifecycle transition, as observers and ``Connector.transitions()`` see it.

    ``attempt`` is the count of failed attempts in the current cycle after the
    transition; ``delay`` is the back-off delay when the target phase is BACKING_OFF;
    ``cause`` says, with secrets redacted, what made a fail, drop, reject or shutdown.
    """

    __match_args__ = ("source", "target", "event", "attempt", "delay", "reason", "phase", "cause")
    __slots__ = __match_args__
    source: ConnState
    target: ConnState
    event: str
    attempt: int
    delay: float | None
    reason: CloseReason | None
    phase: Phase | None
    cause: str | None

    def __init__(
        self,
        source: ConnState,
        target: ConnState,
        event: str,
        attempt: int = 0,
        delay: float | None = None,
        reason: CloseReason | None = None,
        phase: Phase | None = None,
        cause: str | None = None,
    ) -> None:
        set_field(self, "source", source)
        set_field(self, "target", target)
        set_field(self, "event", event)
        set_field(self, "attempt", attempt)
        set_field(self, "delay", delay)
        set_field(self, "reason", reason)
        set_field(self, "phase", phase)
        set_field(self, "cause", cause)
