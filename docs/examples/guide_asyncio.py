# ruff: noqa: I001 - the imports shown in the guide come first, as a reader writes them
"""An asyncio application uses fsm.aio: the trio connector, in trio's guest mode."""

import threading

# --8<-- [start:imports]
import asyncio

import fsm
import fsm.aio

# --8<-- [end:imports]
import trio

from fsm.server import KernelServer


def serve_in_a_thread(server: KernelServer) -> tuple[threading.Thread, trio.Event, list]:
    """The reference server, on trio in a thread of its own (your kernel server runs
    elsewhere); returns the thread, the event that stops it and [its trio token]."""
    ready, stop, token = threading.Event(), trio.Event(), []

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            token.append(trio.lowlevel.current_trio_token())
            ready.set()
            await stop.wait()
            await server.shutdown()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    ready.wait(30)
    return thread, stop, token


# --8<-- [start:aio]
async def main(url: str) -> None:
    async with fsm.aio.open_connector(url) as conn:  # the same arguments as fsm.open_connector
        conn.edit("c1", "x = 2")  # sync, never blocks: buffered while NOT_STARTED
        async with asyncio.timeout(10):  # bound waits the asyncio way
            await conn.connect()
            await conn.wait_acked()
            messages = conn.messages()
            await conn.request("run", {"cell_id": "c1"})
            answer = await anext(aiter(messages))
        print(conn.state, answer.op, answer.data["output"]["data"])  # OPEN cell-op x = 2


def fails_at_once() -> None:
    async def trio_connector_under_asyncio() -> None:
        async with fsm.open_connector("ws://127.0.0.1:9"):
            pass

    try:
        asyncio.run(trio_connector_under_asyncio())
    except fsm.LifecycleError as exc:
        print(exc)  # fsm.open_connector() runs under trio, and this is asyncio: ...
# --8<-- [end:aio]


server = KernelServer(cells={"c1": "x = 1"})
thread, stop, token = serve_in_a_thread(server)
asyncio.run(main(server.url))
assert server.cells == {"c1": "x = 2"}
fails_at_once()
trio.from_thread.run_sync(stop.set, trio_token=token[0])
thread.join(30)
print("asyncio: ok")
