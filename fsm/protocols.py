"""Protocol adapters' public path: :class:`KernelProtocol`, :class:`ReferenceProtocol`, ...

The code is in :mod:`fsm.adapters` (``fsm/adapters/_base.py``: the hooks an adapter implements
and the small :class:`AdapterLink` interface it sees; ``fsm/adapters/_reference.py``: the
reference protocol).
"""

from __future__ import annotations

from fsm.adapters._base import (
    FATAL_CLOSE_CODES,
    FATAL_STATUSES,
    AdapterLink,
    AttemptFailed,
    AttemptRejected,
    KernelProtocol,
    Verdict,
    check_session_id,
    normalise_url,
    retry_after_seconds,
)
from fsm.adapters._reference import ReferenceProtocol

__all__ = [
    "FATAL_CLOSE_CODES",
    "FATAL_STATUSES",
    "AdapterLink",
    "AttemptFailed",
    "AttemptRejected",
    "KernelProtocol",
    "ReferenceProtocol",
    "Verdict",
    "check_session_id",
    "normalise_url",
    "retry_after_seconds",
]
