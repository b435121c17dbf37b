"""The lazy gateway in code: a kernel, a gateway in front of it, and a client of the gateway.

The gateway holds one lazy upstream connector per client session, so a client is OPEN
at once and edits while the kernel connection is NOT_STARTED; its first request starts
the upstream, and each edit is acked only once the kernel has it.
"""

import trio

import fsm
from fsm.gateway import Gateway
from fsm.server import KernelServer


async def main() -> None:
    kernel = KernelServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(kernel.serve)
        # --8<-- [start:gateway]
        gateway = Gateway(
            kernel.url,  # the upstream kernel server, without a session id
            policy=fsm.RetryPolicy(max_attempts=25, initial_delay=0.1),
            session_ttl=120,  # a session outlives its client this long
            max_sessions=1000,
        )
        await nursery.start(gateway.serve)  # 127.0.0.1, an ephemeral port
        print("clients connect to", gateway.url, "- the page is at", gateway.page_url)
        # --8<-- [end:gateway]
        await client(gateway.url)
        assert kernel.cells == {"c1": "x = 42"}
        await gateway.shutdown()
        await kernel.shutdown()


async def client(url: str) -> None:
    # --8<-- [start:client]
    async with fsm.open_connector(url, session_id="a-long-random-id") as conn:
        await conn.connect()  # OPEN at once: the gateway answers kernel-ready itself
        conn.edit("c1", "x = 42")  # taken by the session; the kernel is not dialled yet
        updates = conn.messages()
        await conn.request("run", {"cell_id": "c1", "id": 1})  # starts the upstream
        await conn.wait_acked()  # the kernel has the edit: the gateway acked it
        async for message in updates:
            if message.op == "upstream":  # pushed on every upstream transition
                print("upstream:", message.data["state"], "attempts", message.data["attempts"])
            elif message.op == "cell-op":  # the kernel's answer, forwarded
                print("output:", message.data["output"]["data"])
                break
    # --8<-- [end:client]


trio.run(main)
