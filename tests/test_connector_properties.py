"""Property test of the connector on real sockets: no edit is lost, whatever the faults.

Hypothesis draws a schedule of faults (connections reset or closed with a retryable code,
refused handshakes, a brief freeze, malformed frames) interleaved with edits; each example
runs its own reference server and connector inside ``trio.run``. Once the server heals and
the connector settles OPEN with nothing pending, the server must hold exactly the client's
latest code for every cell edited (DESIGN.md section 8, invariant 5).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio
from _connector_helpers import (
    connector,
    serving,
    wait_settled_acked,
    wait_state,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fsm
from fsm.server import KernelServer, malformed_frames

#: Few examples: each one runs a real server and real reconnects (about 0.1-0.5 s).
EXAMPLES = {"ci": 25, "long": 300}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 15)

#: Close codes the connector must treat as a transient loss (reconnect).
RETRYABLE_CLOSES = [
    (1001, "going away"),
    (1011, "internal error"),
    (1012, "restart"),
    (1013, "try again later"),
    (1000, "bye"),
    (4000, "application"),
]

#: Malformed frames small enough to send on every reconnect (the 1 MiB one is left out).
BAD_FRAMES = {k: v for k, v in malformed_frames().items() if k != "oversized"}

CELLS = ["a", "b", "c", "d"]

edit_step = st.tuples(st.just("edit"), st.sampled_from(CELLS), st.text(max_size=8))
fault_step = st.one_of(
    # A loss of a connection; with settle_first, of one that is surely OPEN by then.
    st.tuples(st.just("drop_all"), st.booleans()),
    st.tuples(st.just("close"), st.booleans(), st.sampled_from(RETRYABLE_CLOSES)),
    # 30 refusals outlast a whole cycle: CLOSED(GAVE_UP), and the final connect() recovers.
    st.tuples(st.just("refuse"), st.sampled_from([1, 3, 30])),
    st.tuples(st.just("freeze"), st.sampled_from([0.01, 0.05, 0.2])),
    st.tuples(
        st.just("bad_frames"), st.lists(st.sampled_from(sorted(BAD_FRAMES)), min_size=1, max_size=3)
    ),
    st.tuples(st.just("settle")),
)
schedules = st.lists(st.one_of(edit_step, fault_step, fault_step), min_size=2, max_size=12)


async def settle(conn: fsm.Connector) -> None:
    """Wait (at most 2 s) until the connector is OPEN or CLOSED, not on its way somewhere."""
    with trio.move_on_after(2.0):
        await wait_state(conn, fsm.ConnState.OPEN, fsm.ConnState.CLOSED)


async def apply_step(
    server: KernelServer, conn: fsm.Connector, step: tuple[Any, ...], latest: dict[str, str]
) -> None:
    kind = step[0]
    if kind == "edit":
        _, cell, code = step
        conn.edit(cell, code)
        latest[cell] = code
    elif kind == "drop_all":
        if step[1]:
            await settle(conn)
        await server.drop_all()
    elif kind == "close":
        if step[1]:
            await settle(conn)
        code, reason = step[2]
        await server.close_all(code, reason)
    elif kind == "refuse":
        server.faults.refuse_handshakes = step[1]
    elif kind == "freeze":
        # A fault's duration, not a wait for a condition: the server is unresponsive this long.
        server.faults.freeze = True
        await trio.sleep(step[1])
        server.faults.freeze = False
    elif kind == "bad_frames":
        server.faults.bad_frames = [BAD_FRAMES[name] for name in step[1]]
    elif kind == "settle":
        await settle(conn)
    else:  # pragma: no cover - the strategy draws nothing else
        raise AssertionError(kind)


async def scenario(initial: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]) -> None:
    latest: dict[str, str] = {}
    with trio.fail_after(30):
        async with (
            serving(cells={"a": "server a", "z": "server z"}) as server,
            connector(
                server, heartbeat_interval=0.05, heartbeat_timeout=0.1, close_timeout=0.5
            ) as conn,
            trio.open_nursery() as nursery,
        ):
            for step in initial:
                await apply_step(server, conn, step, latest)

            async def start() -> None:
                # A failed cycle is fine here: the final connect() below recovers.
                with contextlib.suppress(fsm.ConnectionFailed):
                    await conn.connect()

            nursery.start_soon(start)
            for step in steps:
                await apply_step(server, conn, step, latest)
            # Heal the server, then settle: OPEN with every edit acknowledged.
            server.fault_plan.clear()
            server.faults.reset()
            recovered = False
            while not await wait_settled_acked(conn):
                recovered = True
                with contextlib.suppress(fsm.ConnectionFailed):
                    await conn.connect()  # from CLOSED (GAVE_UP): a new cycle
            assert conn.state is fsm.ConnState.OPEN
            assert conn.pending_edits == {}
            assert {cell: server.cells.get(cell) for cell in latest} == latest
            assert server.cells["z"] == "server z"  # never edited, never touched
            assert conn.stats["dials"] >= server.connections_opened >= 1
            # Shown by --hypothesis-show-statistics: how hard the examples pushed.
            event(f"connections opened: {min(server.connections_opened, 5)}")
            event(f"recovered from CLOSED: {recovered}")
            event(f"bad frames read: {conn.stats['bad_frames'] > 0}")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The autouse structlog fixture holds no per-example state.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(initial=st.lists(edit_step, max_size=4), steps=schedules)
def test_no_edit_is_lost_whatever_the_faults(
    initial: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]
) -> None:
    """After any schedule of faults and edits, once healed and settled OPEN with nothing pending,
    the server holds exactly the client's latest code for every cell edited."""
    trio.run(scenario, initial, steps)
