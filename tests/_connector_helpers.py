"""Helpers shared by the connector tests (test_connector.py, test_connector_properties.py).

Every helper runs on real sockets on 127.0.0.1 with an ephemeral port: the reference
server (:class:`fsm.server.KernelServer`) is started in-process with
``nursery.start(server.serve)``. Nothing here sleeps to wait for a condition; waits go
through ``server.wait_until``, ``conn.wait_for``, ``conn.wait_acked`` or the
``transitions()`` stream, and callers bound them with ``trio.fail_after``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

import fsm
from fsm.connector import Connector, TransitionStream
from fsm.server import KernelServer

#: A retry policy that keeps the suite fast: 25 attempts a few milliseconds apart.
FAST = fsm.RetryPolicy(
    max_attempts=25,
    initial_delay=0.001,
    max_delay=0.005,
    connect_timeout=0.5,
    min_uptime=0.2,
)

#: Upper bound for one test; each normally takes milliseconds to a second.
LIMIT = 15.0

#: States in which the lifecycle no longer moves on its own.
SETTLED = (fsm.ConnState.OPEN, fsm.ConnState.CLOSED)


@asynccontextmanager
async def serving(server: KernelServer | None = None, **kwargs: Any) -> AsyncIterator[KernelServer]:
    """Serve ``server`` (or a new one built from ``kwargs``) on an ephemeral loopback port."""
    srv = server if server is not None else KernelServer(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        try:
            yield srv
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                srv.faults.reset()
                await srv.shutdown()
            nursery.cancel_scope.cancel()


def connector(server: KernelServer, **overrides: Any) -> AbstractAsyncContextManager[Connector]:
    """``open_connector`` to ``server`` with the fast policy, a seeded RNG and no heartbeat."""
    kwargs: dict[str, Any] = {
        "policy": FAST,
        "rng": random.Random(0),
        "close_timeout": 1.0,
        "heartbeat_interval": None,
    }
    kwargs.update(overrides)
    return fsm.open_connector(server.url, **kwargs)


async def collect(stream: TransitionStream) -> list[fsm.Transition]:
    """Every record left in ``stream``; call it once the connector's block has exited."""
    return [change async for change in stream]


async def next_matching(
    stream: TransitionStream, predicate: Callable[[fsm.Transition], bool]
) -> fsm.Transition:
    """Consume ``stream`` up to and including the first record that satisfies ``predicate``."""
    async for change in stream:
        if predicate(change):
            return change
    raise AssertionError("the transition stream ended before a matching record")


async def wait_state(conn: Connector, *states: fsm.ConnState) -> fsm.ConnState:
    """Return the first of ``states`` the connector is in (now or later)."""
    result: list[fsm.ConnState] = []
    async with trio.open_nursery() as nursery:

        async def one(state: fsm.ConnState) -> None:
            await conn.wait_for(state)
            if not result:
                result.append(state)
            nursery.cancel_scope.cancel()

        for state in states:
            nursery.start_soon(one, state)
    return result[0]


async def wait_settled_acked(conn: Connector) -> bool:
    """Wait until OPEN with nothing pending (True) or CLOSED (False), whichever comes first."""
    outcome: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def acked() -> None:
            await conn.wait_acked()
            if not outcome:
                outcome.append(True)
            nursery.cancel_scope.cancel()

        async def closed() -> None:
            await conn.wait_for(fsm.ConnState.CLOSED)
            if not outcome:
                outcome.append(False)
            nursery.cancel_scope.cancel()

        nursery.start_soon(acked)
        nursery.start_soon(closed)
    return outcome[0]


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task currently alive in this trio run, found by walking the task tree."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found
