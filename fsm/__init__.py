"""fsm: a client's connection to a kernel server as an explicit finite-state machine.

The sans-IO core (:class:`ConnectionLifecycle`) imports neither trio nor
trio-websocket; the trio driver (:func:`open_connector`) and the reference
server are imported on first use, so ``import fsm`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsm.core._buffer import EditBuffer, FlushBatch, FlushFrame
from fsm.core._errors import (
    ConnectionFailed,
    EditBufferFull,
    EditTooLarge,
    InvalidTransition,
    LifecycleError,
    NotConnected,
    RequestFailed,
)
from fsm.core._frames import Frame
from fsm.core._lifecycle import (
    Backoff,
    ConnectionLifecycle,
    Dial,
    Effect,
    Flush,
    HangUp,
    SendEdit,
    TransitionLogger,
)
from fsm.core._policy import RetryPolicy
from fsm.core._types import CloseReason, ConnState, Phase, Transition

if TYPE_CHECKING:
    from fsm.adapters._base import KernelProtocol
    from fsm.adapters._reference import ReferenceProtocol
    from fsm.driver._connector import Connector, open_connector

__all__ = [
    "Backoff",
    "CloseReason",
    "ConnState",
    "ConnectionFailed",
    "ConnectionLifecycle",
    "Connector",
    "Dial",
    "EditBuffer",
    "EditBufferFull",
    "EditTooLarge",
    "Effect",
    "Flush",
    "FlushBatch",
    "FlushFrame",
    "Frame",
    "HangUp",
    "InvalidTransition",
    "KernelProtocol",
    "LifecycleError",
    "NotConnected",
    "Phase",
    "ReferenceProtocol",
    "RequestFailed",
    "RetryPolicy",
    "SendEdit",
    "Transition",
    "TransitionLogger",
    "open_connector",
]

__version__ = "0.1.0"

# The trio driver's names, imported on first access (PEP 562) so that the core
# and ``import fsm`` never pay for trio.
_LAZY = {
    "Connector": "fsm.driver._connector",
    "open_connector": "fsm.driver._connector",
    "KernelProtocol": "fsm.adapters._base",
    "ReferenceProtocol": "fsm.adapters._reference",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fsm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
