"""The lazy gateway's public path: :class:`Gateway` (DESIGN.md section 10).

The code is in :mod:`fsm.servers.gateway`; ``fsm gateway --upstream URL`` runs it.
"""

from __future__ import annotations

from fsm.servers.gateway import *  # noqa: F403
from fsm.servers.gateway import __all__ as __all__
