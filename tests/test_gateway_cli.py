"""``fsm gateway``: two lines on stdout once listening, SIGTERM shuts it down gracefully
and bounded (clients 1001, upstreams closed politely, exit 0), one-line usage errors."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio
import trio_websocket

from fsm.cli._main import main
from tests._connector_helpers import LIMIT, serving
from tests._gateway_helpers import RawClient


async def _lines(stream: trio.abc.ReceiveStream, count: int) -> tuple[list[str], bytes]:
    """The first ``count`` lines of ``stream``, and whatever followed them."""
    data = b""
    while data.count(b"\n") < count:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    *lines, rest = data.split(b"\n", count)
    return [line.decode() for line in lines], rest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_closes_clients_then_upstreams_and_exits_0(signum: int) -> None:
    """The command prints its client and page URLs (no token), serves, and on SIGTERM or
    SIGINT closes its client with 1001 and its upstream politely, then exits 0 within 10 s."""
    token = "cli-token-777"
    async with serving() as server:
        argv = [sys.executable, "-m", "fsm", "gateway", "--upstream", server.url,
                "--port", "0", "--token", token, "--initial-delay", "0.01",
                "--connect-timeout", "5"]
        proc = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            with trio.fail_after(LIMIT):
                (ws_url, page_url), rest = await _lines(proc.stdout, 2)
            host_port = ws_url.removeprefix("ws://").removesuffix("/ws")
            assert ws_url == f"ws://{host_port}/ws" and host_port.startswith("127.0.0.1:")
            assert page_url == f"http://{host_port}/"
            with trio.fail_after(LIMIT):
                url = f"{ws_url}?session_id=sig&token={token}"
                async with trio_websocket.open_websocket_url(url) as ws:
                    raw = RawClient(ws)
                    await raw.recv()
                    await raw.send("run", {"cell_id": "a"})
                    await raw.until("upstream", lambda d: d["state"] == "OPEN")
                    assert server.open_connections == 1
                    proc.send_signal(signum)
                    began = trio.current_time()
                    reason = await raw.closed()
                    assert reason.code == 1001
                await server.wait_until(lambda s: s.open_connections == 0)
            with trio.fail_after(10):
                await proc.wait()
            assert trio.current_time() - began < 10
            assert proc.returncode == 0
            out = rest + await _drain(proc.stdout)
            err = await _drain(proc.stderr)
            assert out == b""  # exactly two lines
            assert token.encode() not in err and b"client_closed" in err
            assert b"sig" in err  # session-level events carry the session id
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gateway"], "--upstream"),
        (["gateway", "--upstream", "nohost"], "has no scheme"),
        (["gateway", "--upstream", "ws://127.0.0.1:1", "--port", "70000"], "port"),
        (["gateway", "--upstream", "ws://127.0.0.1:1", "--session-ttl", "-1"], "session-ttl"),
        (["gateway", "--upstream", "ws://127.0.0.1:1", "--marimo", "/no/such.py"],
         "notebook not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error is one line on stderr naming the problem, and exit status 2."""
    with pytest.raises(SystemExit) as exited:
        code = main(argv)
        raise SystemExit(code)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert message in last and last.startswith(("fsm gateway: error", "usage:", "fsm: error"))


def test_a_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Listening on a port already taken fails with one line saying so, exit status 1."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["gateway", "--upstream", "ws://127.0.0.1:1", "--port", str(port)])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1].startswith("fsm gateway: error: cannot listen")
