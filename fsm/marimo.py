"""The marimo adapter's public path: :class:`MarimoProtocol`, :func:`run_cells`, ...

The code is in ``fsm/adapters/_marimo.py`` (whose docstring says how marimo is spoken); the
``fsm marimo`` command is in ``fsm/cli/_marimo.py``.
"""

from __future__ import annotations

from fsm.adapters._marimo import (
    CellOutput,
    MarimoProtocol,
    MarimoSession,
    RunCollector,
    RunResult,
    cell_output,
    notebook_cells,
    output_text,
    run_cells,
)
from fsm.cli._marimo import run_marimo_command

__all__ = [
    "CellOutput",
    "MarimoProtocol",
    "MarimoSession",
    "RunCollector",
    "RunResult",
    "cell_output",
    "notebook_cells",
    "output_text",
    "run_cells",
    "run_marimo_command",
]
