"""The trio driver's public path: :func:`open_connector`, :class:`Connector`, :class:`Link`.

The code is in :mod:`fsm.driver` (``fsm/driver/_connector.py`` is the public API; the attempt
and its link, the sender, the heartbeat and the streams have modules of their own there).
"""

from __future__ import annotations

from fsm.driver import _connector, _link, _streams, _transport
from fsm.driver._connector import *  # noqa: F403
from fsm.driver._link import *  # noqa: F403
from fsm.driver._streams import *  # noqa: F403
from fsm.driver._transport import *  # noqa: F403

__all__ = _connector.__all__ + _link.__all__ + _streams.__all__ + _transport.__all__
