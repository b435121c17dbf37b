"""The reference server's HTTP front: request heads read with h11, replies written with h11.

Real servers on 127.0.0.1; raw TCP clients send exactly the bytes each test is about.
"""

from __future__ import annotations

import h11
import trio

from fsm.server import Faults, KernelServer

LIMIT = 10.0


async def exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` one write each, then return everything until the server hangs up."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for chunk in chunks:
            await stream.send_all(chunk)
            await trio.lowlevel.checkpoint()
        received = []
        while data := await stream.receive_some():
            received.append(data)
    return b"".join(received)


def parse_response(raw: bytes) -> tuple[h11.Response, bytes]:
    """The response head and body, parsed by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    head = client.next_event()
    assert isinstance(head, h11.Response)
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return head, body


async def test_a_head_split_across_writes_is_read_whole() -> None:
    """A request head that arrives a few bytes at a time is still one request: /health 200."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    chunks = [request[i : i + 5] for i in range(0, len(request), 5)]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(KernelServer().serve)
            head, body = parse_response(await exchange(server.port, chunks))
            await server.shutdown()
    assert head.status_code == 200 and body == b'{"status":"healthy"}'
    assert (b"content-length", b"20") in head.headers


async def test_a_request_h11_refuses_gets_400_and_is_no_handshake() -> None:
    """An HTTP/1.1 request without Host, and garbage, are answered 400 before any routing."""
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(KernelServer().serve)
            no_host = await exchange(server.port, [b"GET /ws HTTP/1.1\r\nUpgrade: x\r\n\r\n"])
            garbage = await exchange(server.port, [b"\x16\x03\x01 not http at all\r\n\r\n"])
            await server.shutdown()
    for raw in (no_host, garbage):
        head, body = parse_response(raw)
        assert head.status_code == 400 and body == b'{"error":"bad request"}'
    assert server.handshakes == 0 and server.rejections == []


async def test_an_oversized_head_gets_400() -> None:
    """A request head past 64 KiB is refused with 400 instead of being buffered on."""
    # Unterminated, so the server has read every byte when it answers (else its close
    # would reset the connection and lose the answer).
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 66_000
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(KernelServer().serve)
            head, _ = parse_response(await exchange(server.port, [request]))
            await server.shutdown()
    assert head.status_code == 400


async def test_http_200_fault_is_a_complete_plain_response() -> None:
    """The ``http_200`` fault answers an upgrade with a well-formed 200 (no 101), then closes."""
    upgrade = (
        b"GET /ws?session_id=s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(KernelServer(faults=Faults(http_200=True)).serve)
            head, body = parse_response(await exchange(server.port, [upgrade]))
            await server.shutdown()
    assert head.status_code == 200 and body == b"not a websocket\n"
    assert server.handshakes == 1 and server.connections_opened == 0
