"""Protocol adapters: how "ready", "flush", "edit" and "ack" look on the wire.

The connector owns sockets, timers and the lifecycle; an adapter only says what
to send and how to read what arrives. Two ship: :class:`~fsm.ReferenceProtocol`
(DESIGN.md section 6, spoken by :mod:`fsm.server`; in ``_reference.py``) and
:class:`fsm.marimo.MarimoProtocol` for a real marimo server.

An adapter sees a link through :class:`AdapterLink`, a small interface the driver's
:class:`fsm.connector.Link` satisfies: adapters never import the driver.

An adapter's hooks run inside the connector's tasks:

- ``websocket_url`` builds the endpoint for one attempt;
- ``prepare`` runs before the handshake (a health check, say) and raises
  :class:`AttemptFailed` (retry) or :class:`AttemptRejected` (give up for good);
- ``is_ready`` recognises the frame that completes an attempt;
- ``flush``, ``send_edit`` and ``request`` send, in order, from one sender task;
- ``ready_info`` reads what the ready frame says of seqs and the frame limit;
- ``ack_seq`` reads acknowledgements; ``classify_close`` and ``classify_status``
  turn close codes and handshake statuses into a :class:`Verdict`.

Close codes and handshake statuses (DESIGN.md section 6): 1000 with reason
``SHUTDOWN`` is a shutdown; 1003, 1007, 1009 (a frame the server will not take), 1008
and 3000-3999 are fatal; every other close is retried. Handshake statuses 400, 401,
403, 404, 405, 410 and 426 are fatal (credentials, the URL or the protocol is wrong:
retrying cannot help); 408, 429, 5xx and every other status are retried.
"""

from __future__ import annotations

import email.utils
import enum
import math
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fsm.core._frames import Frame

if TYPE_CHECKING:
    from fsm.core._buffer import FlushBatch
    from fsm.core._effects import SendEdit

__all__ = [
    "FATAL_CLOSE_CODES",
    "FATAL_STATUSES",
    "AdapterLink",
    "AttemptFailed",
    "AttemptRejected",
    "KernelProtocol",
    "Verdict",
    "check_session_id",
    "normalise_url",
    "retry_after_seconds",
]

#: Close codes after which the client does not retry (besides 3000-3999).
FATAL_CLOSE_CODES = frozenset({1003, 1007, 1008, 1009})
#: Handshake statuses after which the client does not retry.
FATAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 426})


def retry_after_seconds(value: str | bytes | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header value asks to wait (delta-seconds or an HTTP date);
    None when absent or unreadable. Never negative."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Verdict(enum.StrEnum):
    """What a close code or handshake status means for the lifecycle."""

    RETRY = "RETRY"  #: a transient loss: retry with back-off
    REJECT = "REJECT"  #: fatal: CLOSED(REJECTED), no automatic retry
    SHUTDOWN = "SHUTDOWN"  #: the server announced its shutdown: CLOSED(SHUTDOWN)


class AdapterLink(Protocol):
    """What an adapter's hooks see of one attempt and the connection it became.

    ``url`` is the server URL as given to the connector, ``session_id`` the connector's,
    and ``context`` a dict for the adapter's own per-link state (freed with the link).
    """

    url: str
    session_id: str
    context: dict[str, Any]

    async def send_frame(self, op: str, data: Any) -> None:
        """Send one protocol frame on this link's WebSocket."""
        ...

    def acknowledge(self, seq: int) -> None:
        """Mark ``seq`` acknowledged (for adapters whose acks are not frames)."""
        ...


class AttemptFailed(Exception):
    """Raised by an adapter hook: this attempt failed, and retrying may help."""


class AttemptRejected(Exception):
    """Raised by an adapter hook: the server refuses for good; do not retry."""


_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def normalise_url(url: str) -> str:
    """Check a server URL and return it ready for the wire; raise ValueError otherwise.

    The scheme must be ws, wss, http or https, with a host and, if any, a numeric port.
    Whitespace and control characters are refused anywhere (a path with a space is
    almost always a mistake: percent-encode it as ``%20``), and so is anything that
    cannot be encoded (a lone surrogate). Other non-ASCII characters of the path, query
    and fragment are percent-encoded as UTF-8, and a non-ASCII host is IDNA-encoded, as
    browsers do.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    bad = next((c for c in url if c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise ValueError(
            f"server URL contains {bad!r} at position {url.index(bad)}: whitespace and control"
            " characters are not allowed in a URL (percent-encode them, e.g. %20 for a space)"
        )
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"server URL cannot be encoded ({exc.reason} at position {exc.start}): "
            "it contains a lone surrogate"
        ) from exc
    try:
        parts = urlsplit(url)
        port = parts.port  # parses the port, raising ValueError if it is not a number
    except ValueError as exc:
        raise ValueError(f"invalid server URL: {exc}") from exc
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"server URL scheme must be one of ws, wss, http, https; got {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise ValueError("server URL has no host")
    del port
    if url.isascii():
        return url
    netloc = parts.netloc
    if not parts.hostname.isascii():
        try:
            ascii_host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(
                f"server URL host {parts.hostname!r} is not a valid host name"
            ) from exc
        netloc = netloc.replace(parts.hostname, ascii_host)
    if not netloc.isascii():
        raise ValueError("server URL has non-ASCII characters in its user or port part")
    safe = "/:@!$&'()*+,;=-._~%?"
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe),
            quote(parts.fragment, safe=safe),
        )
    )


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it can travel in a URL query; raise TypeError/ValueError.

    It must be a non-empty str of at most 512 characters, with no control characters
    and nothing that cannot be encoded as UTF-8 (a lone surrogate).
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session_id must be a non-empty str")
    if len(session_id) > 512:
        raise ValueError(f"session_id must be at most 512 characters, got {len(session_id)}")
    bad = next((c for c in session_id if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise ValueError(f"session_id must not contain control characters, got {session_id!r}")
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"session_id cannot be encoded ({exc.reason} at position {exc.start}): {session_id!r}"
        ) from exc
    return session_id


class KernelProtocol:
    """Base adapter; subclasses override what differs. See the module docstring."""

    name = "kernel"
    #: The frame op that completes an attempt.
    ready_op = "kernel-ready"
    #: Extra ops accepted as "ready" (marimo's ``reconnected``).
    ready_ops: frozenset[str] = frozenset({"kernel-ready"})

    def websocket_url(self, url: str, session_id: str) -> str:
        """The WebSocket endpoint for ``url``: ws(s) scheme, ``/ws`` path, ``session_id``."""
        parts = urlsplit(url)
        path = parts.path if parts.path not in ("", "/") else "/ws"
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        query = [(k, v) for k, v in query if k != "session_id"]
        query.insert(0, ("session_id", session_id))
        query.extend(self.extra_query())
        return urlunsplit((_SCHEMES[parts.scheme], parts.netloc, path, urlencode(query), ""))

    def extra_query(self) -> list[tuple[str, str]]:
        """Query parameters this protocol adds to the WebSocket URL."""
        return []

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        """HTTP headers sent with the WebSocket handshake."""
        return []

    async def prepare(self, link: AdapterLink) -> None:
        """Run before the handshake; raise AttemptFailed or AttemptRejected to stop it."""

    def is_ready(self, frame: Frame) -> bool:
        """Whether ``frame`` completes the attempt; ValueError if it is a malformed one."""
        return frame.op in self.ready_ops

    async def on_ready(self, link: AdapterLink, frame: Frame) -> None:
        """Run once the ready frame arrived, before the connection counts as OPEN."""

    async def flush(self, link: AdapterLink, batch: FlushBatch) -> None:
        """Send the edits buffered before OPEN (once per entry into OPEN)."""
        raise NotImplementedError

    async def send_edit(self, link: AdapterLink, edit: SendEdit) -> None:
        """Send one edit made while OPEN."""
        raise NotImplementedError

    async def request(self, link: AdapterLink, op: str, data: Any) -> Any:
        """Send a request: by default, one frame; the result is returned by ``request()``."""
        await link.send_frame(op, data)
        return None

    def ready_info(self, frame: Frame) -> tuple[int | None, int | None]:
        """``(seq, max_frame_size)`` of a ready frame, for ``ConnectionLifecycle.ready``.

        ``seq`` None: the peer has no seqs (nothing is learnt, no loss of state can be
        detected); ``max_frame_size`` None: 1 MiB.
        """
        return None, None

    def ack_seq(self, frame: Frame) -> int | None:
        """The sequence number ``frame`` acknowledges, or None if it is not an ack."""
        return None

    def classify_close(self, code: int | None, reason: str | None) -> Verdict:
        """What a close with ``code`` and ``reason`` means (see the module docstring)."""
        if code == 1000 and reason == "SHUTDOWN":
            return Verdict.SHUTDOWN
        if code in FATAL_CLOSE_CODES or (code is not None and 3000 <= code <= 3999):
            return Verdict.REJECT
        return Verdict.RETRY

    def classify_status(self, status: int) -> Verdict:
        """What a refused handshake with HTTP ``status`` means (see the module docstring)."""
        return Verdict.REJECT if status in FATAL_STATUSES else Verdict.RETRY

    async def release(self, link: AdapterLink) -> None:
        """Free what ``prepare`` acquired; runs when the link ends, shielded and bounded."""
