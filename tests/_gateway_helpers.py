"""Helpers for the gateway tests: a gateway in front of a KernelServer, raw HTTP and
WebSocket clients, and a client-leg stream that a test can break. All on 127.0.0.1."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

import fsm
from fsm.gateway import Gateway
from fsm.server import KernelServer
from tests._connector_helpers import FAST


@asynccontextmanager
async def gateway_to(server: KernelServer, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A gateway in front of ``server`` on an ephemeral port, shut down on exit."""
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("heartbeat_interval", None)
    kwargs.setdefault("close_timeout", 1.0)
    gw = Gateway(kwargs.pop("upstream", server.url), **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve)
        try:
            yield gw
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await gw.shutdown()
            nursery.cancel_scope.cancel()


def client(gw: Gateway, session_id: str, token: str | None = None, **overrides: Any) -> Any:
    """An ``fsm`` Connector to the gateway: fast policy, no heartbeat."""
    kwargs: dict[str, Any] = {
        "policy": FAST,
        "rng": random.Random(0),
        "close_timeout": 1.0,
        "heartbeat_interval": None,
        "session_id": session_id,
    }
    kwargs.update(overrides)
    url = gw.url if token is None else f"{gw.url}?token={token}"
    return fsm.open_connector(url, **kwargs)


class Inbox:
    """Every message a client connector received, in order, for the test to read."""

    def __init__(self, conn: fsm.Connector) -> None:
        self.frames: list[Any] = []
        self._channel = conn.messages()

    async def until(self, op: str, predicate: Any = None) -> Any:
        """The first frame (seen before or arriving now) with ``op`` matching ``predicate``."""
        seen = 0
        while True:
            for frame in self.frames[seen:]:
                if frame.op == op and (predicate is None or predicate(frame.data)):
                    return frame
            seen = len(self.frames)
            self.frames.append(await self._channel.receive())

    def ops(self, op: str) -> list[Any]:
        """The data of every frame with ``op`` received so far (takes what is queued)."""
        while True:
            try:
                self.frames.append(self._channel.receive_nowait())
            except trio.WouldBlock:
                break
        return [f.data for f in self.frames if f.op == op]


class RawClient:
    """A bare trio-websocket client of the gateway: frames as JSON, anything sendable."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # every frame received, in order

    async def send(self, op: str, data: Any = None) -> None:
        await self.ws.send_message(json.dumps({"op": op, "data": data}))

    async def recv(self) -> dict[str, Any]:
        """The next frame."""
        frame: dict[str, Any] = json.loads(await self.ws.get_message())
        self.frames.append(frame)
        return frame

    async def until(self, op: str, predicate: Any = None) -> dict[str, Any]:
        """The first frame received so far, or from now on, with ``op`` (and
        ``predicate(data)``)."""
        def matches(frame: dict[str, Any]) -> bool:
            return frame["op"] == op and (predicate is None or predicate(frame["data"]))

        for frame in self.frames:
            if matches(frame):
                return frame
        while True:
            frame = await self.recv()
            if matches(frame):
                return frame

    async def closed(self) -> trio_websocket.CloseReason:
        """Read until the gateway closes this connection; its close reason."""
        try:
            while True:
                await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return exc.reason


@asynccontextmanager
async def raw_client(gw: Gateway, session_id: str, **kwargs: Any) -> AsyncIterator[RawClient]:
    """A RawClient attached to ``session_id``; yields after reading nothing."""
    url = gw.url_for(session_id, kwargs.pop("token", None))
    async with trio_websocket.open_websocket_url(url, **kwargs) as ws:
        yield RawClient(ws)


async def http_get(
    gw: Gateway, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET over a fresh TCP connection: ``(status, headers, body)``."""
    stream = await trio.open_tcp_stream(gw.host, gw.port)
    async with stream:
        lines = [f"GET {path} HTTP/1.1", f"Host: {gw.host}:{gw.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), parsed, body


class Breakable:
    """A client-leg :data:`~fsm.connector.StreamOpener` whose TCP streams a test can cut.

    ``cut()`` shuts every open stream down in both directions at once, as a lost network
    would (both ends see the connection end, with whatever was in flight lost or not).
    """

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []
        self.opened = 0

    async def __call__(self, host: str, port: int, secure: bool) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        self.streams.append(stream)
        self.opened += 1
        return stream

    def cut(self) -> int:
        """Cut every stream still open; how many were cut."""
        cut = 0
        for stream in self.streams:
            try:
                stream.socket.shutdown(socket.SHUT_RDWR)
                cut += 1
            except OSError:
                pass
        self.streams.clear()
        return cut
