"""Testing code built on fsm in virtual time: minutes of back-off in milliseconds.

These are ordinary pytest-trio style tests of *your* code; run them with pytest, or
as a script (``python docs/examples/testing_virtual_time.py``).
"""

import socket
import time

import trio
import trio.testing

import fsm
from fsm.server import KernelServer


# --8<-- [start:code]
async def connect_or_explain(url: str) -> str:
    """The code under test: what an app shows when its kernel cannot be reached."""
    async with fsm.open_connector(url) as conn:
        try:
            await conn.connect()
        except fsm.ConnectionFailed as exc:
            return f"{exc.reason}: {exc}"
        return "connected"
# --8<-- [end:code]


def unused_port() -> int:
    """A loopback port nobody listens on: every attempt is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --8<-- [start:gives-up]
def test_gives_up_after_25_attempts_in_virtual_time() -> None:
    """The default policy's 25 attempts and their back-off take no real time."""
    clock = trio.testing.MockClock(autojump_threshold=0)  # jump whenever all tasks wait
    started = time.monotonic()
    url = f"ws://127.0.0.1:{unused_port()}/ws"

    shown = trio.run(connect_or_explain, url, clock=clock)

    assert shown.startswith("GAVE_UP: gave up after 25 failed attempts")
    assert clock.current_time() > 10  # the back-off waits happened, in virtual time...
    assert time.monotonic() - started < 5  # ...and took almost no real time
# --8<-- [end:gives-up]


# --8<-- [start:server]
def test_edits_survive_a_refusing_server_in_virtual_time() -> None:
    """Edits made before connecting reach a server that refused the first attempts."""

    async def scenario() -> None:
        server = KernelServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            server.faults.refuse_handshakes = 5  # HTTP 503, five times
            async with fsm.open_connector(server.url) as conn:
                conn.edit("c1", "x = 1")
                await conn.connect()
                await conn.wait_acked()
                assert conn.attempts == 5
            assert server.cells == {"c1": "x = 1"}
            await server.shutdown()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
# --8<-- [end:server]


if __name__ == "__main__":
    test_gives_up_after_25_attempts_in_virtual_time()
    test_edits_survive_a_refusing_server_in_virtual_time()
    print("virtual-time tests: ok")
