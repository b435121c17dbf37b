"""Bad input from the server, one test per input, on virtual time over in-memory streams.

Each test runs a :class:`fsm.server.KernelServer` and a connector in one ``trio.run`` under
``MockClock(autojump_threshold=0)``; the connector's ``open_stream`` hook hands the server
one end of ``trio.testing.memory_stream_pair()`` per attempt, so there is no real I/O and
time-outs cost no wall time. Shapes the reference server cannot produce (a garbage HTTP
answer, a wrong accept key, invalid UTF-8, ...) come from small raw servers written here,
which serve the first attempt(s) before the reference server takes over.

For every input the same three things are checked:

1. the connector keeps running, or fails that one attempt and retries;
2. it logs ONE clear event: exactly one client-side warning (``bad_frame`` with a reason
   naming the problem, or ``unknown_ack``), or, for inputs that cost the connection, no
   warning and exactly one ``fail``/``drop`` transition whose cause names the problem;
3. no edit is lost: one edit made before the input and one made after it both end up in
   ``server.cells`` once ``conn.wait_acked()`` returns.

The last section fuzzes the frame decoder and the connector's frame handling with
hypothesis.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import fsm
from fsm.connector import Connector
from fsm.core._frames import MAX_FRAME_SIZE, BadFrame, Frame, decode_frame, encode_frame
from fsm.server import Faults, KernelServer, Session, malformed_frames

URL = "ws://kernel.invalid/ws"
#: A policy with round numbers, so that virtual times can be asserted exactly.
POLICY = fsm.RetryPolicy(
    max_attempts=25,
    initial_delay=1.0,
    multiplier=1.5,
    max_delay=4.0,
    jitter=0.0,
    connect_timeout=10.0,
    min_uptime=5.0,
)
#: Virtual seconds a scenario may take; a stuck one jumps here at once and fails.
VIRTUAL_LIMIT = 3600.0
#: Frames longer than this make trio-websocket close the connection with 1009.
TRANSPORT_LIMIT = 4 * MAX_FRAME_SIZE
WARNING_LEVELS = frozenset({"warning", "error", "critical", "exception"})

RawServer = Callable[[trio.abc.Stream], Awaitable[None]]


# --------------------------------------------------------------------------- harness


class Injector:
    """A server handler: a client ``inject`` request makes it send every queued message."""

    def __init__(self) -> None:
        self.queue: list[str | bytes] = []
        self.sent = 0

    async def __call__(self, session: Session, frame: Frame) -> None:
        if frame.op != "inject":
            return
        queue, self.queue = self.queue, []
        for message in queue:
            await session.send_raw(message)
            self.sent += 1


@dataclass
class Harness:
    """What a scenario sees: the server, its injector, the connector and its dials."""

    server: KernelServer
    injector: Injector
    conn: Connector
    #: Virtual time of every call of ``open_stream``.
    dials: list[float] = field(default_factory=list)

    async def inject(self, *messages: str | bytes) -> None:
        """Have the server send ``messages`` verbatim, in order, on the open connection."""
        self.injector.queue.extend(messages)
        await self.conn.request("inject")


@dataclass
class Outcome:
    """What a finished scenario left behind."""

    logs: list[MutableMapping[str, Any]]
    transitions: list[fsm.Transition]
    cells: dict[str, str]
    pending: dict[str, str]
    stats: dict[str, int]
    connections_opened: int
    state: fsm.ConnState
    #: Every seq the server acknowledged, in order.
    acks_sent: list[int]

    def client_warnings(self) -> list[MutableMapping[str, Any]]:
        """Events at warning level or above logged by the connector (not by the server)."""
        return [
            e for e in self.logs if e.get("side") == "client" and e["log_level"] in WARNING_LEVELS
        ]

    def losses(self) -> list[fsm.Transition]:
        """The ``fail`` and ``drop`` transitions of the run."""
        return [t for t in self.transitions if t.event in ("fail", "drop")]


def run_virtual(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    raw_servers: Sequence[RawServer] = (),
    server: KernelServer | None = None,
    heartbeat_interval: float | None = 20.0,
) -> Outcome:
    """Run ``scenario`` against a connector on virtual time and return what it left behind.

    The first ``len(raw_servers)`` attempts are served by those raw servers, every later
    one by the reference server. The connector logs with ``side="client"`` bound.
    """
    injector = Injector()
    srv = server if server is not None else KernelServer(handler=injector)
    result: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(VIRTUAL_LIMIT):
            async with trio.open_nursery() as nursery:
                dials: list[float] = []

                async def opener(host: str, port: int, secure: bool) -> trio.abc.Stream:
                    client, server_side = trio.testing.memory_stream_pair()
                    index = len(dials)
                    dials.append(trio.current_time())
                    if index < len(raw_servers):
                        nursery.start_soon(raw_servers[index], server_side)
                    else:
                        nursery.start_soon(srv.handle_stream, server_side)
                    return client

                async with fsm.open_connector(
                    URL,
                    open_stream=opener,
                    policy=POLICY,
                    rng=random.Random(0),
                    heartbeat_interval=heartbeat_interval,
                    close_timeout=2.0,
                    logger=structlog.get_logger("fsm").bind(side="client"),
                ) as conn:
                    changes = conn.transitions()
                    await scenario(Harness(srv, injector, conn, dials))
                    result["state"] = conn.state
                result["transitions"] = [t async for t in changes]
                result["conn"] = conn
                with trio.fail_after(10):
                    await srv.wait_until(lambda s: s.tcp_connections == 0)
                nursery.cancel_scope.cancel()

    with capture_logs() as logs:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    conn: Connector = result["conn"]
    return Outcome(
        logs=logs,
        transitions=result["transitions"],
        cells=dict(srv.cells),
        pending=conn.pending_edits,
        stats=dict(conn.stats),
        connections_opened=srv.connections_opened,
        state=result["state"],
        acks_sent=list(srv.acks_sent),
    )


async def next_loss(changes: fsm.connector.TransitionStream) -> fsm.Transition:
    """The next ``fail`` or ``drop`` transition on ``changes``."""
    async for change in changes:
        if change.event in ("fail", "drop"):
            return change
    raise AssertionError("the transition stream ended before a fail or drop")


def assert_no_edit_lost(out: Outcome) -> None:
    """The edit made before the input and the one made after it both reached the server."""
    assert out.cells == {"before": "1", "after": "2"}
    assert out.pending == {}
    assert out.state is fsm.ConnState.OPEN


# --------------------------------------------------------------------------- skipped frames


def skipped_frame_case(message: str | bytes) -> Outcome:
    """Send ``message`` on an open connection between two edits; return the outcome."""

    async def scenario(h: Harness) -> None:
        await h.conn.connect()
        h.conn.edit("before", "1")  # in flight while the bad input arrives
        await h.inject(message)
        h.conn.edit("after", "2")
        await h.conn.wait_acked()
        assert h.injector.sent == 1

    return run_virtual(scenario)


def assert_one_bad_frame(out: Outcome, reason_part: str) -> None:
    """Exactly one client warning: a ``bad_frame`` whose reason contains ``reason_part``."""
    warnings = out.client_warnings()
    assert [e["event"] for e in warnings] == ["bad_frame"], warnings
    assert reason_part in warnings[0]["reason"], warnings[0]["reason"]
    assert out.stats["bad_frames"] == 1
    assert out.stats["unknown_acks"] == 0
    assert out.losses() == []  # the connection was kept
    assert out.connections_opened == 1
    assert_no_edit_lost(out)


def test_non_json_text_is_one_bad_frame() -> None:
    """A text frame that is not JSON is logged once as bad_frame ("not JSON") and skipped."""
    out = skipped_frame_case("{this is not json")
    assert_one_bad_frame(out, "not JSON")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("[1, 2, 3]", "JSON list"),
        ("42", "JSON int"),
        ('"kernel-ready"', "JSON str"),
        ("null", "JSON NoneType"),
        ("true", "JSON bool"),
    ],
    ids=["array", "number", "string", "null", "bool"],
)
def test_json_that_is_not_an_object_is_one_bad_frame(message: str, kind: str) -> None:
    """Valid JSON that is not an object is logged once as bad_frame naming its type."""
    out = skipped_frame_case(message)
    assert_one_bad_frame(out, f"{kind}, not an object")


@pytest.mark.parametrize(
    "message",
    [
        json.dumps({"data": {}}),
        json.dumps({"op": 7, "data": {}}),
        json.dumps({"op": "", "data": 1}),
    ],
    ids=["missing", "not_a_string", "empty"],
)
def test_frame_without_an_op_is_one_bad_frame(message: str) -> None:
    """A JSON object without a non-empty string op is logged once as bad_frame naming 'op'."""
    out = skipped_frame_case(message)
    assert_one_bad_frame(out, "'op'")


def test_binary_frame_is_one_bad_frame() -> None:
    """A binary frame is logged once as bad_frame ("binary frame") and skipped."""
    out = skipped_frame_case(b"\x00\x01\x02 binary frame")
    assert_one_bad_frame(out, "binary frame")


def test_frame_over_the_size_limit_is_one_bad_frame() -> None:
    """A frame above MAX_FRAME_SIZE (but within the transport's 4x) is logged and skipped."""
    message = malformed_frames()["oversized"]
    assert MAX_FRAME_SIZE < len(message) <= TRANSPORT_LIMIT
    out = skipped_frame_case(message)
    assert_one_bad_frame(out, f"exceeds the limit of {MAX_FRAME_SIZE}")
    assert str(len(message)) in out.client_warnings()[0]["reason"]


def test_frame_at_exactly_the_size_limit_is_accepted() -> None:
    """A well-formed frame of exactly MAX_FRAME_SIZE characters is delivered, not refused."""
    overhead = len(encode_frame("cell-op", ""))
    message = encode_frame("cell-op", "x" * (MAX_FRAME_SIZE - overhead))
    assert len(message) == MAX_FRAME_SIZE
    got: list[Frame] = []

    async def scenario(h: Harness) -> None:
        messages = h.conn.messages()
        await h.conn.connect()
        h.conn.edit("before", "1")
        await h.inject(message)
        h.conn.edit("after", "2")
        got.append(await messages.receive())
        await h.conn.wait_acked()

    out = run_virtual(scenario)
    assert out.client_warnings() == []
    assert [f.op for f in got] == ["cell-op"] and len(got[0].data) == MAX_FRAME_SIZE - overhead
    assert_no_edit_lost(out)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ({"seq": "x"}, "seq str"),
        ({"seq": True}, "seq bool"),
        ({"seq": 1.5}, "seq float"),
        ({}, "no seq"),
        ([1], "data list"),
        (None, "no data"),
    ],
    ids=["seq_str", "seq_bool", "seq_float", "no_seq", "data_list", "data_null"],
)
def test_ack_with_a_malformed_seq_is_one_bad_frame(data: Any, shape: str) -> None:
    """An ack whose seq is not an integer is logged once as bad_frame and acks nothing."""
    out = skipped_frame_case(encode_frame("ack", data))
    assert_one_bad_frame(out, "ack without an integer seq")


def test_ack_for_an_unknown_seq_is_one_unknown_ack() -> None:
    """An ack for a seq never sent is logged once as unknown_ack (with the seq) and ignored."""
    out = skipped_frame_case(encode_frame("ack", {"seq": 987_654_321}))
    warnings = out.client_warnings()
    assert [(e["event"], e["seq"]) for e in warnings] == [("unknown_ack", 987_654_321)]
    assert out.stats["unknown_acks"] == 1
    assert out.stats["bad_frames"] == 0
    assert out.losses() == []
    assert_no_edit_lost(out)


def test_acks_of_superseded_edits_are_not_unknown() -> None:
    """Typing in one cell while OPEN (each edit superseding the last) logs no unknown_ack."""

    async def scenario(h: Harness) -> None:
        await h.conn.connect()
        h.conn.edit("before", "1")
        for i in range(5):
            h.conn.edit("after", f"x = {i}")
        h.conn.edit("after", "2")
        await h.conn.wait_acked()

    out = run_virtual(scenario)
    assert_no_edit_lost(out)
    assert out.client_warnings() == []
    assert out.stats["unknown_acks"] == 0


@pytest.mark.parametrize(
    "data",
    [
        {"session_id": "bogus", "cell_ids": [], "codes": []},
        ["not", "an", "object"],
    ],
    ids=["well_formed", "data_list"],
)
def test_second_kernel_ready_while_open_is_one_bad_frame(data: Any) -> None:
    """A second kernel-ready while OPEN (well-formed or not) is one bad_frame, no re-flush."""
    out = skipped_frame_case(encode_frame("kernel-ready", data))
    assert_one_bad_frame(out, "ready")
    assert [t.event for t in out.transitions].count("ready") == 1


def test_unknown_op_is_surfaced_as_a_message_without_a_warning() -> None:
    """A well-formed frame with an op the protocol does not know goes to messages(), unlogged."""
    # DESIGN.md section 6: "Any other server frame (cell-op, ...) goes to messages()": it is
    # not a bad frame, so it is delivered exactly once and no warning is logged.
    got: list[Frame] = []

    async def scenario(h: Harness) -> None:
        messages = h.conn.messages()
        await h.conn.connect()
        h.conn.edit("before", "1")
        await h.inject(encode_frame("no-such-op", {"x": 1}))
        h.conn.edit("after", "2")
        await h.conn.wait_acked()
        got.append(messages.receive_nowait())
        with pytest.raises(trio.WouldBlock):
            messages.receive_nowait()

    out = run_virtual(scenario)
    assert got == [Frame("no-such-op", {"x": 1})]
    assert out.client_warnings() == []
    counted = ("dials", "bad_frames", "messages_dropped", "unknown_acks")
    assert {k: out.stats[k] for k in counted} == dict.fromkeys(counted, 0) | {"dials": 1}
    assert_no_edit_lost(out)


def test_first_kernel_ready_with_data_a_list_is_one_bad_frame_then_a_retry() -> None:
    """A first kernel-ready whose data is a list is one bad_frame; the attempt then times out."""
    # The malformed ready frame does not open the connection: the attempt waits for a valid
    # one until connect_timeout, fails once, and the retry opens.
    bad_ready = encode_frame("kernel-ready", ["not", "an", "object"])
    server = KernelServer(handler=Injector())
    server.fault_plan.append(Faults(skip_kernel_ready=True, bad_frames=[bad_ready]))
    loss: list[fsm.Transition] = []

    async def scenario(h: Harness) -> None:
        changes = h.conn.transitions()
        h.conn.edit("before", "1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.conn.connect)
            loss.append(await next_loss(changes))
            h.conn.edit("after", "2")
        await h.conn.wait_acked()
        await changes.aclose()

    out = run_virtual(scenario, server=server)
    warnings = out.client_warnings()
    assert [e["event"] for e in warnings] == ["bad_frame"], warnings
    assert "kernel-ready" in warnings[0]["reason"] and "object" in warnings[0]["reason"]
    assert out.losses() == loss and loss[0].event == "fail"
    assert loss[0].cause is not None and "timed out" in loss[0].cause
    assert out.connections_opened == 2
    assert_no_edit_lost(out)


# --------------------------------------------------------------------------- lost connections


def lost_connection_case(
    lose: Callable[[Harness], Awaitable[None]],
) -> tuple[Outcome, fsm.Transition]:
    """Open, edit, ``lose`` the connection, edit once it is lost; return the outcome and loss."""
    loss: list[fsm.Transition] = []

    async def scenario(h: Harness) -> None:
        await h.conn.connect()
        changes = h.conn.transitions()
        h.conn.edit("before", "1")
        await lose(h)
        loss.append(await next_loss(changes))
        h.conn.edit("after", "2")  # made while reconnecting
        await h.conn.wait_acked()
        await changes.aclose()

    out = run_virtual(scenario)
    return out, loss[0]


def assert_one_drop(out: Outcome, loss: fsm.Transition, cause_part: str) -> None:
    """No client warning; exactly one drop, naming ``cause_part``; reconnected once."""
    assert out.client_warnings() == []
    assert out.losses() == [loss]
    assert loss.event == "drop"
    assert loss.cause is not None and cause_part in loss.cause, loss.cause
    assert out.connections_opened == 2
    assert [t.event for t in out.transitions].count("ready") == 2
    assert_no_edit_lost(out)


def test_frame_over_the_transport_limit_drops_and_reconnects() -> None:
    """A frame above 4x MAX_FRAME_SIZE makes the transport close with 1009: one drop, retried."""
    message = malformed_frames(oversize=TRANSPORT_LIMIT + 1)["oversized"]
    assert len(message) > TRANSPORT_LIMIT

    async def lose(h: Harness) -> None:
        h.injector.queue.append(message)
        await h.conn.request("inject")

    out, loss = lost_connection_case(lose)
    assert_one_drop(out, loss, "code 1009")
    assert out.stats["bad_frames"] == 0  # never decoded


@pytest.mark.parametrize(
    ("code", "reason", "cause"),
    [
        (4999, "no idea", "code 4999 (no idea)"),
        (1013, "try again later", "code 1013 (try again later)"),
        # Codes wsproto considers reserved: the client answers 1002 (protocol error).
        (1014, "bad gateway", "code 1002"),
        (2999, "", "code 1002"),
    ],
    ids=["4999", "1013", "1014_reserved", "2999_reserved"],
)
def test_close_with_an_unknown_code_drops_and_reconnects(
    code: int, reason: str, cause: str
) -> None:
    """A close frame with a code the protocol does not list is a retryable drop, logged once."""

    async def lose(h: Harness) -> None:
        await h.server.close_all(code, reason)

    out, loss = lost_connection_case(lose)
    assert_one_drop(out, loss, cause)


# --------------------------------------------------------------------------- failed attempts


def failed_attempt_case(
    *, raw_servers: Sequence[RawServer] = (), server: KernelServer | None = None
) -> tuple[Outcome, fsm.Transition, list[float]]:
    """Edit, connect through one failing attempt, edit after the failure; return what happened."""
    loss: list[fsm.Transition] = []
    dials: list[float] = []

    async def scenario(h: Harness) -> None:
        changes = h.conn.transitions()
        h.conn.edit("before", "1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.conn.connect)
            loss.append(await next_loss(changes))
            h.conn.edit("after", "2")  # made while backing off
        await h.conn.wait_acked()
        await changes.aclose()
        dials.extend(h.dials)

    out = run_virtual(scenario, raw_servers=raw_servers, server=server)
    return out, loss[0], dials


def assert_one_fail(out: Outcome, loss: fsm.Transition, cause_part: str) -> None:
    """No client warning; exactly one failed attempt, naming ``cause_part``; the retry opened."""
    assert out.client_warnings() == []
    assert out.losses() == [loss]
    assert loss.event == "fail" and loss.attempt == 1
    assert loss.cause is not None and cause_part in loss.cause, loss.cause
    assert [t.event for t in out.transitions][:4] == ["connect", "fail", "retry", "ready"]
    assert out.connections_opened == 1
    assert_no_edit_lost(out)


def test_http_200_without_upgrade_fails_the_attempt() -> None:
    """An HTTP 200 answer to the upgrade request fails that attempt once; the retry opens."""
    server = KernelServer(handler=Injector())
    server.fault_plan.append(Faults(http_200=True))
    out, loss, _ = failed_attempt_case(server=server)
    assert_one_fail(out, loss, "HTTP 200")


def test_silent_server_fails_the_attempt_at_the_connect_timeout() -> None:
    """A server that accepts TCP and never speaks fails the attempt at connect_timeout exactly."""
    server = KernelServer(handler=Injector())
    server.fault_plan.append(Faults(silent=True))
    out, loss, dials = failed_attempt_case(server=server)
    assert_one_fail(out, loss, f"timed out after {POLICY.connect_timeout:g} s")
    # Dialed at 0, timed out at connect_timeout, retried after the first back-off delay.
    assert dials[1] - dials[0] == pytest.approx(POLICY.connect_timeout + POLICY.initial_delay)


async def _read_request_head(stream: trio.abc.Stream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _accept_key(head: bytes, *, corrupt: bool = False) -> str:
    key = ""
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    if corrupt:
        digest = bytes(b ^ 0xFF for b in digest)
    return base64.b64encode(digest).decode()


def _switching_protocols(head: bytes, *, corrupt: bool = False) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {_accept_key(head, corrupt=corrupt)}\r\n\r\n"
    ).encode()


def _server_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final WebSocket frame (payloads under 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


async def _hold(stream: trio.abc.Stream) -> None:
    """Swallow the client's bytes until it hangs up."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _garbage_answer(stream: trio.abc.Stream) -> None:
    await _read_request_head(stream)
    await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await _hold(stream)


async def _wrong_accept_key(stream: trio.abc.Stream) -> None:
    head = await _read_request_head(stream)
    await stream.send_all(_switching_protocols(head, corrupt=True))
    await _hold(stream)


INVALID_HANDSHAKE_ANSWERS = pytest.mark.parametrize(
    "raw_server", [_garbage_answer, _wrong_accept_key], ids=["garbage", "wrong_accept_key"]
)


@INVALID_HANDSHAKE_ANSWERS
def test_invalid_handshake_answer_fails_the_attempt(raw_server: RawServer) -> None:
    """An answer to the upgrade request that is not a valid 101 fails that attempt once."""
    out, loss, _ = failed_attempt_case(raw_servers=[raw_server])
    assert_one_fail(out, loss, "invalid handshake answer")


def test_tcp_closed_right_after_the_handshake_fails_the_attempt() -> None:
    """A server that completes the handshake and hangs up before kernel-ready fails it once."""

    async def hang_up(stream: trio.abc.Stream) -> None:
        head = await _read_request_head(stream)
        await stream.send_all(_switching_protocols(head))
        await trio.aclose_forcefully(stream)

    out, loss, _ = failed_attempt_case(raw_servers=[hang_up])
    assert_one_fail(out, loss, "code 1006")


def test_invalid_utf8_text_frame_drops_and_reconnects() -> None:
    """A text frame that is not UTF-8, after kernel-ready, costs that connection only: retried."""

    async def invalid_utf8(stream: trio.abc.Stream) -> None:
        head = await _read_request_head(stream)
        ready = encode_frame("kernel-ready", {"session_id": "raw", "cell_ids": [], "codes": []})
        await stream.send_all(_switching_protocols(head) + _server_frame(0x1, ready.encode()))
        await stream.send_all(_server_frame(0x1, b'{"op": "\xff\xfe"}'))
        await _hold(stream)

    loss: list[fsm.Transition] = []

    async def scenario(h: Harness) -> None:
        changes = h.conn.transitions()
        h.conn.edit("before", "1")
        await h.conn.connect()  # opened by the raw server; the flush is never acked
        loss.append(await next_loss(changes))
        h.conn.edit("after", "2")
        await h.conn.wait_acked()
        await changes.aclose()

    out = run_virtual(scenario, raw_servers=[invalid_utf8])
    assert out.client_warnings() == []
    assert out.losses() == loss and loss[0].event == "drop"
    assert loss[0].cause is not None and "1007" in loss[0].cause, loss[0].cause
    assert out.connections_opened == 1  # the reference server's; the first was the raw one
    assert_no_edit_lost(out)


# --------------------------------------------------------------------------- fuzz: decoder


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
#: Objects that look like frames: op of any JSON type (mostly strings), data anything.
frame_like = st.dictionaries(
    st.sampled_from(["op", "data", "seq", "extra"]),
    st.one_of(st.text(max_size=12), json_values),
    max_size=4,
)


def _decode_or_bad(message: Any, **kwargs: Any) -> Frame | BadFrame:
    try:
        return decode_frame(message, **kwargs)
    except BadFrame as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert "\n" not in exc.reason and len(exc.reason) < 200
        return exc


@given(st.one_of(st.text(), st.binary(), st.binary().map(bytearray)))
def test_decoder_returns_a_frame_or_raises_bad_frame_on_any_text_or_bytes(
    message: str | bytes,
) -> None:
    """decode_frame on arbitrary text or bytes returns a Frame or raises BadFrame, nothing else."""
    result = _decode_or_bad(message)
    if isinstance(message, bytes | bytearray):
        assert isinstance(result, BadFrame) and result.reason == "binary frame"
    elif isinstance(result, Frame):
        assert isinstance(result.op, str) and result.op


@given(st.one_of(json_values, frame_like), st.sampled_from([None, 0, 2, 4]))
def test_decoder_classifies_any_json_value(value: Any, indent: int | None) -> None:
    """Any JSON value decodes to a Frame exactly when it is an object with a non-empty str op."""
    message = json.dumps(value, indent=indent)
    result = _decode_or_bad(message)
    is_frame = isinstance(value, dict) and isinstance(value.get("op"), str) and value["op"] != ""
    if is_frame:
        assert result == Frame(value["op"], value.get("data"))
    else:
        assert isinstance(result, BadFrame)


@given(st.text(min_size=1), json_values)
def test_encode_then_decode_round_trips(op: str, data: Any) -> None:
    """decode_frame(encode_frame(op, data)) gives back Frame(op, data) for every JSON data."""
    assert decode_frame(encode_frame(op, data)) == Frame(op, data)


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_decoder_enforces_max_size_before_parsing(message: str, max_size: int) -> None:
    """A message longer than max_size is refused as oversized whatever it holds."""
    result = _decode_or_bad(message, max_size=max_size)
    if len(message) > max_size:
        assert isinstance(result, BadFrame) and "exceeds the limit" in result.reason


@given(st.integers(min_value=1, max_value=200_000), st.sampled_from("[{"))
def test_deeply_nested_json_is_a_bad_frame_not_a_recursion_error(depth: int, opener: str) -> None:
    """JSON nested deeper than the parser's recursion limit is a BadFrame, not a crash."""
    body = '{"a":' * depth + "1" + "}" * depth if opener == "{" else "[" * depth + "]" * depth
    result = _decode_or_bad(body)
    assert isinstance(result, BadFrame)  # never an object with an op at the top


# --------------------------------------------------------------------------- fuzz: connector


def _expected(message: str | bytes) -> str:
    """How the connector must treat ``message``: bad_frame, unknown_ack, message or drop."""
    if isinstance(message, bytes):
        return "drop" if len(message) > TRANSPORT_LIMIT else "bad_frame"
    if len(message) > TRANSPORT_LIMIT:
        return "drop"
    try:
        frame = decode_frame(message)
    except BadFrame:
        return "bad_frame"
    if frame.op == "kernel-ready":
        return "bad_frame"
    if frame.op == "ack":
        seq = frame.data.get("seq") if isinstance(frame.data, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            return "unknown_ack"
        return "bad_frame"
    return "message"


#: Seqs no edit of a fuzz run can have (they count up from 1), so an ack never lies.
foreign_seqs = st.one_of(st.integers(max_value=0), st.integers(min_value=10**9))
server_messages = st.one_of(
    st.sampled_from([v for k, v in malformed_frames().items() if k != "oversized"]),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.builds(json.dumps, json_values),
    st.builds(json.dumps, frame_like),
    st.builds(
        encode_frame,
        st.sampled_from(["ack", "kernel-ready", "cell-op", "reconnected", "x"]),
        json_values,
    ),
    st.builds(lambda seq: encode_frame("ack", {"seq": seq}), foreign_seqs),
    st.just(malformed_frames()["oversized"]),
)
#: Each example is a whole trio.run (about 20-50 ms of wall time); the decoder fuzz is cheap.
FUZZ_EXAMPLES = {"ci": 60, "long": 1000}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 30)
fuzz_steps = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.sampled_from("abc"), st.text(max_size=6)),
        st.tuples(st.just("inject"), st.lists(server_messages, min_size=1, max_size=4)),
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=60.0)),
    ),
    min_size=1,
    max_size=10,
)


@settings(
    max_examples=FUZZ_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(fuzz_steps, st.sampled_from([None, "drop_at_end"]))
def test_connector_survives_any_server_frames_on_virtual_time(
    steps: list[tuple[Any, ...]], ending: str | None
) -> None:
    """Random server frames between random edits never crash the connector nor lose an edit."""
    # Every message is classified in advance (bad_frame, unknown_ack, delivered message):
    # the connector must log and count exactly those, stay on one connection, and end with
    # the server holding the latest code of every cell edited.
    latest: dict[str, str] = {}
    injected: list[str | bytes] = []
    delivered: list[Frame] = []

    async def scenario(h: Harness) -> None:
        messages = h.conn.messages()
        await h.conn.connect()
        for step in steps:
            if step[0] == "edit":
                h.conn.edit(step[1], step[2])
                latest[step[1]] = step[2]
            elif step[0] == "inject":
                injected.extend(step[1])
                await h.inject(*step[1])
            else:
                await trio.sleep(step[1])
        # A last edit is acked only after every injected message was read: a barrier.
        h.conn.edit("sync", "1")
        latest["sync"] = "1"
        await h.conn.wait_acked()
        if ending == "drop_at_end":
            await h.server.drop_all()
            h.conn.edit("z", "after the drop")
            latest["z"] = "after the drop"
        await h.conn.wait_acked()
        while True:
            try:
                delivered.append(messages.receive_nowait())
            except trio.WouldBlock:
                break

    out = run_virtual(scenario)
    kinds = [_expected(m) for m in injected]
    warnings = out.client_warnings()
    assert [e["event"] for e in warnings if e["event"] not in ("bad_frame", "unknown_ack")] == []
    assert out.stats["bad_frames"] == kinds.count("bad_frame")
    assert len([e for e in warnings if e["event"] == "bad_frame"]) == kinds.count("bad_frame")
    unknown = [e["seq"] for e in warnings if e["event"] == "unknown_ack"]
    assert out.stats["unknown_acks"] == len(unknown) == kinds.count("unknown_ack")
    assert not set(unknown) & set(out.acks_sent)  # only forged seqs, none the client sent
    assert len(delivered) == kinds.count("message")
    assert out.cells == latest
    assert out.pending == {}
    assert out.state is fsm.ConnState.OPEN
    assert out.connections_opened == (2 if ending == "drop_at_end" else 1)
