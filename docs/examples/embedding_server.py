"""Embedding fsm in a server: a WebSocket gateway in front of several kernels.

Browsers (here: a test client) connect to the gateway at ``/kernels/NAME`` and send
``{"op": "edit", "data": {"cell_id", "code"}}`` or ``{"op": "run", "data": {"cell_id"}}``.
The gateway holds one lazy connector, and so one ConnectionLifecycle, per upstream
kernel: a kernel nobody uses is never dialled, edits sent before the kernel is up
are buffered and flushed when it is, and a lost kernel connection heals by itself
while the clients stay connected to the gateway. Kernel output is fanned out to
every client of that kernel.

Run it with ``python docs/examples/embedding_server.py``: it starts two reference
kernel servers, the gateway and a client, all on 127.0.0.1.
"""

import contextlib
import functools
import json

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

import fsm
from fsm.server import KernelServer


# --8<-- [start:gateway]
class Gateway:
    """One connector (one ConnectionLifecycle) per upstream kernel, shared by its clients."""

    def __init__(self, upstreams: dict[str, str]) -> None:
        self.upstreams = upstreams
        self.connectors: dict[str, fsm.Connector] = {}
        self.clients: dict[str, set[WebSocketConnection]] = {name: set() for name in upstreams}

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for name, url in self.upstreams.items():
                self.connectors[name] = await nursery.start(self._upstream, name, url)
            listen = functools.partial(serve_websocket, self._client, "127.0.0.1", 0, None)
            server = await nursery.start(listen)
            task_status.started(f"ws://127.0.0.1:{server.port}")

    async def _upstream(self, name: str, url: str, *, task_status) -> None:
        # Lazy: no socket until a client's first request. Leaving closes it gracefully.
        async with fsm.open_connector(url, session_id=f"gateway-{name}") as conn:
            task_status.started(conn)
            async for message in conn.messages():  # kernel output, to every client
                text = json.dumps({"op": message.op, "data": message.data})
                for client in list(self.clients[name]):
                    with contextlib.suppress(ConnectionClosed):
                        await client.send_message(text)

    async def _client(self, request: WebSocketRequest) -> None:
        name = request.path.rsplit("/", 1)[-1]
        conn = self.connectors.get(name)
        if conn is None:
            await request.reject(404)
            return
        ws = await request.accept()
        self.clients[name].add(ws)
        try:
            while True:
                frame = json.loads(await ws.get_message())
                status = {"state": str(conn.state)}
                if frame["op"] == "edit":  # never blocks, never lost
                    conn.edit(frame["data"]["cell_id"], frame["data"]["code"])
                else:
                    try:  # the first request starts the upstream connection
                        await conn.request(frame["op"], frame["data"])
                    except fsm.LifecycleError as exc:  # ConnectionFailed, NotConnected, ...
                        status["error"] = str(exc)
                status |= {"state": str(conn.state), "pending": len(conn.pending_edits)}
                await ws.send_message(json.dumps({"op": "status", "data": status}))
        except ConnectionClosed:
            pass
        finally:
            self.clients[name].discard(ws)
# --8<-- [end:gateway]


async def main() -> None:
    alpha, beta = KernelServer(cells={"c1": "x = 1"}), KernelServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(alpha.serve)
        await nursery.start(beta.serve)
        gateway = Gateway({"alpha": alpha.url, "beta": beta.url})
        url = await nursery.start(gateway.serve)

        # --8<-- [start:client]
        async with open_websocket_url(f"{url}/kernels/alpha") as ws:
            inbox: list[dict] = []

            async def receive(op: str) -> dict:
                """The next message with this op; others wait in the inbox."""
                for message in inbox:
                    if message["op"] == op:
                        inbox.remove(message)
                        return message["data"]
                while (message := json.loads(await ws.get_message()))["op"] != op:
                    inbox.append(message)
                return message["data"]

            async def send(op: str, **data: str) -> dict:
                await ws.send_message(json.dumps({"op": op, "data": data}))
                return await receive("status")

            assert (await send("edit", cell_id="c1", code="x = 42"))["state"] == "NOT_STARTED"
            assert alpha.handshakes == 0  # edits alone do not dial the kernel
            assert (await send("run", cell_id="c1"))["state"] == "OPEN"  # this one does
            output = await receive("cell-op")  # the kernel ran the edited code
            assert output["output"]["data"] == "x = 42"

            await alpha.drop_all()  # the kernel connection is lost...
            await send("edit", cell_id="c1", code="x = 43")  # ...the edit is kept...
            with trio.fail_after(5):  # ...and reaches the kernel once the gateway reconnects
                await gateway.connectors["alpha"].wait_acked()
            assert alpha.cells["c1"] == "x = 43" and alpha.connections_opened == 2
            assert (await send("run", cell_id="c1"))["state"] == "OPEN"
            output = await receive("cell-op")
            assert output["output"]["data"] == "x = 43"
        # --8<-- [end:client]
        assert beta.handshakes == 0  # nobody used beta: never dialled
        assert gateway.connectors["beta"].state is fsm.ConnState.NOT_STARTED
        for name, conn in gateway.connectors.items():
            print(f"{name}: {conn.state}")
        nursery.cancel_scope.cancel()  # closes every upstream connection gracefully
    print("gateway with one lifecycle per kernel: ok")


if __name__ == "__main__":
    trio.run(main)
