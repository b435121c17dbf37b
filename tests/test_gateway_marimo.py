"""The gateway in front of a real ``marimo edit --headless`` server: every gateway session
shares the one marimo session, and an edit made in a gateway session before any
connection runs in the kernel once a person's Connect starts the upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("marimo", reason="the marimo tests need marimo: pip install -e '.[marimo]'")
pytest.importorskip("httpx", reason="the marimo tests need httpx: pip install -e '.[marimo]'")

import trio
from marimo_server import marimo_server, write_notebook

import fsm
from fsm.core._frames import Frame
from fsm.gateway import Gateway
from fsm.marimo import cell_output, output_text
from tests._gateway_helpers import RawClient, raw_client

#: marimo starts in 1-3 s and its kernel in about 2 s.
LIMIT = 90.0
POLICY = fsm.RetryPolicy(
    max_attempts=400, initial_delay=0.05, max_delay=0.5, connect_timeout=30.0, min_uptime=0.5
)


async def value_of(ws: RawClient, cell_id: str) -> str:
    """The next output of ``cell_id`` that shows a value, as text."""
    while True:
        frame = await ws.recv()
        found = cell_output(Frame(frame["op"], frame["data"]))
        if found is not None and found[0] == cell_id and found[2] not in ("", None):
            return output_text(found[1], found[2])


async def test_an_edit_before_any_connection_runs_in_the_kernel(tmp_path: Path) -> None:
    """Sessions offer the notebook's cells at once; an edit made while the upstream is
    NOT_STARTED is flushed on Connect, acked, and run by marimo's kernel; a second
    gateway session shares the same document and sees the kernel's outputs."""
    notebook = write_notebook(tmp_path / "nb.py", ["x = 1", "y = x + 1", "y * 10"])
    with trio.fail_after(LIMIT):
        async with marimo_server(notebook) as server:
            gw = Gateway(server.url, marimo=str(notebook), policy=POLICY,
                         heartbeat_interval=None)
            async with trio.open_nursery() as nursery:
                await nursery.start(gw.serve)
                async with raw_client(gw, "first") as first:
                    ready: dict[str, Any] = (await first.recv())["data"]
                    cells = ready["cell_ids"]
                    assert ready["codes"] == ["x = 1", "y = x + 1", "y * 10"]
                    assert ready["upstream"]["state"] == "NOT_STARTED"
                    await first.send("edit", {"seq": 1, "cell_id": cells[0], "code": "x = 5"})
                    await gw.wait_until(lambda g: g.sessions["first"].seq == 1)
                    assert gw.status()["counts"] == {"NOT_STARTED": 1}
                    await first.send("connect", {"id": "c"})
                    assert await value_of(first, cells[2]) == "60"
                    await first.until("ack", lambda d: d["seq"] == 1)
                    async with raw_client(gw, "second") as second:
                        ready = (await second.recv())["data"]
                        assert ready["codes"][0] == "x = 5"
                        assert ready["upstream"]["state"] == "OPEN"
                        await second.send("edit", {"seq": 1, "cell_id": cells[1],
                                                   "code": "y = x * 3"})
                        assert await value_of(second, cells[2]) == "150"
                        assert await value_of(first, cells[2]) == "150"
                        await second.until("ack", lambda d: d["seq"] == 1)
                assert gw.status()["counts"] == {"OPEN": 2}
                await gw.shutdown()
