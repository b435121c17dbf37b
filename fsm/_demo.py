"""``fsm demo``: the seed's whole story, against a real server on loopback.

A lazy client edits while NOT_STARTED, connects through refused attempts,
flushes its edits on OPEN, survives a dropped connection, gives up after a run
of failures, recovers with ``connect()``, and closes. Delays are shortened so the
demo takes seconds; the real defaults are printed at the start.
"""

from __future__ import annotations

import random
from typing import Any

import structlog
import trio

from fsm._errors import ConnectionFailed
from fsm._policy import RetryPolicy
from fsm._types import ConnState
from fsm.connector import open_connector
from fsm.server import KernelServer

# Short enough that 25 backed-off attempts take about a second.
DEMO_POLICY = RetryPolicy(
    initial_delay=0.02, multiplier=1.6, max_delay=0.08, connect_timeout=2.0, min_uptime=0.2
)
_STEP_TIMEOUT = 30.0


def _say(text: str) -> None:
    structlog.get_logger("fsm.demo").info(text)


async def run_demo(failures: int, rng: random.Random) -> dict[str, Any]:
    """Run every scene; return the summary that ``fsm demo`` prints."""
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

            async def count_transitions() -> None:
                nonlocal transitions
                async for _ in changes:
                    transitions += 1

            nursery.start_soon(count_transitions)
            with trio.fail_after(_STEP_TIMEOUT):
                _say(f"1. lazy: state {conn.state}, no socket yet; editing two cells")
                conn.edit("c1", "x = 10")
                conn.edit("c2", "y = x * 2")
                conn.edit("c1", "x = 20")  # the latest code per cell wins
                _say(f"   pending edits: {conn.pending_edits}")

                _say("2. Connect: the server refuses the first 3 handshakes (HTTP 503)")
                server.faults.refuse_handshakes = 3
                await conn.connect()
                await conn.wait_acked()
                _say(f"   OPEN after {conn.attempts} failed attempts; server cells {server.cells}")

                _say("3. an edit while OPEN is sent at once and acknowledged")
                conn.edit("c3", "z = x + y")
                await conn.wait_acked()
                await trio.sleep(policy.min_uptime)  # let the connection count as stable
                _say("4. the server drops every connection: automatic reconnect")
                await server.drop_all()
                conn.edit("c2", "y = x * 3")  # made while reconnecting: buffered, then flushed
                await conn.wait_acked()
                _say(f"   reconnected; server cells {server.cells}")

                await trio.sleep(policy.min_uptime)
                _say(f"5. the server refuses everything: {failures} failed attempts, then GAVE_UP")
                server.faults.refuse_handshakes = 10**9
                await server.drop_all()
                await conn.wait_for(ConnState.CLOSED)
                _say(f"   CLOSED({conn.close_reason}) after {conn.attempts} attempts; "
                     f"the Connect button still works:")
                conn.edit("c1", "x = 30")

                _say("6. the server recovers; connect() starts a new cycle")
                server.faults.refuse_handshakes = 0
                try:
                    await conn.connect()
                except ConnectionFailed as exc:  # pragma: no cover - shown, not expected
                    _say(f"   connect failed: {exc}")
                await conn.wait_acked()
                _say(f"   OPEN again; server cells {server.cells}")

                _say("7. close")
                await conn.aclose()
            summary = {
                "ok": conn.state is ConnState.CLOSED and not conn.pending_edits
                and server.cells.get("c1") == "x = 30",
                "final_state": f"{conn.state}({conn.close_reason})",
                "handshakes_seen": server.handshakes,
                "connections_opened": server.connections_opened,
                "dials": conn.stats["dials"],
                "server_cells": dict(server.cells),
                "edits_pending": len(conn.pending_edits),
            }
        await server.shutdown()
        nursery.cancel_scope.cancel()
    summary["transitions"] = transitions
    return summary
