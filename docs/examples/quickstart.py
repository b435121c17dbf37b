"""Quickstart: a lazy client edits before it connects; the kernel runs the edited code.

Run it with ``python docs/examples/quickstart.py``: it starts the reference kernel
server (``fsm.server``) on 127.0.0.1 and talks to it.
"""

import trio

import fsm
from fsm.server import KernelServer


async def main() -> None:
    server = KernelServer(cells={"c1": "x = 1"})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)  # 127.0.0.1, a free port: server.url
        # --8<-- [start:client]
        async with fsm.open_connector(server.url) as conn:
            conn.edit("c1", "x = 42")  # NOT_STARTED: kept in the edit buffer, no socket yet
            assert conn.state is fsm.ConnState.NOT_STARTED and conn.can_interact

            messages = conn.messages()
            await conn.request("run", {"cell_id": "c1"})  # the first request connects
            assert conn.state is fsm.ConnState.OPEN  # ... and the edit was flushed on OPEN

            reply = await messages.receive()  # the server's answer: a cell-op frame
            print(reply.op, reply.data)
            assert reply.data["output"]["data"] == "x = 42"  # the kernel ran the edited code
        # leaving the block closes the connection gracefully
        # --8<-- [end:client]
        assert conn.state is fsm.ConnState.CLOSED and conn.close_reason is fsm.CloseReason.USER
        await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
