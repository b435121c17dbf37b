"""Protocol adapters' public path: :class:`KernelProtocol`, :class:`ReferenceProtocol`, ...

The code is in :mod:`fsm.adapters` (``fsm/adapters/_base.py``: the hooks an adapter implements
and the small :class:`AdapterLink` interface it sees; ``fsm/adapters/_reference.py``: the
reference protocol).
"""

from __future__ import annotations

from fsm.adapters import _base, _reference
from fsm.adapters._base import *  # noqa: F403
from fsm.adapters._reference import *  # noqa: F403

__all__ = _base.__all__ + _reference.__all__
