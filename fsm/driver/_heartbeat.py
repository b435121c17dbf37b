"""The heartbeat: a ping every ``heartbeat_interval``, a pong within ``heartbeat_timeout``.

It runs beside the reader and the sender while a link is open. A pong that does not
come in time means the connection is dead even if TCP has not noticed: the link is
lost (``drop``) and the serving nursery cancelled, so the reconnect starts at once
rather than after the operating system's own time-outs. A close is the reader's to
report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
import trio_websocket

if TYPE_CHECKING:
    from fsm.driver._host import Host
    from fsm.driver._link import Link

__all__ = ["run_heartbeat"]


async def run_heartbeat(
    connector: Host,
    link: Link,
    ws: trio_websocket.WebSocketConnection,
    done: trio.CancelScope,
) -> None:
    """Ping ``ws`` until the link ends; a missing pong loses the link and ends ``done``."""
    assert connector.heartbeat_interval is not None
    try:
        while True:
            await trio.sleep(connector.heartbeat_interval)
            with trio.move_on_after(connector.heartbeat_timeout) as waited:
                await ws.ping()
            if waited.cancelled_caught:
                link.lost(f"no pong within {connector.heartbeat_timeout:g} s")
                done.cancel()
                return
    except trio_websocket.ConnectionClosed:
        return  # the reader reports how it closed
