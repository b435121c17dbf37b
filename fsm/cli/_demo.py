"""``fsm demo``: the seed's whole story, against a real server on loopback.

A lazy client edits while NOT_STARTED, connects through refused attempts,
flushes its edits on OPEN, survives a dropped connection, gives up after a run
of failures, recovers with ``connect()``, and closes. Delays are shortened so the
demo takes seconds; the real defaults are printed at the start.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from fsm.core._errors import ConnectionFailed
from fsm.core._policy import RetryPolicy
from fsm.core._types import ConnState
from fsm.driver._connector import open_connector
from fsm.servers.reference._server import KernelServer

# Short enough that 25 backed-off attempts take about a second.
DEMO_POLICY = RetryPolicy(
    initial_delay=0.02, multiplier=1.6, max_delay=0.08, connect_timeout=2.0, min_uptime=0.2
)
_STEP_TIMEOUT = 30.0


async def run_demo(
    failures: int, rng: random.Random, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every scene, narrating with ``say``; return the summary that ``fsm demo`` prints.

    Every edit is narrated with the state it was made in and where it goes, and each
    scene ends by comparing the server's cells with the client's latest code, so that
    "no edit lost" can be seen, not only asserted.
    """
    if failures < 1:
        raise ValueError(f"--failures must be >= 1, got {failures}")
    policy = RetryPolicy(
        max_attempts=failures,
        initial_delay=DEMO_POLICY.initial_delay,
        multiplier=DEMO_POLICY.multiplier,
        max_delay=DEMO_POLICY.max_delay,
        connect_timeout=DEMO_POLICY.connect_timeout,
        min_uptime=DEMO_POLICY.min_uptime,
    )
    default = RetryPolicy()
    server = KernelServer(cells={"c1": "x = 1", "c2": "y = x + 1"})
    summary: dict[str, Any] = {}
    transitions = 0
    latest: dict[str, str] = {}  # what the client edited last, per cell
    edits_made = 0
    _say = say
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        _say(
            f"demo delays: first {policy.initial_delay} s, x{policy.multiplier}, cap "
            f"{policy.max_delay} s (library defaults: {default.initial_delay} s, "
            f"x{default.multiplier}, cap {default.max_delay} s, {default.max_attempts} attempts)"
        )
        async with open_connector(
            server.url, policy=policy, rng=rng, close_timeout=2.0, heartbeat_interval=5.0
        ) as conn:
            changes = conn.transitions()

            def edit(cell_id: str, code: str) -> None:
                where = "sent now" if conn.state is ConnState.OPEN else "buffered until OPEN"
                conn.edit(cell_id, code)
                latest[cell_id] = code
                nonlocal edits_made
                edits_made += 1
                _say(f"   edit {cell_id} = {code!r} while {conn.state}: {where}")

            def check_server(scene: str) -> None:
                held = {cell: server.cells.get(cell) for cell in latest}
                lost = {cell: code for cell, code in latest.items() if held[cell] != code}
                verdict = "no edit lost" if not lost else f"LOST: {lost}"
                _say(f"   {scene}: server holds {held}: {verdict}")

            async def count_transitions() -> None:
                nonlocal transitions
                async for _ in changes:
                    transitions += 1

            nursery.start_soon(count_transitions)
            with trio.fail_after(_STEP_TIMEOUT):
                _say(f"1. lazy: state {conn.state}, no socket yet; editing two cells")
                edit("c1", "x = 10")
                edit("c2", "y = x * 2")
                edit("c1", "x = 20")  # the latest code per cell wins
                _say(f"   pending edits (latest per cell): {conn.pending_edits}")

                refusals = min(3, failures - 1)  # the cycle must still succeed
                _say(f"2. Connect: the server refuses the first {refusals} handshakes (HTTP 503)")
                server.faults.refuse_handshakes = refusals
                await conn.connect()
                await conn.wait_acked()
                _say(f"   OPEN after {conn.attempts} failed attempts; the flush carried both cells")
                check_server("after the flush")

                _say("3. an edit while OPEN is sent at once and acknowledged")
                edit("c3", "z = x + y")
                await conn.wait_acked()
                check_server("after the ack")
                await trio.sleep(policy.min_uptime)  # let the connection count as stable
                _say("4. the server drops every connection: automatic reconnect")
                await server.drop_all()
                edit("c2", "y = x * 3")  # made while reconnecting: buffered, then flushed
                await conn.wait_acked()
                check_server("reconnected and flushed")

                await trio.sleep(policy.min_uptime)
                _say(f"5. the server refuses everything: {failures} failed attempts, then GAVE_UP")
                server.faults.refuse_handshakes = 10**9
                await server.drop_all()
                await conn.wait_for(ConnState.CLOSED)
                _say(f"   CLOSED({conn.close_reason}) after {conn.attempts} attempts; "
                     f"the Connect button still works:")
                edit("c1", "x = 30")

                _say("6. the server recovers; connect() starts a new cycle")
                server.faults.refuse_handshakes = 0
                try:
                    await conn.connect()
                except ConnectionFailed as exc:  # pragma: no cover - shown, not expected
                    _say(f"   connect failed: {exc}")
                await conn.wait_acked()
                check_server("OPEN again")

                _say("7. close")
                await conn.aclose()
            summary = {
                "ok": conn.state is ConnState.CLOSED and not conn.pending_edits
                and all(server.cells.get(cell) == code for cell, code in latest.items()),
                "final_state": f"{conn.state}({conn.close_reason})",
                "handshakes_seen": server.handshakes,
                "connections_opened": server.connections_opened,
                "dials": conn.stats["dials"],
                "server_cells": dict(server.cells),
                "edits_made": edits_made,
                "edits_pending": len(conn.pending_edits),
            }
        await server.shutdown()
        nursery.cancel_scope.cancel()
    summary["transitions"] = transitions
    return summary
