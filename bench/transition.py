"""1. One lifecycle transition: ConnectionLifecycle vs its raw engine, `transitions`, a dict.

The cycle ``drop(uptime=100) -> retry -> ready`` starts and ends in OPEN, so it can be
repeated forever: OPEN -> BACKING_OFF (the guard ``stayed_up`` passes, attempts reset),
BACKING_OFF -> DIALING, DIALING -> OPEN (the edit buffer is flushed). Times are per
event (one cycle / 3).
"""

from __future__ import annotations

import random

from common import Case, Row, json_null_logger, median, paired_ratio, time_side_by_side
from shapes import DictFSM, RawMachine, shape_mismatch, transitions_flat, transitions_hsm

import fsm

CYCLE_SEND = "m.send('drop', uptime=100.0); m.send('retry'); m.send('ready')"
CYCLE_METHODS = "m.drop(uptime=100.0); m.retry(); m.ready()"
CYCLE_LIFECYCLE = "m.drop(100.0); m.retry(); m.ready()"


def _open_lifecycle(**kwargs: object) -> fsm.ConnectionLifecycle:
    lc = fsm.ConnectionLifecycle(rng=random.Random(0), **kwargs)  # type: ignore[arg-type]
    lc.connect()
    lc.ready()
    return lc


def run(quick: bool) -> list[Row]:
    raw = RawMachine()
    raw.send("connect")
    raw.send("ready")
    hsm = transitions_hsm()
    hsm.connect()
    hsm.ready()
    flat = transitions_flat()
    flat.connect()
    flat.ready()
    table = DictFSM()
    table.send("connect")
    table.send("ready")

    cases = {
        "lifecycle": Case(CYCLE_LIFECYCLE, {"m": _open_lifecycle()}, ops=3),
        "lifecycle_nolog": Case(
            CYCLE_LIFECYCLE, {"m": _open_lifecycle(log_transitions=False)}, ops=3
        ),
        "lifecycle_json": Case(
            CYCLE_LIFECYCLE, {"m": _open_lifecycle(logger=json_null_logger())}, ops=3
        ),
        "raw": Case(CYCLE_SEND, {"m": raw}, ops=3),
        "hsm": Case(CYCLE_METHODS, {"m": hsm}, ops=3),
        "flat": Case(CYCLE_METHODS, {"m": flat}, ops=3),
        "dict": Case(CYCLE_SEND, {"m": table}, ops=3),
    }
    samples = time_side_by_side(
        cases, repeats=9 if quick else 31, batch_time=0.02 if quick else 0.03
    )
    raw_label = "raw python-statemachine"
    target = "<= 1.10x raw"

    def row(name: str, label: str, *, judged: bool = False, note: str = "") -> Row:
        ratio = paired_ratio(samples, name, "raw")
        return Row(
            "1",
            label,
            median(samples[name]),
            "s",
            baseline=raw_label,
            ratio=ratio,
            target=target if judged else "",
            met=(ratio <= 1.10) if judged else None,
            note=note,
        )

    mismatch = shape_mismatch()
    return [
        Row("1", "raw machine declares exactly `_LifecycleMachine`'s transitions",
            float(not mismatch), "n", target="1 (same shape)", met=not mismatch,
            note="differs: " + "; ".join(map(str, mismatch))[:300] if mismatch else
            "events, sources, targets, guards, actions, internal flags"),
        row("lifecycle", "event via ConnectionLifecycle()", judged=True,
            note="default: transition logger on, structlog filtering INFO out"),
        row("lifecycle_nolog", "event via ConnectionLifecycle(log_transitions=False)",
            judged=True),
        row("lifecycle_json", "event via ConnectionLifecycle, JSON log line per transition",
            note="rendered to /dev/null"),
        Row("1", "event via raw python-statemachine machine (same shape)",
            median(samples["raw"]), "s"),
        row("hsm", "event via `transitions` HierarchicalMachine (same shape)"),
        row("flat", "event via `transitions` Machine (CONNECTING flattened)"),
        row("dict", "event via hand-written dict FSM (the limit)"),
    ]
