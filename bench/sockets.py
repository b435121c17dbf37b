"""4. Real sockets: N clients in one trio process against the reference server in another.

The reference ``fsm.server.KernelServer`` runs in a process of its own (started once
per section), so the client process measures only the clients: its CPU time
(``time.process_time``) and its resident memory (RSS, from ``/proc/self/statm``).
Each measurement is one fresh client process (so one run's freed memory is not the
next run's), with the garbage collector on, as users run. The clients are either

- **connectors**: ``open_connector(url, heartbeat_interval=None)``, K edits made while
  NOT_STARTED, then ``await conn.connect()`` (returns once OPEN; the K edits are flushed
  on the transition), then ``await conn.wait_acked()``; or
- **bare**: trio-websocket's ``open_websocket_url`` + reading frames until
  ``kernel-ready`` (that is "OPEN"), then sending the same K codes as one
  ``instantiate`` frame and reading until its ``ack``.

Every client of a run starts at once, after a warm-up of a few clients of the same kind
(imports, the shared engine). Measured per run: client CPU and wall time until all N
are OPEN, client CPU until all flushes are acknowledged (the like-for-like figure: a
connector's ``connect()`` returns once OPEN, and its flush is sent on that transition,
where a bare client sends its codes after), RSS per OPEN client, then M
edits per client while OPEN (connector: ``conn.edit``; bare: ``edit`` frames) until all
are acknowledged. Runs alternate between the two kinds; ratios are paired run by run,
then the median is taken. The scaling rows compare the connectors' client CPU per
connection at 100 and at 3,000 connections (``--quick``: 300).

    python bench/sockets.py --worker connector 1000 URL default  # one client process
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from common import Row, median

from fsm import RetryPolicy
from fsm.connector import open_connector

HERE = Path(__file__).resolve().parent
K_FLUSH = 10  # edits made before connecting, flushed on entering OPEN
M_EDITS = 6  # edits per client while OPEN, typed into CELLS cells (each edited again
CELLS = 2  # before its previous edit is acknowledged, as when someone types)
WARM_UP = 5


def raise_file_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the clients (one process) ----------------------------------------------------------


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


def _codes(i: int) -> dict[str, str]:
    return {f"cell-{c}": f"x_{c} = {i}" for c in range(K_FLUSH)}


# The scaling runs give every attempt as long as a crowd of 3,000 needs: a retried
# attempt would measure the server's queue, not the client's cost per connection.
POLICY = {"default": RetryPolicy(), "patient": RetryPolicy(connect_timeout=300.0)}


async def _connector_client(url: str, name: str, i: int, ph: _Phases,
                            stats: list[dict[str, int]], policy: str) -> None:
    async with open_connector(
        url, session_id=f"{name}-{i}", heartbeat_interval=None, rng=random.Random(i),
        policy=POLICY[policy],
    ) as conn:
        for cell, code in _codes(i).items():
            conn.edit(cell, code)
        await conn.connect()
        ph.opened.arrive()
        await conn.wait_acked()
        ph.flushed.arrive()
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


async def _bare_client(url: str, name: str, i: int, ph: _Phases,
                       stats: list[dict[str, int]], policy: str) -> None:
    async with trio_websocket.open_websocket_url(f"{url}?session_id={name}-{i}") as ws:
        await _read_until(ws, "kernel-ready", None)
        ph.opened.arrive()
        data = {"seq": 1, "codes": _codes(i), "auto_run": True}
        await ws.send_message(json.dumps({"op": "instantiate", "data": data}))
        await _read_until(ws, "ack", 1)
        ph.flushed.arrive()
        await ph.start_edits.wait()
        for j in range(M_EDITS):
            data = {"seq": 2 + j, "cell_id": f"cell-{j % CELLS}", "code": f"y = {i} + {j}"}
            await ws.send_message(json.dumps({"op": "edit", "data": data}))
        await _read_until(ws, "ack", 1 + M_EDITS)
        ph.edited.arrive()
        await ph.release.wait()


CLIENTS = {"connector": _connector_client, "bare": _bare_client}


async def _clients(kind: str, n: int, url: str, name: str, out: dict[str, Any],
                   policy: str = "default") -> None:
    client = CLIENTS[kind]
    stats: list[dict[str, int]] = []
    ph = _Phases(n)
    gc.collect()
    rss_before = rss()
    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(client, url, name, i, ph, stats, policy)
        with trio.fail_after(600):
            await ph.opened.done.wait()
        out["open_cpu"] = time.process_time() - cpu
        out["open_s"] = time.perf_counter() - wall
        with trio.fail_after(600):
            await ph.flushed.done.wait()
        out["flushed_s"] = time.perf_counter() - wall
        out["flushed_cpu"] = time.process_time() - cpu
        gc.collect()
        out["rss_per_open"] = (rss() - rss_before) / n
        start = time.perf_counter()
        ph.start_edits.set()
        with trio.fail_after(600):
            await ph.edited.done.wait()
        out["edits_s"] = time.perf_counter() - start
        ph.release.set()
    out["dials"] = sum(s["dials"] for s in stats)
    out["unknown_acks"] = sum(s["unknown_acks"] for s in stats)


def worker(kind: str, n: int, url: str, policy: str) -> None:
    raise_file_limit(n + 256)
    warm: dict[str, Any] = {}
    trio.run(_clients, kind, WARM_UP, url, f"warm-{os.getpid()}", warm, policy)
    out: dict[str, Any] = {"kind": kind, "n": n}
    trio.run(_clients, kind, n, url, f"{kind}-{os.getpid()}", out, policy)
    print(json.dumps(out), flush=True)


# -- the server (another process) and the section ------------------------------------------

SERVER = """
import resource, sys, trio
from fsm.server import KernelServer
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def main():
    server = KernelServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        print(server.url, flush=True)
        await trio.wrap_file(sys.stdin).read()  # until the benchmark closes stdin
        await server.shutdown()
        nursery.cancel_scope.cancel()
trio.run(main)
"""


@dataclass
class _Server:
    proc: subprocess.Popen[str] = field(init=False)
    url: str = field(init=False)

    def __enter__(self) -> _Server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _one(kind: str, n: int, url: str, policy: str = "default") -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE / "sockets.py"), "--worker", kind, str(n),
                           url, policy], capture_output=True, text=True, cwd=HERE.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} x{n} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run(quick: bool) -> list[Row]:
    wanted, small, large = (100, 100, 300) if quick else (1000, 100, 3000)
    limit = raise_file_limit(large + 256)
    if limit < large + 256:
        large = limit - 256
    repeats = 1 if quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"connector": [], "bare": []}
    scale: dict[int, list[float]] = {small: [], large: []}
    scale_bare: dict[int, list[float]] = {small: [], large: []}
    scale_dials = {small: 0, large: 0}
    with _Server() as server:
        for r in range(repeats):
            for kind in (("connector", "bare") if r % 2 == 0 else ("bare", "connector")):
                runs[kind].append(_one(kind, wanted, server.url))
        for _ in range(repeats):
            for n in (small, large):
                result = _one("connector", n, server.url, "patient")
                scale[n].append(result["open_cpu"] / n)
                scale_dials[n] += result["dials"] - n
                scale_bare[n].append(_one("bare", n, server.url)["open_cpu"] / n)
    c, b = runs["connector"], runs["bare"]
    n = wanted
    bare = "bare trio-websocket"

    def paired(key: str) -> float:
        return median([x[key] / y[key] for x, y in zip(c, b, strict=True)])

    cpu_ratio = paired("open_cpu")
    rss_ratio = paired("rss_per_open")
    scale_ratio = median(scale[large]) / median(scale[small])
    bare_scale_ratio = median(scale_bare[large]) / median(scale_bare[small])
    extra_dials = sum(r["dials"] for r in c) - n * len(c)
    unknown = median([float(r["unknown_acks"]) for r in c])
    return [
        Row("4", f"client CPU until {n} connectors are OPEN", median([r["open_cpu"] for r in c]),
            "s", baseline=f"{bare} until kernel-ready", ratio=cpu_ratio, target="<= 1.3x",
            met=cpu_ratio <= 1.3, note=f"{extra_dials} retried attempts in all runs"),
        Row("4", f"client CPU until {n} bare trio-websocket clients got kernel-ready",
            median([r["open_cpu"] for r in b]), "s"),
        Row("4", f"client CPU until {n} connectors are OPEN and their {K_FLUSH} edits acked",
            median([r["flushed_cpu"] for r in c]), "s",
            baseline=f"{bare}: kernel-ready, then one instantiate and its ack",
            ratio=paired("flushed_cpu"),
            note="the same work on both sides: a connector flushes on entering OPEN, before "
            "connect() returns; a bare client after"),
        Row("4", f"wall time until {n} connectors are OPEN", median([r["open_s"] for r in c]),
            "s", baseline=f"{bare}", ratio=paired("open_s"),
            note="the server (another process) takes its share of both"),
        Row("4", "RSS per OPEN connector (client process)",
            median([r["rss_per_open"] for r in c]), "B", baseline=f"{bare} per OPEN client",
            ratio=rss_ratio, target="<= 2x", met=rss_ratio <= 2),
        Row("4", "RSS per OPEN bare trio-websocket client", median([r["rss_per_open"] for r in b]),
            "B"),
        Row("4", f"connector client CPU per connection, {large:,} vs {small} connections",
            median(scale[large]), "s", baseline=f"{median(scale[small]) * 1e6:.0f} µs at {small}",
            ratio=scale_ratio, target="<= 1.2x", met=scale_ratio <= 1.2,
            note=f"GC on; connect_timeout 300 s; retried attempts: {scale_dials[small]} at "
            f"{small}, {scale_dials[large]} at {large:,}"),
        Row("4", f"bare trio-websocket client CPU per connection, {large:,} vs {small}",
            median(scale_bare[large]), "s",
            baseline=f"{median(scale_bare[small]) * 1e6:.0f} µs at {small}",
            ratio=bare_scale_ratio, note="the same growth without fsm, for comparison"),
        Row("4", f"flushed edits/s: {n} x {K_FLUSH} edits buffered before connect, all acked",
            n * K_FLUSH / median([r["flushed_s"] for r in c]), "/s",
            baseline=f"{bare}, one instantiate frame each",
            ratio=median([y["flushed_s"] / x["flushed_s"] for x, y in zip(c, b, strict=True)])),
        Row("4", f"edits/s while OPEN: {n} x {M_EDITS} edits, all acked",
            n * M_EDITS / median([r["edits_s"] for r in c]), "/s",
            baseline=f"{bare} edit frames",
            ratio=median([y["edits_s"] / x["edits_s"] for x, y in zip(c, b, strict=True)]),
            note=f"unknown_ack warnings per run: {unknown:.0f}"),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        sys.path.append(str(HERE.parent))
        from common import quiet_structlog

        quiet_structlog()
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker KIND N URL POLICY (or run bench/run.py)")
