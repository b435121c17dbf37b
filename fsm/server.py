"""The reference kernel server's public path: :class:`KernelServer`, :class:`Faults`, ...

The code is in :mod:`fsm.servers.reference` (the HTTP front, the fault plan, the sessions and
the server, one module each; the package docstring is the theory of operation).
"""

from __future__ import annotations

from fsm.servers.reference import *  # noqa: F403
from fsm.servers.reference import __all__ as __all__
