"""Closing, and the errors and close reasons a connection can end with."""

import random

import trio

import fsm
from fsm.server import KernelServer


async def main() -> None:
    server = KernelServer(token="s3cret")  # handshakes need this token
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)

        # --8<-- [start:close]
        protocol = fsm.ReferenceProtocol(token="s3cret")
        async with fsm.open_connector(server.url, protocol=protocol, close_timeout=2.0) as conn:
            await conn.connect()
            await conn.aclose()  # graceful: OPEN -> CLOSING -> CLOSED, bounded by close_timeout
            assert conn.state is fsm.ConnState.CLOSED
            assert conn.close_reason is fsm.CloseReason.USER
            await conn.aclose()  # idempotent
            try:
                await conn.request("run", {"cell_id": "c1"})
            except fsm.NotConnected as exc:
                print("request after close:", exc)
            await conn.connect()  # a closed connector starts again with connect()
        assert conn.state is fsm.ConnState.CLOSED  # leaving the block closed it
        # --8<-- [end:close]

        # --8<-- [start:rejected]
        # A wrong token: HTTP 401 on the handshake is fatal, so there is no retry.
        async with fsm.open_connector(server.url) as conn:
            try:
                await conn.connect()
            except fsm.ConnectionFailed as exc:
                print("without the token:", exc)
                assert exc.reason is fsm.CloseReason.REJECTED
                assert conn.attempts == 0  # a rejection is not a failed attempt
        # --8<-- [end:rejected]

        # --8<-- [start:shutdown]
        # The server closes with 1000 "SHUTDOWN": CLOSED(SHUTDOWN), no retry.
        async with fsm.open_connector(server.url, protocol=protocol) as conn:
            await conn.connect()
            await server.shutdown()
            with trio.fail_after(5):
                await conn.wait_for(fsm.ConnState.CLOSED)
            assert conn.close_reason is fsm.CloseReason.SHUTDOWN
        # --8<-- [end:shutdown]

    # --8<-- [start:invalid]
    # The core refuses events that make no sense in the current state, and names both.
    lc = fsm.ConnectionLifecycle(rng=random.Random(0), log_transitions=False)
    try:
        lc.ready()
    except fsm.InvalidTransition as exc:
        print(exc)  # event 'ready' is not allowed in state NOT_STARTED (allowed there: ...)
        assert exc.event == "ready" and exc.state is fsm.ConnState.NOT_STARTED
    assert lc.state is fsm.ConnState.NOT_STARTED  # unchanged

    # The edit buffer is bounded; a refused edit raises, and nothing is dropped.
    small = fsm.ConnectionLifecycle(edit_limit=2, log_transitions=False)
    small.edit("a", "1")
    small.edit("b", "2")
    small.edit("a", "3")  # same cell: replaces, does not count twice
    try:
        small.edit("c", "4")
    except fsm.EditBufferFull as exc:
        print(exc)
    assert small.pending_edits == {"a": "3", "b": "2"}

    # Every error the library raises on purpose derives from one base class.
    assert issubclass(fsm.ConnectionFailed, fsm.LifecycleError)
    assert issubclass(fsm.NotConnected, fsm.LifecycleError)
    # --8<-- [end:invalid]
    print("close, close reasons and errors: ok")


if __name__ == "__main__":
    trio.run(main)
