"""``fsm marimo NOTEBOOK --url URL --set CELL=CODE ...``: the marimo adapter from the shell.

Reads the notebook's cells offline (:func:`~fsm.marimo.notebook_cells`), makes the
edits lazily on a connector with a :class:`~fsm.marimo.MarimoProtocol`, connects,
and prints the outputs of the runs the edits start, until they have all completed.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from fsm.adapters._marimo import MarimoProtocol, RunCollector, notebook_cells
from fsm.core._redact import describe, redact, redact_url

if TYPE_CHECKING:
    import argparse

    from fsm.adapters._base import AdapterLink
    from fsm.core._buffer import FlushBatch

__all__ = ["run_marimo_command"]


class _CommandError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _resolve_edits(
    edits: list[str], cells: list[tuple[str, str]], notebook: str
) -> list[tuple[str, str]]:
    ids = [cell_id for cell_id, _ in cells]
    resolved = []
    for item in edits:
        cell, sep, code = item.partition("=")
        cell = cell.strip()
        if not sep or not cell:
            raise _CommandError(f"--set expects CELL=CODE, got {item!r}", 2)
        if cell in ids:
            resolved.append((cell, code))
        elif cell.isdigit() and 1 <= int(cell) <= len(ids):
            resolved.append((ids[int(cell) - 1], code))
        else:
            listing = ", ".join(f"{n}={cell_id}" for n, cell_id in enumerate(ids, start=1))
            raise _CommandError(
                f"unknown cell {cell!r} in {notebook}; valid cells (index=id): {listing}", 2
            )
    return resolved


def run_marimo_command(args: argparse.Namespace) -> int:
    """``fsm marimo NOTEBOOK --url URL --set CELL=CODE ...``: edit lazily, connect, print outputs.

    Prints one line per cell output (``cell_id mimetype value``; a JSON object per
    line with ``--json``) until the run ends. Returns 0 on success, 1 when the server
    cannot be reached, refuses, shuts down or the outputs do not arrive within
    ``--timeout``, and 2 for a usage error: a bad ``--set``, a notebook that is missing
    or is not a marimo notebook.
    """
    import sys

    import trio

    try:
        return trio.run(_run_command, args)
    except _CommandError as exc:
        print(f"fsm marimo: error: {exc}", file=sys.stderr)
        return exc.code


async def _run_command(args: argparse.Namespace) -> int:
    import sys

    import trio

    from fsm.adapters._base import normalise_url
    from fsm.core._errors import ConnectionFailed
    from fsm.core._policy import RetryPolicy
    from fsm.core._types import CloseReason, ConnState
    from fsm.driver._connector import open_connector

    notebook = str(args.notebook)
    try:
        cells = notebook_cells(notebook)
    except FileNotFoundError:
        raise _CommandError(f"notebook not found: {notebook}", 2) from None
    except ValueError as exc:  # not a marimo notebook: a wrong argument too
        raise _CommandError(str(exc), 2) from None
    edits = _resolve_edits(list(args.edits), cells, notebook)
    try:
        url = normalise_url(args.url)
    except ValueError as exc:
        raise _CommandError(str(exc), 2) from None
    policy = RetryPolicy(max_attempts=args.max_attempts, connect_timeout=15.0)
    class CommandProtocol(MarimoProtocol):
        """Tells the command when the flush (entering OPEN) has been sent."""

        def __init__(self, file: str) -> None:
            super().__init__(file)
            self.flushed = trio.Event()

        async def flush(self, link: AdapterLink, batch: FlushBatch) -> None:
            await super().flush(link, batch)
            self.flushed.set()

    protocol = CommandProtocol(os.path.abspath(notebook))
    where = redact_url(url)

    async with open_connector(url, protocol=protocol, policy=policy) as conn:
        messages = conn.messages()
        for cell_id, code in edits:
            conn.edit(cell_id, code)
        changes = conn.transitions()
        failure: ConnectionFailed | None = None
        async with trio.open_nursery() as watch:
            watch.start_soon(_announce_retries, changes, where, policy)
            try:
                await conn.connect()
            except ConnectionFailed as exc:
                failure = exc
            watch.cancel_scope.cancel()
        if failure is not None:
            cause = f" (last cause: {redact(describe(failure.cause))})" if failure.cause else ""
            if failure.reason is CloseReason.GAVE_UP:
                raise _CommandError(
                    f"could not reach marimo at {where}: gave up after {failure.attempts} "
                    f"attempt{'s' if failure.attempts != 1 else ''}{cause}"
                ) from None
            if failure.reason is CloseReason.REJECTED:
                raise _CommandError(f"marimo at {where} refused the connection{cause}") from None
            raise _CommandError(f"marimo at {where} closed the connection{cause}") from None

        outcome: str | None = None
        with trio.move_on_after(args.timeout):
            async with trio.open_nursery() as nursery:

                async def watch_closed() -> None:
                    nonlocal outcome
                    await conn.wait_for(ConnState.CLOSED)
                    outcome = "closed"
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_closed)
                await protocol.flushed.wait()
                if protocol.session(conn.session_id).runs == 0:
                    outcome = "nothing"
                else:
                    outcome = await _print_outputs(messages, json_lines=args.json)
                nursery.cancel_scope.cancel()
        if outcome == "nothing":
            print(
                "fsm marimo: the kernel was already running and there were no edits: "
                "nothing to run",
                file=sys.stderr,
            )
            return 0
        if outcome is None:
            raise _CommandError(f"no completed run within {args.timeout:g} s")
        if outcome == "closed":
            raise _CommandError(
                f"the connection to marimo at {where} closed before the run completed"
            )
        return 0


async def _announce_retries(changes: Any, where: str, policy: Any) -> None:
    """Say once, at the first failed attempt, that the command keeps trying and how long."""
    import sys

    async for change in changes:
        if change.attempt >= 1 and change.delay is not None:
            waits = sum(policy.delays())
            print(
                f"fsm marimo: cannot reach marimo at {where} yet ({change.cause}); retrying "
                f"up to {policy.max_attempts} attempts, for about {waits:.0f} s of waits plus "
                f"at most {policy.connect_timeout:g} s per attempt (--max-attempts sets the "
                f"limit; Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
            return


async def _print_outputs(messages: Any, *, json_lines: bool) -> str:
    """Print the outputs and console lines of the runs started by this connection, as
    they arrive, until they complete (a :class:`RunCollector` decides which count)."""
    collector = RunCollector()
    printed = 0
    async for frame in messages:
        done = collector.feed(frame)
        for shown in collector.result.outputs[printed:]:
            if json_lines:
                print(json.dumps({"cell_id": shown.cell_id, "channel": shown.channel,
                                  "mimetype": shown.mimetype, "value": shown.data}),
                      flush=True)
            else:
                kind = shown.mimetype if shown.channel == "output" else shown.channel
                print(f"{shown.cell_id} {kind} {shown.text}".rstrip(), flush=True)
        printed = len(collector.result.outputs)
        if done:
            return "completed"
    return "closed"
