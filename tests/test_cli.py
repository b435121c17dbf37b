"""The ``fsm`` command: validated arguments, usage errors exit 2, one-line failures."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import fsm
from fsm.cli._main import SUBCOMMANDS, build_parser, main, run_trio

ROOT = Path(__file__).resolve().parent.parent
HAS_MARIMO = all(importlib.util.find_spec(m) for m in ("marimo", "httpx"))


def fsm_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm", *args], capture_output=True, text=True,
        check=False, timeout=timeout, cwd=ROOT,
    )


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``fsm ARGV`` in process; assert it exits 2 and return its stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    return capsys.readouterr().err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_has_help() -> None:
    """fsm --help lists every subcommand with a help line, and every option explains itself."""
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"demo", "serve", "schedule", "diagrams", "marimo"} <= set(commands)
    assert len(commands) == len(SUBCOMMANDS)
    for name, sub in [("fsm", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("value", ["99999", "65536", "-1", "http"])
def test_a_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """fsm serve --port outside 0-65535 (or not a number) exits 2 saying what is allowed."""
    err = usage_error(capsys, "serve", "--port", value)
    assert "--port" in err
    assert "65535" in err or "not a port number" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["schedule", "--max-attempts", "0"], "must be >= 1"),
        (["demo", "--failures", "0"], "must be >= 1"),
        (["marimo", "nb.py", "--url", "http://h:1", "--timeout", "-3"], "positive number"),
        (["marimo", "nb.py"], "--url"),
        (["nope"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """A bad value, a missing required option or an unknown command exits 2 with a reason."""
    assert says in usage_error(capsys, *argv)


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """fsm alone prints the help on stderr and exits 2."""
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_a_url_without_a_scheme_suggests_one(capsys: pytest.CaptureFixture[str]) -> None:
    """--url 127.0.0.1:27181 is refused with the URL it probably meant."""
    err = usage_error(capsys, "marimo", "nb.py", "--url", "127.0.0.1:27181")
    assert "did you mean http://127.0.0.1:27181" in err


def test_a_missing_notebook_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """fsm marimo with a notebook that does not exist exits 2 and names it."""
    missing = tmp_path / "missing.py"
    assert main(["marimo", str(missing), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err == f"fsm marimo: error: notebook not found: {missing}\n"


def test_the_version_option() -> None:
    """fsm --version prints 'fsm VERSION' and exits 0."""
    result = fsm_command("--version")
    assert (result.returncode, result.stdout) == (0, f"fsm {fsm.__version__}\n")


def test_a_busy_port_is_a_one_line_error() -> None:
    """fsm serve on a port already in use exits 1 with one line on stderr, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = fsm_command("serve", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "fsm serve: error: cannot listen: the address is already in use "
        "(another server on that port?) [Address already in use]"
    ]
    assert result.stdout == ""


def test_ctrl_c_inside_a_nursery_is_a_quiet_exit() -> None:
    """A KeyboardInterrupt that trio wraps in an exception group (raised in a task) ends
    the command quietly, as a bare one does."""

    async def interrupted() -> None:
        async def task() -> None:
            raise KeyboardInterrupt

        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)

    assert run_trio(interrupted) is None


def test_a_host_that_does_not_resolve_is_a_one_line_error() -> None:
    """fsm serve --host with a name that does not resolve exits 1 with one line."""
    result = fsm_command("serve", "--port", "0", "--host", "no-such-host.invalid")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("fsm serve: error: cannot listen: the host name")


def test_diagrams_into_an_unwritable_folder_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """fsm diagrams --out under a file (not a folder) exits 1 with one line, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["diagrams", "--out", str(blocker / "sub"), "--no-svg"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fsm diagrams: error: cannot write to {blocker / 'sub'}")
    assert len(err.splitlines()) == 1


def test_serve_on_port_zero_prints_its_url_and_stops_on_ctrl_c() -> None:
    """fsm serve --port 0 listens on a free port, prints its URL on stdout, logs on stderr,
    and exits 0 on SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm", "serve", "--port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0/ws")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert out == ""
    assert '"event": "listening"' in err


@pytest.mark.skipif(not HAS_MARIMO, reason="needs the marimo extra")
def test_marimo_says_at_once_that_it_keeps_retrying(tmp_path: Path) -> None:
    """fsm marimo against a port where nothing listens says, at its first failed attempt and
    while still running, that it keeps retrying, how many times and for how long."""
    from marimo_server import free_port, write_notebook

    notebook = write_notebook(tmp_path / "nb.py", ["x = 1"])
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm", "marimo", str(notebook), "--url",
         f"http://127.0.0.1:{port}", "--max-attempts", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        assert proc.stderr is not None
        said, running = "", False
        for line in proc.stderr:
            if line.startswith("fsm marimo: cannot reach"):
                said = line
                running = proc.poll() is None
                break
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert said, err
    assert running  # said before the attempts ran out, not at the end
    assert f"127.0.0.1:{port}" in said and "retrying up to 3 attempts" in said
    assert proc.returncode == 1
    assert "gave up after 3 attempts" in err
    assert "Traceback" not in err
