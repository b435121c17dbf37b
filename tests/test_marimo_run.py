"""fsm.marimo.run_cells against a real marimo server: this run's outputs and console
lines, until the run completes, without what marimo replays from earlier runs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("marimo", reason="needs the marimo extra: pip install '.[marimo]'")
pytest.importorskip("httpx", reason="needs the marimo extra: pip install '.[marimo]'")

import trio
from marimo_server import marimo_server, write_notebook

import fsm
from fsm.marimo import MarimoProtocol, RunCollector, notebook_cells, run_cells

LIMIT = 120.0
POLICY = fsm.RetryPolicy(connect_timeout=15.0, initial_delay=0.2, max_delay=1.0)


async def test_run_cells_collects_this_run_only(tmp_path: Path) -> None:
    """The first run returns each cell's output and what it printed; a second connection
    to the kernel that lived on gets only its own run's outputs, none replayed."""
    notebook = write_notebook(
        tmp_path / "nb.py",
        ["x = 1", "print('hello', x)\nimport sys\nprint('warn', file=sys.stderr)\ny = x + 1",
         "y * 10"],
    )
    first_cell, second_cell, third_cell = (c for c, _ in notebook_cells(notebook))
    with trio.fail_after(LIMIT):
        async with marimo_server(notebook) as server:
            async with fsm.open_connector(server.url, protocol=MarimoProtocol(str(notebook)),
                                          policy=POLICY) as conn:
                first = await run_cells(conn, {first_cell: "x = 5"})
            async with fsm.open_connector(server.url, protocol=MarimoProtocol(str(notebook)),
                                          policy=POLICY) as conn:
                second = await run_cells(conn, {first_cell: "x = 6"})
                third = await run_cells(conn, {third_cell: "y * 100"})  # while OPEN
    assert first.output(third_cell) == "60"
    assert first.console(second_cell) == "hello 5\n"
    assert first.console(second_cell, "stderr") == "warn\n"
    assert list(first.outcomes.values()) == ["succeeded"]
    # The kernel lived on: marimo replays "hello 5" and 60 on connecting; not ours.
    assert second.output(third_cell) == "70"
    assert second.console(second_cell) == "hello 6\n"
    assert all("5" not in o.text for o in second.outputs if o.cell_id == second_cell)
    assert [o.cell_id for o in third.outputs] == [third_cell]
    assert third.output(third_cell) == "700"


def test_a_collector_ignores_idle_replays_and_ends_with_its_runs() -> None:
    """Frames of a run that was not seen starting are ignored; the collector is done when
    every run it saw start has completed."""
    collector = RunCollector()
    replay = fsm.Frame("cell-op", {"cell_id": "a", "status": "idle", "run_id": "old",
                                   "output": {"mimetype": "text/plain", "data": "stale"}})
    assert not collector.feed(replay)
    assert not collector.feed(fsm.Frame("cell-op", {"cell_id": "a", "status": "queued",
                                                    "run_id": "new"}))
    assert not collector.feed(fsm.Frame("cell-op", {
        "cell_id": "a", "run_id": "new",
        "console": {"channel": "stdout", "mimetype": "text/plain", "data": "hi\n"}}))
    assert not collector.feed(fsm.Frame("completed-run", {"run_id": "old"}))
    assert collector.feed(fsm.Frame("completed-run", {"run_id": "new", "outcome": "succeeded"}))
    assert [(o.cell_id, o.channel, o.data) for o in collector.result.outputs] == [
        ("a", "stdout", "hi\n")
    ]


async def test_run_cells_needs_something_to_run() -> None:
    """run_cells with no codes is refused: nothing would start a run to wait for."""
    async with fsm.open_connector("http://127.0.0.1:9", protocol=MarimoProtocol()) as conn:
        with pytest.raises(ValueError, match="at least one cell"):
            await run_cells(conn, {})
