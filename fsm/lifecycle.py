"""The sans-IO core's public path: :class:`ConnectionLifecycle`, its effects, its events.

The code is in :mod:`fsm.core` (``fsm/core/_lifecycle.py``, whose docstring is the theory of
operation; the effects are in ``fsm/core/_effects.py``, the machine in ``fsm/core/_machine.py``).
"""

from __future__ import annotations

from fsm.core._lifecycle import *  # noqa: F403
from fsm.core._lifecycle import __all__ as __all__
