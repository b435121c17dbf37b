"""5. A reconnect storm on MockClock: N clients lose the server at once; it returns 10 s later.

What runs: the real ``fsm.connector.Connector`` (``open_connector``, its lifecycle,
back-off timers, link tasks, trio-websocket client) under
``trio.testing.MockClock(autojump_threshold=0)``, so every delay is virtual and the run
costs seconds of CPU, not of waiting. With a MockClock no real I/O may be in flight, so
the *network* is simulated one level below the connector: ``trio.open_tcp_stream`` is
replaced, in this benchmark process only, by a function that records the attempt's
virtual time and

- while the server is down, raises ``ConnectionRefusedError`` (what a dead server's
  port does), which the connector reports as a failed attempt;
- otherwise returns one end of ``trio.testing.memory_stream_pair()`` whose other end
  is served by a small in-process kernel server built on trio-websocket's
  ``wrap_server_stream`` (handshake, ``kernel-ready``, an ``ack`` per
  ``instantiate``/``edit``).

Both the connector and the server thus speak real WebSocket frames over in-memory
streams; nothing touches a socket. (The connector cannot complete an attempt without a
WebSocket, and its ``KernelProtocol.prepare()`` hook can only fail one, so failing in
``prepare()`` alone, as first planned, could not make attempts succeed.)

Timeline: all N connect (OPEN at t~0), stay up 60 s (longer than ``min_uptime``, so the
drop resets the attempt count: the common case), then every server-side stream is
closed at the same instant (the clients see an abnormal closure, 1006); connects are
refused for the next 10 s; then they succeed. Measured: the peak number of attempts in
any 100 ms window (sliding) after the drop, with the default full jitter and with
``RetryPolicy(jitter=0)``, and the virtual time until all are OPEN again.
"""

from __future__ import annotations

import bisect
import functools
import json
import random
from typing import Any

import trio
import trio.testing
import trio_websocket
from common import Row

import fsm
from fsm.connector import Connector, open_connector

OUTAGE = 10.0
UPTIME = 60.0
WINDOW = 0.1


class SimulatedNetwork:
    """The server's availability on the virtual clock, every connect's time, the streams."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.down_from = float("inf")
        self.down_until = float("-inf")
        self.attempts: list[float] = []
        self.live: set[trio.CancelScope] = set()

    def is_up(self, now: float) -> bool:
        return not (self.down_from <= now < self.down_until)

    async def open_tcp_stream(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        now = trio.current_time()
        self.attempts.append(now)
        await trio.lowlevel.checkpoint()
        if not self.is_up(now):
            raise ConnectionRefusedError(111, "Connection refused (simulated)")
        client_end, server_end = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, server_end)
        return client_end

    async def _serve(self, stream: Any) -> None:
        scope = trio.CancelScope()
        self.live.add(scope)
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    request = await trio_websocket.wrap_server_stream(nursery, stream)
                    ws = await request.accept()
                    session_id = request.path.rsplit("session_id=", 1)[-1]
                    ready = {"session_id": session_id, "cell_ids": [], "codes": []}
                    await ws.send_message(json.dumps({"op": "kernel-ready", "data": ready}))
                    try:
                        while True:
                            frame = json.loads(await ws.get_message())
                            if frame["op"] in ("instantiate", "edit"):
                                ack = {"op": "ack", "data": {"seq": frame["data"]["seq"]}}
                                await ws.send_message(json.dumps(ack))
                    except trio_websocket.ConnectionClosed:
                        pass
                    nursery.cancel_scope.cancel()
        finally:
            self.live.discard(scope)
            await trio.aclose_forcefully(stream)

    def crash(self, now: float, outage: float) -> None:
        """Drop every connection at once (no close frame) and refuse connects for a while."""
        self.down_from, self.down_until = now, now + outage
        for scope in list(self.live):
            scope.cancel()


def peak_in_window(times: list[float], window: float) -> int:
    """The most attempts in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, t + window - 1e-12) - i)
    return best


async def _storm(n: int, policy: fsm.RetryPolicy, result: dict[str, float]) -> None:
    saved = trio.open_tcp_stream
    async with trio.open_nursery() as server_nursery:
        net = SimulatedNetwork(server_nursery)
        trio.open_tcp_stream = net.open_tcp_stream  # type: ignore[assignment]
        try:
            await _scenario(n, policy, net, result)
        finally:
            trio.open_tcp_stream = saved  # type: ignore[assignment]
            server_nursery.cancel_scope.cancel()


async def _scenario(
    n: int, policy: fsm.RetryPolicy, net: SimulatedNetwork, result: dict[str, float]
) -> None:
    conns: list[Connector] = []
    all_in = trio.Event()
    release = trio.Event()

    async def client(i: int) -> None:
        async with open_connector(
            "ws://kernel.test:8765/ws", policy=policy, session_id=f"storm-{i}",
            heartbeat_interval=None, rng=random.Random(i),
        ) as conn:
            conns.append(conn)
            if len(conns) == n:
                all_in.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(client, i)
        await all_in.wait()
        async with trio.open_nursery() as starting:
            for conn in conns:
                starting.start_soon(conn.connect)
        await trio.sleep(UPTIME)
        net.attempts.clear()
        t_drop = trio.current_time()
        net.crash(t_drop, OUTAGE)
        for conn in conns:
            await conn.wait_for(fsm.ConnState.CONNECTING)
        for conn in conns:
            await conn.wait_for(fsm.ConnState.OPEN)
        t_open = trio.current_time()
        result["peak"] = peak_in_window(net.attempts, WINDOW)
        result["attempts"] = len(net.attempts)
        result["all_open_after_drop"] = t_open - t_drop
        result["all_open_after_return"] = t_open - (t_drop + OUTAGE)
        result["first_attempt_after_drop"] = min(net.attempts) - t_drop
        result["gave_up"] = sum(1 for c in conns if c.close_reason is not None)
        release.set()


def _measure(n: int, policy: fsm.RetryPolicy) -> dict[str, float]:
    result: dict[str, float] = {}
    trio.run(functools.partial(_storm, n, policy, result),
             clock=trio.testing.MockClock(autojump_threshold=0))
    return result


def run(quick: bool) -> list[Row]:
    n = 100 if quick else 1000
    jitter = _measure(n, fsm.RetryPolicy())
    flat = _measure(n, fsm.RetryPolicy(jitter=0))
    ratio = jitter["peak"] / flat["peak"]
    default = fsm.RetryPolicy()
    return [
        Row("5", f"peak attempts per 100 ms, {n} clients, default jitter "
            f"({default.jitter:g}, `initial_delay` {default.initial_delay:g} s)",
            jitter["peak"], "n",
            baseline="jitter=0", ratio=ratio, target="<= 0.2x", met=ratio <= 0.2,
            note=f"{jitter['attempts']:.0f} attempts in all"),
        Row("5", f"peak attempts per 100 ms, {n} clients, RetryPolicy(jitter=0)", flat["peak"],
            "n", note=f"{flat['attempts']:.0f} attempts in all"),
        Row("5", "virtual time from the drop until all OPEN, default jitter",
            jitter["all_open_after_drop"], "s",
            note=f"{jitter['all_open_after_return']:.2f} s after the server returned"),
        Row("5", "virtual time from the drop until all OPEN, jitter=0",
            flat["all_open_after_drop"], "s",
            note=f"{flat['all_open_after_return']:.2f} s after the server returned"),
    ]
