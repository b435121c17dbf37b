"""The marimo adapter's public path: :class:`MarimoProtocol`, :func:`run_cells`, ...

The code is in ``fsm/adapters/_marimo.py`` (whose docstring says how marimo is spoken); the
``fsm marimo`` command is in ``fsm/cli/_marimo.py``.
"""

from __future__ import annotations

from fsm.adapters import _marimo as _adapter
from fsm.adapters._marimo import *  # noqa: F403
from fsm.cli import _marimo as _command
from fsm.cli._marimo import *  # noqa: F403

__all__ = _adapter.__all__ + _command.__all__
