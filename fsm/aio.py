"""The connector for asyncio applications (trio's guest mode): the public path.

The code is in ``fsm/driver/_aio.py``, whose docstring says how it works::

    async with fsm.aio.open_connector("ws://127.0.0.1:8765") as conn:
        await conn.connect()
"""

from __future__ import annotations

from fsm.driver._aio import *  # noqa: F403
from fsm.driver._aio import __all__ as __all__
