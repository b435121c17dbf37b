"""A marimo notebook's cells, learned offline, before any server is contacted.

marimo names cells with a seeded generator (``CellIdGenerator(seed=42)``) as it registers
them in file order, so the ids are a pure function of the file: the first cells of any
notebook are ``"Hbol"``, ``"MJUe"``, ``"vblA"``, ... and a ``with app.setup:`` block is
``"setup"``. A ``marimo edit`` server loads the file the same way, so these are the ids
its ``kernel-ready`` frame lists, and edits keyed by them can be made before connecting.

marimo is imported lazily, inside :func:`notebook_cells`, so that importing :mod:`fsm`
never requires it (it is the optional ``marimo`` extra:
``pip install 'fsm-kernel-lifecycle[marimo]'``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["notebook_cells"]


def notebook_cells(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Return ``[(cell_id, code), ...]`` for the marimo notebook at ``path``, in order.

    Nothing in the notebook is run: marimo's own static loader parses the file (``.py``,
    or ``.md``/``.qmd``) exactly as ``marimo edit`` does when it opens it. As the server
    does, a file with no cells (empty, or only comments) yields one empty cell, and a
    cell that does not parse is kept with its source text.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a file marimo can open as a notebook (a directory, a
            plain Python script, an unsupported extension, an unreadable app).
        ImportError: marimo is not installed (``pip install 'fsm-kernel-lifecycle[marimo]'``).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(errno.ENOENT, "marimo notebook not found", str(file))
    if not file.is_file():
        raise ValueError(f"not a marimo notebook (not a regular file): {str(file)!r}")

    try:
        from marimo._ast.app import InternalApp
        from marimo._ast.cell import CellConfig
        from marimo._ast.load import load_app
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading a marimo notebook needs marimo: pip install 'fsm-kernel-lifecycle[marimo]'"
        ) from exc

    try:
        app = load_app(file)
    except FileNotFoundError:
        raise
    except Exception as exc:
        # NonMarimoPythonScriptError, MarimoFileError, "no notebook serializer found", ...
        raise ValueError(f"not a marimo notebook: {str(file)!r}: {exc}") from exc

    if app is None:
        # Empty or comment-only file: ``marimo edit`` opens it as a new notebook
        # with one empty cell, whose id is the generator's first ("Hbol").
        from marimo._ast.app import App

        internal = InternalApp(App())
        internal.cell_manager.register_cell(cell_id=None, code="", config=CellConfig())
    else:
        internal = InternalApp(app)
        internal.cell_manager.ensure_one_cell()

    manager = internal.cell_manager
    return [
        (str(cell_id), code)
        for cell_id, code in zip(manager.cell_ids(), manager.codes(), strict=True)
    ]
