"""API edges: causes chained, 'not running' everywhere, a pending connect at block exit,
fsm.Frame at the top, extra handshake headers and TLS with a caller's SSL context."""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

import pytest
import trio
from _connector_helpers import LIMIT, connector, serving
from structlog.testing import capture_logs

import fsm
from fsm.server import KernelServer

ONE_TRY = fsm.RetryPolicy(max_attempts=1, connect_timeout=5.0)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_connection_failed_chains_the_os_error_and_says_its_errno_text() -> None:
    """A refused TCP connect gives ConnectionFailed whose cause and __cause__ are the
    ConnectionRefusedError, and whose message carries its errno text."""
    port = closed_port()
    with trio.fail_after(LIMIT):
        async with fsm.open_connector(f"ws://127.0.0.1:{port}", policy=ONE_TRY) as conn:
            with pytest.raises(fsm.ConnectionFailed) as failed:
                await conn.connect()
    error = failed.value
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert error.cause is error.__cause__
    assert error.__cause__.errno == errno.ECONNREFUSED
    assert "Connection refused" in str(error) and "ConnectionRefusedError" in str(error)
    assert str(error).endswith("call connect() to try again")


async def test_a_refusal_by_status_keeps_a_text_cause() -> None:
    """A handshake refused with HTTP 403 is a REJECTED ConnectionFailed; its cause says so."""
    with trio.fail_after(LIMIT):
        async with serving(token="secret") as server, connector(server) as conn:
            with pytest.raises(fsm.ConnectionFailed) as failed:
                await conn.connect()
    assert failed.value.reason is fsm.CloseReason.REJECTED
    assert "401" in str(failed.value)


async def test_edit_after_the_block_raises_the_not_running_error() -> None:
    """edit(), connect() and request() after the async with block raise one and the same
    LifecycleError, which says what to do."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            pass
    errors = []
    for call in (lambda: conn.edit("c1", "x"),):
        with pytest.raises(fsm.LifecycleError) as raised:
            call()
        errors.append(str(raised.value))
    with pytest.raises(fsm.LifecycleError) as raised:
        await conn.connect()
    errors.append(str(raised.value))
    with pytest.raises(fsm.LifecycleError) as raised:
        await conn.request("run", {"cell_id": "c1"})
    errors.append(str(raised.value))
    assert len(set(errors)) == 1
    assert "not running" in errors[0] and "async with open_connector" in errors[0]
    assert conn.pending_edits == {}  # the refused edit was not buffered


async def test_a_connect_pending_when_the_block_exits_gets_the_not_running_error() -> None:
    """A connect() waiting in a task outside the block when the block exits raises the
    'not running' LifecycleError (not a ConnectionFailed inviting a retry)."""
    with trio.fail_after(LIMIT):
        async with serving() as server, trio.open_nursery() as outside:
            server.faults.refuse_handshakes = 10**9
            outcome: list[BaseException] = []
            connecting = trio.Event()

            async def wait_for_open(conn: fsm.Connector) -> None:
                connecting.set()
                try:
                    await conn.connect()
                except fsm.LifecycleError as exc:
                    outcome.append(exc)

            async with connector(server) as conn:
                outside.start_soon(wait_for_open, conn)
                await connecting.wait()
                await conn.wait_for(fsm.ConnState.CONNECTING)
            # the block has exited; the waiting task ends on its own
    assert len(outcome) == 1
    assert type(outcome[0]) is fsm.LifecycleError
    assert "not running" in str(outcome[0])


def test_frame_is_importable_from_the_top() -> None:
    """fsm.Frame is the frame type messages() yields."""
    from fsm.core._frames import Frame

    assert fsm.Frame is Frame and "Frame" in fsm.__all__


async def test_extra_headers_reach_the_server_and_never_a_log_line() -> None:
    """An Authorization header passed as extra_headers lets a token-protected server accept
    the handshake; the token appears in no log line."""
    token = "s3cr3t-t0ken-value"
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving(token=token) as server:
            async with connector(
                server, extra_headers={"Authorization": f"Bearer {token}"}
            ) as conn:
                conn.edit("c1", "x = 1")
                await conn.connect()
                await conn.wait_acked()
            assert server.cells["c1"] == "x = 1"
    assert logs and token not in repr(logs)


@pytest.mark.parametrize(
    "headers", [{"X-Bad": "a\r\nInjected: 1"}, [("only-name",)], {"": "value"}]
)
async def test_bad_extra_headers_are_refused_at_once(headers: Any) -> None:
    """Headers with line breaks, or not (name, value) pairs, are refused on entry."""
    with pytest.raises((TypeError, ValueError)):
        async with fsm.open_connector("ws://127.0.0.1:9", extra_headers=headers):
            raise AssertionError("entered")  # pragma: no cover


async def _tls_proxy(
    listener: trio.SocketListener, context: ssl.SSLContext, port: int, nursery: trio.Nursery
) -> None:
    """Terminate TLS on ``listener`` and relay each connection to 127.0.0.1:``port``."""

    async def relay(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async def handle(raw: trio.SocketStream) -> None:
        tls = trio.SSLStream(raw, context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(tls)
            return
        upstream = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as pair:
            pair.start_soon(relay, tls, upstream)
            pair.start_soon(relay, upstream, tls)

    await trio.serve_listeners(handle, [listener], handler_nursery=nursery)


async def test_wss_with_a_callers_ssl_context() -> None:
    """wss:// to a server whose certificate a private CA signed: connects with an
    ssl_context trusting that CA, and fails verification without it."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(LIMIT):
        async with serving(KernelServer(cells={"c1": "x = 1"})) as server, \
                trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            tls_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(_tls_proxy, listeners[0], server_context, server.port, nursery)
            url = f"wss://127.0.0.1:{tls_port}/ws"
            async with fsm.open_connector(url, policy=ONE_TRY, ssl_context=client_context,
                                          heartbeat_interval=None) as conn:
                conn.edit("c1", "x = 2")
                await conn.connect()
                await conn.wait_acked()
            assert server.cells["c1"] == "x = 2"
            async with fsm.open_connector(url, policy=ONE_TRY, heartbeat_interval=None) as conn:
                with pytest.raises(fsm.ConnectionFailed) as failed:
                    await conn.connect()
            assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
            nursery.cancel_scope.cancel()
