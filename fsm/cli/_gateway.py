"""``fsm gateway``: run the lazy gateway until SIGINT or SIGTERM (DESIGN.md section 10).

Once listening it prints exactly two lines on stdout, the client URL ``ws://HOST:PORT/ws``
and the page's URL ``http://HOST:PORT/`` (never a token); logs go to stderr.
SIGINT/SIGTERM close every client with 1001 and every upstream politely, within
``SHUTDOWN_LIMIT`` seconds, and the command exits 0.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from typing import TYPE_CHECKING

from fsm.cli._main import (
    CommandFailed,
    Subparsers,
    configure_logging,
    port,
    positive_float,
    positive_int,
    run_trio,
    server_url,
)
from fsm.core._policy import RetryPolicy

if TYPE_CHECKING:
    from fsm.servers.gateway import Gateway

#: How long a graceful shutdown may take before what is left is cancelled.
SHUTDOWN_LIMIT = 10.0


def add_gateway(sub: Subparsers) -> None:
    """Register ``fsm gateway`` (listed in ``fsm.cli._main.SUBCOMMANDS``)."""
    p = sub.add_parser(
        "gateway",
        help="serve the lazy gateway: one lazy upstream session per client session",
    )
    p.add_argument("--upstream", required=True, type=server_url,
                   help="the kernel server's URL, e.g. ws://127.0.0.1:8765 (no session id)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=port(allow_zero=True), default=8766,
                   help="TCP port, 1-65535, or 0 for a free one (default 8766)")
    p.add_argument("--token", default=None,
                   help="require this token from clients ('token' query or a Bearer header)")
    p.add_argument("--upstream-token", default=None,
                   help="the token the upstream kernel server requires")
    p.add_argument("--session-ttl", type=positive_float, default=120.0,
                   help="seconds a session outlives its client (default 120)")
    p.add_argument("--max-sessions", type=positive_int, default=None,
                   help="sessions held at most; past it the oldest detached is evicted")
    p.add_argument("--marimo", default=None, metavar="NOTEBOOK",
                   help="the upstream is 'marimo edit' serving NOTEBOOK: one shared session")
    p.add_argument("--max-attempts", type=positive_int, default=None,
                   help="upstream: failed attempts before giving up (default 25)")
    p.add_argument("--initial-delay", type=positive_float, default=None,
                   help="upstream: first back-off delay in seconds")
    p.add_argument("--max-delay", type=positive_float, default=None,
                   help="upstream: longest back-off delay in seconds")
    p.add_argument("--connect-timeout", type=positive_float, default=None,
                   help="upstream: seconds one attempt may take")
    p.add_argument("--json", action="store_true", help="log JSON lines (on stderr)")
    p.set_defaults(func=_cmd_gateway)


def policy_from(args: argparse.Namespace) -> RetryPolicy:
    """The upstream RetryPolicy the four policy options describe (defaults elsewhere)."""
    fields = {
        "max_attempts": args.max_attempts,
        "initial_delay": args.initial_delay,
        "max_delay": args.max_delay,
        "connect_timeout": args.connect_timeout,
    }
    return RetryPolicy(**{k: v for k, v in fields.items() if v is not None})


def _cmd_gateway(args: argparse.Namespace) -> int:
    from fsm.servers.gateway import Gateway

    if args.marimo is not None and not os.path.isfile(args.marimo):
        raise CommandFailed(f"notebook not found: {args.marimo}", 2)
    gateway = Gateway(
        args.upstream,
        token=args.token,
        upstream_token=args.upstream_token,
        marimo=args.marimo,
        policy=policy_from(args),
        session_ttl=args.session_ttl,
        max_sessions=args.max_sessions,
    )
    configure_logging(json_lines=args.json)
    run_trio(functools.partial(run_gateway, gateway, args.host, args.port))
    return 0


async def run_gateway(gateway: Gateway, host: str, port: int) -> None:
    """Serve ``gateway``, print its two URLs, and shut down gracefully on SIGINT/SIGTERM."""
    import trio  # here: building the ``fsm`` parser must not import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(gateway.serve, host, port))
            sys.stdout.write(f"{gateway.url}\n{gateway.page_url}\n")
            sys.stdout.flush()
            async for _ in signals:
                break
            with trio.move_on_after(SHUTDOWN_LIMIT):
                await gateway.shutdown()
            nursery.cancel_scope.cancel()
