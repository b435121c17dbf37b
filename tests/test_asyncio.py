"""asyncio applications: fsm.aio runs the trio connector in trio's guest mode; the trio
open_connector under asyncio fails at once, saying what to do."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import fsm
import fsm.aio
from fsm.server import KernelServer

FAST = fsm.RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02, connect_timeout=5.0)


@contextlib.contextmanager
def server_thread(**options: Any) -> Iterator[KernelServer]:
    """A real KernelServer on 127.0.0.1, run by trio in a thread of its own."""
    started: queue.Queue[tuple[KernelServer, trio.lowlevel.TrioToken, trio.Event]] = (
        queue.Queue()
    )

    async def serve() -> None:
        server = KernelServer(**options)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            started.put((server, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()
            await server.shutdown()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    server, token, stop = started.get(timeout=30)
    try:
        yield server
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=30)
        assert not thread.is_alive()


def run_asyncio(coro: Any) -> Any:
    """Run ``coro`` with asyncio.run, bounded; no guest run is left behind."""

    async def bounded() -> Any:
        async with asyncio.timeout(60):
            return await coro

    result = asyncio.run(bounded())
    assert not fsm.driver._aio._RUNS
    return result


def test_an_asyncio_application_edits_connects_requests_and_closes() -> None:
    """Under asyncio.run: edits while NOT_STARTED, connect, the flush acked, a request and
    its answer, an edit while OPEN, a clean close; the server holds every edit."""
    with server_thread(cells={"c1": "x = 1", "c2": "y = 2"}) as server:

        async def app() -> dict[str, Any]:
            async with fsm.aio.open_connector(server.url, policy=FAST) as conn:
                messages = conn.messages()
                conn.edit("c1", "x = 10")
                conn.edit("c2", "y = x * 2")
                assert conn.state is fsm.ConnState.NOT_STARTED
                assert conn.pending_edits == {"c1": "x = 10", "c2": "y = x * 2"}
                await conn.connect()
                assert conn.state is fsm.ConnState.OPEN
                await conn.wait_acked()
                assert await conn.request("run", {"cell_id": "c1"}) is None
                answer = await anext(aiter(messages))
                conn.edit("c1", "x = 11")
                await conn.wait_acked()
                await conn.aclose()
                return {"answer": answer, "state": conn.state, "reason": conn.close_reason}

        seen = run_asyncio(app())
        assert server.cells == {"c1": "x = 11", "c2": "y = x * 2"}
    assert seen["answer"].op == "cell-op"
    assert seen["answer"].data["output"]["data"] == "x = 10"
    assert (seen["state"], seen["reason"]) == (fsm.ConnState.CLOSED, fsm.CloseReason.USER)


def test_connectors_of_one_loop_share_one_guest_run() -> None:
    """Two connectors open at once in one asyncio loop both work; the guest run ends
    with the last of them."""
    with server_thread() as server:

        async def app() -> list[fsm.ConnState]:
            async with (
                fsm.aio.open_connector(server.url, policy=FAST) as one,
                fsm.aio.open_connector(server.url, policy=FAST) as two,
            ):
                assert len(fsm.driver._aio._RUNS) == 1
                one.edit("a", "1")
                two.edit("b", "2")
                await asyncio.gather(one.connect(), two.connect())
                await asyncio.gather(one.wait_acked(), two.wait_acked())
                return [one.state, two.state]

        assert run_asyncio(app()) == [fsm.ConnState.OPEN] * 2
        assert server.cells == {"a": "1", "b": "2"}


def test_transitions_are_readable_from_asyncio() -> None:
    """transitions() iterates from asyncio: connect, then ready."""
    with server_thread() as server:

        async def app() -> list[tuple[str, str, str]]:
            async with fsm.aio.open_connector(server.url, policy=FAST) as conn:
                changes = conn.transitions()
                await conn.connect()
                first = [await anext(changes), await anext(changes)]
            return [(c.event, c.source.value, c.target.value) for c in first]

        assert run_asyncio(app()) == [
            ("connect", "NOT_STARTED", "CONNECTING"),
            ("ready", "CONNECTING", "OPEN"),
        ]


def test_a_failure_arrives_with_its_cause() -> None:
    """A connect that gives up raises ConnectionFailed in the asyncio task, with the
    OSError that refused the connection as its __cause__."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def app() -> fsm.ConnectionFailed:
        async with fsm.aio.open_connector(f"ws://127.0.0.1:{port}", policy=FAST) as conn:
            with pytest.raises(fsm.ConnectionFailed) as failed:
                await conn.connect()
            assert conn.state is fsm.ConnState.CLOSED
            return failed.value

    error = run_asyncio(app())
    assert error.reason is fsm.CloseReason.GAVE_UP
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert error.cause is error.__cause__


def test_cancelling_the_asyncio_caller_cancels_the_wait() -> None:
    """asyncio.timeout around connect() to a server that refuses every handshake ends the
    wait; the connector is still usable and closes cleanly."""
    with server_thread() as server:
        server.faults.refuse_handshakes = 10**9
        policy = fsm.RetryPolicy(max_attempts=10**6, initial_delay=0.01, max_delay=0.02)

        async def app() -> fsm.ConnState:
            async with fsm.aio.open_connector(server.url, policy=policy) as conn:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await conn.connect()
                assert conn.state is fsm.ConnState.CONNECTING  # still retrying, as with trio
                server.faults.refuse_handshakes = 0
                await conn.connect()
                return conn.state

        assert run_asyncio(app()) is fsm.ConnState.OPEN


def test_the_trio_connector_under_asyncio_fails_at_once_saying_what_to_do() -> None:
    """fsm.open_connector inside asyncio.run raises LifecycleError naming fsm.aio, before
    anything of trio runs (no AttributeError from trio's internals)."""

    async def app() -> None:
        async with fsm.open_connector("ws://127.0.0.1:9"):
            raise AssertionError("entered")  # pragma: no cover

    with pytest.raises(fsm.LifecycleError, match=r"fsm\.aio\.open_connector"):
        asyncio.run(app())


async def test_fsm_aio_under_trio_says_to_use_the_trio_connector() -> None:
    """fsm.aio.open_connector called from trio code says to use fsm.open_connector."""
    with pytest.raises(fsm.LifecycleError, match=r"fsm\.open_connector"):
        async with fsm.aio.open_connector("ws://127.0.0.1:9"):
            raise AssertionError("entered")  # pragma: no cover


def test_edit_after_the_block_is_the_not_running_error() -> None:
    """From asyncio too, edit() and connect() after the block raise the 'not running' error."""
    with server_thread() as server:

        async def app() -> Any:
            async with fsm.aio.open_connector(server.url, policy=FAST) as conn:
                pass
            return conn

        conn = run_asyncio(app())
    with pytest.raises(fsm.LifecycleError, match="not running"):
        conn.edit("c1", "x = 1")

    async def later() -> None:
        with pytest.raises(fsm.LifecycleError, match="not running"):
            await conn.connect()

    run_asyncio(later())


def test_a_connect_pending_when_the_block_exits_gets_the_not_running_error() -> None:
    """An asyncio task still awaiting connect() when the block exits gets the same
    'not running' error as with trio."""
    with server_thread() as server:
        server.faults.refuse_handshakes = 10**9
        policy = fsm.RetryPolicy(max_attempts=10**6, initial_delay=0.01, max_delay=0.02)

        async def app() -> BaseException:
            async with fsm.aio.open_connector(server.url, policy=policy) as conn:
                pending = asyncio.ensure_future(conn.connect())
                await conn.wait_for(fsm.ConnState.CONNECTING)
            with pytest.raises(fsm.LifecycleError) as raised:
                await pending
            return raised.value

        error = run_asyncio(app())
        server.faults.refuse_handshakes = 0
    assert type(error) is fsm.LifecycleError and "not running" in str(error)
