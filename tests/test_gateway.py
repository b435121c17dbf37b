"""The lazy gateway (DESIGN.md section 10) on real sockets: an fsm Connector as the client,
through ``fsm.gateway.Gateway``, to ``fsm.server.KernelServer``, all on 127.0.0.1."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

import fsm
from fsm.gateway import Gateway
from fsm.server import KernelServer
from tests._connector_helpers import FAST, LIMIT, serving


@asynccontextmanager
async def gateway_to(server: KernelServer, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A gateway in front of ``server`` on an ephemeral port, shut down on exit."""
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("heartbeat_interval", None)
    gw = Gateway(server.url, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve)
        try:
            yield gw
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await gw.shutdown()
            nursery.cancel_scope.cancel()


def client(gw: Gateway, session_id: str, **overrides: Any) -> Any:
    """An fsm Connector to the gateway, fast policy, no heartbeat."""
    kwargs: dict[str, Any] = {
        "policy": FAST,
        "rng": random.Random(0),
        "close_timeout": 1.0,
        "heartbeat_interval": None,
        "session_id": session_id,
    }
    kwargs.update(overrides)
    return fsm.open_connector(gw.url, **kwargs)


class Inbox:
    """Every message a client connector received, kept in order for the test to read."""

    def __init__(self, conn: fsm.Connector) -> None:
        self.conn = conn
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
        """The data of every frame with ``op`` received so far (drains what is queued)."""
        while True:
            try:
                self.frames.append(self._channel.receive_nowait())
            except trio.WouldBlock:
                break
        return [f.data for f in self.frames if f.op == op]


async def test_edits_before_the_upstream_starts_reach_the_kernel() -> None:
    """Edits through the gateway are acked only once the kernel has them; a run starts it."""
    async with serving() as server, gateway_to(server) as gw, client(gw, "s1") as conn:
        inbox = Inbox(conn)
        with trio.fail_after(LIMIT):
            await conn.connect()
            conn.edit("a", "x = 1")
            conn.edit("b", "y = 2")
            # The upstream is lazy: nothing is acked, nothing dialled yet.
            assert server.handshakes == 0
            assert conn.pending_edits == {"a": "x = 1", "b": "y = 2"}
            await conn.request("run", {"cell_id": "a", "id": 7})
            await conn.wait_acked()
            assert server.cells == {"a": "x = 1", "b": "y = 2"}
            out = await inbox.until("cell-op")
            assert out.data["output"]["data"] == "x = 1"
            states = [u["state"] for u in inbox.ops("upstream")]
            assert states[0] == "CONNECTING" and states[-1] == "OPEN"
            assert json.loads(json.dumps(gw.status()))["counts"] == {"OPEN": 1}
