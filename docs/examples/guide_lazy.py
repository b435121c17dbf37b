"""Lazy connect, edits and the edit buffer, against the reference kernel server."""

import trio

import fsm
from fsm.server import KernelServer


async def main() -> None:
    server = KernelServer(cells={"c1": "x = 1", "c2": "y = 2"})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with fsm.open_connector(server.url) as conn:
            # --8<-- [start:lazy]
            # Lazy: nothing happens until the first connect() or request().
            conn.edit("c1", "x = 10")
            conn.edit("c2", "y = x * 2")
            conn.edit("c1", "x = 20")  # the latest code per cell wins
            assert conn.is_not_started and conn.can_interact
            assert conn.pending_edits == {"c1": "x = 20", "c2": "y = x * 2"}
            assert server.handshakes == 0  # no socket was opened

            # Concurrent first uses (Connect clicked twice, a Run) start one connection.
            async with trio.open_nursery() as users:
                users.start_soon(conn.connect)
                users.start_soon(conn.connect)
                users.start_soon(conn.request, "run", {"cell_id": "c2"})
            assert conn.state is fsm.ConnState.OPEN
            assert server.connections_opened == 1
            # --8<-- [end:lazy]

            # --8<-- [start:buffer]
            # The edits made before OPEN were flushed on the transition into OPEN,
            # in one batch; they stay pending until the server acknowledges them.
            await conn.wait_acked()
            assert conn.pending_edits == {}
            assert server.cells == {"c1": "x = 20", "c2": "y = x * 2"}

            # While OPEN an edit is sent at once, and tracked until acknowledged.
            conn.edit("c3", "z = x + y")
            assert conn.pending_edits == {"c3": "z = x + y"}
            await conn.wait_acked()
            assert server.cells["c3"] == "z = x + y"
            # --8<-- [end:buffer]
        await server.shutdown()
    print("lazy connect, flush and acknowledgements: ok")


if __name__ == "__main__":
    trio.run(main)
