"""3. Construction time and memory per idle lifecycle and per idle Connector.

Memory is what :mod:`tracemalloc` sees (the Python heap) after ``gc.collect()``, divided
by the number of live instances. Connectors are built inside ``trio.run`` (they do not
need it, but that is where an application builds them), directly as
``fsm.connector.Connector(url)``: no nursery, NOT_STARTED, nothing started.
The raw python-statemachine machine is built in smaller batches (it costs ~2 ms each);
its per-instance figures do not depend on the batch size.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio
from common import Row, median, paired_ratio, time_calls_side_by_side
from shapes import RawMachine

import fsm
from fsm.connector import Connector

URL = "ws://127.0.0.1:9/ws"


def _per_instance_time(factory: Callable[[], Any], n: int) -> Callable[[], float]:
    def measure() -> float:
        gc.collect()
        start = time.perf_counter()
        keep = [factory() for _ in range(n)]
        elapsed = time.perf_counter() - start
        del keep
        return elapsed / n

    return measure


def _per_instance_memory(factory: Callable[[], Any], n: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = [factory() for _ in range(n)]
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    list_overhead = 8 * n  # the list holding them
    del keep
    gc.collect()
    return (after - before - list_overhead) / n


def _lifecycle_started() -> fsm.ConnectionLifecycle:
    lc = fsm.ConnectionLifecycle()
    lc.connect()
    return lc


def _lifecycle_own_engine() -> fsm.ConnectionLifecycle:
    lc = fsm.ConnectionLifecycle()
    lc.machine  # noqa: B018 - the per-instance engine of the old design
    lc.connect()
    return lc


def _raw_started() -> RawMachine:
    m = RawMachine()
    m.send("connect")
    return m


def _connector() -> Connector:
    return Connector(URL, heartbeat_interval=None)


async def _connector_figures(quick: bool, n: int) -> tuple[list[float], float]:
    times = time_calls_side_by_side(
        {"c": _per_instance_time(_connector, n)}, repeats=3 if quick else 5
    )["c"]
    return times, _per_instance_memory(_connector, n)


def run(quick: bool) -> list[Row]:
    n = 1_000 if quick else 10_000
    n_raw = 50 if quick else 500
    samples = time_calls_side_by_side(
        {
            "lc": _per_instance_time(fsm.ConnectionLifecycle, n),
            "raw": _per_instance_time(RawMachine, n_raw),
            "lc_first": _per_instance_time(_lifecycle_started, n_raw),
            "raw_first": _per_instance_time(_raw_started, n_raw),
        },
        repeats=3 if quick else 5,
    )
    conn_times, conn_memory = trio.run(_connector_figures, quick, n)
    lc_memory = _per_instance_memory(fsm.ConnectionLifecycle, n)
    raw_memory = _per_instance_memory(RawMachine, n_raw)
    _lifecycle_started()  # the shared engine is built once per process, not per lifecycle
    lc_started_memory = _per_instance_memory(_lifecycle_started, n)
    lc_own_memory = _per_instance_memory(_lifecycle_own_engine, n_raw)

    ratio = paired_ratio(samples, "lc", "raw")
    first_ratio = paired_ratio(samples, "lc_first", "raw_first")
    raw_label = "raw python-statemachine machine"
    return [
        Row("3", f"construct an idle ConnectionLifecycle (x{n:,})", median(samples["lc"]), "s",
            baseline=f"construct a {raw_label}", ratio=ratio, target="<= 1.10x", met=ratio <= 1.10,
            note="no engine: lifecycles share one"),
        Row("3", f"construct a {raw_label} (x{n_raw:,})", median(samples["raw"]), "s"),
        Row("3", "construct + first event (connect)", median(samples["lc_first"]), "s",
            baseline=f"{raw_label} + connect", ratio=first_ratio,
            note="no engine is built: the shared one decides"),
        Row("3", f"construct an idle Connector(url) (x{n:,})", median(conn_times), "s"),
        Row("3", f"memory per idle ConnectionLifecycle (x{n:,})", lc_memory, "B",
            baseline=raw_label, ratio=lc_memory / raw_memory),
        Row("3", f"memory per {raw_label} (x{n_raw:,})", raw_memory, "B"),
        Row("3", f"memory per active ConnectionLifecycle (after connect, x{n:,})",
            lc_started_memory, "B", baseline="the same with its own engine",
            ratio=lc_started_memory / lc_own_memory, target="<= 8 KiB",
            met=lc_started_memory <= 8 * 1024, note="no engine of its own"),
        Row("3", f"memory per ConnectionLifecycle after connect, own engine (x{n_raw:,})",
            lc_own_memory, "B", note="`lc.machine` built: the old design"),
        Row("3", f"memory per idle Connector (x{n:,})", conn_memory, "B",
            target="<= 16 KiB", met=conn_memory <= 16 * 1024),
    ]
