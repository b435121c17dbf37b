"""The ``fsm`` command: ``demo`` (the main job), ``serve``, ``schedule``, ``diagrams``, ``marimo``.

This is an application, so unlike the library it configures logging (only when a
command runs, never on import): log lines go to stderr, results to stdout.

Subcommands are added by the registrars in :data:`SUBCOMMANDS`, each a function that
takes the subparsers object, adds one parser and sets ``func`` (the command, taking
the parsed ``argparse.Namespace`` and returning the exit status). A registrar can live
in another module: list it as ``"package.module:function"`` and it is imported only
when the parser is built. Helpers for registrars: :func:`port`, :func:`positive_int`,
:func:`positive_float`, :func:`server_url`, :func:`configure_logging`, :func:`run_trio`.

Exit status: 0 success, 1 the command failed (one line on stderr says why),
2 a usage error (argparse's, or a value a command refused).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import random
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import structlog

from fsm.core._policy import RetryPolicy

#: What a registrar is given: the object ``add_subparsers()`` returned.
Subparsers = Any
Registrar = Callable[[Subparsers], None]


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name it was created for, so a command can filter."""

    def __init__(self, file: TextIO | None = None, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name or ""


def configure_logging(
    *, json_lines: bool, stream: TextIO | None = None, hide: frozenset[str] = frozenset()
) -> None:
    """Print structured log lines to ``stream`` (stderr by default): coloured on a
    terminal, JSON lines with ``json_lines``; loggers named in ``hide`` are dropped."""
    out = stream if stream is not None else sys.stderr

    def factory(*args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(out, args[0] if args else None)

    def drop_hidden(logger: Any, method: str, event_dict: Any) -> Any:
        if getattr(logger, "name", "") in hide:
            raise structlog.DropEvent
        return event_dict

    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False)
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


# -- argument types: a bad value is a usage error (exit 2) with a one-line message ---------


def port(*, allow_zero: bool) -> Callable[[str], int]:
    """An argparse type: a TCP port, 1-65535 (and 0, "any free port", if ``allow_zero``)."""
    low = 0 if allow_zero else 1

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
        if not low <= value <= 65535:
            hint = " (0 picks a free port)" if allow_zero else ""
            raise argparse.ArgumentTypeError(f"port must be {low}-65535{hint}, got {value}")
        return value

    return parse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def server_url(text: str) -> str:
    """An argparse type: a ws, wss, http or https URL with a host (suggests a scheme)."""
    from fsm.adapters._base import normalise_url

    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no scheme; did you mean http://{text} (or ws://{text})?"
        )
    try:
        return normalise_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError a failed bind raised, also from inside trio's ExceptionGroups."""
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        elif isinstance(current, socket.gaierror) or (
            isinstance(current, OSError)
            and current.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
        ):
            return current
    return None


def run_trio(func: Callable[..., Any], *args: Any) -> Any:
    """``trio.run(func, *args)``; a failure to bind becomes :class:`CommandFailed` (one
    line), Ctrl-C (also from inside a nursery, wrapped in a group) a quiet return of None."""
    import trio

    try:
        return trio.run(func, *args)
    except KeyboardInterrupt:
        return None
    except (OSError, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup):
            # Ctrl-C inside a nursery arrives wrapped in a group: still just Ctrl-C.
            _, rest = exc.split((KeyboardInterrupt, trio.Cancelled))
            if rest is None:
                return None
        bind = _bind_error(exc)
        if bind is None:
            raise
        if isinstance(bind, socket.gaierror):
            what = "the host name does not resolve to an address of this machine"
        else:
            what = {
                errno.EADDRINUSE: "the address is already in use (another server on that port?)",
                errno.EADDRNOTAVAIL: "the address is not available on this machine",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
            }.get(bind.errno or 0, bind.strerror or str(bind))
        raise CommandFailed(f"cannot listen: {what} [{bind.strerror}]") from None


class CommandFailed(Exception):
    """A command could not do its job; ``main`` prints ``fsm CMD: error: MESSAGE``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- the commands ------------------------------------------------------------------------


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


def _add_schedule(sub: Subparsers) -> None:
    schedule = sub.add_parser("schedule", help="print the default retry schedule")
    schedule.add_argument("--max-attempts", type=positive_int, default=25,
                          help="failed attempts before giving up (default 25)")
    schedule.set_defaults(func=_cmd_schedule)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fsm.cli._demo import run_demo

    if args.json:
        def say(text: str) -> None:
            print(json.dumps({"event": "narration", "text": text}), flush=True)
    else:
        def say(text: str) -> None:
            print(text, flush=True)

    # The narration and the summary are the results (stdout); the library's own
    # transition lines are logs (stderr), the server's are hidden.
    configure_logging(json_lines=args.json, hide=frozenset({"fsm.server"}))
    started = time.monotonic()
    summary = run_trio(run_demo, args.failures, random.Random(args.seed), say)
    if summary is None:
        return 1
    summary["seconds"] = round(time.monotonic() - started, 2)
    if args.json:
        print(json.dumps({"event": "summary", **summary}))
    else:
        print("\nSummary")
        for key, value in summary.items():
            print(f"  {key:<22} {value}")
    return 0 if summary.get("ok") else 1


def _add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo", help="run a lazy client through the whole lifecycle against an in-process server"
    )
    demo.add_argument("--json", action="store_true",
                      help="print JSON lines instead of text (narration on stdout, logs on stderr)")
    demo.add_argument("--failures", type=positive_int, default=25,
                      help="attempts before giving up in the give-up scene (default 25)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the back-off jitter (default 0)")
    demo.set_defaults(func=_cmd_demo)


def _cmd_serve(args: argparse.Namespace) -> int:
    from fsm.servers.reference._server import main as serve_main

    configure_logging(json_lines=args.json)
    run_trio(serve_main, args.port, args.host, args.token)
    return 0


def _add_serve(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve", help="run the reference kernel server (prints its URL, Ctrl-C stops it)"
    )
    serve.add_argument("--port", type=port(allow_zero=True), default=8765,
                       help="TCP port to listen on, 1-65535, or 0 for a free one (default 8765)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--token", default=None,
                       help="require this token from clients (query 'token' or a Bearer header)")
    serve.add_argument("--json", action="store_true", help="log JSON lines (on stderr)")
    serve.set_defaults(func=_cmd_serve)


def _cmd_diagrams(args: argparse.Namespace) -> int:
    from fsm.cli._diagrams import GraphvizNotFound, write_diagrams

    try:
        paths = write_diagrams(args.out, svg=not args.no_svg)
    except GraphvizNotFound as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    for path in paths:
        print(path)
    return 0


def _add_diagrams(sub: Subparsers) -> None:
    diagrams = sub.add_parser("diagrams", help="generate the lifecycle diagrams")
    diagrams.add_argument("--out", default="diagrams", help="output folder (default diagrams/)")
    diagrams.add_argument("--no-svg", action="store_true", help="skip the SVG (needs Graphviz)")
    diagrams.set_defaults(func=_cmd_diagrams)


def _cmd_marimo(args: argparse.Namespace) -> int:
    import os

    if not os.path.isfile(args.notebook):
        raise CommandFailed(f"notebook not found: {args.notebook}", 2)
    try:
        from fsm.cli._marimo import run_marimo_command
    except ImportError as exc:
        raise CommandFailed(
            f"fsm marimo needs the marimo extra: pip install 'fsm-kernel-lifecycle[marimo]' "
            f"({exc})", 2
        ) from None
    configure_logging(json_lines=args.json)
    return run_marimo_command(args)


def _add_marimo(sub: Subparsers) -> None:
    marimo = sub.add_parser(
        "marimo",
        help="lazily open a notebook served by marimo, apply edits, run them, print outputs",
    )
    marimo.add_argument("notebook", help="the notebook file the marimo server serves")
    marimo.add_argument("--url", required=True, type=server_url,
                        help="the marimo server, e.g. http://127.0.0.1:2718")
    marimo.add_argument("--set", dest="edits", action="append", default=[], metavar="CELL=CODE",
                        help="replace a cell's code before connecting (cell id or 1-based index)")
    marimo.add_argument("--timeout", type=positive_float, default=60.0,
                        help="seconds to wait for the outputs once connected (default 60)")
    marimo.add_argument("--max-attempts", type=positive_int, default=25,
                        help="failed connection attempts before giving up (default 25)")
    marimo.add_argument("--json", action="store_true",
                        help="print outputs as JSON lines (logs as JSON lines on stderr)")
    marimo.set_defaults(func=_cmd_marimo)


#: The subcommands, in the order ``fsm --help`` lists them: registrar functions, or
#: ``"module:function"`` strings for registrars imported when the parser is built.
SUBCOMMANDS: list[Registrar | str] = [
    _add_demo,
    _add_serve,
    _add_schedule,
    _add_diagrams,
    _add_marimo,
    "fsm.cli._gateway:add_gateway",
]


def _version() -> str:
    from fsm import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsm",
        description="A kernel connection as an explicit finite-state machine, driven by trio.",
    )
    parser.add_argument("--version", action="version", version=f"fsm {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for registrar in SUBCOMMANDS:
        if isinstance(registrar, str):
            module_name, _, function = registrar.partition(":")
            registrar = getattr(importlib.import_module(module_name), function)
        registrar(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = args.func(args)
    except CommandFailed as exc:
        print(f"fsm {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:
        print(f"fsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result
