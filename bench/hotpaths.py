"""2. Hot paths: edit() (NOT_STARTED and OPEN), state, can_interact vs a plain dict.

Edits are compared with a dict update ``d[k] = v``; reads with a dict lookup ``d[k]``
(stricter than comparing a read with an update). The Connector's OPEN edit goes through
its real path: the edit is held in the buffer, and one marker is posted to the link's
outbox channel unless one is already there (the writer then sends every held edit, one
frame per cell, latest code). Two rows: the writer busy (a marker is already posted: the
steady state while someone types faster than the link sends), and the writer free (each
edit posts a marker: the most an edit costs). The outbox is drained by nothing while
timed (it is emptied between batches), so no socket is involved.

None of them may reach the engine: ``_LifecycleMachine.send``, ``__init__``, the
python-statemachine ``SyncEngine.processing_loop`` and the decision cache's
``DecisionCache.decide`` are wrapped with counters for the whole section, and the
counts during the timed loops are reported (target: 0). The connectors are marked
running without entering ``open_connector`` (their edits refuse to work otherwise):
nothing else of a running connector is used.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import trio
from common import Case, Row, median, paired_ratio, time_side_by_side
from statemachine.engines.sync import SyncEngine

import fsm
from fsm.connector import Connector, Link
from fsm.core._engine import DecisionCache
from fsm.core._machine import _LifecycleMachine

URL = "ws://127.0.0.1:9/ws"
COUNTS = {"send": 0, "build": 0, "processing_loop": 0, "decide": 0}


def _counting(key: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[key] += 1
        return func(*args, **kwargs)

    return wrapper


class DictStore:
    """The least an ``edit()`` method can do: one dict update behind one method call."""

    __slots__ = ("cells",)

    def __init__(self) -> None:
        self.cells: dict[str, str] = {}

    def edit(self, cell_id: str, code: str) -> None:
        self.cells[cell_id] = code


def _drain(channel: trio.MemoryReceiveChannel[Any]) -> None:
    while True:
        try:
            channel.receive_nowait()
        except trio.WouldBlock:
            return


def _measure(quick: bool) -> tuple[dict[str, list[float]], dict[str, int]]:
    lc_new = fsm.ConnectionLifecycle()
    lc_open = fsm.ConnectionLifecycle(rng=random.Random(0))
    lc_open.connect()
    lc_open.ready()

    conn_new = Connector(URL, heartbeat_interval=None)
    conn_open = Connector(URL, heartbeat_interval=None)
    conn_new._running = conn_open._running = True
    # Put the connector's lifecycle in OPEN without dialing, and give it a link whose
    # outbox nobody drains: edits take their real path up to the channel.
    conn_open.lifecycle.connect()
    conn_open.lifecycle.ready()
    link = Link(conn_open, 1)
    conn_open._link = link
    drain = functools.partial(_drain, link.outbox_receive)
    assert conn_open.state is fsm.ConnState.OPEN and conn_new.is_not_started

    data = {"c1": "x = 0"}
    g = {"k": "c1", "v": "x = 1", "d": data}
    cases = {
        "dict_set": Case("d[k] = v", g),
        "dict_get": Case("d[k]", g),
        "call_set": Case("s.edit(k, v)", g | {"s": DictStore()}),
        "lc_edit_new": Case("m.edit(k, v)", g | {"m": lc_new}),
        "lc_edit_open": Case("m.edit(k, v)", g | {"m": lc_open}),
        "lc_edit_open_hold": Case("m.edit(k, v, hold=True)", g | {"m": lc_open}),
        "conn_edit_new": Case("m.edit(k, v)", g | {"m": conn_new}),
        # The writer is busy (it has not taken the edits posted so far): an edit
        # replaces the cell's code in the buffer, and nothing more is posted.
        "conn_edit_open": Case("m.edit(k, v)", g | {"m": conn_open, "drain": drain},
                               setup="drain()"),
        # The writer took everything before each edit (it clears the flag when it
        # does), so every edit posts one item to the outbox: the most an edit costs.
        "conn_edit_open_free": Case("l.unsent_posted = False; m.edit(k, v)",
                                    g | {"m": conn_open, "l": link, "drain": drain},
                                    setup="drain()"),
        "lc_state": Case("m.state", g | {"m": lc_open}),
        "lc_can": Case("m.can_interact", g | {"m": lc_open}),
        "conn_state": Case("m.state", g | {"m": conn_open}),
        "conn_can": Case("m.can_interact", g | {"m": conn_open}),
    }
    before = dict(COUNTS)
    samples = time_side_by_side(
        cases, repeats=15 if quick else 41, batch_time=0.005 if quick else 0.01
    )
    drain()
    during = {key: COUNTS[key] - before[key] for key in COUNTS}
    assert lc_open.state is fsm.ConnState.OPEN and lc_new.is_not_started
    return samples, during


async def _in_trio(quick: bool) -> tuple[dict[str, list[float]], dict[str, int]]:
    return _measure(quick)


def run(quick: bool) -> list[Row]:
    patches = {
        (_LifecycleMachine, "send"): "send",
        (_LifecycleMachine, "__init__"): "build",
        (SyncEngine, "processing_loop"): "processing_loop",
        (DecisionCache, "decide"): "decide",
    }
    saved = {}
    for (cls, attr), key in patches.items():
        saved[(cls, attr)] = cls.__dict__.get(attr)
        original = getattr(cls, attr)
        setattr(cls, attr, _counting(key, original))
    try:
        # The Connector parts run inside trio, as they would in an application.
        samples, during = trio.run(_in_trio, quick)
        sanity = fsm.ConnectionLifecycle()
        sanity.connect()  # proves the counters count (the decision cache)
        sanity = fsm.ConnectionLifecycle()
        sanity.machine  # noqa: B018 - and the engine's (a per-instance one)
        sanity.connect()
    finally:
        for (cls, attr), original in saved.items():
            if original is None:
                delattr(cls, attr)
            else:
                setattr(cls, attr, original)
    assert COUNTS["send"] >= 1 and COUNTS["processing_loop"] >= 1 and COUNTS["decide"] >= 1, (
        "counters not wired"
    )

    rows = []
    labels = {
        "lc_edit_new": ("ConnectionLifecycle.edit while NOT_STARTED", "dict_set"),
        "lc_edit_open": ("ConnectionLifecycle.edit while OPEN (returns SendEdit)", "dict_set"),
        "lc_edit_open_hold": ("ConnectionLifecycle.edit(hold=True) while OPEN (for take_unsent)",
                              "dict_set"),
        "conn_edit_new": ("Connector.edit while NOT_STARTED", "dict_set"),
        "conn_edit_open": ("Connector.edit while OPEN, writer busy (held in the buffer)",
                           "dict_set"),
        "conn_edit_open_free": ("Connector.edit while OPEN, writer free (one outbox post)",
                                "dict_set"),
        "lc_state": ("ConnectionLifecycle.state", "dict_get"),
        "lc_can": ("ConnectionLifecycle.can_interact", "dict_get"),
        "conn_state": ("Connector.state", "dict_get"),
        "conn_can": ("Connector.can_interact", "dict_get"),
    }
    base_label = {"dict_set": "dict update `d[k] = v`", "dict_get": "dict lookup `d[k]`"}
    for base in ("dict_set", "dict_get"):
        rows.append(Row("2", base_label[base], median(samples[base]), "s"))
    rows.append(Row("2", "a method call doing `d[k] = v` (context: any edit() API pays this)",
                    median(samples["call_set"]), "s", baseline=base_label["dict_set"],
                    ratio=paired_ratio(samples, "call_set", "dict_set")))
    for name, (label, base) in labels.items():
        ratio = paired_ratio(samples, name, base)
        note = ""
        if base == "dict_set":
            note = f"{paired_ratio(samples, name, 'call_set'):.1f}x the method call"
        rows.append(Row("2", label, median(samples[name]), "s", baseline=base_label[base],
                        ratio=ratio, target="<= 10x", met=ratio <= 10, note=note))
    engine_calls = sum(during.values())
    rows.append(Row(
        "2", "engine calls during all hot-path loops", engine_calls, "n",
        target="0", met=engine_calls == 0,
        note=f"send {during['send']}, engine built {during['build']}, "
        f"processing_loop {during['processing_loop']}, decision cache {during['decide']}",
    ))
    return rows
