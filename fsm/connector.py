"""The trio driver's public path: :func:`open_connector`, :class:`Connector`, :class:`Link`.

The code is in :mod:`fsm.driver` (``fsm/driver/_connector.py`` is the public API; the attempt
and its link, the sender, the heartbeat and the streams have modules of their own there).
"""

from __future__ import annotations

from fsm.driver._connector import Connector, DialGate, open_connector
from fsm.driver._link import Link
from fsm.driver._streams import MessageStream, TransitionStream
from fsm.driver._transport import StreamOpener, open_tcp

__all__ = [
    "Connector",
    "DialGate",
    "Link",
    "MessageStream",
    "StreamOpener",
    "TransitionStream",
    "open_connector",
    "open_tcp",
]
