"""Value types shared by the core and the driver: states, close reasons, transition records."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class Transition:
    """One lifecycle transition, as observers and ``Connector.transitions()`` see it.

    ``attempt`` is the count of failed attempts in the current cycle after the
    transition; ``delay`` is the back-off delay when the target phase is BACKING_OFF;
    ``cause`` says, with secrets redacted, what made a fail, drop, reject or shutdown.
    """

    source: ConnState
    target: ConnState
    event: str
    attempt: int = 0
    delay: float | None = None
    reason: CloseReason | None = None
    phase: Phase | None = None
    cause: str | None = None
