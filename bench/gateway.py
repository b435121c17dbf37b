"""Gateway benchmarks: a shared upstream view in an outage; 10,000 sessions in one gateway.

    python bench/gateway.py                  # both parts, 10,000 sessions (several minutes)
    python bench/gateway.py --quick          # 1,000 sessions
    python bench/gateway.py --part outage    # only the outage part (or: scale)

Everything runs in one process per measurement, with **in-memory streams** (trio's
``memory_stream_pair``) in place of TCP, through the ``open_stream`` hooks of the
connector and of :class:`fsm.gateway.Gateway`, and :meth:`fsm.server.KernelServer.handle_stream`
(or :meth:`fsm.gateway.Gateway.handle_stream`) serving the other end: real WebSocket
handshakes and frames, no socket. The upstream is :data:`SHARDS` reference servers behind
one address, a session's id choosing its shard: the reference server lists every cell it
holds in each ``kernel-ready``, so one server holding 10,000 sessions' cells would make
every handshake carry all of them (a cost of that test server, not of what is measured).

**1. Outage** (on ``trio.testing.MockClock(autojump_threshold=0)``: every wait is virtual,
the run costs CPU, not waiting). N connectors, each with one cell, connect and stay OPEN
for 10 s (longer than ``min_uptime``); then the upstream goes away: every connection is
reset and every connect refused (a dead host's port) for :data:`OUTAGE` seconds, during
which every session edits its cell; then it is back. Measured, for sessions dialling on
their own (*independent*: the connector alone, default :class:`~fsm.RetryPolicy`) and
sessions sharing one :class:`~fsm.gateway.UpstreamGate` (*shared*, default
:class:`~fsm.gateway.GatePolicy`): the peak number of dials reaching the host in any 1 s
(sliding) during the outage, the dials in all, and the virtual time from the upstream's
return until every session is OPEN with its edit acknowledged, and the peak dials in any
1 s after the return (the surge the host sees). The server's cells are then checked
against every session's latest code.

**2. Scale** (on MockClock too; CPU is measured with ``time.process_time``). N clients
(``fsm`` connectors) attach to one :class:`~fsm.gateway.Gateway`, each edits one cell
and waits for its ack (which the gateway gives once the upstream acknowledged it), so
every session has an OPEN client and an OPEN upstream (each client also sends one
``run``: a gateway starts a session's upstream on its first request, never on edits
alone). Then every client makes :data:`EDITS` more edits, each awaited. The same is run
*direct* (the same clients straight to the servers, no gateway), in a separate
interpreter, as the baseline: memory per session is the growth of the process's resident
set (``/proc/self/statm``) with the gateway minus without, per session; CPU per
forwarded edit likewise.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing
from common import Row, markdown_table, quiet_structlog

import fsm
from fsm.connector import Connector, StreamOpener
from fsm.gateway import GatePolicy, Gateway, UpstreamGate
from fsm.server import KernelServer

URL = "ws://kernel.invalid/ws"
SHARDS = 100
OUTAGE = 30.0
UPTIME = 10.0
WINDOW = 1.0
EDITS = 5


class Upstream:
    """The reference servers behind one address, with an on/off switch; every dial is logged."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.servers = [KernelServer(handshake_timeout=60.0) for _ in range(SHARDS)]
        self.nursery = nursery
        self.down = False
        self.dials: list[float] = []

    def server_for(self, index: int) -> KernelServer:
        return self.servers[index % SHARDS]

    def opener(self, index: int) -> StreamOpener:
        server = self.server_for(index)

        async def open_stream(host: str, port: int, secure: bool) -> trio.abc.Stream:
            self.dials.append(trio.current_time())
            await trio.lowlevel.checkpoint()
            if self.down:
                raise ConnectionRefusedError(111, "Connection refused (simulated dead host)")
            client, server_side = trio.testing.memory_stream_pair()
            self.nursery.start_soon(server.handle_stream, server_side)
            return client

        return open_stream

    async def drop_all(self) -> None:
        for server in self.servers:
            await server.drop_all()

    def cells(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for server in self.servers:
            merged.update(server.cells)
        return merged


def peak_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window - 1e-12) - i for i, t in enumerate(ordered)),
        default=0,
    )


async def wait_all(conns: list[Connector], limit: float) -> None:
    with trio.fail_after(limit):
        for conn in conns:
            await conn.wait_acked()


# -- 1. the outage -----------------------------------------------------------------------


async def _outage(n: int, shared: bool, result: dict[str, Any]) -> None:
    gate = UpstreamGate(GatePolicy(), random.Random(0)) if shared else None
    latest: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        upstream = Upstream(nursery)
        async with contextlib.AsyncExitStack() as stack:
            conns: list[Connector] = []
            for i in range(n):
                # lazy=False: a program's start, not a person's Connect (which a gate
                # lets ahead of its pace).
                conn = await stack.enter_async_context(fsm.open_connector(
                    URL, session_id=f"s{i}", rng=random.Random(i), heartbeat_interval=None,
                    open_stream=upstream.opener(i), dial_gate=gate, lazy=False,
                ))
                conn.edit(f"s{i}-c", "x = 0")
                latest[f"s{i}-c"] = "x = 0"
                conns.append(conn)
            await wait_all(conns, 3600)
            await trio.sleep(UPTIME)

            upstream.down = True
            t_down = trio.current_time()
            upstream.dials.clear()
            await upstream.drop_all()
            await trio.sleep(OUTAGE / 2)
            for i, conn in enumerate(conns):
                conn.edit(f"s{i}-c", f"x = {i}")
                latest[f"s{i}-c"] = f"x = {i}"
            await trio.sleep_until(t_down + OUTAGE)
            outage_dials = list(upstream.dials)
            upstream.down = False
            t_up = trio.current_time()
            await wait_all(conns, 3600)
            return_dials = upstream.dials[len(outage_dials):]
            result.update(
                peak=peak_in_window(outage_dials, WINDOW),
                return_peak=peak_in_window(return_dials, WINDOW),
                dials=len(outage_dials),
                all_open=trio.current_time() - t_up,
                gave_up=sum(c.close_reason is not None for c in conns),
                deferrals=sum(c.stats["deferrals"] for c in conns),
            )
            cells = upstream.cells()
            result["lost_edits"] = sum(cells.get(cell) != code for cell, code in latest.items())
        nursery.cancel_scope.cancel()


def measure_outage(n: int, shared: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    gc.collect()
    cpu = time.process_time()
    trio.run(_outage, n, shared, result, clock=trio.testing.MockClock(autojump_threshold=0))
    result["cpu"] = time.process_time() - cpu
    return result


def outage_rows(n: int) -> list[Row]:
    alone = measure_outage(n, shared=False)
    shared = measure_outage(n, shared=True)
    ratio = shared["peak"] / alone["peak"]
    policy = GatePolicy()
    for name, r in (("independent", alone), ("shared", shared)):
        print(f"outage, {name}: {r}", file=sys.stderr, flush=True)
    return [
        Row("G1", f"peak dials per {WINDOW:g} s during a {OUTAGE:g} s outage, {n} sessions "
            "sharing one UpstreamGate", shared["peak"], "n", baseline="independent sessions",
            ratio=ratio, target="<= 0.05x", met=ratio <= 0.05,
            note=f"{shared['dials']} dials in the outage against {alone['dials']}; "
                 f"max_in_flight {policy.max_in_flight}, probe every "
                 f"{policy.probe.initial_delay:g}-{policy.probe.max_delay:g} s"),
        Row("G1", f"peak dials per {WINDOW:g} s during the outage, {n} independent sessions",
            alone["peak"], "n", note="default RetryPolicy, full jitter"),
        Row("G1", "virtual time from the upstream's return until all OPEN and acked, shared",
            shared["all_open"], "s", baseline="independent",
            ratio=shared["all_open"] / alone["all_open"],
            note=f"rate {policy.rate:g} dials/s; {shared['deferrals']} deferrals; "
                 f"{shared['gave_up']} gave up; {shared['lost_edits']} edits lost"),
        Row("G1", "virtual time from the upstream's return until all OPEN and acked, "
            "independent", alone["all_open"], "s",
            note=f"{alone['gave_up']} gave up; {alone['lost_edits']} edits lost"),
        Row("G1", f"peak dials per {WINDOW:g} s after the upstream's return, shared",
            shared["return_peak"], "n", baseline="independent",
            ratio=shared["return_peak"] / alone["return_peak"],
            note=f"the gate's pace caps it at {policy.rate:g}/s whatever the number of "
                 "sessions; independent ones spread over their last back-off"),
        Row("G1", "CPU for the whole run, shared / independent", shared["cpu"], "s",
            baseline="independent", ratio=shared["cpu"] / alone["cpu"],
            note="connect, outage, recovery; one process, MockClock"),
    ]


# -- 2. scale: N sessions in one gateway -----------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _scale(n: int, through_gateway: bool, result: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        upstream = Upstream(nursery)
        # Every session dials once here (no faults), so upstream dials are dealt to the
        # shards in turn: a gateway's dial does not say which session it is for.
        shards = [upstream.opener(k) for k in range(SHARDS)]
        dealt = [0]

        async def upstream_dial(host: str, port: int, secure: bool) -> trio.abc.Stream:
            dealt[0] += 1
            return await shards[dealt[0] % SHARDS](host, port, secure)

        gateway: Gateway | None = None
        if through_gateway:
            gateway = Gateway(URL, heartbeat_interval=None, open_stream=upstream_dial,
                              session_ttl=3600)
            await nursery.start(gateway.serve)

        async def client_dial(host: str, port: int, secure: bool) -> trio.abc.Stream:
            if gateway is None:
                return await upstream_dial(host, port, secure)
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(gateway.handle_stream, server_side)
            return client

        gc.collect()
        rss_before = _rss()
        wall = time.perf_counter()
        cpu = time.process_time()
        t0 = trio.current_time()
        async with contextlib.AsyncExitStack() as stack:
            conns: list[Connector] = []
            for i in range(n):
                conn = await stack.enter_async_context(fsm.open_connector(
                    gateway.url if gateway is not None else URL, session_id=f"s{i}",
                    rng=random.Random(i), heartbeat_interval=None,
                    open_stream=client_dial, lazy=False,
                ))
                conn.edit(f"s{i}-c", "x = 0")
                conns.append(conn)
            # The first Run starts a gateway session's upstream (edits alone never do).
            async with trio.open_nursery() as running:
                for i, conn in enumerate(conns):
                    running.start_soon(conn.request, "run", {"cell_id": f"s{i}-c"})
            await wait_all(conns, 3600)
            result["all_open_wall"] = time.perf_counter() - wall
            result["all_open_cpu"] = time.process_time() - cpu
            result["all_open_virtual"] = trio.current_time() - t0
            gc.collect()
            result["rss_per_session"] = (_rss() - rss_before) / n
            cpu = time.process_time()
            for version in range(1, EDITS + 1):
                for i, conn in enumerate(conns):
                    conn.edit(f"s{i}-c", f"x = {version}")
                await wait_all(conns, 3600)
            result["cpu_per_edit"] = (time.process_time() - cpu) / (n * EDITS)
            cells = upstream.cells()
            result["lost_edits"] = sum(cells.get(f"s{i}-c") != f"x = {EDITS}" for i in range(n))
            if gateway is not None:
                result["gateway_sessions"] = len(gateway.sessions)
        nursery.cancel_scope.cancel()


def measure_scale(n: int, through_gateway: bool) -> dict[str, Any]:
    """One scale run in a fresh interpreter (so that resident memory is its own)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--scale-worker",
               "gateway" if through_gateway else "direct", str(n)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"scale worker failed: {proc.stderr[-3000:]}")


def _scale_worker(mode: str, n: int) -> None:
    quiet_structlog()
    result: dict[str, Any] = {}
    trio.run(_scale, n, mode == "gateway", result,
             clock=trio.testing.MockClock(autojump_threshold=0))
    print(json.dumps(result), flush=True)


def scale_rows(n: int) -> list[Row]:
    direct = measure_scale(n, through_gateway=False)
    through = measure_scale(n, through_gateway=True)
    for name, r in (("direct", direct), ("gateway", through)):
        print(f"scale, {name}: {r}", file=sys.stderr, flush=True)
    memory = through["rss_per_session"] - direct["rss_per_session"]
    edit_cpu = through["cpu_per_edit"] - direct["cpu_per_edit"]
    return [
        Row("G2", f"memory per gateway session, {n} sessions in one gateway (resident set, "
            "clients and upstream in-process, in-memory streams)", memory, "B",
            baseline="the same clients direct",
            note=f"{through['rss_per_session']:.0f} B per session with the gateway, "
                 f"{direct['rss_per_session']:.0f} B direct (client + server)"),
        Row("G2", f"time until all {n} clients and upstreams are OPEN (wall, CPU-bound)",
            through["all_open_wall"], "s", baseline="direct",
            ratio=through["all_open_wall"] / direct["all_open_wall"],
            note=f"{through['all_open_cpu']:.1f} s CPU, {through['all_open_virtual']:.1f} s "
                 f"virtual (the gate's pace); direct {direct['all_open_wall']:.1f} s wall, "
                 f"{direct['all_open_cpu']:.1f} s CPU"),
        Row("G2", "CPU per forwarded edit (gateway's share: with minus direct)", edit_cpu, "s",
            baseline="direct edit", ratio=through["cpu_per_edit"] / direct["cpu_per_edit"],
            note=f"{through['cpu_per_edit'] * 1e6:.0f} µs per edit end to end through the "
                 f"gateway, {direct['cpu_per_edit'] * 1e6:.0f} µs direct; "
                 f"{through['lost_edits']} lost"),
    ]


def run(quick: bool, parts: tuple[str, ...] = ("outage", "scale")) -> list[Row]:
    """The rows for bench/run.py."""
    n = 1000 if quick else 10_000
    rows: list[Row] = []
    if "outage" in parts:
        rows += outage_rows(n)
    if "scale" in parts:
        rows += scale_rows(n)
    return rows


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 sessions instead of 10,000")
    parser.add_argument("--part", action="append", choices=["outage", "scale"])
    parser.add_argument("--scale-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_worker:
        _scale_worker(args.scale_worker[0], int(args.scale_worker[1]))
        return 0
    quiet_structlog()
    out(markdown_table(run(args.quick, tuple(args.part or ("outage", "scale")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
