"""HTTP for the servers: one h11 request per TCP connection, then a reply or an upgrade.

Both servers (the reference server and the gateway) read a request head themselves,
with h11 (which also bounds its size), to route, authenticate, refuse (401, 404, 503)
or inject a fault before wsproto sees anything; a WebSocket upgrade is then handed to
trio-websocket over a :class:`ReplayStream` that replays the bytes already read.
Responses are written with h11 too.

An upgrade that wsproto would refuse must be refused before that hand-over:
trio-websocket 0.12.2's ``wrap_server_stream()`` otherwise waits forever for a request
it never gets (:func:`is_valid_websocket`). Headers are given lower-cased, repeated
ones joined with ``", "``.
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import trio


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether the request asks to switch to WebSocket (``Connection: Upgrade``)."""
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "upgrade" in connection and headers.get("upgrade", "").lower() == "websocket"


def is_valid_websocket(method: str, headers: Mapping[str, str]) -> bool:
    """Whether wsproto will accept this upgrade request (RFC 6455 section 4.2.1)."""
    return (
        method == "GET"
        and is_upgrade(headers)
        and headers.get("sec-websocket-version") == "13"
        and bool(headers.get("sec-websocket-key"))
        and "host" in headers
    )


#: The largest request head read; a browser's is well under 8 KiB.
MAX_HEAD = 16 * 1024


@dataclass(frozen=True)
class Request:
    """What the gateway decides on: method, path, query and lower-cased headers."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes  # every byte read so far, replayed to wsproto on an upgrade

    @property
    def is_upgrade(self) -> bool:
        return is_upgrade(self.headers)

    @property
    def is_valid_websocket(self) -> bool:
        return is_valid_websocket(self.method, self.headers)

    def first(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


class BadRequest(Exception):
    """The bytes read are not an HTTP/1.1 request the gateway can answer."""


async def read_request(stream: trio.abc.Stream, *, max_head: int = MAX_HEAD) -> Request | None:
    """Read one request head; ``None`` if the peer hung up first, BadRequest if malformed
    or longer than ``max_head`` bytes."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(str(exc)) from exc
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            raw += data
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            target = event.target.decode("latin-1")
            parts = urllib.parse.urlsplit(target)
            headers: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            return Request(
                event.method.decode("latin-1"),
                parts.path,
                urllib.parse.parse_qs(parts.query),
                headers,
                bytes(raw),
            )
        if isinstance(event, h11.ConnectionClosed):
            return None
        raise BadRequest(f"unexpected {type(event).__name__}")


def phrase(status: int) -> str:
    """The reason phrase of HTTP ``status`` (``Unknown Status`` for one without)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def response(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response."""
    conn = h11.Connection(h11.SERVER)
    # h11 needs to have seen a request before it writes a response.
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    all_headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *(headers or []),
    ]
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    out = conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason))
    out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
    return out + (conn.send(h11.EndOfMessage()) or b"")


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> bytes:
    """A JSON response."""
    return response(status, json.dumps(payload).encode(), headers=headers)


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> bytes:
    """A JSON ``{"error": message}`` response."""
    return json_response(status, {"error": message}, headers)


def authorized(request: Request, token: str | None) -> bool:
    """Whether ``request`` carries ``token`` (query ``token`` or a bearer header).

    Compared in constant time; ``token=None`` means no token is required.
    """
    if token is None:
        return True
    offered = list(request.query.get("token", []))
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    expected = token.encode()
    # Every offer is compared, so the time taken does not say which one was close.
    results = [hmac.compare_digest(t.encode(), expected) for t in offered]
    return any(results)


class ReplayStream(trio.abc.Stream):
    """``raw`` with the bytes already read in front: what trio-websocket reads the upgrade from.

    ``gate``, if given, is awaited before and after every read from ``raw`` (never for
    the replayed bytes): the reference server holds a frozen connection's bytes there,
    including bytes that arrived while a read was already pending.
    """

    def __init__(
        self,
        raw: trio.abc.Stream,
        prefix: bytes,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._raw = raw
        self._prefix = prefix
        self._gate = gate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._raw.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:n], self._prefix[n:]
            return chunk
        if self._gate is None:
            return await self._raw.receive_some(max_bytes)
        await self._gate()
        data = await self._raw.receive_some(max_bytes)
        await self._gate()
        return data

    async def aclose(self) -> None:
        await self._raw.aclose()
