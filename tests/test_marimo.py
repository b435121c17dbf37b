"""The marimo adapter and ``fsm marimo`` against a real ``marimo edit --headless`` server.

Each test that needs a server starts its own on a free 127.0.0.1 port (tests/marimo_server.py)
and stops it on the way out. Waits go through connector states and server frames, bounded
by ``trio.fail_after``; nothing sleeps to wait for a condition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "marimo", reason="the marimo tests need marimo: pip install -e '.[marimo]'"
)
pytest.importorskip(
    "httpx", reason="the marimo tests need httpx: pip install -e '.[marimo]'"
)

import httpx
import structlog
import trio
from marimo_server import MarimoServer, free_port, marimo_server, write_notebook

import fsm
from fsm.cli._main import main as cli_main
from fsm.core._frames import Frame
from fsm.marimo import MarimoProtocol, cell_output, notebook_cells, output_text
from fsm.protocols import AttemptFailed, AttemptRejected, Verdict

#: Bound on one test: a marimo server starts in 1-3 s and its kernel in about 2 s.
LIMIT = 90.0
#: The notebook of every test: cells Hbol, MJUe and vblA.
CODES = ["x = 1", "y = x + 1", "y * 10"]
#: Quick retries; marimo's kernel needs seconds before it is ready.
POLICY = fsm.RetryPolicy(
    max_attempts=400, initial_delay=0.05, max_delay=0.5, connect_timeout=30.0, min_uptime=0.5
)


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "nb.py", CODES)


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """The CLI configures structlog for its (captured) streams; put the previous one back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def next_value(messages: trio.MemoryReceiveChannel[Frame], cell_id: str) -> str:
    """The next output of ``cell_id`` that shows a value, as text."""
    async for frame in messages:
        found = cell_output(frame)
        if found is not None and found[0] == cell_id and found[2] not in ("", None):
            return output_text(found[1], found[2])
    raise AssertionError("the message stream ended")


# -- the protocol on its own -------------------------------------------------------------


def test_urls_keep_the_base_path_and_query() -> None:
    """The socket URL gets /ws, the session id, the file key and the URL's other parameters."""
    protocol = MarimoProtocol(file="/nb/a b.py")
    url = "https://host:2718/base/?access_token=x&file=other.py"
    assert protocol.websocket_url(url, "S") == (
        "wss://host:2718/base/ws?session_id=S&access_token=x&file=%2Fnb%2Fa+b.py"
    )
    assert protocol.http_url(url) == "https://host:2718/base"
    assert MarimoProtocol().websocket_url("http://h:1", "S") == "ws://h:1/ws?session_id=S"
    assert MarimoProtocol().file_key("http://h:1/?file=nb.py") == "nb.py"


def test_close_codes() -> None:
    """marimo's fatal codes and reasons reject, MARIMO_SHUTDOWN shuts down, the rest retry."""
    protocol = MarimoProtocol()
    assert protocol.classify_close(1000, "MARIMO_SHUTDOWN") is Verdict.SHUTDOWN
    for code in (1003, 1008, 3000, 3999):
        assert protocol.classify_close(code, None) is Verdict.REJECT
    assert protocol.classify_close(1000, "MARIMO_NO_FILE_KEY") is Verdict.REJECT
    for code in (1000, 1006, 1011, 1012, None):
        assert protocol.classify_close(code, None) is Verdict.RETRY
    assert protocol.classify_status(401) is Verdict.REJECT
    assert protocol.classify_status(503) is Verdict.RETRY


def test_output_rendering() -> None:
    """cell-op outputs are found and rendered as one line of text."""
    frame = Frame("cell-op", {"cell_id": "vblA", "output": {
        "channel": "output", "mimetype": "text/html", "data": "<pre class='text-xs'>60</pre>"}})
    assert cell_output(frame) == ("vblA", "text/html", "<pre class='text-xs'>60</pre>")
    assert output_text("text/html", "<pre class='text-xs'>60</pre>") == "60"
    assert output_text("application/json", "[1, 2]") == "[1, 2]"
    error = [{"type": "exception", "msg": "division by zero",
              "exception_type": "ZeroDivisionError"}]
    assert output_text("application/vnd.marimo+error", error) == (
        "ZeroDivisionError: division by zero"
    )
    assert cell_output(Frame("cell-op", {"cell_id": "vblA", "output": None})) is None
    assert cell_output(Frame("completed-run", {"run_id": "r"})) is None


class FakeLink:
    """The part of a Link the adapter uses, without a socket."""

    def __init__(self, url: str = "http://127.0.0.1:2718") -> None:
        self.session_id = "S"
        self.url = url
        self.context: dict[str, Any] = {}
        self.acked: list[int] = []

    def acknowledge(self, seq: int) -> None:
        self.acked.append(seq)


class FakeMarimo:
    """An httpx handler answering like marimo: records POSTs, answers with ``status``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.status = 200
        self.health = 200
        self.page = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/health":
            return httpx.Response(self.health, json={"status": "healthy"})
        if request.method == "GET" and request.url.path == "/":
            if self.page != 200:
                return httpx.Response(self.page, json={"detail": "File nope.py not found"})
            return httpx.Response(
                200, text='<marimo-server-token data-token="SECRET-TOKEN" hidden>')
        body = json.loads(request.content)
        self.posts.append((request.url.path, body, dict(request.headers)))
        return httpx.Response(self.status, json={"success": self.status == 200})


def ready(resumed: bool = False) -> Frame:
    return Frame("kernel-ready", {"cell_ids": ["a", "b"], "codes": ["x = 1", "x + 1"],
                                  "resumed": resumed, "kiosk": False})


async def prepared(server: FakeMarimo, file: str | None = None) -> tuple[MarimoProtocol, FakeLink]:
    protocol = MarimoProtocol(file, transport=httpx.MockTransport(server))
    link = FakeLink()
    await protocol.prepare(link)  # type: ignore[arg-type]
    return protocol, link


async def test_flush_instantiates_a_fresh_kernel_with_every_cell() -> None:
    """A fresh kernel gets every file cell, overlaid with the edits, new cells last."""
    server = FakeMarimo()
    protocol, link = await prepared(server)
    assert link.context["token"] == "SECRET-TOKEN"
    await protocol.on_ready(link, ready())  # type: ignore[arg-type]
    await protocol.flush(link, fsm.FlushBatch(1, {"new": "z = 3", "b": "x + 2"}))  # type: ignore[arg-type]
    path, body, headers = server.posts[-1]
    assert path == "/api/kernel/instantiate"
    assert list(body["codes"].items()) == [("a", "x = 1"), ("b", "x + 2"), ("new", "z = 3")]
    assert body["autoRun"] is True and body["objectIds"] == [] and body["values"] == []
    assert headers["marimo-session-id"] == "S"
    assert headers["marimo-server-token"] == "SECRET-TOKEN"
    assert link.acked == [1]

    # Edits while OPEN run; an empty flush after a reconnection sends nothing.
    await protocol.send_edit(link, fsm.SendEdit(2, "a", "x = 9"))  # type: ignore[arg-type]
    assert server.posts[-1][:2] == ("/api/kernel/run", {"cellIds": ["a"], "codes": ["x = 9"]})
    await protocol.on_ready(link, Frame("reconnected", {}))  # type: ignore[arg-type]
    await protocol.flush(link, fsm.FlushBatch(3, {}))  # type: ignore[arg-type]
    assert len(server.posts) == 2 and link.acked == [1, 2, 3]

    # A restarted server's fresh kernel gets the whole document, not only what is pending.
    await protocol.on_ready(link, ready())  # type: ignore[arg-type]
    await protocol.flush(link, fsm.FlushBatch(4, {"b": "x + 5"}))  # type: ignore[arg-type]
    assert server.posts[-1][0] == "/api/kernel/instantiate"
    assert list(server.posts[-1][1]["codes"].items()) == [
        ("a", "x = 9"), ("b", "x + 5"), ("new", "z = 3")]
    assert protocol.session("S").runs == 3


async def test_a_batch_of_several_frames_is_one_request_acking_every_frame() -> None:
    """HTTP has no frame limit: a batch of three frames is one POST of the merged codes,
    and each frame's seq is acknowledged once marimo answered."""
    server = FakeMarimo()
    protocol, link = await prepared(server)
    await protocol.on_ready(link, Frame("reconnected", {}))  # type: ignore[arg-type]
    frames = (
        fsm.FlushFrame(5, {"a": "x = 5"}, False),
        fsm.FlushFrame(6, {"b": "x + 6"}, False),
        fsm.FlushFrame(7, {"c": "y = 7"}, True),
    )
    await protocol.flush(link, fsm.FlushBatch(frames))  # type: ignore[arg-type]
    assert [(path, body["cellIds"]) for path, body, _ in server.posts] == [
        ("/api/kernel/run", ["a", "b", "c"])
    ]
    assert link.acked == [5, 6, 7]


async def test_an_older_code_is_never_sent_after_a_newer_one_was_acknowledged() -> None:
    """A cell's code under a seq below the one marimo acknowledged for it is left out of a
    request (the others go), so marimo never goes back to older code."""
    server = FakeMarimo()
    protocol, link = await prepared(server)
    await protocol.on_ready(link, Frame("reconnected", {}))  # type: ignore[arg-type]
    await protocol.send_edit(link, fsm.SendEdit(9, "a", "newest"))  # type: ignore[arg-type]
    await protocol.flush(link, fsm.FlushBatch(4, {"a": "older", "b": "fine"}))  # type: ignore[arg-type]
    assert server.posts[-1][1] == {"cellIds": ["b"], "codes": ["fine"]}
    assert protocol.session("S").document == {"a": "newest", "b": "fine"}
    assert link.acked == [9, 4]


async def test_one_http_request_at_a_time_across_links() -> None:
    """Two links of one adapter sending at once reach marimo one request after the other."""
    active: list[int] = []
    order: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(
                200, text='<marimo-server-token data-token="T" hidden>', json=None
            ) if request.url.path == "/" else httpx.Response(200, json={"status": "healthy"})
        active.append(1)
        assert len(active) == 1, "two requests in flight at once"
        await trio.sleep(0.01)
        order.append(json.loads(request.content)["codes"][0])
        active.pop()
        return httpx.Response(200, json={"success": True})

    protocol = MarimoProtocol(transport=httpx.MockTransport(handler))
    links = [FakeLink(), FakeLink()]
    for link in links:
        await protocol.prepare(link)  # type: ignore[arg-type]
        await protocol.on_ready(link, Frame("reconnected", {}))  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i, link in enumerate(links):
                edit = fsm.SendEdit(i + 1, f"c{i}", f"code {i}")
                nursery.start_soon(protocol.send_edit, link, edit)
    assert sorted(order) == ["code 0", "code 1"]
    assert protocol.http_requests == protocol.http_requests_done == 2


async def test_a_lost_instantiate_is_sent_again_then_run() -> None:
    """When an instantiate's answer was lost, the next flush instantiates and runs the batch."""
    server = FakeMarimo()
    protocol, link = await prepared(server)
    await protocol.on_ready(link, ready())  # type: ignore[arg-type]
    server.status = 503
    with pytest.raises(AttemptFailed, match="HTTP 503"):
        await protocol.flush(link, fsm.FlushBatch(1, {"a": "x = 2"}))  # type: ignore[arg-type]
    assert link.acked == []
    server.status = 200
    await protocol.on_ready(link, Frame("reconnected", {}))  # type: ignore[arg-type]
    await protocol.flush(link, fsm.FlushBatch(2, {"a": "x = 2"}))  # type: ignore[arg-type]
    assert [post[0] for post in server.posts] == [
        "/api/kernel/instantiate", "/api/kernel/instantiate", "/api/kernel/run"]
    assert link.acked == [2]


async def test_http_failures_are_classified_without_the_token() -> None:
    """5xx and 401 retry, other 4xx refuse, and no message carries the server token."""
    server = FakeMarimo()
    protocol, link = await prepared(server)
    await protocol.on_ready(link, ready(resumed=True))  # type: ignore[arg-type]
    for status, error in ((500, AttemptFailed), (401, AttemptFailed), (400, AttemptRejected)):
        server.status = status
        with pytest.raises(error) as caught:
            await protocol.send_edit(link, fsm.SendEdit(1, "a", "x"))  # type: ignore[arg-type]
        assert "SECRET-TOKEN" not in str(caught.value)
    server.status = 404
    with pytest.raises(ValueError, match="HTTP 404"):
        await protocol.request(link, "nope", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a marimo kernel endpoint"):
        await protocol.request(link, "../x", {})  # type: ignore[arg-type]
    await protocol.release(link)  # type: ignore[arg-type]
    assert "token" not in link.context and "client" not in link.context


async def test_prepare_refusals() -> None:
    """/health 5xx retries, 401 refuses, and an unknown file key (404) refuses for good."""
    server = FakeMarimo()
    server.health = 503
    with pytest.raises(AttemptFailed, match="HTTP 503"):
        await prepared(server)
    server.health = 401
    with pytest.raises(AttemptRejected, match="not authorized"):
        await prepared(server)
    server.health, server.page = 200, 404
    with pytest.raises(AttemptRejected, match=r"does not serve the notebook 'nope\.py'"):
        await prepared(server, "nope.py")
    server.page = 200
    protocol, link = await prepared(server)
    with pytest.raises(AttemptRejected, match="read-only"):
        await protocol.on_ready(link, Frame("kernel-ready", {"kiosk": True, "resumed": True}))  # type: ignore[arg-type]


def test_a_resumed_kernel_ready_after_reconnected_is_a_message() -> None:
    """The kernel-ready following reconnected (an orphan session resumed) is not a second ready."""
    protocol = MarimoProtocol()
    assert protocol.is_ready(Frame("reconnected", {}))
    protocol._after_reconnected = True  # what on_ready records for "reconnected"
    assert not protocol.is_ready(ready(resumed=True))
    assert protocol.is_ready(ready(resumed=False))


# -- a real server -----------------------------------------------------------------------


async def test_edits_before_connecting_run_in_the_kernel(notebook: Path) -> None:
    """Edits made while NOT_STARTED reach the kernel on connect, and it runs the edited code."""
    with trio.fail_after(LIMIT):
        async with marimo_server(notebook) as server:
            protocol = MarimoProtocol(file=str(notebook))
            async with fsm.open_connector(server.url, protocol=protocol, policy=POLICY) as conn:
                messages = conn.messages()
                cells = [cell_id for cell_id, _ in notebook_cells(notebook)]
                conn.edit(cells[0], "x = 5")
                assert conn.is_not_started and conn.pending_edits == {cells[0]: "x = 5"}
                await conn.connect()
                await conn.wait_acked()
                assert await next_value(messages, cells[2]) == "60"
                conn.edit(cells[1], "y = x * 3")
                assert await next_value(messages, cells[2]) == "150"
                await conn.wait_acked()
                assert conn.pending_edits == {}
                # request() posts to /api/kernel/{op} and returns marimo's JSON answer.
                answer = await conn.request("run", {"cellIds": [cells[2]], "codes": ["y * 100"]})
                assert answer == {"success": True}
                assert await next_value(messages, cells[2]) == "1500"
                with pytest.raises(fsm.RequestFailed, match="HTTP 4"):
                    await conn.request("no-such-endpoint", {})
                assert conn.state is fsm.ConnState.OPEN

            # A file key the server does not serve is refused at once, not retried.
            wrong = MarimoProtocol(file=str(notebook.with_name("other.py")))
            async with fsm.open_connector(server.url, protocol=wrong, policy=POLICY) as conn:
                with pytest.raises(fsm.ConnectionFailed, match="does not serve"):
                    await conn.connect()
                assert conn.close_reason is fsm.CloseReason.REJECTED
                assert conn.attempts == 0


async def test_reconnects_after_the_server_restarts(notebook: Path) -> None:
    """A server stopped mid-session and restarted gets the pending edits, then later ones."""
    with trio.fail_after(LIMIT):
        async with marimo_server(notebook) as server:
            protocol = MarimoProtocol(file=str(notebook))
            async with fsm.open_connector(server.url, protocol=protocol, policy=POLICY) as conn:
                messages = conn.messages()
                conn.edit("Hbol", "x = 5")
                await conn.connect()
                assert await next_value(messages, "vblA") == "60"

                await server.stop()  # SIGTERM: the socket closes with 1012, retried
                await conn.wait_for(fsm.ConnState.CONNECTING)
                conn.edit("Hbol", "x = 2")  # buffered while the server is down
                await server.start()
                await conn.wait_for(fsm.ConnState.OPEN)
                assert protocol.session(conn.session_id).resumed is False  # a fresh kernel
                assert await next_value(messages, "vblA") == "30"

                conn.edit("MJUe", "y = x + 3")  # made after the restart, sent at once
                assert await next_value(messages, "vblA") == "50"
                await conn.wait_acked()


async def test_gives_up_then_recovers_when_the_server_starts(notebook: Path) -> None:
    """No server: CLOSED(GAVE_UP) after max_attempts; once it runs, connect() recovers."""
    port = free_port()
    policy = fsm.RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.02,
                             connect_timeout=30.0)
    server = MarimoServer(notebook, port=port)
    with trio.fail_after(LIMIT):
        try:
            async with fsm.open_connector(
                server.url, protocol=MarimoProtocol(), policy=policy
            ) as conn:
                messages = conn.messages()
                conn.edit("Hbol", "x = 4")
                with pytest.raises(fsm.ConnectionFailed, match="gave up after 3"):
                    await conn.connect()
                assert conn.close_reason is fsm.CloseReason.GAVE_UP
                assert conn.attempts == 3
                assert conn.pending_edits == {"Hbol": "x = 4"}

                await server.start()
                await conn.connect()
                assert await next_value(messages, "vblA") == "50"
                await conn.wait_acked()
        finally:
            await server.aclose()


# -- the command -------------------------------------------------------------------------


async def test_cli_prints_the_outputs(notebook: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fsm marimo NB --url URL [--set 1=...]`` prints every cell's output and exits 0."""
    with trio.fail_after(LIMIT):
        async with marimo_server(notebook) as server:
            token = await server.server_token()
            argv = ["marimo", str(notebook), "--url", server.url, "--timeout", "60"]
            # No edits, a fresh kernel: instantiated as the file says.
            first = await trio.to_thread.run_sync(cli_main, argv)
            out, err = capsys.readouterr()
            assert first == 0, err
            assert "vblA text/html 20" in out.splitlines()
            # The next run resumes the kernel the first one left: only the edit runs.
            second = await trio.to_thread.run_sync(cli_main, [*argv, "--set", "1=x = 7"])
            out2, err2 = capsys.readouterr()
    assert second == 0, err2
    assert "vblA text/html 80" in out2.splitlines()
    assert "bad_frame" not in err + err2
    assert token not in out + err + out2 + err2


def test_cli_unknown_cell(notebook: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown cell is an error naming the valid cells, exit code 2, before any connection."""
    code = cli_main(["marimo", str(notebook), "--url", "http://127.0.0.1:9", "--set", "9=x = 1"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "unknown cell '9'" in err and "1=Hbol, 2=MJUe, 3=vblA" in err


def test_cli_not_a_notebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file or a plain script is a one-line usage error, exit code 2."""
    missing = tmp_path / "missing.py"
    assert cli_main(["marimo", str(missing), "--url", "http://127.0.0.1:9"]) == 2
    script = tmp_path / "script.py"
    script.write_text("print('not a notebook')\n")
    assert cli_main(["marimo", str(script), "--url", "http://127.0.0.1:9"]) == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0] == f"fsm marimo: error: notebook not found: {missing}"
    assert lines[1].startswith("fsm marimo: error: not a marimo notebook")


def test_cli_unreachable(
    notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening: exit code 1 and one clear line after --max-attempts attempts."""
    url = f"http://127.0.0.1:{free_port()}"
    code = cli_main(["marimo", str(notebook), "--url", url, "--max-attempts", "2"])
    _, err = capsys.readouterr()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("fsm marimo: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"could not reach marimo at {url}: gave up after 2 attempts" in errors[0]

