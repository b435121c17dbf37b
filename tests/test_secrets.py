"""Secrets never reach a log line: tokens in URLs, query strings and headers.

A real connector talks to a real :class:`fsm.server.KernelServer` that requires a
token, on 127.0.0.1 with an ephemeral port, through success, refusal (wrong token:
HTTP 401, CLOSED(REJECTED)), a dropped connection and its reconnect, and a close.
Every structlog event of client and server is captured and serialised with ``repr``;
so is every stdlib log record (trio-websocket and python-statemachine log through
``logging``). The secret must appear in none of them, nor in the transition records
or the error messages a user sees.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

import fsm
from fsm import CloseReason, ConnState, RetryPolicy
from fsm.core._redact import MASK, redact, redact_url
from fsm.server import DEFAULT_HOST, KernelServer


@pytest.fixture(autouse=True)
def _structlog_captured() -> Iterator[None]:
    """Route structlog to a capture, whatever stream another test may have configured."""
    with capture_logs():
        yield


#: The server's token: the secret no log line may contain.
TOKEN = "s3cret-7c1e0b5a9d"
#: A wrong token offered by a client: a secret too (it may be a user's real token elsewhere).
WRONG = "s3cret-wrong-4f2a66"
#: Upper bound for any single network test; each normally finishes in well under a second.
LIMIT = 10.0
#: Fast retries, so the reconnect after a drop is quick; one attempt per cycle is enough.
POLICY = RetryPolicy(
    max_attempts=3, initial_delay=0.01, max_delay=0.05, connect_timeout=5.0, min_uptime=5.0
)


@asynccontextmanager
async def serving(token: str | None = TOKEN) -> AsyncIterator[KernelServer]:
    """A KernelServer on 127.0.0.1 and an ephemeral port for the duration of the block."""
    server = KernelServer(token=token)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            await server.shutdown()


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}"


def with_userinfo(url: str, password: str) -> str:
    return url.replace("ws://", f"ws://kernel-user:{password}@", 1)


# How a client may carry the token: (url builder, protocol). The query forms and the
# userinfo form also send the header, since the server reads only ?token= and the header.
WAYS: dict[str, tuple[Any, Any]] = {
    "query token": (lambda url, t: with_query(url, f"session_id=ignored&token={t}"), None),
    "query access_token": (
        lambda url, t: with_query(url, f"access_token={t}"),
        lambda t: fsm.ReferenceProtocol(token=t),
    ),
    "userinfo password": (with_userinfo, lambda t: fsm.ReferenceProtocol(token=t)),
    "authorization header": (lambda url, t: url, lambda t: fsm.ReferenceProtocol(token=t)),
}


def client_for(way: str, server: KernelServer, token: str) -> tuple[str, Any]:
    build_url, build_protocol = WAYS[way]
    protocol = build_protocol(token) if build_protocol is not None else None
    return build_url(server.url, token), protocol


def assert_no_secret(texts: Iterable[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"secret leaked into: {text}"
            # Also no tell-tale fragment of it (a prefix cut by a naive redactor, say).
            assert secret[-8:] not in text, f"part of a secret leaked into: {text}"


def structlog_texts(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [repr(event) for event in events]


def stdlib_texts(records: list[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(repr(record.exc_info[1]))
    return texts


@pytest.mark.parametrize("way", sorted(WAYS))
async def test_a_token_is_never_logged_through_success_drop_and_close(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A token given in the URL or a header appears in no log event, record or transition."""
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(LIMIT), capture_logs() as events:
        async with serving() as server:
            url, protocol = client_for(way, server, TOKEN)
            async with fsm.open_connector(url, protocol=protocol, policy=POLICY) as conn:
                changes = conn.transitions()
                conn.edit("a", "print('before')")
                await conn.connect()
                await conn.wait_acked()
                await server.drop_all()  # a crash: no close frame
                await server.wait_until(lambda s: s.connections_opened == 2)
                await conn.wait_for(ConnState.OPEN)
                conn.edit("a", "print('after')")
                await conn.wait_acked()
                await conn.aclose()
                assert conn.state is ConnState.CLOSED
                assert conn.close_reason is CloseReason.USER
            records = [change async for change in changes]  # ends with the connector
            assert server.cells == {"a": "print('after')"}
    names = {event["event"] for event in events}
    # The capture really saw the client and the server, drop and reconnect included.
    assert {"connector_opened", "ready", "drop", "retry", "close_finished"} <= names
    assert {"listening", "connection_opened", "connection_dropped"} <= names
    assert any(r.name == "trio-websocket" for r in caplog.records)
    assert_no_secret(structlog_texts(events), TOKEN)
    assert_no_secret(stdlib_texts(caplog.records), TOKEN)
    assert_no_secret([repr(record) for record in records], TOKEN)


@pytest.mark.parametrize("way", sorted(WAYS))
async def test_a_wrong_token_is_rejected_without_being_logged(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong token gets 401, CLOSED(REJECTED) and no retry, and neither token is ever logged."""
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(LIMIT), capture_logs() as events:
        async with serving() as server:
            url, protocol = client_for(way, server, WRONG)
            async with fsm.open_connector(url, protocol=protocol, policy=POLICY) as conn:
                with pytest.raises(fsm.ConnectionFailed) as failed:
                    await conn.connect()
                assert conn.state is ConnState.CLOSED
                assert conn.close_reason is CloseReason.REJECTED
                cause = conn.lifecycle.last_cause
                await conn.aclose()  # closing a closed connector is a harmless no-op
            assert server.rejections == [401]
            assert server.connections_opened == 0
    assert failed.value.reason is CloseReason.REJECTED
    assert "401" in str(failed.value)
    names = {event["event"] for event in events}
    assert {"reject", "handshake_rejected"} <= names
    assert_no_secret(structlog_texts(events), TOKEN, WRONG)
    assert_no_secret(stdlib_texts(caplog.records), TOKEN, WRONG)
    assert_no_secret([str(failed.value), repr(failed.value), repr(cause)], TOKEN, WRONG)


async def test_the_reference_server_binds_loopback_by_default() -> None:
    """KernelServer listens on 127.0.0.1 unless told otherwise, and its URL says so."""
    assert DEFAULT_HOST == "127.0.0.1"
    with trio.fail_after(LIMIT):
        async with serving() as server:
            assert server.host == "127.0.0.1"
            assert server.url.startswith(f"ws://127.0.0.1:{server.port}/")
            assert TOKEN not in server.url
            # Another loopback address reaches a socket bound to 0.0.0.0, not one on 127.0.0.1.
            with trio.move_on_after(2), pytest.raises(OSError):
                stream = await trio.open_tcp_stream("127.0.0.2", server.port)
                await stream.aclose()


async def upgrade_status(server: KernelServer, target: str, headers: str = "") -> int:
    """The HTTP status the server answers a WebSocket upgrade request for ``target`` with."""
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{headers}\r\n"
    )
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, "the server hung up without answering"
            head += chunk
    return int(head.split(b" ", 2)[1])


async def test_the_reference_server_requires_its_token() -> None:
    """With a token, an upgrade without it (or with a wrong one) gets 401; with it, 101."""
    with trio.fail_after(LIMIT), capture_logs() as events:
        async with serving() as server:
            assert await upgrade_status(server, "/ws?session_id=a") == 401
            assert await upgrade_status(server, f"/ws?session_id=b&token={WRONG}") == 401
            assert await upgrade_status(server, "/ws", f"Authorization: Bearer {WRONG}\r\n") == 401
            assert await upgrade_status(server, "/ws", f"Authorization: Basic {TOKEN}\r\n") == 401
            assert await upgrade_status(server, f"/ws?session_id=c&token={TOKEN}") == 101
            assert await upgrade_status(server, "/ws", f"Authorization: Bearer {TOKEN}\r\n") == 101
            assert server.rejections == [401, 401, 401, 401]
            await server.wait_until(lambda s: s.tcp_connections == 0)
    assert_no_secret(structlog_texts(events), TOKEN, WRONG)


async def test_the_reference_server_without_a_token_accepts_anyone() -> None:
    """Without a token the server accepts an upgrade that offers none (the no-token default)."""
    with trio.fail_after(LIMIT):
        async with serving(token=None) as server:
            assert await upgrade_status(server, "/ws?session_id=a") == 101
            assert server.rejections == []


# -- the redaction helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"ws://user:{TOKEN}@host:8000/ws", f"ws://user:{MASK}@host:8000/ws"),
        (f"ws://:{TOKEN}@host/ws", f"ws://:{MASK}@host/ws"),
        (f"ws://user:p%40{TOKEN}@host/ws", f"ws://user:{MASK}@host/ws"),
        (f"ws://host/ws?session_id=s1&token={TOKEN}", f"ws://host/ws?session_id=s1&token={MASK}"),
        (f"wss://host/ws?access_token={TOKEN}#cell", f"wss://host/ws?access_token={MASK}#cell"),
        (f"http://host/?TOKEN={TOKEN}", f"http://host/?TOKEN={MASK}"),
        (f"ws://host/ws?token={TOKEN}&token=other", f"ws://host/ws?token={MASK}&token={MASK}"),
        (
            f"ws://host/ws?api_key={TOKEN}&password={TOKEN}",
            f"ws://host/ws?api_key={MASK}&password={MASK}",
        ),
        (f"ws://host/ws?token={TOKEN}%2Fx", f"ws://host/ws?token={MASK}"),
        (f"http://[bad?token={TOKEN}", f"http://[bad?token={MASK}"),
        ("ws://user@host/ws?session_id=s1", "ws://user@host/ws?session_id=s1"),
        ("ws://127.0.0.1:8000/ws", "ws://127.0.0.1:8000/ws"),
    ],
)
def test_redact_url_masks_passwords_and_secret_query_values(url: str, expected: str) -> None:
    """redact_url masks a userinfo password and every secret query value, and keeps the rest."""
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"ws://host/ws?auth_token={TOKEN}",
        f"ws://host/ws?refresh_token={TOKEN}",
        f"ws://host/ws?x-api-key={TOKEN}",
        f"ws://host/ws?a=1;token={TOKEN}",
    ],
)
def test_redact_url_masks_secret_looking_keys_too(url: str) -> None:
    """Keys that end in token, key or secret, and ';'-separated queries, are masked too."""
    assert TOKEN not in redact_url(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {MASK}"),
        (f"authorization=Bearer {TOKEN}", f"authorization=Bearer {MASK}"),
        (f"token={TOKEN}", f"token={MASK}"),
        (f"TOKEN={TOKEN}", f"TOKEN={MASK}"),
        (f"access_token={TOKEN}&x=1", f"access_token={MASK}&x=1"),
        (f'{{"token": "{TOKEN}"}}', f'{{"token": "{MASK}"}}'),
        (f"password: {TOKEN}", f"password: {MASK}"),
        (f"Marimo-Server-Token: {TOKEN}", f"Marimo-Server-Token: {MASK}"),
        (
            f"connecting to ws://u:{TOKEN}@h/ws failed",
            f"connecting to ws://u:{MASK}@h/ws failed",
        ),
        (
            f"GET /ws?session_id=1&token={TOKEN} HTTP/1.1",
            f"GET /ws?session_id=1&token={MASK} HTTP/1.1",
        ),
        ("closed with code 1011 (FAULT)", "closed with code 1011 (FAULT)"),
    ],
)
def test_redact_masks_secrets_in_free_text(text: str, expected: str) -> None:
    """redact masks token=, bearer values, JSON secret fields and URL passwords in free text."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        repr({"token": TOKEN}),
        repr([(b"authorization", f"Bearer {TOKEN}".encode())]),
    ],
)
def test_redact_masks_secrets_in_python_reprs(text: str) -> None:
    """A secret inside a dict or header-tuple repr is masked as well."""
    assert TOKEN not in redact(text)
