"""1. One lifecycle transition: ConnectionLifecycle vs its raw engine, `transitions`, a dict.

The cycle ``drop(uptime=100) -> retry -> ready`` starts and ends in OPEN, so it can be
repeated forever: OPEN -> BACKING_OFF (the guard ``stayed_up`` passes, attempts reset),
BACKING_OFF -> DIALING, DIALING -> OPEN (the edit buffer is flushed). Times are per
event (one cycle / 3).

Three ways for a lifecycle to reach python-statemachine are timed side by side: the
default (the decision cache of ``fsm.core._engine``: one shared engine, its decisions
replayed), the shared engine deciding every event (the cache off: the first prototype),
and a per-instance engine (``lc.machine`` built, which then drives that lifecycle: the
old design).
"""

from __future__ import annotations

import random

from common import Case, Row, json_null_logger, median, paired_ratio, time_side_by_side
from shapes import DictFSM, RawMachine, shape_mismatch, transitions_flat, transitions_hsm

import fsm
from fsm.core._engine import DecisionCache
from fsm.core._machine import _LifecycleMachine

# The first prototype: one shared engine, configuration and owner swapped in, every
# event decided by the engine (no cache).
_NO_CACHE = DecisionCache(_LifecycleMachine, fsm.ConnectionLifecycle(log_transitions=False))
_NO_CACHE.use_cache = False


class _SharedEngineLifecycle(fsm.ConnectionLifecycle):
    def _decide(self, decisions: object, event: str, kwargs: dict[str, object]) -> object:
        return _NO_CACHE.decide(self, self._config, event, kwargs)

CYCLE_SEND = "m.send('drop', uptime=100.0); m.send('retry'); m.send('ready')"
CYCLE_METHODS = "m.drop(uptime=100.0); m.retry(); m.ready()"
CYCLE_LIFECYCLE = "m.drop(100.0); m.retry(); m.ready()"


def _open_lifecycle(
    cls: type[fsm.ConnectionLifecycle] = fsm.ConnectionLifecycle, *, own_engine: bool = False,
    **kwargs: object,
) -> fsm.ConnectionLifecycle:
    lc = cls(rng=random.Random(0), **kwargs)  # type: ignore[arg-type]
    if own_engine:
        lc.machine  # noqa: B018 - builds the per-instance engine, which then drives lc
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
        "shared": Case(
            CYCLE_LIFECYCLE,
            {"m": _open_lifecycle(_SharedEngineLifecycle, log_transitions=False)}, ops=3,
        ),
        "own": Case(
            CYCLE_LIFECYCLE, {"m": _open_lifecycle(own_engine=True, log_transitions=False)},
            ops=3,
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
    target = "<= 0.15x raw"

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
            met=(ratio <= 0.15) if judged else None,
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
        row("shared", "event via one shared engine, every event decided by it (no cache)",
            note="prototype (a), log_transitions=False"),
        row("own", "event via a per-instance engine (`lc.machine` built; the old design)",
            note="log_transitions=False"),
        Row("1", "event via raw python-statemachine machine (same shape)",
            median(samples["raw"]), "s"),
        row("hsm", "event via `transitions` HierarchicalMachine (same shape)"),
        row("flat", "event via `transitions` Machine (CONNECTING flattened)"),
        row("dict", "event via hand-written dict FSM (the limit)"),
    ]
