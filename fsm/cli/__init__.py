"""The ``fsm`` command: ``schedule``, ``demo``, ``serve``, ``diagrams``, ``marimo``, ``gateway``.

``_main`` builds the parser and runs a subcommand (importing only what that one needs:
``fsm --help`` never imports trio); ``_demo``, ``_diagrams``, ``_marimo`` and
``_gateway`` are the heavier subcommands. The command configures its own output
(logs to stderr, results to stdout); the library prints nothing.
"""

from __future__ import annotations

from fsm.cli._main import main

__all__ = ["main"]
