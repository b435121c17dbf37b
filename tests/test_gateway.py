"""The lazy gateway (DESIGN.md section 10) on real sockets: ``fsm`` Connectors and bare
WebSocket clients, through ``fsm.gateway.Gateway``, to ``fsm.server.KernelServer``."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import pytest
import trio
import trio_websocket

import fsm
from fsm.core._frames import Frame
from fsm.server import Faults, KernelServer, Session, default_handler
from tests._connector_helpers import FAST, LIMIT, serving
from tests._gateway_helpers import Breakable, Inbox, client, gateway_to, http_get, raw_client


class Pusher:
    """A kernel handler that remembers who sent ``subscribe``, so a test can push to it."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def __call__(self, session: Session, frame: Frame) -> None:
        if frame.op == "subscribe":
            self.sessions[session.session_id] = session
        else:
            await default_handler(session, frame)


async def test_edits_before_the_upstream_starts_reach_the_kernel() -> None:
    """Edits are acked only once the kernel has them; the first request starts the upstream."""
    async with serving() as server, gateway_to(server) as gw, client(gw, "s1") as conn:
        inbox = Inbox(conn)
        with trio.fail_after(LIMIT):
            await conn.connect()
            conn.edit("a", "x = 1")
            conn.edit("b", "y = 2")
            await gw.wait_until(lambda g: g.sessions["s1"].seq >= 1)
            # The upstream is lazy: nothing dialled, nothing acked.
            assert server.handshakes == 0
            assert conn.pending_edits == {"a": "x = 1", "b": "y = 2"}
            assert gw.status()["sessions"][0]["upstream"]["state"] == "NOT_STARTED"
            await conn.request("run", {"cell_id": "a", "id": 7})
            await conn.wait_acked()
            assert server.cells == {"a": "x = 1", "b": "y = 2"}
            assert server.sessions_seen == {"s1"}  # the upstream session id is the client's
            out = await inbox.until("cell-op")
            assert out.data["output"]["data"] == "x = 1"
            states = [u["state"] for u in inbox.ops("upstream")]
            assert states[0] == "CONNECTING" and states[-1] == "OPEN"
            conn.edit("a", "x = 3")
            await conn.wait_acked()
            assert server.cells["a"] == "x = 3"
            status = json.loads(json.dumps(gw.status()))
            assert status["counts"] == {"OPEN": 1}
            assert status["sessions"] == [{
                "session_id": "s1", "client": True, "pending": 0,
                "upstream": {"state": "OPEN", "phase": None, "attempts": 0,
                             "max_attempts": FAST.max_attempts, "delay": None, "reason": None},
            }]


async def test_kernel_ready_at_once_with_what_the_session_holds() -> None:
    """kernel-ready comes at once, with the session's cells, seq, frame limit and upstream."""
    async with serving() as server, gateway_to(server, max_frame_size=4096) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "k1") as ws:
                ready = await ws.recv()
                assert ready["op"] == "kernel-ready"
                assert ready["data"] == {
                    "session_id": "k1", "cell_ids": [], "codes": [], "seq": 0,
                    "max_frame_size": 4096,
                    "upstream": {"state": "NOT_STARTED", "phase": None, "attempts": 0,
                                 "max_attempts": FAST.max_attempts, "delay": None,
                                 "reason": None},
                }
                await ws.send("edit", {"seq": 5, "cell_id": "c", "code": "1"})
                await ws.send("instantiate", {"seq": 6, "codes": {"d": "2"}, "auto_run": True})
                await gw.wait_until(lambda g: g.sessions["k1"].seq == 6)
            async with raw_client(gw, "k1") as ws:
                ready = await ws.recv()
                assert ready["data"]["cell_ids"] == ["c", "d"]
                assert ready["data"]["codes"] == ["1", "2"]
                assert ready["data"]["seq"] == 6
            assert server.handshakes == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_no_edit_lost_with_faults_on_both_legs(seed: int) -> None:
    """Whatever drops hit the client leg and the upstream leg, the kernel ends up holding
    the client's latest code for every cell once the client has nothing pending."""
    rng = random.Random(seed)
    plan = [Faults(close_after_frames=rng.randint(1, 4)) for _ in range(6)]
    async with serving() as server, gateway_to(server) as gw:
        server.fault_plan.extend(plan)
        cut = Breakable()
        async with client(gw, "e2e", open_stream=cut) as conn:
            latest: dict[str, str] = {}
            with trio.fail_after(LIMIT):
                await conn.connect()
                for i in range(120):
                    cell = f"c{rng.randrange(8)}"
                    latest[cell] = f"v{i}"
                    conn.edit(cell, latest[cell])
                    if rng.random() < 0.1:
                        # Starts the upstream; a cut may lose it (requests are at most once).
                        with contextlib.suppress(fsm.NotConnected):
                            await conn.request("run", {"cell_id": cell})
                    if rng.random() < 0.06:
                        cut.cut()  # the client leg
                    if rng.random() < 0.05:
                        await server.drop_all()  # the upstream leg
                    if rng.random() < 0.2:
                        await trio.sleep(0)  # let frames and acks move
                await conn.connect()
                await conn.wait_acked()
            assert server.cells == latest
            assert cut.opened > 1 and server.connections_opened > 1  # faults did happen


async def test_two_hundred_concurrent_clients() -> None:
    """200 clients at once, each in its own session, each edit acked once the kernel has it."""
    # Generous time-outs: 400 handshakes at once on a loaded 2-core machine can take
    # seconds each (in one process: 200 clients, the gateway, 200 upstreams, the kernel).
    patient = fsm.RetryPolicy(initial_delay=0.01, max_delay=0.1, connect_timeout=45.0)
    async with serving() as server, gateway_to(server, policy=patient) as gw:

        async def one(i: int) -> None:
            async with client(gw, f"many-{i}", policy=patient) as conn:
                await conn.connect()
                conn.edit(f"cell-{i}", f"x = {i}")
                await conn.request("run", {"cell_id": f"cell-{i}"})
                await conn.wait_acked()

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        assert server.cells == {f"cell-{i}": f"x = {i}" for i in range(200)}
        assert len(server.sessions_seen) == 200
        status, _, body = await http_get(gw, "/status")
        assert status == 200 and len(json.loads(body)["sessions"]) == 200


async def test_reattach_replays_the_missed_messages_newest_first_bounded() -> None:
    """A client that comes back within session_ttl finds its cells and upstream, and the
    upstream messages it missed (the newest ``replay_limit``), after kernel-ready."""
    pusher = Pusher()
    async with serving(handler=pusher) as server, gateway_to(server, replay_limit=3) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "r1") as ws:
                await ws.recv()  # kernel-ready
                await ws.send("edit", {"seq": 1, "cell_id": "a", "code": "kept"})
                await ws.send("subscribe", {"id": 1})
                await server.wait_until(lambda s: "r1" in pusher.sessions)
                await ws.until("ack", lambda d: d["seq"] == 1)
                await pusher.sessions["r1"].send("cell-op", {"n": 0})
                assert (await ws.until("cell-op"))["data"] == {"n": 0}
            await gw.wait_until(lambda g: g.sessions["r1"].client is None)
            for n in range(1, 6):
                await pusher.sessions["r1"].send("cell-op", {"n": n})
            await gw.wait_until(lambda g: g.sessions["r1"].messages_seen == 6)
            async with raw_client(gw, "r1") as ws:
                ready = await ws.recv()
                assert ready["op"] == "kernel-ready"
                assert ready["data"]["codes"] == ["kept"]
                assert ready["data"]["upstream"]["state"] == "OPEN"
                replayed = [(await ws.recv())["data"] for _ in range(3)]
                assert replayed == [{"n": 3}, {"n": 4}, {"n": 5}]
            # Same upstream session all along: it never reconnected.
            assert server.connections_opened == 1


async def test_a_newer_connection_fences_the_older() -> None:
    """A second connection for a session takes it over; the first is closed 1008 replaced."""
    async with serving() as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "f1") as first:
                await first.recv()
                await first.send("edit", {"seq": 1, "cell_id": "a", "code": "old"})
                await gw.wait_until(lambda g: g.sessions["f1"].seq == 1)
                async with raw_client(gw, "f1") as second:
                    ready = await second.recv()
                    assert ready["data"]["seq"] == 1 and ready["data"]["codes"] == ["old"]
                    # A frame the old connection still sends is never applied, even with
                    # a higher seq: the session has one writer.
                    with contextlib.suppress(trio_websocket.ConnectionClosed):
                        await first.send("edit", {"seq": 99, "cell_id": "a", "code": "stale"})
                    reason = await first.closed()
                    assert (reason.code, reason.reason) == (1008, "replaced")
                    await second.send("edit", {"seq": 2, "cell_id": "a", "code": "new"})
                    await second.send("run", {"cell_id": "a"})
                    out = await second.until("cell-op")
                    assert out["data"]["output"]["data"] == "new"
                    await second.until("ack", lambda d: d["seq"] == 2)
            assert server.cells == {"a": "new"} and gw.sessions["f1"].doc == {"a": "new"}
            _, _, metrics = await http_get(gw, "/metrics")
            assert b'fsm_gateway_client_closes_total{cause="replaced"} 1.0' in metrics


async def test_gives_up_then_the_next_request_recovers() -> None:
    """After the upstream gave up, the client hears GAVE_UP, and its next request starts a
    new cycle that reaches the healed kernel (the seed's bug, on the server side)."""
    policy = fsm.RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.002,
                             connect_timeout=0.5)
    async with serving() as server, gateway_to(server, policy=policy) as gw:
        server.faults.refuse_handshakes = 10**6
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "g1") as ws:
                await ws.recv()
                await ws.send("edit", {"seq": 1, "cell_id": "a", "code": "x = 1"})
                await ws.send("run", {"cell_id": "a", "id": "r-1"})
                error = await ws.until("error")
                assert error["data"]["op"] == "run" and error["data"]["id"] == "r-1"
                assert error["data"]["reason"] == "GAVE_UP"
                assert "gave up after 3" in error["data"]["message"]
                gave_up = await ws.until("upstream", lambda d: d["state"] == "CLOSED")
                assert gave_up["data"]["reason"] == "GAVE_UP"
                assert gave_up["data"]["attempts"] == 3 and gave_up["data"]["max_attempts"] == 3
                server.faults.reset()
                await ws.send("run", {"cell_id": "a", "id": "r-2"})
                out = await ws.until("cell-op")
                assert out["data"]["output"]["data"] == "x = 1"
                await ws.until("ack", lambda d: d["seq"] == 1)
        assert server.cells == {"a": "x = 1"}


async def test_connect_is_the_persons_connect() -> None:
    """``connect`` starts the upstream; while it backs off, ``connect`` retries at once."""
    slow = fsm.RetryPolicy(max_attempts=5, initial_delay=30.0, max_delay=30.0,
                           connect_timeout=0.5, jitter=0.0)
    async with serving() as server, gateway_to(server, policy=slow) as gw:
        server.faults.refuse_handshakes = 1
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "c1") as ws:
                await ws.recv()
                await ws.send("connect", {"id": 1})
                backing_off = await ws.until("upstream", lambda d: d["phase"] == "BACKING_OFF")
                assert backing_off["data"]["attempts"] == 1
                assert backing_off["data"]["delay"] == 30.0
                await ws.send("connect", {"id": 2})  # retry now, not in 30 s
                await ws.until("upstream", lambda d: d["state"] == "OPEN")
        assert server.connections_opened == 1


async def test_detached_sessions_expire_after_the_ttl() -> None:
    """A session with no client is ended session_ttl later, its upstream closed politely."""
    async with serving() as server, gateway_to(server, session_ttl=0.2) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "t1") as ws:
                await ws.recv()
                await ws.send("run", {"cell_id": "a"})
                await ws.until("cell-op")
            await gw.wait_until(lambda g: "t1" not in g.sessions)
            await server.wait_until(lambda s: s.open_connections == 0)
        _, _, metrics = await http_get(gw, "/metrics")
        assert b'fsm_gateway_evictions_total{cause="ttl"} 1.0' in metrics


async def test_max_sessions_evicts_the_oldest_detached_then_refuses() -> None:
    """At max_sessions the oldest detached session without pending edits goes first, then
    one with pending edits, and with every session attached a new one gets 503."""
    async with serving() as server, gateway_to(server, max_sessions=2) as gw:
        server.faults.hang_handshake = True  # nothing is ever acked upstream
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "old-pending") as ws:
                await ws.recv()
                await ws.send("edit", {"seq": 1, "cell_id": "a", "code": "1"})
                await gw.wait_until(lambda g: g.sessions["old-pending"].pending == 1)
            async with raw_client(gw, "clean") as ws:
                await ws.recv()
            await gw.wait_until(lambda g: all(s.client is None for s in g.sessions.values()))
            async with raw_client(gw, "third") as third:
                await third.recv()
                # "clean" was detached later but holds nothing unacked: it goes first.
                assert set(gw.sessions) == {"old-pending", "third"}
                async with raw_client(gw, "fourth") as fourth:
                    await fourth.recv()
                    assert set(gw.sessions) == {"third", "fourth"}
                    status, headers, body = await http_get(
                        gw, "/ws?session_id=fifth",
                        {"Upgrade": "websocket", "Connection": "Upgrade",
                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                         "Sec-WebSocket-Version": "13"},
                    )
                    assert status == 503 and headers["retry-after"].isdigit()
                    assert b"maximum of sessions" in body
        _, _, metrics = await http_get(gw, "/metrics")
        assert b'fsm_gateway_evictions_total{cause="max_sessions"} 2.0' in metrics
        assert b'fsm_gateway_refusals_total{status="503"} 1.0' in metrics


async def test_health_status_metrics_and_page() -> None:
    """GET /health, /status, /metrics and / answer as DESIGN section 10 says."""
    async with serving() as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            status, _, body = await http_get(gw, "/health")
            assert (status, json.loads(body)) == (200, {"status": "healthy"})
            async with raw_client(gw, "m1") as ws:
                await ws.recv()
                await ws.send("run", {"cell_id": "x"})
                await ws.until("upstream", lambda d: d["state"] == "OPEN")
                status, _, body = await http_get(gw, "/status")
                assert status == 200
                assert json.loads(body)["counts"] == {"OPEN": 1}
                status, headers, text = await http_get(gw, "/metrics")
                assert status == 200 and headers["content-type"].startswith("text/plain")
                assert b'fsm_gateway_sessions{upstream_state="OPEN"} 1.0' in text
                assert b"fsm_gateway_upstream_dials_total 1.0" in text
                assert (b'fsm_gateway_upstream_transitions_total{source="NOT_STARTED",'
                        b'target="CONNECTING"} 1.0') in text
                assert b"fsm_gateway_clients 1.0" in text
            status, headers, page = await http_get(gw, "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert page.startswith(b"<!doctype html>")  # its content: tests/test_browser.py
            assert (await http_get(gw, "/ws"))[0] == 426
            assert (await http_get(gw, "/nope"))[0] == 404


def test_gateway_arguments_are_checked() -> None:
    """Bad constructor arguments are refused at once with a clear error."""
    import pytest

    from fsm.gateway import Gateway

    with pytest.raises(ValueError, match="scheme"):
        Gateway("ftp://x")
    with pytest.raises(ValueError, match="max_sessions"):
        Gateway("ws://127.0.0.1:1", max_sessions=0)
    with pytest.raises(ValueError, match="session_ttl"):
        Gateway("ws://127.0.0.1:1", session_ttl=-1)
    with pytest.raises(ValueError, match="upstream_token is for the reference protocol"):
        Gateway("http://127.0.0.1:1", marimo="nb.py", upstream_token="t")



async def test_silent_unless_logging_is_configured(capfd: Any) -> None:
    """With no logging configured, a gateway serving sessions prints nothing at all."""
    async with serving() as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "quiet") as ws:
                await ws.recv()
                await ws.send("edit", {"seq": 1, "cell_id": "a", "code": "1"})
                await ws.send("run", {"cell_id": "a"})
                await ws.until("ack")
                await ws.ws.send_message(b"binary")
                await ws.closed()
    assert capfd.readouterr() == ("", "")


async def test_every_ack_means_the_kernel_holds_that_code_or_newer() -> None:
    """Whenever the gateway acks a client frame, the kernel already holds, for each of its
    cells, that frame's code or a later one, while upstream connections keep dropping."""
    async with serving() as server, gateway_to(server) as gw:
        server.fault_plan.extend(Faults(close_after_frames=n) for n in (2, 1, 3, 2, 1))
        history: dict[str, list[str]] = {}
        frames: dict[int, dict[str, str]] = {}
        acked = 0
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "acks") as ws:
                await ws.recv()
                await ws.send("connect")
                for seq in range(1, 61):
                    cell, code = f"c{seq % 4}", f"v{seq}"
                    history.setdefault(cell, []).append(code)
                    frames[seq] = {cell: code}
                    await ws.send("edit", {"seq": seq, "cell_id": cell, "code": code})
                while acked < 60:
                    frame = await ws.recv()
                    if frame["op"] != "ack":
                        continue
                    acked += 1
                    for cell, code in frames[frame["data"]["seq"]].items():
                        held = server.cells[cell]
                        assert history[cell].index(held) >= history[cell].index(code)
        assert server.cells == {cell: codes[-1] for cell, codes in history.items()}


async def test_a_rejected_upstream_is_asked_again_only_by_connect() -> None:
    """An upstream that refuses for good (401) makes requests fail with reason REJECTED
    without dialling again; a person's connect dials again."""
    async with serving(server=KernelServer(token="needed")) as server, gateway_to(server) as gw:
        with trio.fail_after(LIMIT):
            async with raw_client(gw, "rej") as ws:
                await ws.recv()
                await ws.send("run", {"cell_id": "a", "id": 1})
                first = await ws.until("error", lambda d: d["id"] == 1)
                assert first["data"]["reason"] == "REJECTED"
                await ws.send("run", {"cell_id": "a", "id": 2})
                second = await ws.until("error", lambda d: d["id"] == 2)
                assert second["data"]["reason"] == "REJECTED"
                assert server.rejections == [401]
                await ws.send("connect", {"id": 3})
                third = await ws.until("error", lambda d: d["id"] == 3)
                assert third["data"] == {"op": "connect", "id": 3, "reason": "REJECTED",
                                         "message": third["data"]["message"]}
                assert server.rejections == [401, 401]
