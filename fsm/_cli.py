"""The ``fsm`` command: ``demo`` (the main job), ``serve``, ``schedule`` and ``diagrams``.

This is an application, so unlike the library it configures structlog (only when
a command runs, never on import).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from fsm._policy import RetryPolicy


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name it was created for, so the demo can filter."""

    def __init__(self, file: TextIO | None = None, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name or ""


def configure_logging(
    *, json_lines: bool, stream: TextIO, hide: frozenset[str] = frozenset()
) -> None:
    """Print structured log lines: coloured on a terminal, JSON lines with ``json_lines``."""

    def factory(*args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(stream, args[0] if args else None)

    def drop_hidden(logger: Any, method: str, event_dict: Any) -> Any:
        if getattr(logger, "name", "") in hide:
            raise structlog.DropEvent
        return event_dict

    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
    structlog.configure(
        processors=[
            drop_hidden,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f" if not json_lines else "iso"),
            renderer,
        ],
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def format_schedule(policy: RetryPolicy) -> str:
    """The retry schedule as a Markdown table (used by ``fsm schedule`` and the docs)."""
    rows = [
        "| after failed attempt | nominal wait (s) | with full jitter (s) | elapsed, at most (s) |",
        "|---:|---:|---:|---:|",
    ]
    elapsed = 0.0
    for failures, delay in enumerate(policy.delays(), start=1):
        elapsed += delay
        low = delay * (1 - policy.jitter)
        rows.append(f"| {failures} | {delay:.3f} | {low:.3f} to {delay:.3f} | {elapsed:.1f} |")
    rows.append(
        f"| {policy.max_attempts} | gives up: CLOSED(GAVE_UP) | | {elapsed:.1f} + "
        f"{policy.max_attempts} x connect_timeout |"
    )
    return "\n".join(rows)


def _cmd_schedule(args: argparse.Namespace) -> int:
    policy = RetryPolicy(max_attempts=args.max_attempts)
    print(f"Retry schedule of RetryPolicy(max_attempts={policy.max_attempts}) "
          f"(initial {policy.initial_delay} s, x{policy.multiplier}, cap {policy.max_delay} s, "
          f"jitter {policy.jitter}):\n")
    print(format_schedule(policy))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from fsm._demo import run_demo

    configure_logging(json_lines=args.json, hide=frozenset({"fsm.server"}), stream=sys.stdout)
    started = time.monotonic()
    summary = trio.run(run_demo, args.failures, random.Random(args.seed))
    summary["seconds"] = round(time.monotonic() - started, 2)
    if args.json:
        print(json.dumps({"event": "summary", **summary}))
    else:
        print("\nSummary")
        for key, value in summary.items():
            print(f"  {key:<22} {value}")
    return 0 if summary.get("ok") else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from fsm.server import main as serve_main

    configure_logging(json_lines=args.json, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve_main, args.port, args.host, args.token)
    return 0


def _cmd_diagrams(args: argparse.Namespace) -> int:
    from fsm._diagrams import GraphvizNotFound, write_diagrams

    try:
        paths = write_diagrams(args.out, svg=not args.no_svg)
    except GraphvizNotFound as exc:
        print(f"fsm diagrams: error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsm",
        description="A kernel connection as an explicit finite-state machine, driven by trio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run a lazy client through the whole lifecycle against an in-process server"
    )
    demo.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    demo.add_argument("--failures", type=int, default=25,
                      help="attempts before giving up in the give-up scene (default 25)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the back-off jitter")
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser("serve", help="run the reference kernel server")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--token", default=None, help="require this token from clients")
    serve.add_argument("--json", action="store_true", help="log JSON lines")
    serve.set_defaults(func=_cmd_serve)

    schedule = sub.add_parser("schedule", help="print the default retry schedule")
    schedule.add_argument("--max-attempts", type=int, default=25)
    schedule.set_defaults(func=_cmd_schedule)

    diagrams = sub.add_parser("diagrams", help="generate the lifecycle diagrams")
    diagrams.add_argument("--out", default="diagrams", help="output folder (default diagrams/)")
    diagrams.add_argument("--no-svg", action="store_true", help="skip the SVG (needs Graphviz)")
    diagrams.set_defaults(func=_cmd_diagrams)

    marimo = sub.add_parser(
        "marimo",
        help="lazily open a notebook served by marimo, apply edits, run them, print outputs",
    )
    marimo.add_argument("notebook", help="the notebook file the marimo server serves")
    marimo.add_argument("--url", required=True, help="the marimo server, e.g. http://127.0.0.1:2718")
    marimo.add_argument("--set", dest="edits", action="append", default=[], metavar="CELL=CODE",
                        help="replace a cell's code before connecting (cell id or 1-based index)")
    marimo.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the outputs (default 60)")
    marimo.add_argument("--max-attempts", type=int, default=25)
    marimo.add_argument("--json", action="store_true", help="log JSON lines")
    marimo.set_defaults(func=_cmd_marimo)
    return parser


def _cmd_marimo(args: argparse.Namespace) -> int:
    try:
        from fsm.marimo import run_marimo_command
    except ImportError as exc:
        print(f"fsm marimo needs the marimo extra: pip install 'fsm[marimo]' ({exc})",
              file=sys.stderr)
        return 2
    configure_logging(json_lines=args.json, stream=sys.stderr)
    return run_marimo_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except ValueError as exc:
        print(f"fsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result
