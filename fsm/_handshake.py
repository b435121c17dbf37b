"""What a WebSocket upgrade request must carry, for the servers that read requests first.

The reference server and the gateway read a request head themselves (to route,
authenticate and refuse) before handing an upgrade to trio-websocket. An upgrade that
wsproto would refuse must be refused before that hand-over: trio-websocket 0.12.2's
``wrap_server_stream()`` otherwise waits forever for a request it never gets.
Headers are given lower-cased, repeated ones joined with ``", "``.
"""

from __future__ import annotations

from collections.abc import Mapping


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether the request asks to switch to WebSocket (``Connection: Upgrade``)."""
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "upgrade" in connection and headers.get("upgrade", "").lower() == "websocket"


def is_valid_websocket(method: str, headers: Mapping[str, str]) -> bool:
    """Whether wsproto will accept this upgrade request (RFC 6455 section 4.2.1)."""
    return (
        method == "GET"
        and is_upgrade(headers)
        and headers.get("sec-websocket-version") == "13"
        and bool(headers.get("sec-websocket-key"))
        and "host" in headers
    )
