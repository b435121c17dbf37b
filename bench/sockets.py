"""4. Real sockets: N connectors in one trio process against the in-process reference server.

Both sides run in this one process and one thread, over 127.0.0.1: the reference
``fsm.server.KernelServer`` and N clients, which are either

- **connectors**: ``open_connector(url, heartbeat_interval=None)``, K edits made while
  NOT_STARTED, then ``await conn.connect()`` (returns once OPEN; the K edits are flushed
  on the transition), then ``await conn.wait_acked()``; or
- **bare**: trio-websocket's ``open_websocket_url`` + reading frames until
  ``kernel-ready`` (that is "OPEN"), then sending the same K codes as one
  ``instantiate`` frame and reading until its ``ack``.

Every client is started at once. Measured per run: the time until all N are OPEN, the
time until all flushes are acknowledged, then M edits per client while OPEN (connector:
``conn.edit``; bare: ``edit`` frames) until all are acknowledged. Runs alternate between
the two kinds; medians over repeats, ratios paired run by run. A separate pass under
:mod:`tracemalloc` (connect and flush only) measures the Python heap per open
connection; it includes the server's side of each connection, which is the same for
both kinds, so the difference is the connector's own cost. The ``unknown_ack`` warnings
the connectors logged are counted too (acks of edits superseded before their ack came),
and so are the edit frames the server received: the connector holds the edits its writer
has not reached yet and sends each cell's latest code once, so it may send fewer frames
than the bare clients, which send one per edit.
"""

from __future__ import annotations

import functools
import gc
import json
import random
import resource
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio_websocket
from common import Row, median

from fsm.connector import open_connector
from fsm.server import KernelServer

K_FLUSH = 10  # edits made before connecting, flushed on entering OPEN
M_EDITS = 6  # edits per client while OPEN, typed into CELLS cells (each edited again
CELLS = 2  # before its previous edit is acknowledged, as when someone types)


@dataclass
class Run:
    n: int
    open_s: float = 0.0
    flushed_s: float = 0.0
    edits_s: float = 0.0
    memory: float | None = None
    dials: int = 0
    unknown_acks: int = 0
    edit_frames: int = 0
    errors: list[str] = field(default_factory=list)


def raise_file_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Barrier:
    """Counts clients through a phase; ``done`` is set when all ``n`` have passed."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = trio.Event()

    def arrive(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set()


class _Phases:
    def __init__(self, n: int) -> None:
        self.opened = _Barrier(n)
        self.flushed = _Barrier(n)
        self.edited = _Barrier(n)
        self.start_edits = trio.Event()
        self.release = trio.Event()
        # The memory pass skips the edits: releasing cancels the clients' edit phase.
        self.release_scopes: list[trio.CancelScope] = []

    def release_all(self) -> None:
        self.release.set()
        for scope in self.release_scopes:
            scope.cancel()


def _codes(i: int, round_: int) -> dict[str, str]:
    return {f"cell-{c}": f"x_{c} = {i} + {round_}" for c in range(K_FLUSH)}


async def _connector_client(url: str, i: int, ph: _Phases, stats: list[dict[str, int]]) -> None:
    async with open_connector(
        url, session_id=f"conn-{i}", heartbeat_interval=None, rng=random.Random(i)
    ) as conn:
        for cell, code in _codes(i, 0).items():
            conn.edit(cell, code)
        await conn.connect()
        ph.opened.arrive()
        await conn.wait_acked()
        ph.flushed.arrive()
        with trio.CancelScope() as phase:
            ph.release_scopes.append(phase)
            await ph.start_edits.wait()
            for j in range(M_EDITS):
                conn.edit(f"cell-{j % CELLS}", f"y = {i} + {j}")
            await conn.wait_acked()
            ph.edited.arrive()
            await ph.release.wait()
        stats.append(conn.stats)


async def _read_until(ws: trio_websocket.WebSocketConnection, op: str, seq: int | None) -> None:
    while True:
        frame = json.loads(await ws.get_message())
        if frame["op"] == op and (seq is None or frame["data"]["seq"] == seq):
            return


async def _bare_client(url: str, i: int, ph: _Phases, stats: list[dict[str, int]]) -> None:
    async with trio_websocket.open_websocket_url(f"{url}?session_id=bare-{i}") as ws:
        await _read_until(ws, "kernel-ready", None)
        ph.opened.arrive()
        data = {"seq": 1, "codes": _codes(i, 0), "auto_run": True}
        await ws.send_message(json.dumps({"op": "instantiate", "data": data}))
        await _read_until(ws, "ack", 1)
        ph.flushed.arrive()
        with trio.CancelScope() as phase:
            ph.release_scopes.append(phase)
            await ph.start_edits.wait()
            for j in range(M_EDITS):
                data = {"seq": 2 + j, "cell_id": f"cell-{j % CELLS}", "code": f"y = {i} + {j}"}
                await ws.send_message(json.dumps({"op": "edit", "data": data}))
            await _read_until(ws, "ack", 1 + M_EDITS)
            ph.edited.arrive()
            await ph.release.wait()


Client = Callable[[str, int, _Phases, list[dict[str, int]]], Awaitable[None]]


async def _one_run(client: Client, n: int, *, trace_memory: bool) -> Run:
    run = Run(n)
    server = KernelServer()
    stats: list[dict[str, int]] = []
    async with trio.open_nursery() as outer:
        await outer.start(server.serve)
        ph = _Phases(n)
        gc.collect()
        if trace_memory:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0] if trace_memory else 0
        start = time.perf_counter()
        async with trio.open_nursery() as clients:
            for i in range(n):
                clients.start_soon(client, server.url, i, ph, stats)
            with trio.fail_after(300):
                await ph.opened.done.wait()
                run.open_s = time.perf_counter() - start
                await ph.flushed.done.wait()
                run.flushed_s = time.perf_counter() - start
            if trace_memory:
                gc.collect()
                run.memory = (tracemalloc.get_traced_memory()[0] - base) / n
                tracemalloc.stop()
            else:  # the memory pass stops here
                start = time.perf_counter()
                ph.start_edits.set()
                with trio.fail_after(300):
                    await ph.edited.done.wait()
                run.edits_s = time.perf_counter() - start
                run.edit_frames = server.frames_received["edit"]
            ph.release_all()
        await server.shutdown()
    run.dials = sum(s["dials"] for s in stats)
    run.unknown_acks = sum(s["unknown_acks"] for s in stats)
    return run


def _runs(n: int, repeats: int) -> tuple[dict[str, list[Run]], dict[str, float]]:
    clients: dict[str, Client] = {"connector": _connector_client, "bare": _bare_client}
    runs: dict[str, list[Run]] = {name: [] for name in clients}
    names = list(clients)
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            one = functools.partial(_one_run, clients[name], n, trace_memory=False)
            runs[name].append(trio.run(one))
    memory = {}
    for name in names:
        traced = trio.run(functools.partial(_one_run, clients[name], n, trace_memory=True))
        assert traced.memory is not None
        memory[name] = traced.memory
    return runs, memory


def run(quick: bool) -> list[Row]:
    wanted = 100 if quick else 1000
    limit = raise_file_limit(2 * wanted + 256)
    n = min(wanted, (limit - 256) // 2)
    note_n = "" if n == wanted else f" (the open-file limit {limit} allows only {n})"
    runs, memory = _runs(n, 1 if quick else 3)
    c, b = runs["connector"], runs["bare"]
    open_c, open_b = median([r.open_s for r in c]), median([r.open_s for r in b])
    flush_c, flush_b = median([r.flushed_s for r in c]), median([r.flushed_s for r in b])
    edits_c = median([r.edits_s for r in c])
    # Runs alternate connector/bare: compare each pair, then take the median.
    open_ratio = median([x.open_s / y.open_s for x, y in zip(c, b, strict=True)])
    bare = "bare trio-websocket"
    extra_dials = sum(r.dials for r in c) - n * len(c)
    unknown = median([float(r.unknown_acks) for r in c])
    frames_c = median([float(r.edit_frames) for r in c])
    frames_b = median([float(r.edit_frames) for r in b])
    rows = [
        Row("4", f"time until {n} connectors are OPEN{note_n}", open_c, "s",
            baseline=f"{bare} until kernel-ready", ratio=open_ratio, target="<= 1.2x",
            met=open_ratio <= 1.2, note=f"{extra_dials} retried attempts in all runs"),
        Row("4", f"time until {n} bare trio-websocket clients got kernel-ready", open_b, "s"),
        Row("4", f"flushed edits/s: {n} x {K_FLUSH} edits buffered before connect, all acked",
            n * K_FLUSH / flush_c, "/s", baseline=f"{bare}, one instantiate frame each",
            ratio=median([y.flushed_s / x.flushed_s for x, y in zip(c, b, strict=True)]),
            note=f"{flush_c:.2f} s from start vs {flush_b:.2f} s"),
        Row("4", f"edits/s while OPEN: {n} x {M_EDITS} edits, all acked", n * M_EDITS / edits_c,
            "/s", baseline=f"{bare} edit frames",
            ratio=median([y.edits_s / x.edits_s for x, y in zip(c, b, strict=True)]),
            note=f"edit frames per run: {frames_c:.0f} vs {frames_b:.0f} (the connector sends "
            f"each cell's latest code once its writer is free); unknown_ack warnings per run: "
            f"{unknown:.0f}"),
        Row("4", "Python heap per open connection, client + server side", memory["connector"],
            "B", baseline=f"{bare} (+ server side)", ratio=memory["connector"] / memory["bare"]),
        Row("4", "  of which the connector adds over a bare WebSocket",
            memory["connector"] - memory["bare"], "B"),
    ]
    return rows
