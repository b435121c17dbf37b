"""Past one machine: a client moved from one gateway process to another loses no edit.

Two :class:`fsm.gateway.Gateway` instances (in-process, real sockets on 127.0.0.1) stand
in front of one :class:`fsm.server.KernelServer`. A tiny TCP forwarder stands for the load
balancer with session affinity: every connection goes to the gateway it currently routes
to, as ``hash-type consistent`` does for a session id until that backend is down. The
client's connector points at the forwarder; gateway 1 goes away while edits it took are
not yet acknowledged upstream; the forwarder routes to gateway 2, where the client
reconnects and re-flushes every edit that was never acked.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import fsm
from fsm import ConnState
from fsm.gateway import Gateway
from tests._connector_helpers import FAST, LIMIT, serving
from tests._gateway_helpers import gateway_to

SESSION = "affinity-7f3a"


class Balancer:
    """A TCP forwarder to one backend port at a time (``route``); ``cut()`` resets what it holds."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.port = 0
        self.forwarded: list[int] = []  # the backend of every connection, in order
        self._live: set[trio.CancelScope] = set()

    def route(self, backend: int) -> None:
        self.backend = backend

    def cut(self) -> None:
        """Drop every forwarded connection at once (the backend is gone for the balancer)."""
        for scope in list(self._live):
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, downstream: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        self._live.add(scope)
        try:
            with scope:
                backend = self.backend
                self.forwarded.append(backend)
                upstream = await trio.open_tcp_stream("127.0.0.1", backend)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, downstream, nursery.cancel_scope)
        except OSError:
            pass  # the backend refused: the client sees its connection end
        finally:
            self._live.discard(scope)
            await trio.aclose_forcefully(downstream)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream, done: trio.CancelScope) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()


@asynccontextmanager
async def crashable(gw: Gateway) -> AsyncIterator[trio.CancelScope]:
    """Serve ``gw``; cancelling the yielded scope stops it as a crashed process would:
    no close frame to its clients, every task of it cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve)
        yield nursery.cancel_scope
        nursery.cancel_scope.cancel()


def cells(version: int, names: range) -> dict[str, str]:
    return {f"c{i}": f"x{i} = {version}" for i in names}


@pytest.mark.parametrize("how", ["crash", "partition"])
async def test_client_moved_to_another_gateway_loses_no_edit(how: str) -> None:
    """Gateway 1 goes away (crashes, or the balancer loses it while it lives on) holding
    edits the kernel has not acknowledged; the client, routed to gateway 2, re-flushes
    them and the kernel ends with the client's latest code for every cell."""
    gateway_options = {"policy": FAST, "heartbeat_interval": None, "close_timeout": 0.5}
    async with serving() as server, gateway_to(server, **gateway_options) as gw2:
        gw1 = Gateway(server.url, **gateway_options)  # type: ignore[arg-type]
        async with crashable(gw1) as gw1_process, trio.open_nursery() as nursery:
            lb = Balancer(gw1.port)
            await nursery.start(lb.serve)
            url = f"ws://127.0.0.1:{lb.port}/ws"
            latest: dict[str, str] = {}
            async with fsm.open_connector(
                url, session_id=SESSION, policy=FAST, rng=random.Random(3),
                heartbeat_interval=None, close_timeout=1.0,
            ) as conn:
                with trio.fail_after(LIMIT):
                    # On gateway 1: edits, the first Run starts its upstream, all acked.
                    for cell, code in cells(1, range(5)).items():
                        conn.edit(cell, code)
                        latest[cell] = code
                    await conn.request("run", {"cell_id": "c0"})
                    await conn.wait_acked()
                    assert server.cells == latest

                    # The kernel stops reading: what gateway 1 takes now is never acked.
                    server.faults.freeze = True
                    for cell, code in cells(2, range(5)).items():
                        conn.edit(cell, code)
                        latest[cell] = code
                    taken = cells(2, range(5))
                    await gw1.wait_until(lambda g: all(
                        g.sessions[SESSION].doc.get(cell) == code for cell, code in taken.items()
                    ))
                    assert conn.pending_edits == taken  # gateway 1 has them, the kernel not

                    # Gateway 1 goes away; the balancer sends the session elsewhere.
                    lb.route(gw2.port)
                    if how == "crash":
                        gw1_process.cancel()
                    else:
                        lb.cut()  # gateway 1 lives on, with its upstream session
                    for cell, code in cells(3, range(3, 8)).items():  # edits during the move
                        conn.edit(cell, code)
                        latest[cell] = code
                    server.faults.freeze = False

                    # On gateway 2: the client reconnects and re-flushes; a Run starts
                    # gateway 2's upstream session (the same session id upstream).
                    await gw2.wait_until(lambda g: SESSION in g.sessions)
                    await conn.wait_for(ConnState.OPEN)
                    while True:
                        try:
                            await conn.request("run", {"cell_id": "c0"})
                            break
                        except fsm.NotConnected:
                            await conn.wait_for(ConnState.OPEN)  # sent on a dying link
                    await conn.wait_acked()
                    # Acked by gateway 2 means the kernel has it: no frame left to wait for.
                    for cell, code in latest.items():
                        assert server.cells.get(cell) == code, cell
                    assert lb.forwarded[0] == gw1.port and lb.forwarded[-1] == gw2.port
                    # Gateway 2 could only learn the codes gateway 1 never got acked (and
                    # that were not edited again) from the client's re-flush.
                    doc2 = gw2.sessions[SESSION].doc
                    assert {cell: doc2.get(cell) for cell in ("c0", "c1", "c2")} == {
                        cell: taken[cell] for cell in ("c0", "c1", "c2")
                    }
                    assert gw2.sessions[SESSION].pending == 0
                    if how == "partition":
                        # Gateway 2's upstream fenced gateway 1's: one writer per session.
                        await gw1.wait_until(
                            lambda g: g.sessions[SESSION].upstream.conn is not None
                            and g.sessions[SESSION].upstream.conn.state is ConnState.CLOSED
                        )
                        for cell, code in latest.items():
                            assert server.cells.get(cell) == code, cell
            nursery.cancel_scope.cancel()
