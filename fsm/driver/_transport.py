"""The byte stream and the WebSocket over it, for one attempt.

:func:`open_tcp` is the default :data:`StreamOpener` (TCP, TLS for ``wss://``); a
connector may be given another (tests pass in-memory streams, so a whole fleet runs on
``trio.testing.MockClock``). :func:`open_websocket` runs trio-websocket's client over
that stream, owning the stream so that it is closed on every way out: trio-websocket
0.12.2 leaves it open when a handshake is refused or cancelled.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import trio
import trio_websocket

from fsm.core._frames import MAX_FRAME_SIZE
from fsm.core._redact import redact_url

if TYPE_CHECKING:
    from fsm.adapters._base import KernelProtocol
    from fsm.driver._link import Link

__all__ = ["StreamOpener", "open_tcp"]

#: Opens the byte stream one WebSocket runs over: ``(host, port, secure) -> Stream``.
StreamOpener = Callable[[str, int, bool], Awaitable[trio.abc.Stream]]

# trio-websocket closes the socket (1009) above this; our decoder refuses (and
# logs) frames above MAX_FRAME_SIZE, so frames in between are skipped, not fatal.
_TRANSPORT_MAX_MESSAGE = 4 * MAX_FRAME_SIZE


async def open_tcp(
    host: str, port: int, secure: bool, *, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """The default :data:`StreamOpener`: TCP, with TLS for ``wss://`` (``ssl_context``,
    or the system's default trust store when it is None)."""
    if secure:
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
        try:
            # Now, not on the first send: a certificate the context does not trust is
            # then this attempt's error (an ssl.SSLError, an OSError), not a hang that
            # ends in the connect time-out.
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc.__cause__, ssl.SSLError):
                raise exc.__cause__ from None
            raise OSError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        return stream
    return await trio.open_tcp_stream(host, port)


def _check_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """``extra_headers`` (a mapping or (name, value) pairs of str or bytes) as bytes pairs."""
    if headers is None:
        return []
    items = list(headers.items()) if hasattr(headers, "items") else list(headers)
    pairs: list[tuple[bytes, bytes]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"extra_headers must map names to values, got {item!r}")
        name, value = (v.encode("latin-1") if isinstance(v, str) else v for v in item)
        if not isinstance(name, bytes) or not isinstance(value, bytes) or not name:
            raise TypeError("extra_headers names and values must be str or bytes")
        if b"\r" in name + value or b"\n" in name + value:
            raise ValueError("extra_headers must not contain line breaks")
        pairs.append((name, value))
    return pairs


def _websocket_target(ws_url: str) -> tuple[str, int, str, bool]:
    """``(host, port, resource, secure)`` of a ``ws://`` or ``wss://`` URL."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {redact_url(ws_url)}")
    secure = parts.scheme == "wss"
    port = parts.port if parts.port is not None else (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource = f"{resource}?{parts.query}"
    return parts.hostname, port, resource, secure


def _single_exception(
    group: BaseExceptionGroup[BaseException], preferred: BaseException | None
) -> BaseException:
    """The exception to raise for ``group``: ``preferred`` if it is in it, else the only
    exception that is not a cancellation, else ``group`` itself (trio's cancel scopes
    take the ``Cancelled`` out of a group)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    if preferred is not None and any(leaf is preferred for leaf in leaves):
        return preferred
    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    return errors[0] if errors else group


class Dialer(Protocol):
    """What opening a WebSocket takes from a connector."""

    protocol: KernelProtocol
    close_timeout: float
    _open_stream: StreamOpener
    _extra_headers: list[tuple[bytes, bytes]]


@asynccontextmanager
async def open_websocket(connector: Dialer, link: Link, ws_url: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """One WebSocket over a TCP stream that this connector owns and always closes.

    trio-websocket 0.12.2 leaves the socket open when a handshake is refused or
    cancelled (it is closed only when the garbage collector finds it), so the
    stream is opened here, the reader runs in a nursery of its own, and the
    stream is closed on every way out. The link's own deadline bounds the
    handshake. A link already known to be lost (no pong, a send failed) is not
    closed politely: waiting for a close handshake on a dead connection would
    only delay the reconnect.
    """
    host, port, resource, secure = _websocket_target(ws_url)
    stream = await connector._open_stream(host, port, secure)
    default_port = 443 if secure else 80
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any trio Stream works; typed narrowly
                host_header,
                resource,
                extra_headers=connector.protocol.extra_headers() + connector._extra_headers,
                message_queue_size=64,
                max_message_size=_TRANSPORT_MAX_MESSAGE,
            )
            try:
                yield ws
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                try:
                    if not link.is_lost:
                        with trio.move_on_after(connector.close_timeout):
                            await ws.aclose()
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Re-raise the one exception that matters, so that callers can catch it
        # by type: the body's own, else the reader's (a refused handshake, say).
        raise _single_exception(group, body_error) from None
    finally:
        await trio.aclose_forcefully(stream)
