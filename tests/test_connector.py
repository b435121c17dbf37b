"""Tests of the trio connector (fsm.connector) against the reference server on real sockets.

Every test starts :class:`fsm.server.KernelServer` in-process on 127.0.0.1 with an ephemeral
port, is bounded by ``trio.fail_after``, and waits for conditions (``server.wait_until``,
``conn.wait_for``, ``conn.wait_acked``, ``conn.transitions()``) instead of sleeping. The last
section drives the connector on virtual time (``trio.testing.MockClock``, bounded by a
virtual ``fail_after``) with a protocol whose attempts fail before any I/O, to check the
timing logic with the default policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import random
import time
import warnings
from typing import Any

import pytest
import trio
import trio.testing
from _connector_helpers import (
    FAST,
    LIMIT,
    all_tasks,
    collect,
    connector,
    next_matching,
    serving,
)
from structlog.testing import capture_logs

import fsm
from fsm import CloseReason, ConnectionFailed, ConnState, NotConnected, Phase, Transition
from fsm.connector import Connector, Link
from fsm.core._frames import Frame
from fsm.protocols import AttemptFailed, ReferenceProtocol
from fsm.server import Faults, malformed_frames

OPEN = ConnState.OPEN
CLOSED = ConnState.CLOSED
CONNECTING = ConnState.CONNECTING
NOT_STARTED = ConnState.NOT_STARTED
CLOSING = ConnState.CLOSING

#: Scheduling slack allowed on top of a time-out on a busy 2-core machine.
SLACK = 0.5


def stamped(conn: Connector) -> list[tuple[float, Transition]]:
    """Record ``(trio.current_time(), transition)`` for every later transition of ``conn``."""
    stamps: list[tuple[float, Transition]] = []
    conn.lifecycle.observers.append(lambda change: stamps.append((trio.current_time(), change)))
    return stamps


async def assert_idle(conn: Connector) -> None:
    """The connector has no attempt, timer or open connection task left."""
    await trio.testing.wait_all_tasks_blocked()
    assert conn._nursery is not None
    assert not conn._nursery.child_tasks


# --------------------------------------------------------------------------- handshake faults


async def test_refused_handshakes_503_are_retried() -> None:
    """Handshakes refused with HTTP 503 are retried after a back-off, and the next one opens."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 3
            async with connector(server) as conn:
                changes = conn.transitions()
                await conn.connect()
                assert conn.state is OPEN
                assert conn.attempts == 3
                assert server.rejections == [503, 503, 503]
                assert server.handshakes == 4
                assert server.connections_opened == 1
            records = await collect(changes)
    fails = [t for t in records if t.event == "fail"]
    assert [t.attempt for t in fails] == [1, 2, 3]
    for t in fails:
        assert t.cause is not None and "HTTP 503" in t.cause
        assert t.phase is Phase.BACKING_OFF
        assert t.delay is not None and 0 <= t.delay <= FAST.max_delay


@pytest.mark.parametrize("status", [401, 403, 400, 404, 405, 410, 426])
async def test_auth_refusal_rejects_without_retry(status: int) -> None:
    """A handshake refused with HTTP 401/403 (credentials) or 400/404/405/410/426 (a wrong
    URL or protocol) ends in CLOSED(REJECTED) after exactly one attempt."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 100
            server.faults.refuse_status = status
            async with connector(server) as conn:
                with pytest.raises(ConnectionFailed) as info:
                    await conn.connect()
                assert info.value.reason is CloseReason.REJECTED
                assert f"HTTP {status}" in str(info.value)
                assert "connect()" in str(info.value)
                assert conn.state is CLOSED
                assert conn.close_reason is CloseReason.REJECTED
                # No attempt and no timer is left, so nothing can retry on its own.
                await assert_idle(conn)
                assert server.handshakes == 1
                assert server.rejections == [status]
                assert conn.stats["dials"] == 1


async def test_a_wrong_url_names_the_url_and_the_status_and_hides_the_token() -> None:
    """A 404 handshake says which URL (token redacted) answered what, and what to check."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            url = f"ws://127.0.0.1:{server.port}/nope?token=s3cret"
            async with fsm.open_connector(url, policy=FAST, heartbeat_interval=None) as conn:
                with pytest.raises(ConnectionFailed) as info:
                    await conn.connect()
    message = str(info.value)
    assert f"127.0.0.1:{server.port}/nope" in message
    assert "HTTP 404 Not Found" in message and "check the host, port and path" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_transient_handshake_statuses_are_retried(status: int) -> None:
    """408, 429 and 5xx handshake refusals are retried, and the next handshake opens."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 2
            server.faults.refuse_status = status
            async with connector(server) as conn:
                await conn.connect()
                assert conn.attempts == 2
                assert server.rejections == [status, status]


async def test_retry_after_raises_the_wait_and_connect_retries_at_once() -> None:
    """A 429 with Retry-After: 30 makes the back-off at least 30 s; a person's connect()
    while BACKING_OFF cancels that wait and dials now, starting a new cycle."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 1
            server.faults.refuse_status = 429
            server.faults.refuse_retry_after = "30"
            async with connector(server) as conn:
                changes = conn.transitions()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.request, "run", {"cell_id": "a"})
                    backing_off = await next_matching(
                        changes, lambda t: t.phase is Phase.BACKING_OFF
                    )
                    assert backing_off.delay is not None and backing_off.delay >= 30
                    assert conn._timer is not None
                    await conn.connect()  # returns once OPEN: well before 30 s
                    assert conn.state is OPEN
                    assert conn.attempts == 0  # a new cycle
                    assert conn._timer is None
                assert server.handshakes == 2


async def test_a_request_after_giving_up_starts_a_new_cycle() -> None:
    """request() in CLOSED(GAVE_UP) starts a new cycle and is sent once OPEN: an unattended
    program heals on its next use."""
    policy = dataclasses.replace(FAST, max_attempts=2)
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "1"}) as server:
            server.faults.refuse_handshakes = 2
            async with connector(server, policy=policy) as conn:
                with pytest.raises(ConnectionFailed):
                    await conn.connect()
                assert conn.close_reason is CloseReason.GAVE_UP
                messages = conn.messages()
                await conn.request("run", {"cell_id": "a"})
                assert conn.state is OPEN
                frame = await messages.receive()
                assert frame.op == "cell-op" and frame.data["cell_id"] == "a"


async def test_an_edit_no_frame_can_carry_is_reported_and_blocks_nothing() -> None:
    """An edit accepted under the default 1 MiB limit that a server announcing a smaller
    max_frame_size cannot take is reported (edits_undeliverable) and kept out of the
    flush; every other edit is delivered and the connection is not refused."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving(max_frame_size=4_096) as server, connector(server) as conn:
            conn.edit("big", "x" * 10_000)  # fits the limit known now: 1 MiB
            conn.edit("small", "y = 1")
            await conn.connect()
            await conn.wait_acked()
            assert server.cells == {"small": "y = 1"}
            assert conn.lifecycle.undeliverable == {"big": "x" * 10_000}
            assert server.client_close_codes == []
            with pytest.raises(fsm.EditTooLarge):
                conn.edit("big", "x" * 5_000)  # the limit is known now
    [event] = [e for e in logs if e["event"] == "edits_undeliverable"]
    assert event["cells"] == ["big"] and event["max_frame_size"] == 4_096


async def test_a_client_restarted_with_the_same_session_id_is_not_ignored() -> None:
    """A new connector with the session id of an earlier one numbers its frames above the
    seq kernel-ready reports, so the server applies its edits instead of taking them for
    stale ones."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "0"}) as server:
            for round_ in range(3):
                async with connector(server, session_id="same") as conn:
                    for i in range(5):
                        conn.edit("a", f"round {round_} edit {i}")
                        conn.edit(f"cell-{i}", f"round {round_}")
                    await conn.connect()
                    conn.edit("a", f"round {round_} last")
                    await conn.wait_acked()
                assert server.cells["a"] == f"round {round_} last"
                assert all(server.cells[f"cell-{i}"] == f"round {round_}" for i in range(5))
            assert server.sessions["same"].stale_codes == 0


async def test_a_request_after_a_shutdown_starts_a_new_cycle() -> None:
    """request() in CLOSED(SHUTDOWN) starts a new cycle, like after a give-up."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "1"}) as server, connector(server) as conn:
            await conn.connect()
            await server.close_all(1000, "SHUTDOWN")
            await conn.wait_for(CLOSED)
            assert conn.close_reason is CloseReason.SHUTDOWN
            await conn.request("run", {"cell_id": "a"})
            assert conn.state is OPEN
            assert server.connections_opened == 2


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        (b" 7 ", 7.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),  # one minute after "now" below
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values_are_read_as_seconds(
    value: str | bytes | None, seconds: float | None
) -> None:
    """Retry-After is delta-seconds or an HTTP date; anything else is ignored."""
    from fsm.protocols import retry_after_seconds

    now = 1445412420.0  # Wed, 21 Oct 2015 07:27:00 GMT
    assert retry_after_seconds(value, now=now) == seconds


async def test_a_request_after_a_rejection_raises_not_connected_saying_why() -> None:
    """request() in CLOSED(REJECTED) raises NotConnected naming the rejection and connect()."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 1
            server.faults.refuse_status = 403
            async with connector(server) as conn:
                with pytest.raises(ConnectionFailed):
                    await conn.connect()
                with pytest.raises(NotConnected, match=r"REJECTED.*connect\(\)"):
                    await conn.request("run", {"cell_id": "a"})
                assert server.handshakes == 1


@pytest.mark.parametrize(
    ("message", "code"),
    [(b"binary", 1003), ("not json", 1007), ("x" * 2_000, 1009)],
    ids=["binary", "not-json", "oversized"],
)
async def test_a_frame_the_server_refuses_is_fatal_never_a_resend_loop(
    message: str | bytes, code: int
) -> None:
    """A server closing with 1003, 1007 or 1009 ends in CLOSED(REJECTED) after one
    connection: the refused frame is never sent again on its own."""

    class Sends(ReferenceProtocol):
        async def flush(self, link: Link, batch: Any) -> None:
            assert link.ws is not None
            await link.ws.send_message(message)

    with trio.fail_after(LIMIT):
        async with serving(max_frame_size=1_024) as server, connector(
            server, protocol=Sends()
        ) as conn:
            conn.edit("a", "1")
            with contextlib.suppress(ConnectionFailed):
                await conn.connect()
            await conn.wait_for(CLOSED)
            assert conn.close_reason is CloseReason.REJECTED
            assert str(code) in str(conn.lifecycle.last_cause)
            await assert_idle(conn)
            assert server.client_close_codes == [code]
            assert server.connections_opened == 1
            assert conn.pending_edits == {"a": "1"}  # kept, not lost


async def test_hung_handshake_times_out_and_is_retried() -> None:
    """A handshake the server never answers fails after connect_timeout, and the retry opens."""
    policy = dataclasses.replace(FAST, connect_timeout=0.3)
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(hang_handshake=True))
            async with connector(server, policy=policy) as conn:
                stamps = stamped(conn)
                await conn.connect()
                assert server.handshakes == 2
                assert server.connections_opened == 1
                # The hung attempt's socket was closed by the client: only the open one is left.
                await server.wait_until(lambda s: s.tcp_connections == 1)
    dialed = next(at for at, t in stamps if t.event == "connect")
    failed, fail = next((at, t) for at, t in stamps if t.event == "fail")
    assert fail.cause is not None and "timed out" in fail.cause
    assert policy.connect_timeout <= failed - dialed <= policy.connect_timeout + SLACK


async def test_silent_tcp_times_out_and_is_retried() -> None:
    """A server that accepts TCP but never speaks makes the attempt time out; the retry opens."""
    policy = dataclasses.replace(FAST, connect_timeout=0.3)
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(silent=True))
            async with connector(server, policy=policy) as conn:
                stamps = stamped(conn)
                await conn.connect()
                assert server.handshakes == 1  # the silent connection never got one
                assert server.connections_opened == 1
                await server.wait_until(lambda s: s.tcp_connections == 1)
    dialed = next(at for at, t in stamps if t.event == "connect")
    failed = next(at for at, t in stamps if t.event == "fail")
    assert policy.connect_timeout <= failed - dialed <= policy.connect_timeout + SLACK


async def test_http_200_without_upgrade_is_retried() -> None:
    """A plain HTTP 200 answer to the upgrade request fails the attempt, and the retry opens."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(http_200=True))
            async with connector(server) as conn:
                changes = conn.transitions()
                await conn.connect()
                assert conn.attempts == 1
                assert server.handshakes == 2
                assert server.connections_opened == 1
            records = await collect(changes)
    assert [t.event for t in records][:4] == ["connect", "fail", "retry", "ready"]


async def test_missing_kernel_ready_times_out_and_is_retried() -> None:
    """A WebSocket that never sends kernel-ready fails after connect_timeout and is retried."""
    policy = dataclasses.replace(FAST, connect_timeout=0.3)
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(skip_kernel_ready=True))
            async with connector(server, policy=policy) as conn:
                stamps = stamped(conn)
                conn.edit("a", "1")
                await conn.connect()
                await conn.wait_acked()
                assert server.connections_opened == 2
                assert server.cells == {"a": "1"}
                await server.wait_until(lambda s: s.open_connections == 1)
    dialed = next(at for at, t in stamps if t.event == "connect")
    failed, fail = next((at, t) for at, t in stamps if t.event == "fail")
    assert fail.cause is not None and "timed out" in fail.cause
    assert policy.connect_timeout <= failed - dialed <= policy.connect_timeout + SLACK


async def test_failed_attempts_close_their_sockets() -> None:
    """Refused, hung, silent and non-upgraded attempts close their sockets: no ResourceWarning."""
    policy = dataclasses.replace(FAST, connect_timeout=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with trio.fail_after(LIMIT):
            async with serving() as server:
                server.fault_plan.extend(
                    [
                        Faults(refuse_handshakes=1),
                        Faults(hang_handshake=True),
                        Faults(silent=True),
                        Faults(http_200=True),
                        Faults(skip_kernel_ready=True),
                    ]
                )
                async with connector(server, policy=policy) as conn:
                    await conn.connect()
                    assert conn.attempts == 5
                    await server.wait_until(lambda s: s.tcp_connections == 1)
                await server.wait_until(lambda s: s.tcp_connections == 0)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


# --------------------------------------------------------------------------- losses while open


async def test_close_right_after_kernel_ready_loses_no_edit() -> None:
    """A connection closed right after kernel-ready is reconnected and the flush is sent again."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(close_after_frames=0, close_code=1011))
            async with connector(server) as conn:
                changes = conn.transitions()
                conn.edit("a", "1")
                conn.edit("b", "2")
                await conn.connect()
                await conn.wait_acked()
                assert server.cells == {"a": "1", "b": "2"}
                assert server.connections_opened == 2
                assert conn.pending_edits == {}
            records = await collect(changes)
    drops = [t for t in records if t.event == "drop"]
    assert len(drops) == 1
    assert drops[0].cause is not None and "1011" in drops[0].cause
    assert [t.event for t in records].count("ready") == 2


@pytest.mark.parametrize("k", [1, 2])
async def test_close_after_k_frames_resends_the_unacked_edit(k: int) -> None:
    """When the server applies the K-th frame but closes before acking it, it is sent again."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.fault_plan.append(Faults(close_after_frames=k, close_code=1011))
            async with connector(server) as conn:
                conn.edit("a", "1")
                conn.edit("b", "2")
                await conn.connect()  # frame 1: the flush
                if k == 2:
                    await conn.wait_acked()
                    conn.edit("c", "3")  # frame 2: applied, never acked
                await conn.wait_acked()
                assert server.connections_opened == 2
                assert conn.pending_edits == {}
    expected = {"a": "1", "b": "2"} | ({"c": "3"} if k == 2 else {})
    assert server.cells == expected
    flushes = [frame.data["codes"] for _, frame in server.received if frame.op == "instantiate"]
    # The second connection's flush carries exactly what the first one left unacknowledged.
    assert flushes[-1] == ({"c": "3"} if k == 2 else {"a": "1", "b": "2"})
    assert len(flushes) == server.connections_opened  # one flush per entry into OPEN


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1000, "SHUTDOWN", CloseReason.SHUTDOWN),
        (1008, "policy violation", CloseReason.REJECTED),
        (3000, "unauthorized", CloseReason.REJECTED),
        (3999, "", CloseReason.REJECTED),
    ],
)
async def test_fatal_close_codes_close_without_retry(
    code: int, reason: str, expected: CloseReason
) -> None:
    """1000 "SHUTDOWN" closes as SHUTDOWN, 1008 and 3000-3999 as REJECTED, with no retry."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            await server.close_all(code, reason)
            await conn.wait_for(CLOSED)
            assert conn.close_reason is expected
            await assert_idle(conn)
            assert server.handshakes == 1
            assert server.connections_opened == 1
            # connect() is a way out of every CLOSED, whatever the reason.
            conn.edit("a", "after")
            await conn.connect()
            await conn.wait_acked()
            assert server.cells == {"a": "after"}
            assert server.connections_opened == 2


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1001, "going away"),
        (1011, "internal error"),
        (1000, "bye"),
        (1012, "restart"),
        (4000, "application"),
    ],
)
async def test_retryable_close_codes_reconnect(code: int, reason: str) -> None:
    """A close with a non-fatal code (1001, 1011, 1000 without SHUTDOWN, ...) reconnects."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            conn.edit("a", "before")
            await conn.connect()
            await conn.wait_acked()
            changes = conn.transitions()
            await server.close_all(code, reason)
            drop = await next_matching(changes, lambda t: t.event == "drop")
            assert drop.target is CONNECTING
            assert drop.cause is not None and f"code {code}" in drop.cause
            conn.edit("b", "while reconnecting")
            await conn.wait_acked()
            assert server.cells == {"a": "before", "b": "while reconnecting"}
            assert server.connections_opened == 2
            # Exactly one flush per entry into OPEN.
            assert server.frames_received["instantiate"] == 2
            assert conn.stats["unknown_acks"] == 0


async def test_tcp_reset_1006_reconnects() -> None:
    """A connection reset without a close frame (1006) reconnects and loses no edit."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            conn.edit("a", "1")
            await conn.connect()
            await conn.wait_acked()
            changes = conn.transitions()
            await server.drop_all()
            conn.edit("b", "2")
            drop = await next_matching(changes, lambda t: t.event == "drop")
            assert drop.cause is not None and "1006" in drop.cause
            await conn.wait_acked()
            assert server.cells == {"a": "1", "b": "2"}
            assert server.connections_opened == 2


async def test_edits_made_before_the_writer_runs_go_out_once_per_cell() -> None:
    """While OPEN, edits the writer has not reached yet coalesce: one frame per cell, latest."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            await conn.wait_acked()
            for i in range(100):  # no checkpoint: the writer cannot run in between
                conn.edit("a", f"a = {i}")
                conn.edit("b", f"b = {i}")
            assert conn.pending_edits == {"a": "a = 99", "b": "b = 99"}
            await conn.wait_acked()
            edits = [f.data for _, f in server.received if f.op == "edit"]
            assert [(e["cell_id"], e["code"]) for e in edits] == [("a", "a = 99"), ("b", "b = 99")]
            assert edits[0]["seq"] < edits[1]["seq"]
            assert server.cells == {"a": "a = 99", "b": "b = 99"}
            # Once the writer is free again, the next edit goes out on its own.
            conn.edit("a", "a = 100")
            await conn.wait_acked()
            assert [f.data["code"] for _, f in server.received if f.op == "edit"][-1] == "a = 100"


async def test_an_edit_made_before_a_request_reaches_the_server_before_it() -> None:
    """A request sent after an edit (while OPEN) arrives after that edit's frame."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            conn.edit("a", "x = 1")
            await conn.request("run", {"cell_id": "a"})  # returns once the frame is sent
            await server.wait_until(lambda s: any(f.op == "run" for _, f in s.received))
            ops = [f.op for _, f in server.received]
            assert ops.index("edit") < ops.index("run")
            await conn.wait_acked()
            assert server.cells == {"a": "x = 1"}


async def test_malformed_frames_are_logged_and_survived() -> None:
    """Malformed server frames are logged as bad_frame; the connection survives, loses nothing."""
    samples = malformed_frames()
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving() as server:
            server.faults.bad_frames = list(samples.values())
            async with connector(server) as conn:
                messages = conn.messages()
                conn.edit("a", "x = 1")
                await conn.connect()
                # The ack is sent after the bad frames, so all of them have been read by now.
                await conn.wait_acked()
                await conn.request("run", {"cell_id": "a"})
                seen: list[Frame] = []
                while not seen or seen[-1].op != "cell-op":
                    seen.append(await messages.receive())
                assert conn.state is OPEN
                assert server.connections_opened == 1
                assert server.cells == {"a": "x = 1"}
    # The well-formed frame with an unknown op is surfaced, not dropped.
    assert [f.op for f in seen] == ["no-such-op", "cell-op"]
    bad = [e for e in logs if e["event"] == "bad_frame" and e.get("log_level") == "warning"]
    reasons = " | ".join(str(e["reason"]) for e in bad)
    # not JSON, array, scalar, missing op, binary, oversized, second kernel-ready
    assert len(bad) == conn.stats["bad_frames"] == 7, reasons
    assert "binary" in reasons and "exceeds" in reasons and "second ready" in reasons
    assert conn.stats["unknown_acks"] == 1
    assert any(e["event"] == "unknown_ack" for e in logs)


async def test_freeze_is_detected_by_the_heartbeat_then_reconnects() -> None:
    """Unanswered pings are a drop within heartbeat_interval + heartbeat_timeout; a thaw heals."""
    interval, timeout = 0.1, 0.2
    with trio.fail_after(LIMIT):
        async with (
            serving() as server,
            connector(server, heartbeat_interval=interval, heartbeat_timeout=timeout) as conn,
        ):
            await conn.connect()
            changes = conn.transitions()
            server.faults.freeze = True
            frozen_at = trio.current_time()
            conn.edit("a", "sent while frozen")
            drop = await next_matching(changes, lambda t: t.event == "drop")
            detected = trio.current_time() - frozen_at
            server.faults.freeze = False
            await conn.wait_acked()
            assert server.cells == {"a": "sent while frozen"}
            assert server.connections_opened >= 2
    assert drop.cause is not None and "no pong" in drop.cause
    assert detected <= interval + timeout + SLACK


# --------------------------------------------------------------------------- giving up, recovery


async def test_gives_up_after_25_failures_and_connect_recovers() -> None:
    """25 refusals end in CLOSED(GAVE_UP); connect() fails while refused, recovers once healed."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            server.faults.refuse_handshakes = 10**9
            conn.edit("a", "1")
            with pytest.raises(ConnectionFailed, match="gave up after 25") as info:
                await conn.connect()
            assert info.value.reason is CloseReason.GAVE_UP
            assert conn.state is CLOSED
            assert conn.close_reason is CloseReason.GAVE_UP
            assert conn.attempts == 25
            assert server.handshakes == 25
            await assert_idle(conn)
            conn.edit("b", "2")  # buffered while CLOSED
            with pytest.raises(ConnectionFailed, match="gave up after 25"):
                await conn.connect()  # the button still works: a whole new cycle
            assert server.handshakes == 50
            server.faults.refuse_handshakes = 0
            await conn.connect()
            assert conn.state is OPEN
            await conn.wait_acked()
            assert server.cells == {"a": "1", "b": "2"}


async def test_tcp_connection_refused_is_retried_then_gives_up() -> None:
    """A port where nothing listens refuses each attempt at once; the cycle ends in GAVE_UP."""
    policy = dataclasses.replace(FAST, max_attempts=3)
    with trio.fail_after(LIMIT):
        with trio.socket.socket() as sock:
            await sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
            port = sock.getsockname()[1]
            async with fsm.open_connector(
                f"ws://127.0.0.1:{port}/ws", policy=policy, rng=random.Random(0)
            ) as conn:
                with pytest.raises(ConnectionFailed, match="gave up after 3") as info:
                    await conn.connect()
                assert conn.close_reason is CloseReason.GAVE_UP
                assert conn.stats["dials"] == 3
                await assert_idle(conn)
    assert info.value.cause is not None


async def test_attempts_reset_only_after_min_uptime() -> None:
    """A drop after min_uptime starts a fresh count; a drop sooner counts as a failed attempt."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            server.faults.refuse_handshakes = 2
            await conn.connect()
            assert conn.attempts == 2
            changes = conn.transitions()
            await server.drop_all()  # at once: counted
            early = await next_matching(changes, lambda t: t.event == "drop")
            assert early.attempt == 3
            await conn.wait_for(OPEN)
            # Not a wait for a condition: the connection must stay up this long.
            await trio.sleep(FAST.min_uptime)
            await server.drop_all()
            late = await next_matching(changes, lambda t: t.event == "drop")
            assert late.attempt == 0
            await conn.wait_for(OPEN)


async def test_server_that_drops_at_once_forever_ends_in_gave_up() -> None:
    """A server that closes every connection right after kernel-ready ends the cycle in GAVE_UP."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.close_after_frames = 0
            async with connector(server, lazy=False) as conn:
                await conn.wait_for(CLOSED)
                assert conn.close_reason is CloseReason.GAVE_UP
                assert conn.attempts == FAST.max_attempts
                assert server.connections_opened == FAST.max_attempts


# --------------------------------------------------------------------------- laziness, sharing


async def test_lazy_connector_opens_nothing_until_first_use() -> None:
    """After open_connector and edits, no TCP connection reached the server and no task runs."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            conn.edit("a", "1")
            conn.edit("b", "2")
            conn.edit("a", "3")
            messages = conn.messages()
            changes = conn.transitions()
            await trio.testing.wait_all_tasks_blocked()
            assert conn.state is NOT_STARTED
            assert conn.is_not_started and conn.can_interact
            assert server.tcp_connections == 0
            assert server.handshakes == 0
            assert conn._nursery is not None
            assert not conn._nursery.child_tasks
            assert conn.stats["dials"] == 0
            assert conn.pending_edits == {"a": "3", "b": "2"}
            await messages.aclose()
            await changes.aclose()


async def test_eager_connector_connects_on_entry() -> None:
    """With lazy=False the connector starts connecting on entry, without connect() or request()."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server, lazy=False) as conn:
            conn.edit("a", "1")
            await conn.wait_acked()
            assert server.cells == {"a": "1"}
            assert server.connections_opened == 1


async def test_concurrent_first_requests_open_exactly_one_connection() -> None:
    """Fifty concurrent first request()s share one connection attempt and one WebSocket."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "x"}) as server, connector(server) as conn:
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(conn.request, "run", {"cell_id": "a"})
            assert conn.state is OPEN
            assert server.connections_opened == 1
            assert server.handshakes == 1
            assert conn.stats["dials"] == 1
            await server.wait_until(lambda s: s.frames_received["run"] == 50)


# --------------------------------------------------------------------------- closing


async def test_aclose_during_hung_handshake_is_bounded_and_leaks_nothing() -> None:
    """aclose() during a hung handshake returns within close_timeout, leaving no task or socket."""
    close_timeout = 0.5
    policy = dataclasses.replace(FAST, connect_timeout=30.0)
    errors: list[ConnectionFailed] = []
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.hang_handshake = True
            await trio.testing.wait_all_tasks_blocked()
            before = all_tasks()
            async with (
                connector(server, policy=policy, close_timeout=close_timeout) as conn,
                trio.open_nursery() as nursery,
            ):

                async def first_use() -> None:
                    try:
                        await conn.connect()
                    except ConnectionFailed as exc:
                        errors.append(exc)

                nursery.start_soon(first_use)
                await server.wait_until(lambda s: s.handshakes == 1)
                assert conn.state is CONNECTING
                with trio.fail_after(close_timeout + 0.2):
                    await conn.aclose()
                assert conn.state is CLOSED
                assert conn.close_reason is CloseReason.USER
                with trio.fail_after(0.2):
                    await conn.aclose()  # idempotent
                assert conn.state is CLOSED
            await server.wait_until(lambda s: s.tcp_connections == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert all_tasks() == before
    assert len(errors) == 1
    assert errors[0].reason is CloseReason.USER


async def test_aclose_from_open_closes_gracefully() -> None:
    """aclose() from OPEN goes through CLOSING to CLOSED(USER) and the server sees a clean close."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            changes = conn.transitions()
            await conn.aclose()
            assert conn.state is CLOSED
            assert conn.close_reason is CloseReason.USER
            await server.wait_until(lambda s: s.open_connections == 0 and s.tcp_connections == 0)
            await conn.aclose()
            await changes.aclose()
    closes = [e for e in logs if e["event"] == "connection_closed"]
    assert [(e["by"], e["code"]) for e in closes] == [("client", 1000)]


async def test_graceful_close_is_bounded_by_close_timeout() -> None:
    """aclose() from OPEN waits for the server's close reply, but no longer than close_timeout."""
    close_timeout = 0.5
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server, close_timeout=close_timeout) as conn:
            await conn.connect()
            started = trio.current_time()
            await conn.aclose()
            assert trio.current_time() - started < close_timeout  # the server answered
            await conn.connect()
            server.faults.freeze = True  # the server will not answer this close
            changes = conn.transitions()
            started = trio.current_time()
            await conn.aclose()
            took = trio.current_time() - started
            assert close_timeout <= took <= close_timeout + SLACK
            assert conn.state is CLOSED
            assert conn.close_reason is CloseReason.USER
            server.faults.freeze = False
            await changes.aclose()
            await server.wait_until(lambda s: s.tcp_connections == 0)


async def test_connect_during_closing_reconnects_and_aclose_still_returns() -> None:
    """connect() while CLOSING reconnects once the close is done, and aclose() returns then."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server, close_timeout=1.0) as conn:
            await conn.connect()
            returned: list[ConnState] = []
            async with trio.open_nursery() as nursery:

                async def close() -> None:
                    with trio.fail_after(0.5):
                        await conn.aclose()
                    returned.append(conn.state)

                nursery.start_soon(close)
                await conn.wait_for(CLOSING)
                conn.edit("a", "1")
                await conn.connect()
                assert conn.state is OPEN
            assert returned and returned[0] is not CLOSING
            await conn.wait_acked()
            assert server.cells == {"a": "1"}
            assert server.connections_opened == 2


async def test_connect_racing_the_exit_of_the_block_leaves_it_closed() -> None:
    """A connect() arriving while the block exits cannot reopen it: the connector ends CLOSED."""
    close_timeout = 0.3
    outcome: list[BaseException] = []
    with trio.fail_after(LIMIT):
        async with serving() as server, trio.open_nursery() as nursery:
            async with connector(server, close_timeout=close_timeout) as conn:
                await conn.connect()
                server.faults.freeze = True  # the close handshake will time out

                async def late_connect() -> None:
                    await conn.wait_for(CLOSING)
                    try:
                        await conn.connect()
                    except fsm.LifecycleError as exc:
                        outcome.append(exc)

                nursery.start_soon(late_connect)
                await trio.testing.wait_all_tasks_blocked()
                exit_started = trio.current_time()
            assert trio.current_time() - exit_started <= close_timeout + SLACK
            assert conn.state is CLOSED
            server.faults.freeze = False
    assert len(outcome) == 1


class SlowReleaseProtocol(ReferenceProtocol):
    """release() of an open link blocks until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing = trio.Event()
        self.proceed = trio.Event()

    async def release(self, link: Link) -> None:
        if link.opened_at is not None and not self.proceed.is_set():
            self.releasing.set()
            await self.proceed.wait()


async def test_edit_and_request_while_a_lost_link_is_released() -> None:
    """While a lost link is being released, edit() never raises and request() waits for OPEN."""
    protocol = SlowReleaseProtocol()
    with trio.fail_after(LIMIT):
        async with (
            serving(cells={"a": "0"}) as server,
            connector(server, protocol=protocol) as conn,
        ):
            await conn.connect()
            await server.drop_all()
            await protocol.releasing.wait()
            conn.edit("a", "1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.request, "run", {"cell_id": "a"})
                await trio.testing.wait_all_tasks_blocked()
                assert server.frames_received["run"] == 0  # waiting, not failed, not sent
                protocol.proceed.set()
            await conn.wait_acked()
            assert server.frames_received["run"] == 1
            assert server.cells == {"a": "1"}
            assert server.connections_opened == 2
            # aclose() in that same window is fine too.
            protocol.proceed = trio.Event()
            protocol.releasing = trio.Event()
            await server.drop_all()
            await protocol.releasing.wait()
            with trio.fail_after(1.0):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.aclose)
                    await conn.wait_for(CLOSING)
                    protocol.proceed.set()
            assert conn.state is CLOSED
            assert conn.close_reason is CloseReason.USER


async def test_leaving_the_block_closes_everything() -> None:
    """Leaving the async with block while OPEN closes the socket and leaves no task behind."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            await trio.testing.wait_all_tasks_blocked()
            before = all_tasks()
            async with connector(server, heartbeat_interval=0.5) as conn:
                conn.edit("a", "1")
                await conn.connect()
                await conn.wait_acked()
                assert len(all_tasks()) > len(before)
            assert conn.state is CLOSED
            await server.wait_until(lambda s: s.tcp_connections == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert all_tasks() == before
            with pytest.raises(fsm.LifecycleError, match="not running"):
                await conn.connect()


@pytest.mark.parametrize("where", ["open", "hung_handshake", "backing_off"])
async def test_outer_cancellation_leaves_closed_and_leaks_nothing(where: str) -> None:
    """Cancelling the block from outside (OPEN, handshaking, backing off) ends CLOSED, no leak."""
    close_timeout = 0.5
    policy = dataclasses.replace(FAST, initial_delay=30.0, max_delay=30.0, connect_timeout=30.0)
    with trio.fail_after(LIMIT):
        async with serving() as server:
            if where == "hung_handshake":
                server.faults.hang_handshake = True
            elif where == "backing_off":
                server.faults.refuse_handshakes = 1
            await trio.testing.wait_all_tasks_blocked()
            before = all_tasks()
            with trio.CancelScope() as outer:
                async with connector(
                    server, policy=policy, close_timeout=close_timeout, lazy=False
                ) as conn:
                    if where == "open":
                        await conn.wait_for(OPEN)
                    elif where == "hung_handshake":
                        await server.wait_until(lambda s: s.handshakes == 1)
                    else:
                        await server.wait_until(lambda s: s.rejections == [503])
                        await trio.testing.wait_all_tasks_blocked()
                        assert conn.phase is Phase.BACKING_OFF
                    cancelled_at = trio.current_time()
                    outer.cancel()
                    await trio.sleep_forever()
            assert trio.current_time() - cancelled_at <= close_timeout + SLACK
            assert conn.state is CLOSED
            assert conn.close_reason is CloseReason.USER
            await server.wait_until(lambda s: s.tcp_connections == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert all_tasks() == before


async def test_body_exception_propagates_unwrapped() -> None:
    """An exception raised in the async with body comes out as itself, not in an ExceptionGroup."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            with pytest.raises(KeyError, match="boom"):
                async with connector(server) as conn:
                    await conn.connect()
                    raise KeyError("boom")
            await server.wait_until(lambda s: s.tcp_connections == 0)


# --------------------------------------------------------------------------- entry checks


@pytest.mark.parametrize("url", ["ftp://x", "ws://", "not a url", "http://host:notaport"])
async def test_bad_url_raises_value_error_before_any_io(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unusable URL raises ValueError on entering open_connector, before any task or socket."""

    async def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no connection may be attempted for a bad URL")

    monkeypatch.setattr(trio, "open_tcp_stream", no_io)
    with trio.fail_after(LIMIT):
        before = all_tasks()
        with pytest.raises(ValueError, match=r"URL|url"):
            async with fsm.open_connector(url):
                pytest.fail("the body must not run")
        assert all_tasks() == before


# --------------------------------------------------------------------------- the public API


async def test_request_while_closed_raises_not_connected() -> None:
    """request() in CLOSED raises NotConnected naming connect(); connect() then starts again."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "1"}) as server, connector(server) as conn:
            await conn.aclose()  # NOT_STARTED -> CLOSED(USER), no I/O
            assert conn.state is CLOSED
            with pytest.raises(NotConnected, match=r"connect\(\)"):
                await conn.request("run", {"cell_id": "a"})
            assert server.tcp_connections == 0
            await conn.connect()
            await conn.aclose()
            with pytest.raises(NotConnected, match="CLOSED"):
                await conn.request("run", {"cell_id": "a"})
            assert server.connections_opened == 1


class _RequestBreaksTheLink(fsm.ReferenceProtocol):
    """Its first request fails like a dead socket would."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    async def request(self, link: Link, op: str, data: Any) -> Any:
        if not self.broken:
            self.broken = True
            raise OSError("socket died mid-request")
        return await super().request(link, op, data)


async def test_a_request_cut_off_mid_send_raises_instead_of_hanging() -> None:
    """A request whose send dies with the link raises NotConnected; the next one succeeds."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "1"}) as server, connector(
            server, protocol=_RequestBreaksTheLink()
        ) as conn:
            with pytest.raises(NotConnected, match="send it again"):
                await conn.request("run", {"cell_id": "a"})
            await conn.request("run", {"cell_id": "a"})
            await server.wait_until(lambda s: s.frames_received["run"] == 1)


async def test_a_refused_request_raises_request_failed_and_keeps_the_connection() -> None:
    """A request the adapter reports as refused raises RequestFailed; the state stays OPEN."""

    class Refusing(fsm.ReferenceProtocol):
        async def request(self, link: Link, op: str, data: Any) -> Any:
            raise ValueError("HTTP 400: bad request")

    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server, protocol=Refusing()) as conn:
            with pytest.raises(fsm.RequestFailed, match="HTTP 400"):
                await conn.request("run", {})
            assert conn.state is fsm.ConnState.OPEN


async def test_connect_while_open_is_a_no_op() -> None:
    """connect() while OPEN returns at once without a new attempt or connection."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            changes = conn.transitions()
            await conn.connect()
            await conn.connect()
            assert conn.state is OPEN
            assert conn.stats["dials"] == 1
            assert server.connections_opened == 1
            assert server.handshakes == 1
        records = await collect(changes)
    assert all(t.source is not OPEN or t.target is not CONNECTING for t in records)
    assert [t.target for t in records if t.source is not t.target] == [CLOSING, CLOSED]


async def test_wait_for_returns_when_the_state_is_reached() -> None:
    """wait_for(state) blocks until the lifecycle is in that state and returns at once if it is."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            reached: list[ConnState] = []
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    await conn.wait_for(OPEN)
                    reached.append(conn.state)

                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert reached == []
                await conn.connect()
            assert reached == [OPEN]
            await conn.wait_for(OPEN)  # already there
            await conn.aclose()
            await conn.wait_for(ConnState("CLOSED"))
            with pytest.raises(ValueError):
                await conn.wait_for("NO_SUCH_STATE")  # type: ignore[arg-type]


async def test_messages_receive_the_cell_op_answer_to_run() -> None:
    """messages() yields the server's cell-op answer to request("run", ...), after the flush."""
    with trio.fail_after(LIMIT):
        async with serving(cells={"a": "x = 1"}) as server, connector(server) as conn:
            messages = conn.messages()
            conn.edit("a", "x = 2")
            result = await conn.request("run", {"cell_id": "a"})
            assert result is None
            frame = await messages.receive()
    # The flush went out before the request, so the kernel ran the edited code.
    output = {"mimetype": "text/plain", "data": "x = 2"}
    assert frame == Frame("cell-op", {"cell_id": "a", "output": output})


async def test_an_empty_flush_is_acked_without_a_warning() -> None:
    """Entering OPEN with nothing buffered sends one empty flush, and its ack is expected."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            await server.wait_until(lambda s: len(s.acks_sent) == 1)
            # An edit round trip after that ack proves the ack was read by the client.
            conn.edit("a", "1")
            await conn.wait_acked()
            assert server.frames_received == {"instantiate": 1, "edit": 1}
            assert conn.stats["unknown_acks"] == 0
    assert not [e for e in logs if e["event"] == "unknown_ack"]


async def test_edits_while_open_are_sent_and_acknowledged() -> None:
    """An edit made while OPEN is sent at once as an edit frame and forgotten once acked."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            await conn.connect()
            conn.edit("a", "1")
            assert conn.pending_edits == {"a": "1"}
            await conn.wait_acked()
            conn.edit("a", "2")
            conn.edit("b", "3")
            await conn.wait_acked()
            assert conn.pending_edits == {}
            assert server.cells == {"a": "2", "b": "3"}
            assert server.frames_received == {"instantiate": 1, "edit": 3}


async def test_transitions_yield_records_in_order() -> None:
    """transitions() yields every transition in order, from the first attempt to CLOSED."""
    with trio.fail_after(LIMIT):
        async with serving() as server:
            server.faults.refuse_handshakes = 1
            async with connector(server) as conn:
                changes = conn.transitions()
                await conn.connect()
                await conn.aclose()
            records = await collect(changes)
    assert [(t.source, t.target, t.event, t.phase) for t in records] == [
        (NOT_STARTED, CONNECTING, "connect", Phase.DIALING),
        (CONNECTING, CONNECTING, "fail", Phase.BACKING_OFF),
        (CONNECTING, CONNECTING, "retry", Phase.DIALING),
        (CONNECTING, OPEN, "ready", None),
        (OPEN, CLOSING, "close", None),
        (CLOSING, CLOSED, "close_finished", None),
    ]
    assert records[1].attempt == 1 and records[1].delay is not None
    assert records[1].cause is not None and "503" in records[1].cause
    assert records[-1].reason is CloseReason.USER


async def test_abandoned_streams_hold_nothing_over_300_reconnects() -> None:
    """Ten transitions() and ten messages() streams left by break or by a cancelled task
    hold no record afterwards, over 300 reconnects that each bring a message."""
    with trio.fail_after(LIMIT * 4):
        async with serving(cells={"a": "1"}) as server, connector(server) as conn:
            await conn.connect()

            async def read_one_then_hang(stream: Any) -> None:
                async for _ in stream:
                    await trio.sleep_forever()

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(read_one_then_hang, conn.transitions())
                    nursery.start_soon(read_one_then_hang, conn.messages())
                await server.drop_all()
                await conn.request("run", {"cell_id": "a"})
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()  # five of each: their task was cancelled
            streams: list[Any] = [conn.transitions() for _ in range(5)]
            streams += [conn.messages() for _ in range(5)]
            await server.drop_all()
            await conn.request("run", {"cell_id": "a"})
            for stream in streams:  # five of each: left by break
                async for _ in stream:
                    break
            del streams, stream
            gc.collect()
            assert len(conn._subscribers) == 0
            assert len(conn._message_streams) == 0
            before = sum(isinstance(o, Transition) for o in gc.get_objects())
            for i in range(300):
                await server.drop_all()
                await conn.request("run", {"cell_id": "a"})
                conn.edit("sync", str(i))  # acked after the answer: the answer was read
                await conn.wait_acked()
            gc.collect()
            after = sum(isinstance(o, Transition) for o in gc.get_objects())
            assert after <= before
            assert len(conn._subscribers) == 0 and len(conn._message_streams) == 0
            # No stream: unread messages wait, bounded by message_buffer, for the next
            # stream made.
            assert len(conn._backlog) == 300
            assert len(conn.messages()) == 300
            assert conn.stats["messages_dropped"] == 0


async def test_a_slow_transition_stream_keeps_the_newest_records() -> None:
    """A transition stream nobody reads keeps its newest maxlen records and counts the
    dropped ones; a message stream past message_buffer drops the new ones and says so."""
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with serving(cells={"a": "1"}) as server, connector(
            server, message_buffer=3
        ) as conn:
            changes = conn.transitions(maxlen=4)
            messages = conn.messages()
            await conn.connect()
            for _ in range(3):
                await server.drop_all()
                await conn.wait_for(OPEN)
            for _ in range(4):
                await conn.request("run", {"cell_id": "a"})
            await conn.wait_acked()
            await server.wait_until(lambda s: s.frames_received["run"] == 4)
            conn.edit("sync", "1")  # acked after the four answers were sent: a barrier
            await conn.wait_acked()
            assert len(changes) == 4 and changes.dropped > 0
            # The newest four: ready, the last drop, its retry, ready; nothing older.
            assert [changes.receive_nowait().event for _ in range(4)] == [
                "ready", "drop", "retry", "ready"
            ]
            assert len(messages) == 3 and messages.dropped == 1
            assert conn.stats["messages_dropped"] == 1
    assert [e["event"] for e in logs].count("messages_dropped") == 1


async def test_transition_stream_can_stop_early() -> None:
    """A transition stream closed by its consumer stops receiving without disturbing the rest."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            early = conn.transitions()
            late = conn.transitions()
            await early.aclose()
            await conn.connect()
        records = await collect(late)
    assert [t.event for t in records] == ["connect", "ready", "close", "close_finished"]


# --------------------------------------------------------------------------- virtual time


class FailingProtocol(ReferenceProtocol):
    """Every attempt fails in prepare(), before any I/O; records when each one started."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[float] = []

    async def prepare(self, link: Link) -> None:
        self.started.append(trio.current_time())
        raise AttemptFailed("nobody listens here")


class HangingProtocol(ReferenceProtocol):
    """Every attempt hangs in prepare() until the connector's deadline cancels it."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[float] = []

    async def prepare(self, link: Link) -> None:
        self.started.append(trio.current_time())
        await trio.sleep_forever()


def run_on_virtual_time(scenario: Any) -> float:
    """Run ``scenario`` under an auto-jumping MockClock; return the wall time it took.

    A scenario stuck waiting jumps the virtual clock to the day-long deadline at once.
    """

    async def bounded() -> None:
        with trio.fail_after(24 * 3600):
            await scenario()

    wall = time.perf_counter()
    trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - wall


def test_default_policy_gives_up_after_25_attempts_on_virtual_time() -> None:
    """With the default policy 25 failures end in GAVE_UP in milliseconds of wall time, and
    virtual time advances by exactly the back-off delays the lifecycle emitted."""
    policy = fsm.RetryPolicy()
    protocol = FailingProtocol()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with fsm.open_connector(
            "ws://127.0.0.1:9/ws", protocol=protocol, rng=random.Random(0)
        ) as conn:
            changes = conn.transitions()
            start = trio.current_time()
            with pytest.raises(ConnectionFailed, match="gave up after 25"):
                await conn.connect()
            result["elapsed"] = trio.current_time() - start
            result["state"] = (conn.state, conn.close_reason, conn.attempts)
        result["records"] = await collect(changes)

    wall = run_on_virtual_time(scenario)
    assert result["state"] == (CLOSED, CloseReason.GAVE_UP, 25)
    delays = [t.delay for t in result["records"] if t.event == "fail" and t.delay is not None]
    assert len(delays) == 24
    assert delays == policy.delays(random.Random(0))
    assert result["elapsed"] == pytest.approx(math.fsum(delays), abs=1e-6)
    assert result["elapsed"] > 30  # minutes of real back-off, skipped
    assert wall < 5.0
    # Each back-off timer fired exactly its delay after the failure it followed.
    gaps = [b - a for a, b in zip(protocol.started, protocol.started[1:], strict=False)]
    assert gaps == pytest.approx(delays, abs=1e-6)


def test_hung_attempts_end_at_connect_timeout_on_virtual_time() -> None:
    """An attempt that never completes is failed exactly connect_timeout after it started."""
    policy = fsm.RetryPolicy(max_attempts=3, connect_timeout=7.0)
    protocol = HangingProtocol()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        async with fsm.open_connector(
            "ws://127.0.0.1:9/ws", protocol=protocol, policy=policy, rng=random.Random(1)
        ) as conn:
            stamps = stamped(conn)
            start = trio.current_time()
            with pytest.raises(ConnectionFailed, match="gave up after 3"):
                await conn.connect()
            result["elapsed"] = trio.current_time() - start
            result["stamps"] = stamps

    wall = run_on_virtual_time(scenario)
    fails = [(at, t) for at, t in result["stamps"] if t.event == "fail"]
    assert len(fails) == 3
    for started, (failed, change) in zip(protocol.started, fails, strict=True):
        assert failed - started == pytest.approx(policy.connect_timeout, abs=1e-6)
        assert change.cause is not None and "timed out after 7 s" in change.cause
    delays = [t.delay for _, t in fails if t.delay is not None]
    assert len(delays) == 2
    assert result["elapsed"] == pytest.approx(3 * 7.0 + math.fsum(delays), abs=1e-6)
    assert wall < 5.0


def test_aclose_during_a_back_off_cancels_the_timer_on_virtual_time() -> None:
    """aclose() while BACKING_OFF cancels the timer at once: no further attempt is made."""
    protocol = FailingProtocol()
    result: dict[str, Any] = {}

    async def scenario() -> None:
        policy = fsm.RetryPolicy(initial_delay=60.0, max_delay=60.0, jitter=0.0)
        async with fsm.open_connector(
            "ws://127.0.0.1:9/ws", protocol=protocol, policy=policy
        ) as conn:
            async with trio.open_nursery() as nursery:

                async def first_use() -> None:
                    with pytest.raises(ConnectionFailed):
                        await conn.connect()

                nursery.start_soon(first_use)
                await trio.testing.wait_all_tasks_blocked()
                assert conn.phase is Phase.BACKING_OFF
                start = trio.current_time()
                await conn.aclose()
                result["elapsed"] = trio.current_time() - start
                await trio.testing.wait_all_tasks_blocked()
                result["idle"] = not conn._nursery.child_tasks  # type: ignore[union-attr]
            result["state"] = conn.state

    run_on_virtual_time(scenario)
    assert result == {"elapsed": 0.0, "idle": True, "state": CLOSED}
    assert len(protocol.started) == 1


class ReadyAtTheDeadline(ReferenceProtocol):
    """The first attempt's connect time-out expires in the tick its ready frame arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.readies = 0

    async def on_ready(self, link: Link, frame: Frame) -> None:
        self.readies += 1
        if self.readies == 1:
            # A schedule point that delivers no cancellation: the run loop expires the
            # deadline (cancel_called becomes true) while the task holds its ready frame.
            link.scope.deadline = trio.current_time()
            await trio.lowlevel.cancel_shielded_checkpoint()
            assert link.scope.cancel_called
        await super().on_ready(link, frame)


async def test_a_ready_frame_at_the_connect_deadline_fails_the_attempt_instead_of_a_drop() -> (
    None
):
    """An attempt whose time-out fired as kernel-ready arrived fails; the next one opens."""
    protocol = ReadyAtTheDeadline()
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server, protocol=protocol) as conn:
            stream = conn.transitions()
            conn.edit("cell-1", "x = 1")
            await conn.connect()
            await conn.wait_acked()
            records = []
            async for change in stream:
                records.append(change)
                if change.target is ConnState.OPEN:
                    break
            assert server.cells["cell-1"] == "x = 1"
    assert [t.event for t in records] == ["connect", "fail", "retry", "ready"]
    assert "timed out" in (records[1].cause or "")
    assert protocol.readies == 2


async def test_wait_changed_wakes_at_the_next_ack_not_at_an_edit() -> None:
    """wait_changed() returns at the server's ack of an edit made while OPEN; the edit alone
    does not wake it."""
    with trio.fail_after(LIMIT):
        async with serving() as server, connector(server) as conn:
            conn.edit("cell-0", "w = 0")  # so that waiting for its ack covers the flush's
            await conn.connect()
            await conn.wait_acked()
            seen: list[dict[str, str]] = []

            async def waiter() -> None:
                await conn.wait_changed()
                seen.append(conn.pending_edits)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                conn.edit("cell-1", "x = 1")
                assert conn.pending_edits == {"cell-1": "x = 1"} and not seen
    assert seen == [{}]
    assert server.cells["cell-1"] == "x = 1"
