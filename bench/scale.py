"""7. 10,000 active lifecycles in one process: their memory, and a storm on MockClock.

The sans-IO core at a server's scale: N ``ConnectionLifecycle`` objects (default policy,
the transition logger on and filtered as in production), each driven by one small trio
task that carries out its effects on virtual time (``trio.testing.MockClock``): a
``Dial`` is an attempt that takes 20 ms and succeeds (``ready``) unless the server is
down (``fail``); a ``Backoff`` is a sleep, then ``retry``. All N connect and reach OPEN;
60 s later they all lose the server at once (``drop``), which refuses every attempt for
10 s; the storm ends when all N are OPEN again. Measured: the Python heap held by the N
OPEN lifecycles (tracemalloc, a separate pass) and the process's RSS growth, and the CPU
time of the storm (from the drop until all are OPEN again), for N lifecycles on the
shared engine and, for comparison, for lifecycles that each build their own engine
(``lc.machine``: the old design; at a tenth of N, per lifecycle).
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
from typing import Any

import trio
import trio.testing
from common import Row

import fsm
from fsm import Backoff, Dial

UPTIME = 60.0
OUTAGE = 10.0
ATTEMPT = 0.02


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _new(i: int, own_engine: bool) -> fsm.ConnectionLifecycle:
    lc = fsm.ConnectionLifecycle(rng=random.Random(i))
    if own_engine:
        lc.machine  # noqa: B018 - builds its own engine (the old design)
    return lc


class _World:
    def __init__(self, n: int) -> None:
        self.n = n
        self.down_until = float("-inf")
        self.crash = trio.Event()
        self.open = 0
        self.all_open = trio.Event()
        self.attempts = 0

    def opened(self) -> None:
        self.open += 1
        if self.open == self.n:
            self.all_open.set()


async def _drive(lc: fsm.ConnectionLifecycle, world: _World) -> None:
    effects: list[Any] = lc.connect()
    opened_at = 0.0
    while True:
        for effect in effects:
            if isinstance(effect, Dial):
                world.attempts += 1
                await trio.sleep(ATTEMPT)
                if trio.current_time() < world.down_until:
                    effects = lc.fail("connection refused (simulated)")
                else:
                    effects = lc.ready()
                    opened_at = trio.current_time()
                    world.opened()
                break
            if isinstance(effect, Backoff):
                await trio.sleep(effect.delay)
                effects = lc.retry()
                break
        else:
            # OPEN (Flush, or nothing): wait for the crash, once.
            if world.crash.is_set():
                return
            await world.crash.wait()
            effects = lc.drop(trio.current_time() - opened_at, "connection lost (simulated)")


async def _storm(lifecycles: list[fsm.ConnectionLifecycle], result: dict[str, float]) -> None:
    world = _World(len(lifecycles))
    async with trio.open_nursery() as nursery:
        for lc in lifecycles:
            nursery.start_soon(_drive, lc, world)
        await world.all_open.wait()
        await trio.sleep(UPTIME)
        world.open = 0
        world.all_open = trio.Event()
        world.attempts = 0
        world.down_until = trio.current_time() + OUTAGE
        cpu, start = time.process_time(), trio.current_time()
        world.crash.set()
        await world.all_open.wait()
        result["cpu"] = time.process_time() - cpu
        result["virtual"] = trio.current_time() - start
        result["attempts"] = world.attempts
        result["gave_up"] = sum(1 for lc in lifecycles if lc.close_reason is not None)


def storm(n: int, own_engine: bool) -> dict[str, float]:
    gc.collect()
    lifecycles = [_new(i, own_engine) for i in range(n)]
    result: dict[str, float] = {}
    trio.run(_storm, lifecycles, result, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


def memory(n: int) -> tuple[float, float]:
    """Heap (tracemalloc) and RSS growth held by n OPEN lifecycles, in bytes."""
    gc.collect()
    base_rss = rss()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = []
        for i in range(n):
            lc = _new(i, False)
            lc.connect()
            lc.ready()
            keep.append(lc)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    grown = rss() - base_rss
    del keep
    return heap, grown


def run(quick: bool) -> list[Row]:
    n = 1_000 if quick else 10_000
    small = n // 10
    storm(10, False)  # warm-up: imports, the shared engine, its decisions
    heap, grown = memory(n)
    shared = storm(n, False)
    shared_small = storm(small, False)
    own_small = storm(small, True)
    per = shared["cpu"] / n
    per_own = own_small["cpu"] / small
    per_small = shared_small["cpu"] / small
    return [
        Row("7", f"Python heap of {n:,} OPEN lifecycles", heap, "B",
            note=f"{heap / n / 1024:.2f} KiB each; RSS grew {grown / (1 << 20):.1f} MiB"),
        Row("7", f"CPU time of a storm: {n:,} lifecycles drop at once, reconnect after "
            f"{OUTAGE:g} s (MockClock)", shared["cpu"], "s",
            note=f"{shared['attempts']:.0f} attempts, {shared['virtual']:.1f} s virtual, "
            f"{shared['gave_up']:.0f} gave up"),
        Row("7", "  per lifecycle", per, "s", baseline=f"{small:,} lifecycles, own engines",
            ratio=per / per_own,
            note=f"{per_own * 1e6:.0f} µs each with own engines; {per_small * 1e6:.0f} µs each "
            f"at {small:,} on the shared engine"),
    ]
