"""The effects: what the lifecycle tells its driver to do next.

Every event method of :class:`~fsm.ConnectionLifecycle` returns a list of these, in
the order the driver must carry them out (see :mod:`fsm.core._lifecycle` for when
each is emitted). They live in a module of their own because both the machine's
callbacks (:mod:`fsm.core._machine`, which append them) and the lifecycle (which
returns them) need them, and neither should import the other to get them.

They are plain immutable values (:class:`~fsm.core._value.Value`): equal when their
fields are, usable in ``match`` statements by position.
"""

from __future__ import annotations

from fsm.core._buffer import FlushBatch
from fsm.core._value import Value, set_field

__all__ = ["Backoff", "Dial", "Effect", "Flush", "HangUp", "SendEdit"]


class Dial(Value):
    """Start attempt number ``attempt`` of this cycle; it must end within ``timeout``."""

    __match_args__ = ("attempt", "timeout")
    __slots__ = __match_args__
    attempt: int
    timeout: float

    def __init__(self, attempt: int, timeout: float) -> None:
        set_field(self, "attempt", attempt)
        set_field(self, "timeout", timeout)


class Backoff(Value):
    """Wait ``delay`` seconds, then send ``retry``; ``attempt`` failed attempts so far."""

    __match_args__ = ("attempt", "delay")
    __slots__ = __match_args__
    attempt: int
    delay: float

    def __init__(self, attempt: int, delay: float) -> None:
        set_field(self, "attempt", attempt)
        set_field(self, "delay", delay)


class Flush(Value):
    """Send every edit not yet acknowledged, as one batch (on entering OPEN, exactly once).

    Send ``batch.frames`` in order, one ``instantiate`` frame each; see
    :class:`~fsm.FlushBatch`.
    """

    __match_args__ = ("batch",)
    __slots__ = __match_args__
    batch: FlushBatch

    def __init__(self, batch: FlushBatch) -> None:
        set_field(self, "batch", batch)


class SendEdit(Value):
    """Send one edit made while OPEN."""

    __match_args__ = ("seq", "cell_id", "code")
    __slots__ = __match_args__
    seq: int
    cell_id: str
    code: str

    def __init__(self, seq: int, cell_id: str, code: str) -> None:
        set_field(self, "seq", seq)
        set_field(self, "cell_id", cell_id)
        set_field(self, "code", code)


class HangUp(Value):
    """Close the socket gracefully (then ``close_finished``), or abandon what is in flight."""

    __match_args__ = ("graceful",)
    __slots__ = __match_args__
    graceful: bool

    def __init__(self, graceful: bool) -> None:
        set_field(self, "graceful", graceful)


Effect = Dial | Backoff | Flush | SendEdit | HangUp
