"""The sans-IO core in a server of your own, under asyncio: no trio, no fsm driver.

The upstream is a tiny kernel speaking the reference protocol's frames as JSON lines over
TCP (standard library only). ``Upstream`` is the whole driver: it feeds outcomes to a
``ConnectionLifecycle`` as events and carries out the effects it returns.
"""

import asyncio
import json
import random
import sys

import fsm
from fsm import Backoff, Dial, Flush, HangUp, SendEdit


async def kernel(cells: dict[str, str], refuse: list[int]) -> asyncio.Server:
    """A kernel on 127.0.0.1: kernel-ready first, then acks; refuses ``refuse[0]`` times."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if refuse[0] > 0:  # a kernel still starting: hang up at once
            refuse[0] -= 1
            writer.close()
            return
        ready = {"op": "kernel-ready", "data": {"seq": 0, "cell_ids": [], "codes": []}}
        writer.write(json.dumps(ready).encode() + b"\n")
        async for line in reader:
            frame = json.loads(line)
            cells.update(frame["data"].get("codes") or {})
            if frame["op"] == "edit":
                cells[frame["data"]["cell_id"]] = frame["data"]["code"]
            writer.write(json.dumps({"op": "ack", "data": {"seq": frame["data"]["seq"]}}).encode()
                         + b"\n")
        writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)


# --8<-- [start:driver]
class Upstream:
    """One lazy upstream connection, driven by the sans-IO core under asyncio."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lc = fsm.ConnectionLifecycle(
            policy=fsm.RetryPolicy(initial_delay=0.01, connect_timeout=2.0),
            rng=random.Random(0),
            log_transitions=False,
        )
        self.writer: asyncio.StreamWriter | None = None
        self.changed = asyncio.Event()  # set on every ack (a real server: per session)
        self.tasks: set[asyncio.Task[None]] = set()

    def edit(self, cell_id: str, code: str) -> None:
        sent = self.lc.edit(cell_id, code)  # buffered unless OPEN
        if sent is not None:
            self.apply([sent])

    def apply(self, effects: list[fsm.Effect]) -> None:
        loop = asyncio.get_running_loop()
        for effect in effects:
            match effect:
                case Dial(timeout=timeout):
                    task = loop.create_task(self.attempt(timeout))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                case Backoff(delay=delay):
                    loop.call_later(delay, lambda: self.apply(self.lc.retry()))
                case Flush(batch=batch):
                    for frame in batch.frames:
                        self.send("instantiate", {"seq": frame.seq, "codes": frame.codes,
                                                  "auto_run": frame.auto_run})
                case SendEdit(seq=seq, cell_id=cell_id, code=code):
                    self.send("edit", {"seq": seq, "cell_id": cell_id, "code": code})
                case HangUp():
                    if self.writer is not None:
                        self.writer.close()

    def send(self, op: str, data: object) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps({"op": op, "data": data}).encode() + b"\n")

    async def attempt(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                ready = json.loads(await reader.readline())  # b"" (hung up) is not JSON
        except (OSError, TimeoutError, ValueError) as exc:
            self.apply(self.lc.fail(exc))
            return
        self.writer, opened = writer, loop.time()
        self.apply(self.lc.ready(ready["data"]["seq"]))  # the flush goes out here
        async for line in reader:
            frame = json.loads(line)
            if frame["op"] == "ack" and self.lc.ack(frame["data"]["seq"]):
                self.changed.set()
        self.writer = None
        if self.lc.state is fsm.ConnState.CLOSING:
            self.apply(self.lc.close_finished())
        else:
            self.apply(self.lc.drop(loop.time() - opened, "the kernel hung up"))
# --8<-- [end:driver]


async def main() -> None:
    cells: dict[str, str] = {}
    server = await kernel(cells, refuse=[2])
    port = server.sockets[0].getsockname()[1]
    # --8<-- [start:use]
    upstream = Upstream(port)
    upstream.edit("c1", "x = 1")  # NOT_STARTED: kept, nothing dialled
    assert upstream.lc.is_not_started and cells == {}
    upstream.apply(upstream.lc.request())  # the first use starts it
    while upstream.lc.pending_edits:  # two refusals, a back-off each, then OPEN
        upstream.changed.clear()
        await asyncio.wait_for(upstream.changed.wait(), 10)
    assert cells == {"c1": "x = 1"} and upstream.lc.attempts == 2
    upstream.edit("c1", "x = 2")  # OPEN: sent at once, acked
    # --8<-- [end:use]
    while upstream.lc.pending_edits:
        upstream.changed.clear()
        await asyncio.wait_for(upstream.changed.wait(), 10)
    assert cells == {"c1": "x = 2"}
    upstream.apply(upstream.lc.close())
    await asyncio.wait_for(asyncio.gather(*upstream.tasks), 10)
    assert upstream.lc.state is fsm.ConnState.CLOSED
    server.close()
    await server.wait_closed()
    assert "trio" not in sys.modules  # the core needs no trio
    print("sans-IO core under asyncio: ok")


asyncio.run(main())
