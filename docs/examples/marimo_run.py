"""Run edited cells on a real marimo server and print this run's outputs, then end.

Starts ``marimo edit`` on a free port itself (the connector's retries wait for it to
come up), edits a cell before connecting, collects the run's outputs and console lines
with ``fsm.marimo.run_cells``, and stops the server.
"""

import functools
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# --8<-- [start:imports]
import trio

import fsm
from fsm.marimo import MarimoProtocol, notebook_cells, run_cells

# --8<-- [end:imports]
NOTEBOOK = '''\
import marimo

app = marimo.App()


@app.cell
def _():
    x = 1
    return (x,)


@app.cell
def _(x):
    print("x is", x)
    y = x * 10
    return (y,)


@app.cell
def _(y):
    y + 1
    return


if __name__ == "__main__":
    app.run()
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --8<-- [start:run]
# marimo's kernel takes a few seconds to start: allow for it in each attempt.
POLICY = fsm.RetryPolicy(connect_timeout=15.0, initial_delay=0.5, max_delay=2.0)


async def run(url: str, notebook: Path) -> None:
    first, second, third = (cell_id for cell_id, _ in notebook_cells(notebook))
    async with fsm.open_connector(url, protocol=MarimoProtocol(file=str(notebook)),
                                  policy=POLICY) as conn:
        with trio.fail_after(60):
            # Edits the cell (NOT_STARTED: buffered), connects, and waits for the run
            # the flush starts to complete: outputs and console of this run only.
            result = await run_cells(conn, {first: "x = 4"})
    for shown in result.outputs:
        print(shown.cell_id, shown.channel, shown.text)
    assert result.console(second) == "x is 4\n"
    assert result.output(third) == "41"
# --8<-- [end:run]


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        notebook = Path(folder) / "nb.py"
        notebook.write_text(NOTEBOOK)
        port = free_port()
        command = [sys.executable, "-m", "marimo", "edit", str(notebook), "--headless",
                   "--no-token", "--port", str(port), "--skip-update-check"]
        async with trio.open_nursery() as nursery:
            # The server's own chatter is not this example's output.
            quiet = functools.partial(trio.run_process, command, check=False,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = await nursery.start(quiet)
            try:
                await run(f"http://127.0.0.1:{port}", notebook)
            finally:
                server.terminate()
                with trio.move_on_after(10) as waited:
                    await server.wait()
                if waited.cancelled_caught:
                    server.kill()


trio.run(main)
print("marimo run: ok")
