"""Gateway isolation and auth on real sockets: bad frames close only their client, a
client that does not read is closed 1013 while others go on, requests are bounded, and
with a token every request but /health needs it, while no token ever reaches a client,
/status, /metrics or a log line."""

from __future__ import annotations

import json

import pytest
import structlog
import trio
import trio_websocket

import fsm
from fsm.core._frames import Frame
from fsm.server import KernelServer, Session, default_handler
from tests._connector_helpers import LIMIT, serving
from tests._gateway_helpers import client, gateway_to, http_get, raw_client

BAD_FRAMES = [
    (b"\x00\x01 binary", 1003),
    ("{not json", 1007),
    ("[1, 2, 3]", 1007),
    ("42", 1007),
    ("x" * 5000, 1009),
]


@pytest.mark.parametrize(("message", "code"), BAD_FRAMES)
async def test_a_bad_frame_closes_only_its_client(message: str | bytes, code: int) -> None:
    """A frame the gateway will not take closes that client (1003, 1007, 1009); its
    session stays, and another client in the same gateway is not disturbed."""
    async with serving() as server, gateway_to(server, max_frame_size=1024) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "other") as other, raw_client(gw, "bad") as bad:
                await other.recv()
                await bad.recv()
                await bad.send("edit", {"seq": 1, "cell_id": "a", "code": "kept"})
                await gw.wait_until(lambda g: g.sessions["bad"].seq == 1)
                await bad.ws.send_message(message)
                reason = await bad.closed()
                assert reason.code == code
                await other.send("edit", {"seq": 1, "cell_id": "o", "code": "1"})
                await other.send("run", {"cell_id": "o"})
                assert (await other.until("cell-op"))["data"]["output"]["data"] == "1"
            async with raw_client(gw, "bad") as again:
                ready = await again.recv()
                assert ready["data"]["codes"] == ["kept"]


async def test_an_unknown_shape_of_a_known_op_gets_an_error_frame() -> None:
    """A malformed edit or a frame with no op is answered with an error; the client stays."""
    async with serving() as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "shape") as ws:
                await ws.recv()
                await ws.send("edit", {"cell_id": "a", "code": "no seq"})
                error = await ws.recv()
                assert error["op"] == "error"
                assert error["data"]["op"] == "edit" and error["data"]["reason"] == "bad_frame"
                await ws.send("instantiate", {"seq": 1, "codes": ["not", "a", "dict"]})
                assert (await ws.recv())["data"]["reason"] == "bad_frame"
                await ws.ws.send_message(json.dumps({"data": {}}))
                error = await ws.recv()
                assert error["data"]["op"] is None and error["data"]["reason"] == "bad_frame"
                await ws.send("instantiate", {"seq": 2, "codes": {}})
                assert (await ws.recv()) == {"op": "ack", "data": {"seq": 2}}
        assert server.handshakes == 0


class Flood:
    """A kernel handler that answers ``flood`` with ``count`` large cell-op frames."""

    async def __call__(self, session: Session, frame: Frame) -> None:
        if frame.op == "flood":
            for n in range(frame.data["count"]):
                await session.send("cell-op", {"n": n, "output": "y" * 65536})
        else:
            await default_handler(session, frame)


async def test_a_client_that_does_not_read_is_closed_1013_and_no_one_waits() -> None:
    """A client that never reads fills its bounded queue and is closed with 1013; its
    session stays, and another client's edits are acked meanwhile."""
    closes: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with serving(handler=Flood()) as server, gateway_to(server, send_queue=64) as gw:
            with trio.fail_after(LIMIT):
                # trio-websocket stops reading the socket while its message queue is full:
                # with one slot, and no get_message(), this client never reads again.
                async with raw_client(gw, "slow", message_queue_size=1) as slow:
                    await slow.send("flood", {"count": 400})
                    async with client(gw, "busy") as conn:
                        await conn.connect()
                        for i in range(20):
                            conn.edit("c", f"v{i}")
                            await conn.request("run", {"cell_id": "c"})
                        await conn.wait_acked()
                        assert server.cells["c"] == "v19"
                    await gw.wait_until(lambda g: g.sessions["slow"].client is None)
                    assert "slow" in gw.sessions
    closes = [e["cause"] for e in logs
              if e["event"] == "client_closed" and e["session_id"] == "slow"]
    assert closes == ["slow_client"]
    busy = [e for e in logs if e["event"] == "client_closed" and e["session_id"] == "busy"]
    assert [e["cause"] for e in busy] == ["client"]


async def test_requests_waiting_for_the_upstream_are_bounded() -> None:
    """Past max_requests waiting, a request is answered at once with reason busy and its id."""
    async with serving() as server, gateway_to(server, max_requests=2,
                                                policy=fsm.RetryPolicy(connect_timeout=30)) as gw:
        server.faults.hang_handshake = True
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "b1") as ws:
                await ws.recv()
                for i in range(3):
                    await ws.send("run", {"cell_id": "a", "id": i})
                error = await ws.until("error")
                assert error["data"] == {
                    "op": "run", "id": 2, "reason": "busy",
                    "message": error["data"]["message"],
                }
                assert "already waiting" in error["data"]["message"]


async def test_a_token_is_required_and_never_shown() -> None:
    """With a token, every request but /health needs it (query or bearer); neither the
    gateway's token nor the upstream's reaches a client, /status, /metrics or a log."""
    secret, upstream_secret = "gw-secret-4242", "up-secret-9191"
    with structlog.testing.capture_logs() as logs:
        async with serving(server=KernelServer(token=upstream_secret)) as server, gateway_to(
            server, token=secret, upstream_token=upstream_secret
        ) as gw:
            with trio.fail_after(LIMIT):
                assert (await http_get(gw, "/health"))[0] == 200
                for path in ("/", "/status", "/metrics", "/status?token=wrong"):
                    status, headers, _ = await http_get(gw, path)
                    assert status == 401 and headers["www-authenticate"] == "Bearer"
                with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                    async with raw_client(gw, "t"):
                        pass
                assert refused.value.status_code == 401
                frames: list[Frame] = []
                async with client(gw, "t", token=secret) as conn:
                    messages = conn.messages()
                    await conn.connect()
                    conn.edit("a", "1")
                    await conn.request("run", {"cell_id": "a"})
                    await conn.wait_acked()
                    frames.append(await messages.receive())
                assert server.cells == {"a": "1"}
                bodies = [
                    (await http_get(gw, "/status", {"Authorization": f"Bearer {secret}"}))[2],
                    (await http_get(gw, f"/metrics?token={secret}"))[2],
                    (await http_get(gw, f"/?token={secret}"))[2],
                ]
                assert json.loads(bodies[0])["sessions"][0]["session_id"] == "t"
                assert gw.url == f"ws://127.0.0.1:{gw.port}/ws"
    shown = [*bodies, json.dumps([f.data for f in frames]).encode(), repr(logs).encode()]
    for text in shown:
        assert secret.encode() not in text and upstream_secret.encode() not in text
    assert any(entry.get("session_id") == "t" for entry in logs)


async def test_an_edit_the_upstream_cannot_take_gets_an_error_with_its_seq() -> None:
    """An edit too large for the upstream's frame limit is refused with an error frame
    carrying its seq; the session and its other cells are unaffected."""
    small = KernelServer(max_frame_size=1024)
    async with serving(server=small) as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "big") as ws:
                await ws.recv()
                await ws.send("run", {"cell_id": "a"})  # the upstream learns its limit
                await ws.until("upstream", lambda d: d["state"] == "OPEN")
                await ws.send("edit", {"seq": 1, "cell_id": "a", "code": "x" * 4000})
                error = await ws.until("error")
                assert error["data"]["op"] == "edit" and error["data"]["seq"] == 1
                assert error["data"]["reason"] == "edit_refused"
                await ws.send("edit", {"seq": 2, "cell_id": "b", "code": "fits"})
                await ws.until("ack", lambda d: d["seq"] == 2)
        assert server.cells == {"b": "fits"}


async def test_a_client_that_stops_answering_pings_is_closed() -> None:
    """A client whose pongs stop is closed (1011, cause no_pong); its session stays."""
    with structlog.testing.capture_logs() as logs:
        async with serving() as server, gateway_to(server, client_heartbeat=0.05) as gw:
            with trio.fail_after(LIMIT):
                # One slot, never read: kernel-ready fills it, the ack blocks the reader,
                # and a blocked trio-websocket reader answers no ping.
                async with raw_client(gw, "mute", message_queue_size=1) as mute:
                    await mute.send("instantiate", {"seq": 1, "codes": {}})
                    await gw.wait_until(lambda g: g.sessions["mute"].client is None)
                assert "mute" in gw.sessions
    closes = [e for e in logs if e["event"] == "client_closed" and e["session_id"] == "mute"]
    assert [e["cause"] for e in closes] == ["no_pong"]
