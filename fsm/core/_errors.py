"""The error hierarchy: everything the library raises on purpose derives from LifecycleError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsm.core._types import CloseReason, ConnState


class LifecycleError(Exception):
    """Base class of every error that fsm raises on purpose."""


class InvalidTransition(LifecycleError):
    """An event was sent in a state that has no transition for it; the state is unchanged."""

    def __init__(self, event: str, state: ConnState, allowed: list[str]) -> None:
        self.event = event
        self.state = state
        self.allowed = allowed
        choices = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"event {event!r} is not allowed in state {state.value} "
            f"(allowed there: {choices}); the state is unchanged"
        )


class ConnectionFailed(LifecycleError):
    """A connection cycle ended in CLOSED without reaching OPEN (gave up, rejected, shut down)."""

    def __init__(
        self, reason: CloseReason, attempts: int, cause: BaseException | str | None = None
    ) -> None:
        self.reason = reason
        self.attempts = attempts
        self.cause = cause
        what = {
            "GAVE_UP": f"gave up after {attempts} failed attempt{'s' if attempts != 1 else ''}",
            "REJECTED": "the server rejected the connection",
            "SHUTDOWN": "the server shut down",
            "USER": "the connection was closed by the user",
            "ERROR": "the connection cycle stopped on an error in the client",
        }.get(reason.value, f"closed ({reason.value})")
        if isinstance(cause, BaseException):
            from fsm.core._redact import describe, redact  # only failures carry a cause

            last = f"; last cause: {redact(describe(cause))}"
        else:
            last = f"; last cause: {cause}" if cause else ""
        advice = (
            "fix what the server refused (credentials, URL, notebook), then call connect()"
            if reason.value == "REJECTED"
            else "call connect() to try again"
        )
        super().__init__(f"{what}{last}; {advice}")


class NotConnected(LifecycleError):
    """An operation needs an open connection and the lifecycle cannot provide one now."""


class EditBufferFull(LifecycleError):
    """The edit buffer holds its limit of distinct cells; the new edit was refused, not dropped."""


class EditTooLarge(LifecycleError, ValueError):
    """An edit whose frame would exceed the server's frame limit; refused, the buffer unchanged.

    ``cell_id``, ``size`` (bytes of the largest frame that would carry it) and ``limit``
    (the limit known when the edit was made) say which and by how much.
    """

    def __init__(self, cell_id: str, size: int, limit: int) -> None:
        self.cell_id = cell_id
        self.size = size
        self.limit = limit
        super().__init__(
            f"edit to cell {cell_id!r} refused: its frame would be {size} bytes, over the"
            f" server's frame limit of {limit} bytes (max_frame_size); the buffer is"
            f" unchanged: split the cell's code or raise the server's limit"
        )


class RequestFailed(LifecycleError):
    """The server refused one request (say, HTTP 4xx); the connection itself is fine."""
