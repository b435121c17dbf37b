"""Tests for the reference kernel server (fsm.server): protocol, routing, and every fault.

All tests use real sockets on 127.0.0.1 with ephemeral ports and a raw trio-websocket
client. Conditions are awaited with ``KernelServer.wait_until``; the only fixed delays are
the short client time-outs that prove something does *not* happen.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from fsm.core._frames import MAX_FRAME_SIZE, Frame, decode_frame, encode_frame
from fsm.server import Faults, KernelServer, Session, malformed_frames

#: Upper bound for any single test; everything here normally finishes in milliseconds.
LIMIT = 5.0
#: How long a client waits before concluding that the server will never answer.
NEVER = 0.2


@asynccontextmanager
async def running(server: KernelServer | None = None, **kwargs: Any) -> AsyncIterator[KernelServer]:
    """Serve ``server`` (or a new one) on an ephemeral port for the duration of the block."""
    srv = server if server is not None else KernelServer(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.serve)
        try:
            yield srv
        finally:
            await srv.shutdown()


@asynccontextmanager
async def connect(
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 1 << 20,
) -> AsyncIterator[WebSocketConnection]:
    """Like ``trio_websocket.open_websocket_url``, except that the TCP stream is always closed.

    trio-websocket 0.12.2 leaves the client socket open (a ResourceWarning later) when the
    server closes first, rejects the handshake, or the handshake is cancelled, so the test
    owns the stream. A lone error from the reader task (e.g. ConnectionRejected) is unwrapped.
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    resource = f"{parts.path}?{parts.query}" if parts.query else parts.path
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"{parts.hostname}:{parts.port}",
                    resource,
                    extra_headers=extra_headers,
                    max_message_size=max_message_size,
                )
                try:
                    yield ws
                finally:
                    with trio.move_on_after(1):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], trio.Cancelled):
                raise group.exceptions[0] from None
            raise
    finally:
        await trio.aclose_forcefully(stream)


def closed_with(info: pytest.ExceptionInfo[ConnectionClosed]) -> tuple[int, str | None]:
    """The (code, reason) of a caught ConnectionClosed."""
    reason = info.value.reason
    assert reason is not None
    return reason.code, reason.reason


async def recv(ws: WebSocketConnection) -> Frame:
    """Receive and decode one frame."""
    return decode_frame(await ws.get_message())


async def send(ws: WebSocketConnection, op: str, data: Any) -> None:
    """Encode and send one frame."""
    await ws.send_message(encode_frame(op, data))


async def http(port: int, request: bytes) -> bytes:
    """Send a raw HTTP request and return everything the server sends until it hangs up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


def upgrade_request(path: str = "/ws?session_id=raw") -> bytes:
    """A valid WebSocket upgrade request, as bytes."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- normal flow


async def test_kernel_ready_is_first_frame() -> None:
    """The first frame is kernel-ready: session id, cells in order, seq 0, the frame limit."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "1", "b": "2"}) as srv:
            async with connect(srv.url_for("s1")) as ws:
                frame = await recv(ws)
                assert frame == Frame(
                    "kernel-ready",
                    {
                        "session_id": "s1",
                        "cell_ids": ["a", "b"],
                        "codes": ["1", "2"],
                        "seq": 0,
                        "max_frame_size": MAX_FRAME_SIZE,
                    },
                )
                assert srv.connections_opened == 1
                assert srv.open_connections == 1
                assert srv.sessions_seen == {"s1"}
                assert srv.handshakes == 1
            await srv.wait_until(lambda s: s.open_connections == 0)


async def test_instantiate_is_acked_and_applied() -> None:
    """instantiate applies every code (new cells appended in order) and is acked with its seq."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "1"}) as srv:
            async with connect(srv.url_for("s")) as ws:
                await recv(ws)
                codes = {"b": "B", "a": "A"}
                await send(ws, "instantiate", {"seq": 7, "codes": codes, "auto_run": True})
                assert await recv(ws) == Frame("ack", {"seq": 7})
            assert list(srv.cells.items()) == [("a", "A"), ("b", "B")]
            assert srv.acks_sent == [7]
            assert srv.frames_received["instantiate"] == 1


async def test_edit_is_acked_and_a_newer_seq_wins() -> None:
    """Edits are acked, a frame with a newer seq replaces a cell's code, a new
    connection sees the result, and kernel-ready then carries the session's highest seq."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "1"}) as srv:
            async with connect(srv.url_for("s")) as ws:
                await recv(ws)
                await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "first"})
                assert await recv(ws) == Frame("ack", {"seq": 1})
                await send(ws, "edit", {"seq": 2, "cell_id": "c", "code": "new"})
                assert await recv(ws) == Frame("ack", {"seq": 2})
                codes = {"a": "second"}
                await send(ws, "instantiate", {"seq": 3, "codes": codes, "auto_run": True})
                assert await recv(ws) == Frame("ack", {"seq": 3})
            assert srv.cells == {"a": "second", "c": "new"}
            async with connect(srv.url_for("t")) as ws:
                ready = await recv(ws)
                assert ready.data["cell_ids"] == ["a", "c"]
                assert ready.data["codes"] == ["second", "new"]
                assert ready.data["seq"] == 0  # another session: its own seqs
            async with connect(srv.url_for("s")) as ws:
                assert (await recv(ws)).data["seq"] == 3
            assert srv.acks_sent == [1, 2, 3]
            assert srv.sessions_seen == {"s", "t"}


async def test_an_older_seq_never_overwrites_a_cell_but_is_acked() -> None:
    """A frame whose seq is not above the seq of the code held for a cell leaves that cell
    alone (other cells of the frame still apply) and is acked all the same."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with running(cells={"a": "0"}) as srv, connect(srv.url_for("s")) as ws:
            await recv(ws)
            await send(ws, "edit", {"seq": 5, "cell_id": "a", "code": "new"})
            assert await recv(ws) == Frame("ack", {"seq": 5})
            stale = {"a": "old", "b": "fresh"}
            await send(ws, "instantiate", {"seq": 4, "codes": stale, "auto_run": True})
            assert await recv(ws) == Frame("ack", {"seq": 4})
            await send(ws, "edit", {"seq": 5, "cell_id": "a", "code": "same seq"})
            assert await recv(ws) == Frame("ack", {"seq": 5})
            assert srv.cells == {"a": "new", "b": "fresh"}
            assert srv.sessions["s"].stale_codes == 2
            assert srv.sessions["s"].seq == 5
    assert [e["cell_id"] for e in logs if e["event"] == "stale_code_ignored"] == ["a", "a"]


async def test_instantiate_merges_cells_absent_from_the_frame_keep_their_code() -> None:
    """An instantiate frame that names some cells leaves every other cell as it was."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "A", "b": "B"}) as srv, connect(srv.url_for("m")) as ws:
            await recv(ws)
            await send(ws, "instantiate", {"seq": 1, "codes": {"b": "B2"}, "auto_run": False})
            await send(ws, "instantiate", {"seq": 2, "codes": {}, "auto_run": True})
            assert [await recv(ws), await recv(ws)] == [
                Frame("ack", {"seq": 1}),
                Frame("ack", {"seq": 2}),
            ]
            assert srv.cells == {"a": "A", "b": "B2"}


async def test_a_newer_connection_fences_the_older_before_kernel_ready() -> None:
    """Accepting a second connection for a session closes the first with 1008 "replaced",
    and a frame the first one still sends is never applied nor acked."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with running(cells={"a": "0"}) as srv:
            async with connect(srv.url_for("f")) as old:
                await recv(old)
                await send(old, "edit", {"seq": 1, "cell_id": "a", "code": "v1"})
                assert await recv(old) == Frame("ack", {"seq": 1})
                async with connect(srv.url_for("f")) as new:
                    ready = await recv(new)
                    assert ready.data["seq"] == 1
                    assert ready.data["codes"] == ["v1"]
                    # The old connection may still get a frame out before its close lands.
                    with contextlib.suppress(ConnectionClosed):
                        await send(old, "edit", {"seq": 9, "cell_id": "a", "code": "late"})
                    with pytest.raises(ConnectionClosed) as info:
                        while True:
                            await old.get_message()
                    assert closed_with(info) == (1008, "replaced")
                    await send(new, "edit", {"seq": 2, "cell_id": "a", "code": "v2"})
                    assert await recv(new) == Frame("ack", {"seq": 2})
            assert srv.cells == {"a": "v2"}
            assert srv.acks_sent == [1, 2]
    assert any(e["event"] == "connection_fenced" for e in logs)


async def test_a_handshake_held_up_behind_a_newer_connection_is_the_one_fenced() -> None:
    """An older TCP connection whose upgrade request arrives after a newer connection of the
    same session was accepted gets no kernel-ready: it is closed at once with 1008, and the
    newer connection keeps working."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "0"}) as srv:
            stale = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stale:
                await srv.wait_until(lambda s: s.tcp_connections == 1)
                async with connect(srv.url_for("held")) as new:
                    await recv(new)
                    await stale.send_all(upgrade_request("/ws?session_id=held"))
                    answer = b""
                    while chunk := await stale.receive_some():
                        answer += chunk
                    assert answer.startswith(b"HTTP/1.1 101 ")
                    assert b"kernel-ready" not in answer
                    assert b"replaced" in answer  # the 1008 close frame's reason
                    await send(new, "edit", {"seq": 1, "cell_id": "a", "code": "ok"})
                    assert await recv(new) == Frame("ack", {"seq": 1})
            assert srv.cells == {"a": "ok"}


async def test_lose_state_forgets_seqs_and_cells() -> None:
    """After lose_state the cells are the initial ones, kernel-ready's seq is 0 again, and
    every connection was reset."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "0"}) as srv:
            async with connect(srv.url_for("l")) as ws:
                await recv(ws)
                await send(ws, "edit", {"seq": 7, "cell_id": "a", "code": "edited"})
                assert await recv(ws) == Frame("ack", {"seq": 7})
                await srv.lose_state()
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            assert srv.cells == {"a": "0"}
            async with connect(srv.url_for("l")) as ws:
                ready = await recv(ws)
                assert (ready.data["seq"], ready.data["codes"]) == (0, ["0"])


async def test_default_handler_answers_run_with_cell_op() -> None:
    """run answers a cell-op echoing the cell's code, or an error for an unknown cell."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "x = 1"}) as srv, connect(srv.url_for("s")) as ws:
            await recv(ws)
            await send(ws, "run", {"cell_id": "a"})
            output = {"mimetype": "text/plain", "data": "x = 1"}
            assert await recv(ws) == Frame("cell-op", {"cell_id": "a", "output": output})
            await send(ws, "run", {"cell_id": "zz"})
            frame = await recv(ws)
            assert frame.data == {"cell_id": "zz", "output": None, "error": "unknown cell"}


async def test_custom_handler_receives_other_ops() -> None:
    """A custom async handler gets every non-protocol op and can reply and close the session."""
    seen: list[tuple[str, Frame]] = []

    async def handler(session: Session, frame: Frame) -> None:
        seen.append((session.session_id, frame))
        await session.send("echo", frame.data)
        session.close(3000, "bye")

    with trio.fail_after(LIMIT):
        async with running(handler=handler) as srv:
            async with connect(srv.url_for("h")) as ws:
                await recv(ws)
                await send(ws, "hello", {"n": 1})
                assert await recv(ws) == Frame("echo", {"n": 1})
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info) == (3000, "bye")
            assert seen == [("h", Frame("hello", {"n": 1}))]


async def test_sync_handler_is_supported() -> None:
    """A plain (non-async) handler is called too, and the connection keeps serving afterwards."""
    seen: list[str] = []
    with trio.fail_after(LIMIT):
        async with running(handler=lambda session, frame: seen.append(frame.op)) as srv:
            async with connect(srv.url_for("h")) as ws:
                await recv(ws)
                await send(ws, "whatever", None)
                await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "1"})
                assert await recv(ws) == Frame("ack", {"seq": 1})
            assert seen == ["whatever"]


async def test_malformed_frames_of_an_object_are_logged_and_connection_kept() -> None:
    """A JSON object that is not a well-formed frame (no op, an edit without its fields) logs
    one bad_frame event each and the connection keeps working."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with running() as srv:
            async with connect(srv.url_for("bad")) as ws:
                await recv(ws)
                for message in ('{"data": 1}', '{"op": "edit", "data": {}}'):
                    await ws.send_message(message)
                await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "ok"})
                assert await recv(ws) == Frame("ack", {"seq": 1})
            assert srv.bad_frames_received == 2
            assert srv.cells == {"a": "ok"}
    bad = [e for e in logs if e["event"] == "bad_frame"]
    assert len(bad) == 2
    assert all(e["session_id"] == "bad" for e in bad)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"binary", 1003),
        ("not json", 1007),
        ("[1]", 1007),
        ('"a string"', 1007),
        (encode_frame("edit", {"seq": 1, "cell_id": "a", "code": "x" * 300}), 1009),
        # Under the limit in characters, over it in UTF-8 bytes.
        ('{"op": "edit", "data": {"seq": 1, "cell_id": "a", "code": "' + "é" * 200 + '"}}', 1009),
    ],
    ids=["binary", "not-json", "array", "scalar", "oversized", "oversized-utf8"],
)
async def test_frames_the_server_will_not_take_close_the_connection(
    message: str | bytes, code: int
) -> None:
    """Binary frames close with 1003, text that is not a JSON object with 1007, and a frame
    over max_frame_size (UTF-8 bytes) with 1009; nothing of it is applied."""
    with trio.fail_after(LIMIT):
        async with running(cells={"a": "0"}, max_frame_size=256) as srv:
            async with connect(srv.url_for("refused")) as ws:
                assert (await recv(ws)).data["max_frame_size"] == 256
                await ws.send_message(message)
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info)[0] == code
            assert srv.client_close_codes == [code]
            assert srv.cells == {"a": "0"}


def test_max_frame_size_is_checked() -> None:
    """A max_frame_size that is not an integer of at least 64 is a ValueError."""
    for bad in (0, 63, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_frame_size"):
            KernelServer(max_frame_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- routing, auth


async def test_other_paths_get_404() -> None:
    """A WebSocket handshake or a plain request for a path other than /ws is answered 404."""
    with trio.fail_after(LIMIT):
        async with running() as srv:
            with pytest.raises(ConnectionRejected) as info:
                async with connect(f"ws://127.0.0.1:{srv.port}/nope"):
                    pass  # pragma: no cover
            assert info.value.status_code == 404
            response = await http(srv.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 404 ")
            assert srv.connections_opened == 0


async def test_health_answers_200() -> None:
    """GET /health over plain HTTP answers 200 with {"status":"healthy"}, even with a token."""
    with trio.fail_after(LIMIT):
        async with running(token="s3cret") as srv:
            response = await http(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 OK\r\n")
            assert response.endswith(b'\r\n\r\n{"status":"healthy"}')
            assert srv.handshakes == 0


async def test_token_is_required_and_never_logged() -> None:
    """With a token, a missing or wrong one gets 401; ?token= and a Bearer header succeed."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with running(token="s3cret") as srv:
            for url in (srv.url_for("s"), srv.url_for("s", token="wrong")):
                with pytest.raises(ConnectionRejected) as info:
                    async with connect(url):
                        pass  # pragma: no cover
                assert info.value.status_code == 401
            async with connect(srv.url_for("q", token="s3cret")) as ws:
                assert (await recv(ws)).op == "kernel-ready"
            bearer = [(b"Authorization", b"Bearer s3cret")]
            async with connect(srv.url_for("b"), extra_headers=bearer) as ws:
                assert (await recv(ws)).op == "kernel-ready"
            assert srv.rejections == [401, 401]
            assert srv.sessions_seen == {"q", "b"}
    assert "s3cret" not in repr(logs)
    assert [e["status"] for e in logs if e["event"] == "handshake_rejected"] == [401, 401]


async def test_shutdown_closes_with_1000_shutdown_and_stops_listening() -> None:
    """shutdown() closes every connection (even frozen) with 1000 SHUTDOWN, stops listening."""
    with trio.fail_after(LIMIT):
        async with running() as srv:
            async with (
                connect(srv.url_for("one")) as ws1,
                connect(srv.url_for("two")) as ws2,
            ):
                await recv(ws1)
                await recv(ws2)
                srv.faults.freeze = True  # a close request must thaw the connection
                await srv.shutdown()
                for ws in (ws1, ws2):
                    with pytest.raises(ConnectionClosed) as info:
                        await ws.get_message()
                    assert closed_with(info) == (1000, "SHUTDOWN")
            assert not srv.listening
            assert srv.tcp_connections == 0
            with pytest.raises(OSError):  # connection refused: nobody listens any more
                async with connect(srv.url_for("late")):
                    pass  # pragma: no cover


# --------------------------------------------------------------------------- handshake faults


async def test_refuse_next_n_handshakes() -> None:
    """refuse_handshakes=N rejects exactly the next N handshakes with refuse_status."""
    with trio.fail_after(LIMIT):
        async with running() as srv:
            srv.faults.refuse_handshakes = 2
            srv.faults.refuse_status = 503
            for _ in range(2):
                with pytest.raises(ConnectionRejected) as info:
                    async with connect(srv.url_for("r")):
                        pass  # pragma: no cover
                assert info.value.status_code == 503
            async with connect(srv.url_for("r")) as ws:
                assert (await recv(ws)).op == "kernel-ready"
            assert srv.faults.refuse_handshakes == 0
            assert srv.rejections == [503, 503]
            assert (srv.handshakes, srv.connections_opened) == (3, 1)


@pytest.mark.parametrize("status", [401, 403])
async def test_refuse_with_fatal_status(status: int) -> None:
    """A refusal can use any HTTP status, e.g. the fatal 401 and 403."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(refuse_handshakes=1, refuse_status=status)) as srv:
            with pytest.raises(ConnectionRejected) as info:
                async with connect(srv.url_for("r")):
                    pass  # pragma: no cover
            assert info.value.status_code == status


async def test_hang_handshake_never_answers() -> None:
    """hang_handshake reads the upgrade request and never answers, until the server stops."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(hang_handshake=True)) as srv:
            # An outer cancel scope, not open_websocket_url's connect_timeout: trio-websocket
            # 0.12.2 raises ConnectionTimeout only once the server hangs up.
            with trio.move_on_after(NEVER) as timer:
                async with connect(srv.url_for("h")):
                    pass  # pragma: no cover
            assert timer.cancelled_caught
            assert (srv.handshakes, srv.connections_opened) == (1, 0)
            # The client gave up (closed its socket), so the server lets go of the connection.
            await srv.wait_until(lambda s: s.tcp_connections == 0)
            async with running(faults=Faults(hang_handshake=True)) as other:
                raw = await trio.open_tcp_stream("127.0.0.1", other.port)
                async with raw:
                    await raw.send_all(upgrade_request())
                    await other.wait_until(lambda s: s.handshakes == 1)
                    await other.shutdown()  # a hung handshake does not hold up shutdown
                    assert await raw.receive_some() == b""  # closed without an answer


async def test_silent_accepts_tcp_and_sends_nothing() -> None:
    """silent accepts TCP but neither reads the request nor sends anything."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(silent=True)) as srv:
            with trio.move_on_after(NEVER) as timer:
                async with connect(srv.url_for("q")):
                    pass  # pragma: no cover
            assert timer.cancelled_caught
            assert (srv.handshakes, srv.connections_opened) == (0, 0)
            await srv.wait_until(lambda s: s.tcp_connections == 0)


async def test_http_200_without_upgrade() -> None:
    """http_200 answers the upgrade with a plain 200, which the client sees as a rejection."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(http_200=True)) as srv:
            with pytest.raises(ConnectionRejected) as info:
                async with connect(srv.url_for("q")):
                    pass  # pragma: no cover
            assert info.value.status_code == 200


# --------------------------------------------------------------------------- websocket faults


async def test_skip_kernel_ready() -> None:
    """skip_kernel_ready accepts but never sends kernel-ready; frames are still served."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(skip_kernel_ready=True)) as srv:
            async with connect(srv.url_for("q")) as ws:
                await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "1"})
                # Frames are sent in order, so an ack arriving first proves no kernel-ready came.
                assert await recv(ws) == Frame("ack", {"seq": 1})
            assert srv.connections_opened == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1008, "policy"), (3001, "nope"), (1011, "boom"), (1001, "away"), (1000, "SHUTDOWN")],
)
async def test_close_right_after_kernel_ready(code: int, reason: str) -> None:
    """close_after_frames=0 closes right after kernel-ready with the chosen code and reason."""
    faults = Faults(close_after_frames=0, close_code=code, close_reason=reason)
    with trio.fail_after(LIMIT):
        async with running(faults=faults) as srv:
            async with connect(srv.url_for("c")) as ws:
                assert (await recv(ws)).op == "kernel-ready"
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info) == (code, reason)
            await srv.wait_until(lambda s: s.open_connections == 0)


async def test_close_after_k_frames_applies_but_does_not_ack_the_last() -> None:
    """close_after_frames=K applies the K-th frame, does not ack it, and closes with close_code."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults(close_after_frames=2)) as srv:
            async with connect(srv.url_for("k")) as ws:
                await recv(ws)
                await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "one"})
                assert await recv(ws) == Frame("ack", {"seq": 1})
                await send(ws, "edit", {"seq": 2, "cell_id": "a", "code": "two"})
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info) == (1011, "FAULT")
            assert srv.cells == {"a": "two"}
            assert srv.acks_sent == [1]


async def test_bad_frames_are_sent_verbatim_after_kernel_ready() -> None:
    """bad_frames are sent, in order and verbatim, right after kernel-ready."""
    samples = list(malformed_frames().values())
    with trio.fail_after(LIMIT):
        # A larger limit than the 1 MiB default, so the oversized sample arrives whole.
        async with (
            running(faults=Faults(bad_frames=samples)) as srv,
            connect(srv.url_for("b"), max_message_size=1 << 22) as ws,
        ):
            assert (await recv(ws)).op == "kernel-ready"
            for sample in samples:
                assert await ws.get_message() == sample


async def test_freeze_leaves_pings_unanswered_until_thawed() -> None:
    """freeze (live) stops the server reading, so a ping times out; thawing answers again."""
    with trio.fail_after(LIMIT):
        async with running() as srv, connect(srv.url_for("f")) as ws:
            await recv(ws)
            await ws.ping(b"before")
            srv.faults.freeze = True
            with trio.move_on_after(NEVER) as timer:
                await ws.ping(b"frozen")
            assert timer.cancelled_caught
            await send(ws, "edit", {"seq": 1, "cell_id": "a", "code": "1"})
            srv.faults.freeze = False
            await ws.ping(b"thawed")
            assert await recv(ws) == Frame("ack", {"seq": 1})


async def test_drop_all_resets_connections() -> None:
    """drop_all aborts every connection with a TCP reset: no close frame (1006) and ECONNRESET."""
    with trio.fail_after(LIMIT):
        async with running(faults=Faults()) as srv:
            async with connect(srv.url_for("d")) as ws:
                await recv(ws)
                srv.faults.hang_handshake = True  # the next connection stays pre-WebSocket
                raw = await trio.open_tcp_stream("127.0.0.1", srv.port)
                async with raw:
                    await raw.send_all(upgrade_request())
                    await srv.wait_until(lambda s: s.handshakes == 2)
                    await srv.drop_all()
                    with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not EOF
                        await raw.receive_some()
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info)[0] == 1006
            assert srv.tcp_connections == 0


async def test_close_all_closes_current_connections_with_code() -> None:
    """close_all closes every current WebSocket with the chosen code and reason."""
    with trio.fail_after(LIMIT):
        async with running() as srv:
            async with connect(srv.url_for("x")) as ws:
                await recv(ws)
                await srv.close_all(1008, "policy")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert closed_with(info) == (1008, "policy")
            assert srv.open_connections == 0


async def test_fault_plan_scripts_one_connection_each() -> None:
    """fault_plan entries apply to one connection each, in order, then faults applies again."""
    with trio.fail_after(LIMIT):
        async with running() as srv:
            srv.fault_plan.extend(
                [
                    Faults(refuse_handshakes=1, refuse_status=403),
                    Faults(close_after_frames=0, close_code=1001, close_reason="going"),
                ]
            )
            with pytest.raises(ConnectionRejected) as rejected:
                async with connect(srv.url_for("p")):
                    pass  # pragma: no cover
            assert rejected.value.status_code == 403
            async with connect(srv.url_for("p")) as ws:
                await recv(ws)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed_with(closed) == (1001, "going")
            async with connect(srv.url_for("p")) as ws:
                await recv(ws)
                await send(ws, "edit", {"seq": 5, "cell_id": "a", "code": "1"})
                assert await recv(ws) == Frame("ack", {"seq": 5})
            assert not srv.fault_plan


async def test_faults_reset_restores_defaults() -> None:
    """Faults.reset() restores every field to its default and wakes waiters."""
    faults = Faults(silent=True, bad_frames=["x"], freeze=True, refuse_handshakes=3)
    faults.reset()
    assert faults == Faults()
