"""Test helper: a real ``marimo edit --headless --no-token`` server in a subprocess.

Plain functions and an async context manager, usable from pytest-trio tests (no fixtures
here)::

    path = write_notebook(tmp_path / "nb.py", ["x = 1", "y = x + 1", "y * 10"])
    async with marimo_server(path) as server:
        token = await server.server_token()
        ...  # ws://127.0.0.1:{server.port}/ws?session_id=S&file=nb.py
        await server.stop()      # SIGTERM: open sockets see close code 1012
        await server.start()     # same port, same file, fresh sessions
        await server.kill()      # SIGKILL: open sockets see close code 1006

The server runs in its own process group; leaving the context manager (normally, by an
exception or by cancellation) always terminates the whole group, escalating to SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlencode

import httpx
import trio

__all__ = [
    "MarimoServer",
    "MarimoServerError",
    "free_port",
    "marimo_command",
    "marimo_server",
    "write_notebook",
]

HOST = "127.0.0.1"

_TOKEN_RE = re.compile(r"<marimo-server-token\b[^>]*\bdata-token=\"([^\"]*)\"")


class MarimoServerError(RuntimeError):
    """The marimo server did not start, or exited unexpectedly."""


def marimo_command() -> list[str]:
    """The command that runs marimo from this interpreter's environment."""
    exe = Path(sys.executable).parent / ("marimo.exe" if os.name == "nt" else "marimo")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "marimo"]


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_notebook(path: str | os.PathLike[str], codes: Sequence[str]) -> Path:
    """Write a marimo notebook file whose cells hold ``codes``, in order; return its path.

    Uses marimo's own code generator, so the file is exactly what ``marimo edit`` would
    save (cell signatures list refs and defs). Cell ids are assigned by marimo when the
    file is loaded: a seeded generator in file order ("Hbol", "MJUe", "vblA", ...).
    """
    target = Path(path)
    codes = list(codes)
    try:
        from marimo._ast.cell import CellConfig
        from marimo._ast.codegen import generate_filecontents
    except ImportError:  # pragma: no cover - fallback if marimo moves its codegen
        text = _handwritten_notebook(codes)
    else:
        text = generate_filecontents(codes, ["_"] * len(codes), [CellConfig() for _ in codes])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def _handwritten_notebook(codes: Sequence[str]) -> str:
    """The marimo file format, minimal: marimo re-derives refs/defs from each cell body."""
    parts = ["import marimo", "", "app = marimo.App()", ""]
    for code in codes:
        body = "\n".join(("    " + line) if line.strip() else "" for line in code.splitlines())
        parts += ["", "@app.cell", "def _():"]
        if body:
            parts.append(body)
        parts += ["    return", ""]
    parts += ["", 'if __name__ == "__main__":', "    app.run()", ""]
    return "\n".join(parts)


class MarimoServer:
    """One ``marimo edit`` server for one notebook, on a fixed port; can be restarted."""

    def __init__(
        self,
        notebook: str | os.PathLike[str],
        *,
        port: int | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.notebook = Path(notebook).resolve()
        self.port = free_port() if port is None else port
        self.host = HOST
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._own_log_dir: Path | None = None
        self._process: trio.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._starts = 0
        self.log_path: Path | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``"""
        return f"http://{self.host}:{self.port}"

    @property
    def file_key(self) -> str:
        """The ``file`` query parameter for ``/ws`` (the notebook's file name)."""
        return self.notebook.name

    def ws_url(self, session_id: str) -> str:
        """``ws://127.0.0.1:PORT/ws?session_id=S&file=NB.py``"""
        query = urlencode({"session_id": session_id, "file": self.file_key})
        return f"ws://{self.host}:{self.port}/ws?{query}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait until ``GET /health`` answers (bounded by
        ``startup_timeout``). On any failure or cancellation the process is killed."""
        if self.running:
            raise MarimoServerError("marimo server is already running")
        await self._cleanup()  # a previous, dead process: reap it and close its log
        cmd = [
            *marimo_command(),
            "edit",
            str(self.notebook),
            "--headless",
            "--no-token",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--skip-update-check",
            "--no-sandbox",
            *self.extra_args,
        ]
        self._starts += 1
        log_dir = self._ensure_log_dir()
        self.log_path = log_dir / f"marimo-{self.port}-{self._starts}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in _cleanup
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self._process = await trio.lowlevel.open_process(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=self._log_file,
                cwd=str(self.notebook.parent),
                env=env,
                start_new_session=True,  # own process group, signalled as a whole
            )
            await self._wait_healthy()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._terminate(signal.SIGKILL)
                await self._cleanup()
            raise

    async def stop(self) -> None:
        """Terminate gracefully (SIGTERM), wait; SIGKILL after ``stop_timeout``."""
        with trio.CancelScope(shield=True):
            await self._terminate(signal.SIGTERM)

    async def kill(self) -> None:
        """Simulate a crash: SIGKILL the server, wait, and sweep its process group."""
        with trio.CancelScope(shield=True):
            await self._terminate(signal.SIGKILL)

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port, for the same notebook."""
        await self.stop()
        await self.start()

    async def aclose(self) -> None:
        """Stop the server and remove the temporary log directory, if it owns one."""
        try:
            await self.stop()
        finally:
            if self._own_log_dir is not None:
                shutil.rmtree(self._own_log_dir, ignore_errors=True)
                self._own_log_dir = None

    # -- HTTP helpers --------------------------------------------------------------------

    async def server_token(self) -> str:
        """The skew-protection token (``Marimo-Server-Token`` header for POSTs) from ``GET /``.

        It is random per server process: fetch it again after a restart.
        """
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as client:
            response = await client.get("/")
            response.raise_for_status()
        match = _TOKEN_RE.search(response.text)
        if match is None:
            raise MarimoServerError("no <marimo-server-token data-token=...> in GET /")
        return match.group(1)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the current server log (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-max_chars:]

    # -- internals -------------------------------------------------------------------------

    def _ensure_log_dir(self) -> Path:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            return self._log_dir
        if self._own_log_dir is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="marimo-server-"))
        return self._own_log_dir

    async def _wait_healthy(self) -> None:
        process = self._process
        assert process is not None
        try:
            with trio.fail_after(self.startup_timeout):
                async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
                    while True:
                        if process.returncode is not None:
                            raise MarimoServerError(
                                f"marimo exited with code {process.returncode} before "
                                f"answering /health:\n{self.log_tail()}"
                            )
                        with contextlib.suppress(httpx.TransportError):
                            response = await client.get("/health")
                            if response.status_code == 200:
                                return
                        # Waiting on an external process: polling is the only option.
                        await trio.sleep(0.05)
        except trio.TooSlowError:
            raise MarimoServerError(
                f"marimo did not answer /health within {self.startup_timeout}s:\n{self.log_tail()}"
            ) from None

    def _signal_group(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        # start_new_session=True: the process group id is the server's pid. The group
        # id stays reserved while any member lives, so this never hits a stranger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    async def _terminate(self, sig: signal.Signals) -> None:
        """Signal the server, wait up to ``stop_timeout``, escalate to SIGKILL, reap it,
        then make sure none of its descendants survives.

        marimo starts each session's kernel with ``setsid`` (its own process group), so
        the group signal does not reach it; kernels are found through ``/proc`` before
        signalling. They exit by themselves when the server dies; whatever still runs
        after a short grace period is killed by pid (checked against its start time).
        """
        process = self._process
        if process is None:
            return
        descendants = _descendants(process.pid)
        try:
            if process.returncode is None:
                if sig == signal.SIGKILL:
                    # Only the server, as a crash would; the rest is swept below.
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(sig)
                else:
                    self._signal_group(sig)
                with trio.move_on_after(self.stop_timeout):
                    await process.wait()
                if process.returncode is None:
                    self._signal_group(signal.SIGKILL)
                    await process.wait()
        finally:
            self._signal_group(signal.SIGKILL)
            await self._cleanup()
            await _reap_descendants(descendants, grace=2.0)

    async def _cleanup(self) -> None:
        """Forget the process (killing and reaping it if it still runs); close its log."""
        process = self._process
        if process is not None:
            if process.returncode is None:
                self._signal_group(signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await process.wait()
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process from ``/proc``; None if gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[1]), fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _descendants(root: int) -> dict[int, int]:
    """All live descendants of ``root`` as {pid: start time} (Linux; {} elsewhere)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in pids:
        stat = _proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append((pid, stat[2]))
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for pid, start in children.get(stack.pop(), []):
            if pid not in found:
                found[pid] = start
                stack.append(pid)
    return found


def _still_running(pid: int, start: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start and stat[1] not in ("Z", "X")


async def _reap_descendants(descendants: dict[int, int], *, grace: float) -> None:
    """Wait up to ``grace`` seconds for these processes to exit, then SIGKILL the rest.

    They are not our children (their parent was the server), so they cannot be waited
    for: poll ``/proc``. The start time guards against a recycled pid.
    """
    if not descendants:
        return
    with trio.CancelScope(shield=True):
        with trio.move_on_after(grace):
            while any(_still_running(pid, start) for pid, start in descendants.items()):
                await trio.sleep(0.05)
        for pid, start in descendants.items():
            if _still_running(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def marimo_server(
    notebook: str | os.PathLike[str],
    *,
    port: int | None = None,
    startup_timeout: float = 60.0,
    stop_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
    log_dir: str | os.PathLike[str] | None = None,
) -> AsyncIterator[MarimoServer]:
    """Start a marimo server for ``notebook`` and yield it; always kill it on exit."""
    server = MarimoServer(
        notebook,
        port=port,
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        extra_args=extra_args,
        log_dir=log_dir,
    )
    try:
        await server.start()
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.aclose()
