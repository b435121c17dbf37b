"""Bad input from the user: each mistake is a clear error at the call that made it.

A wrong URL, a policy value that makes no sense, a cell id that is not a string, an
edit the buffer has no room for, an event in the wrong state, a bad keyword of
``open_connector``: each raises at once, naming what is wrong, instead of turning into
a retry loop, a crash in a background task, or a silently lost edit. None of these
tests needs a server: a connector that fails validation never opens a socket.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from structlog.testing import capture_logs

import fsm
from fsm import (
    ConnectionLifecycle,
    ConnState,
    EditBufferFull,
    InvalidTransition,
    LifecycleError,
    NotConnected,
    RetryPolicy,
)


@pytest.fixture(autouse=True)
def _structlog_captured() -> Iterator[None]:
    """Route structlog to a capture, whatever stream another test may have configured."""
    with capture_logs():
        yield


#: A syntactically valid URL; nothing listens there and no test ever dials it.
URL = "ws://127.0.0.1:9/ws"
#: Upper bound for each test that enters a connector (they finish in milliseconds).
LIMIT = 5.0


async def enter(url: Any = URL, **kwargs: Any) -> None:
    """Enter ``open_connector(url, **kwargs)``; validation errors surface here."""
    with trio.fail_after(LIMIT):
        async with fsm.open_connector(url, **kwargs):
            pytest.fail("open_connector accepted a bad argument")


def open_lifecycle(**kwargs: Any) -> ConnectionLifecycle:
    lc = ConnectionLifecycle(RetryPolicy(), random.Random(0), log_transitions=False, **kwargs)
    lc.connect()
    lc.ready()
    return lc


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://127.0.0.1/ws", "scheme must be one of ws, wss, http, https; got 'ftp'"),
        ("unix:///tmp/kernel.sock", "got 'unix'"),
        ("127.0.0.1:8000/ws", "scheme must be one of"),
        ("localhost:8000", "got 'localhost'"),
        ("", "got 'none'"),
        ("//127.0.0.1/ws", "got 'none'"),
        ("ws:///ws", "has no host"),
        ("ws://127.0.0.1:port/ws", "invalid server URL: Port"),
        ("ws://127.0.0.1:99999/ws", "invalid server URL: Port out of range"),
        ("ws://[::1/ws", "invalid server URL: Invalid IPv6 URL"),
        ("ws://127.0.0.1:8000/my notebook", "contains ' ' at position 22"),
        ("ws://127.0.0.1:8000/ws\n", "control"),
        ("ws://127.0.0.1:8000/ws?x=\x00", "control"),
        (" ws://127.0.0.1/ws", "whitespace"),
        ("ws://127.0.0.1:8000/\ud800", "cannot be encoded"),
        ("ws://exa\u2028mple.com/ws", "whitespace"),
    ],
)
async def test_a_bad_url_is_a_value_error_naming_the_problem(url: str, complaint: str) -> None:
    """open_connector refuses a URL without a ws/wss/http/https scheme, a host or a valid port."""
    with pytest.raises(ValueError, match="URL") as raised:
        await enter(url)
    assert complaint in str(raised.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (name, value)
        for name in (
            "max_attempts",
            "initial_delay",
            "max_delay",
            "connect_timeout",
            "min_uptime",
        )
        for value in (0, -1, math.nan, math.inf)
    ]
    + [
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("multiplier", 0.5),
        ("multiplier", -1.6),
        ("multiplier", math.nan),
        ("jitter", -0.1),
        ("jitter", 1.5),
        ("jitter", math.nan),
        ("initial_delay", None),
        ("connect_timeout", "10"),
    ],
)
def test_a_bad_policy_value_is_a_value_error_naming_the_field(field: str, value: Any) -> None:
    """RetryPolicy refuses zero, negative, NaN, infinite or non-numeric values, naming the field."""
    with pytest.raises(ValueError, match=rf"RetryPolicy\.{field}\b") as raised:
        RetryPolicy(**{field: value})
    assert repr(value) in str(raised.value) or str(value) in str(raised.value)


def test_a_max_delay_below_the_initial_delay_names_both_fields() -> None:
    """A cap below the first delay is refused with both fields and their values in the message."""
    with pytest.raises(ValueError, match=r"max_delay \(0\.5\).*initial_delay \(2\.0\)"):
        RetryPolicy(initial_delay=2.0, max_delay=0.5)


@pytest.mark.parametrize(
    ("cell_id", "code", "argument"),
    [
        (1, "x = 1", "cell_id"),
        (None, "x = 1", "cell_id"),
        (b"a", "x = 1", "cell_id"),
        ("", "x = 1", "cell_id"),
        ("a", 1, "code"),
        ("a", None, "code"),
        ("a", b"x = 1", "code"),
    ],
)
@pytest.mark.parametrize("state", ["NOT_STARTED", "OPEN"])
def test_a_non_string_cell_id_or_code_is_a_type_error_naming_the_argument(
    cell_id: Any, code: Any, argument: str, state: str
) -> None:
    """edit refuses a cell id or code that is not a str, names the argument, and records nothing."""
    lc = open_lifecycle() if state == "OPEN" else ConnectionLifecycle(log_transitions=False)
    lc.edit("kept", "x = 0")
    with pytest.raises(TypeError, match=argument):
        lc.edit(cell_id, code)
    assert lc.pending_edits == {"kept": "x = 0"}
    assert lc.state is ConnState[state]


async def test_the_connector_refuses_a_non_string_cell_id_at_the_call() -> None:
    """Connector.edit raises the TypeError at once, without starting anything."""
    with trio.fail_after(LIMIT):
        async with fsm.open_connector(URL) as conn:
            with pytest.raises(TypeError, match="cell_id"):
                conn.edit(42, "x = 1")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="code"):
                conn.edit("a", ["x = 1"])  # type: ignore[arg-type]
            assert conn.pending_edits == {}
            assert conn.state is ConnState.NOT_STARTED
            assert conn.stats["dials"] == 0


async def test_an_edit_past_the_buffer_limit_raises_and_drops_nothing() -> None:
    """A new cell beyond edit_limit raises EditBufferFull; buffered edits and re-edits are kept."""
    with trio.fail_after(LIMIT):
        async with fsm.open_connector(URL, edit_limit=2) as conn:
            conn.edit("a", "a = 1")
            conn.edit("b", "b = 1")
            with pytest.raises(EditBufferFull, match=r"limit of 2 .*'c'.*nothing was dropped"):
                conn.edit("c", "c = 1")
            assert conn.pending_edits == {"a": "a = 1", "b": "b = 1"}
            conn.edit("a", "a = 2")  # an edit to a buffered cell needs no room
            assert conn.pending_edits == {"a": "a = 2", "b": "b = 1"}
    assert issubclass(EditBufferFull, LifecycleError)


def test_an_edit_past_the_buffer_limit_while_open_sends_nothing() -> None:
    """While OPEN, a refused edit returns no SendEdit and leaves the edits in flight alone."""
    lc = open_lifecycle(edit_limit=1)
    sent = lc.edit("a", "a = 1")
    assert sent is not None
    with pytest.raises(EditBufferFull):
        lc.edit("b", "b = 1")
    assert lc.pending_edits == {"a": "a = 1"}
    assert lc.buffer.in_flight_seqs == {sent.seq}


@pytest.mark.parametrize(
    ("event", "state", "build"),
    [
        ("ready", "NOT_STARTED", lambda lc: None),
        ("close_finished", "CONNECTING", lambda lc: lc.connect()),
        ("fail", "OPEN", lambda lc: (lc.connect(), lc.ready())),
        ("ready", "CLOSED", lambda lc: lc.close()),
    ],
)
def test_an_event_in_the_wrong_state_names_the_event_and_the_state(
    event: str, state: str, build: Any
) -> None:
    """An event the state does not allow raises InvalidTransition naming both, changing nothing."""
    lc = ConnectionLifecycle(RetryPolicy(), random.Random(0), log_transitions=False)
    build(lc)
    before = (lc.state, lc.phase, lc.attempts, lc.close_reason)
    with pytest.raises(InvalidTransition) as raised:
        getattr(lc, event)()
    message = str(raised.value)
    assert repr(event) in message and state in message
    assert raised.value.event == event and raised.value.state is ConnState[state]
    assert event not in raised.value.allowed
    assert (lc.state, lc.phase, lc.attempts, lc.close_reason) == before
    assert issubclass(InvalidTransition, LifecycleError)


@pytest.mark.parametrize(
    "build", [lambda lc: None, lambda lc: lc.connect()], ids=["NOT_STARTED", "DIALING"]
)
def test_a_retry_from_a_timer_that_was_cancelled_changes_nothing(build: Any) -> None:
    """retry outside BACKING_OFF (a cancelled timer that fired anyway) returns no effect."""
    lc = ConnectionLifecycle(RetryPolicy(), random.Random(0), log_transitions=False)
    build(lc)
    before = (lc.state, lc.phase, lc.attempts, lc.close_reason)
    assert lc.retry() == []
    assert (lc.state, lc.phase, lc.attempts, lc.close_reason) == before


def test_a_request_after_close_says_to_call_connect() -> None:
    """request while CLOSED(USER) raises NotConnected naming the reason and telling the user
    to call connect()."""
    lc = ConnectionLifecycle(log_transitions=False)
    lc.close()
    with pytest.raises(NotConnected, match=r"CLOSED\(USER\).*call connect\(\)"):
        lc.request()


async def test_a_connector_used_after_its_block_says_how_to_use_it() -> None:
    """connect() outside the async-with block raises LifecycleError pointing at open_connector."""
    with trio.fail_after(LIMIT):
        async with fsm.open_connector(URL) as conn:
            pass
        with pytest.raises(LifecycleError, match="async with open_connector"):
            await conn.connect()
        with pytest.raises(LifecycleError, match="async with open_connector"):
            await conn.request("run", {"cell_id": "a"})


@pytest.mark.parametrize(
    ("keyword", "value", "error", "complaint"),
    [
        ("heartbeat_interval", 0, ValueError, "heartbeat_interval must be a positive number"),
        ("heartbeat_interval", -1, ValueError, "heartbeat_interval must be a positive number"),
        ("heartbeat_interval", math.nan, ValueError, "heartbeat_interval"),
        ("heartbeat_interval", "20", ValueError, "heartbeat_interval"),
        ("heartbeat_timeout", 0, ValueError, "heartbeat_timeout must be a positive number"),
        ("close_timeout", -1, ValueError, "close_timeout must be a positive number"),
        ("close_timeout", math.inf, ValueError, "close_timeout"),
        ("session_id", "", ValueError, "session_id must be a non-empty str"),
        ("session_id", 7, TypeError, "session_id must be a str, got int"),
        ("session_id", "a\ud800b", ValueError, "session_id cannot be encoded"),
        ("session_id", "line\nbreak", ValueError, "session_id must not contain control"),
        ("session_id", "del\x7f", ValueError, "session_id must not contain control"),
        ("session_id", "x" * 513, ValueError, "session_id must be at most 512 characters"),
        ("message_buffer", 0, ValueError, "message_buffer must be an integer >= 1"),
        ("message_buffer", 2.5, ValueError, "message_buffer"),
        ("message_buffer", True, ValueError, "message_buffer"),
        ("edit_limit", 0, ValueError, "edit.limit must be an integer >= 1"),
        ("protocol", "reference", TypeError, "protocol must be a KernelProtocol, got str"),
        ("protocol", fsm.ReferenceProtocol, TypeError, "protocol must be a KernelProtocol"),
        ("policy", {"max_attempts": 3}, TypeError, "policy must be a RetryPolicy, got dict"),
    ],
)
async def test_a_bad_open_connector_keyword_is_a_clear_error(
    keyword: str, value: Any, error: type[Exception], complaint: str
) -> None:
    """open_connector refuses each bad keyword value on entry, naming the keyword."""
    with pytest.raises(error, match=complaint):
        await enter(**{keyword: value})


def test_a_url_that_is_not_a_str_is_a_type_error() -> None:
    """normalise_url refuses anything but a str with a TypeError naming the type."""
    with pytest.raises(TypeError, match="url must be a str, got bytes"):
        fsm.Connector(b"ws://127.0.0.1/ws")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "wire"),
    [
        ("ws://127.0.0.1:8000/ws", "ws://127.0.0.1:8000/ws"),
        ("ws://127.0.0.1:8000/caf\u00e9?n=\u00e9", "ws://127.0.0.1:8000/caf%C3%A9?n=%C3%A9"),
        ("ws://b\u00fccher.example/ws", "ws://xn--bcher-kva.example/ws"),
        ("ws://127.0.0.1/a%20b", "ws://127.0.0.1/a%20b"),
    ],
)
def test_non_ascii_urls_are_encoded_for_the_wire(url: str, wire: str) -> None:
    """A non-ASCII path or query is percent-encoded as UTF-8 and a non-ASCII host is
    IDNA-encoded; an ASCII URL is kept as given."""
    assert fsm.Connector(url).url == wire


@pytest.mark.parametrize("session_id", ["caf\u00e9", "a b&c=d#e", "\U0001f600"])
def test_a_session_id_any_printable_text_is_accepted_and_encoded_in_the_query(
    session_id: str,
) -> None:
    """Printable text, spaces and URL delimiters included, is a valid session id: the
    WebSocket URL carries it percent-encoded."""
    conn = fsm.Connector(URL, session_id=session_id)
    ws_url = conn.protocol.websocket_url(conn.url, conn.session_id)
    assert ws_url.isascii()
    assert parse_qs(urlsplit(ws_url).query)["session_id"] == [session_id]


async def test_a_bad_rng_is_a_type_error_at_the_call() -> None:
    """open_connector and ConnectionLifecycle refuse an rng without a random() method."""
    with pytest.raises(TypeError, match="rng"):
        ConnectionLifecycle(rng="not a Random")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng"):
        await enter(rng="not a Random")
