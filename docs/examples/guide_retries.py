"""Retries, automatic reconnection, giving up, and recovery with connect()."""

import trio

import fsm
from fsm.server import KernelServer

# --8<-- [start:policy]
# Short delays so that this example takes a moment; the defaults are in RetryPolicy.
POLICY = fsm.RetryPolicy(
    max_attempts=5,  # give up after 5 failed attempts in one cycle (default 25)
    initial_delay=0.01,
    max_delay=0.05,
    connect_timeout=2.0,  # one attempt: handshake and ready frame together
    min_uptime=0.1,  # a connection lost sooner counts as a failed attempt
)
# --8<-- [end:policy]


async def main() -> None:
    server = KernelServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with fsm.open_connector(server.url, policy=POLICY) as conn:
            # --8<-- [start:retries]
            changes = conn.transitions()  # every transition from now on
            server.faults.refuse_handshakes = 3  # the next 3 handshakes get HTTP 503
            await conn.connect()  # returns once OPEN, after 3 failed attempts
            assert conn.attempts == 3
            async for change in changes:  # what happened meanwhile, in order
                delay = None if change.delay is None else round(change.delay, 3)
                print(f"{change.event:>7}: {change.source} -> {change.target} {change.phase}"
                      f" attempt={change.attempt} delay={delay} cause={change.cause}")
                if change.target is fsm.ConnState.OPEN:
                    break
            # --8<-- [end:retries]

            # --8<-- [start:reconnect]
            await trio.sleep(POLICY.min_uptime)  # a stable connection...
            await server.drop_all()  # ...is lost: the connector reconnects by itself
            conn.edit("c1", "x = 1")  # made while reconnecting: buffered, flushed on OPEN
            with trio.fail_after(5):
                await conn.wait_acked()  # OPEN again, and the edit acknowledged
            assert server.cells == {"c1": "x = 1"}
            # --8<-- [end:reconnect]

            # --8<-- [start:give-up]
            server.faults.refuse_handshakes = 10**9  # the server refuses everything now
            await server.drop_all()
            with trio.fail_after(5):
                await conn.wait_for(fsm.ConnState.CLOSED)
            assert conn.close_reason is fsm.CloseReason.GAVE_UP
            assert conn.attempts == POLICY.max_attempts
            # A program's request after a give-up starts a new cycle (an unattended client
            # heals on its next use); while the server still refuses, that cycle gives up too.
            try:
                await conn.request("run", {"cell_id": "c1"})
            except fsm.ConnectionFailed as exc:
                print("request:", exc)  # gave up after 5 failed attempts; last cause: ...
                assert isinstance(exc, fsm.ConnectionFailed) and exc.attempts == 5

            # Recovery: connect() from CLOSED starts a new cycle, whatever the reason.
            server.faults.refuse_handshakes = 0
            await conn.connect()
            assert conn.state is fsm.ConnState.OPEN and conn.attempts == 0
            # --8<-- [end:give-up]

            # --8<-- [start:failed]
            await conn.aclose()
            server.faults.refuse_handshakes = 10**9
            try:
                await conn.connect()
            except fsm.ConnectionFailed as exc:
                print("connect:", exc)  # gave up after 5 failed attempts; last cause: ...
                assert exc.reason is fsm.CloseReason.GAVE_UP and exc.attempts == 5
            # --8<-- [end:failed]
        await server.shutdown()
    print("retries, reconnection, give-up and recovery: ok")


if __name__ == "__main__":
    trio.run(main)
