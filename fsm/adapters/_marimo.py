"""The marimo adapter: a :class:`~fsm.Connector` to a real ``marimo edit`` server.

marimo speaks half of its protocol over a WebSocket and half over HTTP:

- ``GET /health`` says the server is up; ``GET /`` (the notebook page) carries the
  server token (``<marimo-server-token data-token=...>``), new for every server
  process, which every POST must send as ``Marimo-Server-Token``, even when the
  server runs with ``--no-token``;
- ``ws://HOST:PORT/ws?session_id=S&file=F`` is the socket. A new session gets a
  ``kernel-ready`` frame first (the file's cells and codes, ``resumed: false`` for a
  fresh kernel); a socket re-opened with the same session id gets ``reconnected``
  instead. Both count as "ready". One session id is used per connector (the
  connector's ``session_id``): a different id while another socket is connected
  would get a read-only (kiosk) session;
- edits go out as POSTs with the headers ``Marimo-Session-Id`` and
  ``Marimo-Server-Token``: ``/api/kernel/instantiate`` (the first in a kernel's life
  registers every cell and runs them; later ones do nothing) and ``/api/kernel/run``
  (run these cells with this code, and their dependents). A 2xx answer to the POST is
  the acknowledgement: the edits stay pending until then.

How a flush (entering OPEN) is sent
-----------------------------------

The adapter keeps, per session id, the file's cells from the last ``kernel-ready``,
whether that kernel was instantiated, and the *document*: every edit the server has
acknowledged in this session. Then:

- a fresh kernel (``kernel-ready`` with ``resumed: false``: the first connection,
  or a reconnection after the server restarted) is instantiated with **every** cell:
  the file's codes, overlaid with the document and then with the flushed batch; cells
  the file does not have are appended after the file's cells. So a restarted server's
  kernel gets the client's whole state, not only the edits still pending;
- a kernel that lived on (``reconnected``, or ``kernel-ready`` with ``resumed: true``)
  gets the batch's cells through ``/api/kernel/run``, if there are any;
- if an instantiate was sent but its answer was lost, whether the kernel applied it
  is unknown: the next flush sends instantiate again (a no-op if the first one
  landed) and then runs the batch's cells.

Edits made while OPEN go through ``/api/kernel/run``. :meth:`MarimoProtocol.request`
POSTs to ``/api/kernel/{op}`` and returns the decoded JSON answer.

Which notebook (the ``file`` query parameter)
---------------------------------------------

``file`` is marimo's *file key*. Without one, a single-notebook server (``marimo edit
nb.py``) serves its only notebook; a directory server (``marimo edit dir/``) refuses the
handshake (HTTP 403: ``CLOSED(REJECTED)``). With one, marimo resolves the key
as a path (relative keys against the server process's working directory, or the served
directory) and, in edit mode, opens **whatever existing notebook it names**, even one it
was not started with: the key decides which file the kernel runs. A key naming no file
makes ``GET /?file=KEY`` answer 404 (and the socket close with 1006, which would look
retryable), so :meth:`MarimoProtocol.prepare` checks the key with that GET first and
refuses for good (``CLOSED(REJECTED)``) on a 404.

``MarimoProtocol(file=None)`` sends the ``file`` of the server URL's query, if any
(``http://host:2718/?file=nb.py`` is what marimo prints for a directory server), else
none. ``fsm marimo`` sends the notebook's absolute path (``os.path.abspath``: symlinks
kept, as marimo normalises keys): the kernel then runs exactly the file whose cell ids
the command read offline, whatever directory the server was started in. A bare file name
could name a different ``nb.py`` in the server's working directory. This needs client and
server to see the notebook at the same path (the same machine or a shared mount).

Secrets: the server token lives only in ``link.context`` and in request headers; it
never reaches a log line or an error message. marimo itself is imported lazily (only
:func:`notebook_cells` needs it); httpx is part of the ``marimo`` extra
(``pip install 'fsm-kernel-lifecycle[marimo]'``).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import httpx
except ImportError as exc:  # the marimo extra; say which, not just the module's name
    raise ImportError(
        f"fsm.marimo needs the marimo extra ({exc}): pip install 'fsm-kernel-lifecycle[marimo]'"
    ) from exc

from fsm.adapters._base import (
    AdapterLink,
    AttemptFailed,
    AttemptRejected,
    KernelProtocol,
    Verdict,
)
from fsm.adapters._marimo_notebook import notebook_cells
from fsm.core._frames import Frame
from fsm.core._redact import describe, redact, redact_url

if TYPE_CHECKING:

    from fsm.core._buffer import FlushBatch
    from fsm.core._lifecycle import SendEdit
    from fsm.driver._connector import Connector

__all__ = [
    "CellOutput",
    "MarimoProtocol",
    "MarimoSession",
    "RunCollector",
    "RunResult",
    "cell_output",
    "notebook_cells",
    "output_text",
    "run_cells",
]

_SCHEMES = {"ws": ("ws", "http"), "wss": ("wss", "https"), "http": ("ws", "http"),
            "https": ("wss", "https")}
_TOKEN_RE = re.compile(r"<marimo-server-token\b[^>]*\bdata-token=\"([^\"]*)\"")
_OP_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
#: Close reasons after which retrying cannot help.
_FATAL_REASONS = frozenset(
    {
        "MARIMO_NOT_ALLOWED",
        "MARIMO_UNAUTHORIZED",
        "MARIMO_NO_SESSION_ID",
        "MARIMO_NO_FILE_KEY",
        "MARIMO_KIOSK_NOT_ALLOWED",
        "MARIMO_LORO_NOT_INSTALLED",
    }
)
#: HTTP statuses of a POST after which a new attempt (a new token, a new socket) may help.
_RETRYABLE_STATUSES = frozenset({401, 403, 408, 409, 425, 429})


@dataclass
class MarimoSession:
    """What the adapter knows about one session id's kernel (see the module docstring)."""

    #: ``[(cell_id, code), ...]`` from the last ``kernel-ready``, in file order.
    file_cells: list[tuple[str, str]] = field(default_factory=list)
    #: Whether the kernel was instantiated: "no", "unsure" (sent, answer lost) or "yes".
    instantiated: Literal["no", "unsure", "yes"] = "yes"
    #: The op of the last ready frame ("kernel-ready" or "reconnected").
    ready_op: str | None = None
    #: ``resumed`` of the last ``kernel-ready`` (a kernel that lived on).
    resumed: bool = False
    #: Every edit the server acknowledged in this session: cell id to code.
    document: dict[str, str] = field(default_factory=dict)
    #: POSTs that started a run (instantiate or run) in this session.
    runs: int = 0
    #: Per cell, the seq of the edit whose code marimo acknowledged last.
    acked_seqs: dict[str, int] = field(default_factory=dict)

    def acknowledged(self, codes: dict[str, str], seq: int) -> None:
        """marimo answered 2xx to a POST carrying ``codes`` under ``seq``."""
        self.document.update(codes)
        for cell_id in codes:
            self.acked_seqs[cell_id] = max(seq, self.acked_seqs.get(cell_id, 0))


class MarimoProtocol(KernelProtocol):
    """The adapter for a ``marimo edit`` server; see the module docstring.

    ``file`` is the notebook's file key on the server (None: the URL's ``?file=`` or
    none, which a single-notebook server accepts). ``http_timeout`` bounds every HTTP
    request; ``transport`` replaces httpx's (tests use ``httpx.MockTransport``). Use one
    instance per connector. marimo's kernel takes a few seconds to start: give the
    connector a ``RetryPolicy`` with ``connect_timeout`` of 10 s or more.
    """

    name = "marimo"
    ready_ops: frozenset[str] = frozenset({"kernel-ready", "reconnected"})

    def __init__(
        self,
        file: str | None = None,
        *,
        http_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if file is not None and (not isinstance(file, str) or not file):
            raise ValueError(f"file must be a non-empty str or None, got {file!r}")
        if isinstance(http_timeout, bool) or not isinstance(http_timeout, int | float) or not (
            0 < http_timeout < float("inf")
        ):
            raise ValueError(f"http_timeout must be a positive number, got {http_timeout!r}")
        self.file = file
        self.http_timeout = float(http_timeout)
        self.transport = transport
        self._sessions: dict[str, MarimoSession] = {}
        self._http_lock: Any = None  # a trio.Lock, made on first use
        #: POSTs started and finished; never more than one apart (one request at a time).
        self.http_requests = 0
        self.http_requests_done = 0
        # A new session id that resumes an orphaned kernel gets "reconnected" and then
        # kernel-ready(resumed: true); the second is not a new ready frame (see is_ready).
        self._after_reconnected = False

    # -- addresses ---------------------------------------------------------------------

    def file_key(self, url: str) -> str | None:
        """The ``file`` query value sent for ``url``: ``self.file``, the URL's, or None."""
        if self.file is not None:
            return self.file
        for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if key == "file" and value:
                return value
        return None

    def http_url(self, url: str) -> str:
        """The server's HTTP base URL (scheme http(s), host, base path; no query)."""
        parts = urlsplit(url)
        scheme = _SCHEMES[parts.scheme][1]
        return urlunsplit((scheme, parts.netloc, _base_path(parts.path), "", ""))

    def websocket_url(self, url: str, session_id: str) -> str:
        """``ws(s)://HOST/BASE/ws?session_id=S[&file=F]``, keeping the URL's other parameters."""
        parts = urlsplit(url)
        query = [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("session_id", "file")
        ]
        query.insert(0, ("session_id", session_id))
        key = self.file_key(url)
        if key is not None:
            query.append(("file", key))
        path = _base_path(parts.path) + "/ws"
        return urlunsplit((_SCHEMES[parts.scheme][0], parts.netloc, path, urlencode(query), ""))

    def session(self, session_id: str) -> MarimoSession:
        """What the adapter knows about ``session_id`` (an empty record if nothing yet)."""
        return self._sessions.setdefault(session_id, MarimoSession())

    # -- hooks -------------------------------------------------------------------------

    def is_ready(self, frame: Frame) -> bool:
        """``kernel-ready`` or ``reconnected``, except the ``kernel-ready`` (``resumed: true``)
        that follows ``reconnected`` when a new session id resumes an orphaned kernel: that
        one goes to ``messages()``."""
        if frame.op == "kernel-ready" and self._after_reconnected:
            self._after_reconnected = False
            if isinstance(frame.data, dict) and frame.data.get("resumed") is True:
                return False
        return frame.op in self.ready_ops

    async def prepare(self, link: AdapterLink) -> None:
        """Check ``/health``, then fetch the server token from the notebook page."""
        self._after_reconnected = False
        base = self.http_url(link.url)
        client = httpx.AsyncClient(
            base_url=base, timeout=self.http_timeout, transport=self.transport
        )
        link.context["client"] = client
        where = redact_url(base)
        health = await _get(client, "/health", None, where)
        if health.status_code != 200:
            _refuse(health, f"GET /health at {where}")
        key = self.file_key(link.url)
        params = [
            (k, v)
            for k, v in parse_qsl(urlsplit(link.url).query, keep_blank_values=True)
            if k not in ("session_id", "file")
        ]
        if key is not None:
            params.append(("file", key))
        page = await _get(client, "/", params, where)
        if page.status_code == 404 and key is not None:
            raise AttemptRejected(
                f"marimo at {where} does not serve the notebook {key!r} "
                f"(GET /?file=... answered 404: {_short(page)})"
            )
        if 300 <= page.status_code < 400:
            raise AttemptRejected(
                f"marimo at {where} redirected GET / (HTTP {page.status_code}): it needs a "
                "login; start it with --no-token"
            )
        if page.status_code != 200:
            _refuse(page, f"GET / at {where}")
        match = _TOKEN_RE.search(page.text)
        if match is None:
            raise AttemptRejected(
                f"no marimo server token in the page at {where}: is it a marimo edit server?"
            )
        link.context["token"] = match.group(1)

    async def on_ready(self, link: AdapterLink, frame: Frame) -> None:
        """Record the ready frame; refuse a read-only (kiosk) session."""
        state = self.session(link.session_id)
        data = frame.data if isinstance(frame.data, dict) else {}
        link.context["ready_op"] = frame.op
        state.ready_op = frame.op
        if frame.op != "kernel-ready":
            link.context["resumed"] = True  # "reconnected": the kernel lived on
            self._after_reconnected = True
            return
        capabilities = data.get("consumer_capabilities")
        read_only = data.get("kiosk") is True or (
            isinstance(capabilities, dict) and capabilities.get("edit") is False
        )
        if read_only:
            raise AttemptRejected(
                "marimo gave this connection a read-only (kiosk) session: the notebook is "
                "open in another editor session"
            )
        resumed = data.get("resumed") is True
        link.context["resumed"] = resumed
        state.resumed = resumed
        cell_ids = data.get("cell_ids")
        codes = data.get("codes")
        if isinstance(cell_ids, list) and isinstance(codes, list):
            state.file_cells = [
                (str(cell_id), code if isinstance(code, str) else "")
                for cell_id, code in zip(cell_ids, codes, strict=False)
            ]
        link.context["file_cells"] = list(state.file_cells)
        if not resumed:
            state.instantiated = "no"  # a fresh kernel: the first instantiate counts

    async def flush(self, link: AdapterLink, batch: FlushBatch) -> None:
        """Instantiate a fresh kernel with every cell, or run the batch's cells.

        HTTP has no frame limit: the batch goes whole (its merged codes, in one request)
        and, once marimo answered 2xx, every frame's seq is acknowledged.
        """
        await self._apply(link, batch.codes, batch.seq)
        for frame in batch.frames:
            link.acknowledge(frame.seq)

    async def send_edit(self, link: AdapterLink, edit: SendEdit) -> None:
        """Run the edited cell (and its dependents) with its new code."""
        await self._apply(link, {edit.cell_id: edit.code}, edit.seq)
        link.acknowledge(edit.seq)

    async def request(self, link: AdapterLink, op: str, data: Any) -> Any:
        """POST ``data`` (JSON) to ``/api/kernel/{op}``; return the decoded JSON answer.

        Raises AttemptFailed when the server cannot be reached or answers 5xx, and
        ValueError for other refusals (the connector reports both as RequestFailed).
        """
        if not _OP_RE.match(op):
            raise ValueError(f"not a marimo kernel endpoint: {op!r}")
        response = await self._post(link, f"/api/kernel/{op}", {} if data is None else data)
        if response.status_code >= 500:
            raise AttemptFailed(f"POST /api/kernel/{op} answered {_status(response)}")
        if response.status_code >= 400:
            raise ValueError(f"POST /api/kernel/{op} answered {_status(response)}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def classify_close(self, code: int | None, reason: str | None) -> Verdict:
        """1003, 1008, 3000-3999 and marimo's fatal reasons: REJECT; MARIMO_SHUTDOWN: SHUTDOWN."""
        if reason == "MARIMO_SHUTDOWN":
            return Verdict.SHUTDOWN
        if reason in _FATAL_REASONS:
            return Verdict.REJECT
        if code in (1003, 1008) or (code is not None and 3000 <= code <= 3999):
            return Verdict.REJECT
        return Verdict.RETRY

    async def release(self, link: AdapterLink) -> None:
        """Close the link's HTTP client and forget its token."""
        link.context.pop("token", None)
        client = link.context.pop("client", None)
        if isinstance(client, httpx.AsyncClient):
            await client.aclose()

    # -- sending -----------------------------------------------------------------------

    async def _apply(self, link: AdapterLink, codes: dict[str, str], seq: int) -> None:
        state = self.session(link.session_id)
        # Never send a cell's code older than one marimo already acknowledged (marimo has
        # no seqs to refuse it itself): the buffer never asks for that, and this keeps it so.
        acked = state.acked_seqs
        stale = [cell_id for cell_id in codes if acked.get(cell_id, 0) > seq]
        if stale:
            codes = {cell_id: code for cell_id, code in codes.items() if cell_id not in stale}
        if state.instantiated != "yes":
            uncertain = state.instantiated == "unsure"
            merged = dict(state.file_cells)
            merged.update(state.document)
            merged.update(codes)
            state.instantiated = "unsure"
            await self._post_ok(
                link,
                "/api/kernel/instantiate",
                {"objectIds": [], "values": [], "autoRun": True, "codes": merged},
            )
            state.instantiated = "yes"
            state.runs += 1
            state.acknowledged(codes, seq)
            if not uncertain:
                return
        if codes:
            await self._post_ok(
                link,
                "/api/kernel/run",
                {"cellIds": list(codes), "codes": list(codes.values())},
            )
            state.runs += 1
            state.acknowledged(codes, seq)

    async def _post_ok(self, link: AdapterLink, path: str, body: Any) -> None:
        response = await self._post(link, path, body)
        if response.is_success:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if isinstance(answer, dict) and answer.get("success") is False:
                raise AttemptFailed(f"POST {path} answered success=false: {_short(response)}")
            return
        if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUSES:
            raise AttemptFailed(f"POST {path} answered {_status(response)}")
        raise AttemptRejected(f"POST {path} answered {_status(response)}")

    async def _post(self, link: AdapterLink, path: str, body: Any) -> httpx.Response:
        client = link.context.get("client")
        token = link.context.get("token")
        if not isinstance(client, httpx.AsyncClient) or not isinstance(token, str):
            raise AttemptFailed("the link has no HTTP client or server token (prepare did not run)")
        headers = {"Marimo-Session-Id": link.session_id, "Marimo-Server-Token": token}
        if self._http_lock is None:
            import trio  # here: this module is imported by `fsm marimo --help` paths too

            self._http_lock = trio.Lock()
        # One HTTP request at a time, across this adapter's links too: marimo has no seqs,
        # so the order its requests arrive in is the only order it knows.
        async with self._http_lock:
            self.http_requests += 1
            try:
                return await client.post(path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise AttemptFailed(f"POST {path} failed: {redact(describe(exc))}") from None
            finally:
                self.http_requests_done += 1


# -- helpers: HTTP -------------------------------------------------------------------------


def _base_path(path: str) -> str:
    base = path.rstrip("/")
    if base.endswith("/ws"):  # the URL named the socket itself
        base = base[: -len("/ws")]
    return base


async def _get(
    client: httpx.AsyncClient, path: str, params: list[tuple[str, str]] | None, where: str
) -> httpx.Response:
    try:
        return await client.get(path, params=tuple(params or ()))
    except httpx.HTTPError as exc:
        raise AttemptFailed(f"GET {path} at {where} failed: {redact(describe(exc))}") from None


def _refuse(response: httpx.Response, what: str) -> None:
    """Raise for an unexpected status: 401/403/404 for good, anything else as a retry."""
    if response.status_code in (401, 403):
        raise AttemptRejected(f"{what} answered {_status(response)}: not authorized")
    if response.status_code == 404:
        raise AttemptRejected(f"{what} answered {_status(response)}: is it a marimo server?")
    raise AttemptFailed(f"{what} answered {_status(response)}")


def _short(response: httpx.Response, limit: int = 160) -> str:
    text = " ".join(response.text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return redact(text)


def _status(response: httpx.Response) -> str:
    body = _short(response)
    return f"HTTP {response.status_code}" + (f": {body}" if body else "")


# -- helpers: outputs ----------------------------------------------------------------------

_TAG_RE = re.compile(r"<[^>]+>")


def cell_output(frame: Frame) -> tuple[str, str, Any] | None:
    """``(cell_id, mimetype, data)`` if ``frame`` is a ``cell-op`` carrying an output, else None.

    ``data`` is marimo's raw value: text for ``text/plain`` and ``text/html`` (an int
    is ``<pre class='text-xs'>60</pre>``), a JSON text for ``application/json``, a list
    of errors for ``application/vnd.marimo+error``. :func:`output_text` renders it.
    """
    if frame.op != "cell-op" or not isinstance(frame.data, dict):
        return None
    cell_id = frame.data.get("cell_id")
    output = frame.data.get("output")
    if not isinstance(cell_id, str) or not isinstance(output, dict):
        return None
    mimetype = output.get("mimetype")
    if not isinstance(mimetype, str):
        return None
    return cell_id, mimetype, output.get("data")


def output_text(mimetype: str, data: Any) -> str:
    """A one-line, human-readable rendering of an output (HTML tags stripped, errors named)."""
    if mimetype == "application/vnd.marimo+error" and isinstance(data, list):
        parts = []
        for error in data:
            if isinstance(error, dict):
                kind = error.get("exception_type") or error.get("type") or "error"
                msg = error.get("msg") or ""
                parts.append(f"{kind}: {msg}" if msg else str(kind))
            else:
                parts.append(str(error))
        text = "; ".join(parts)
    elif isinstance(data, str):
        text = html.unescape(_TAG_RE.sub("", data)) if mimetype == "text/html" else data
    else:
        text = json.dumps(data)
    return " ".join(text.split()) if "\n" in text or "\t" in text else text.strip()


# -- running cells and collecting this run's outputs ----------------------------------------


@dataclass(frozen=True)
class CellOutput:
    """One thing a cell showed during a run: its output (``channel`` ``"output"``, or
    ``"marimo-error"`` for an exception) or a console line (``"stdout"``, ``"stderr"``)."""

    cell_id: str
    channel: str
    mimetype: str
    data: Any

    @property
    def text(self) -> str:
        """The output as one line of text (see :func:`output_text`)."""
        return output_text(self.mimetype, self.data)


@dataclass
class RunResult:
    """What :func:`run_cells` (or a :class:`RunCollector`) collected: every output and
    console line of the runs, in arrival order; ``outcomes`` maps each run id to marimo's
    outcome (``"succeeded"``, ...)."""

    outputs: list[CellOutput] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)

    def output(self, cell_id: str) -> str | None:
        """The text of ``cell_id``'s last output in this run, or None if it showed none."""
        shown = [o for o in self.outputs if o.cell_id == cell_id and o.channel != "stdout"
                 and o.channel != "stderr"]
        return shown[-1].text if shown else None

    def console(self, cell_id: str, channel: str = "stdout") -> str:
        """Everything ``cell_id`` printed to ``channel`` (``"stdout"`` or ``"stderr"``)."""
        return "".join(str(o.data) for o in self.outputs
                       if o.cell_id == cell_id and o.channel == channel)


class RunCollector:
    """Collects the outputs of the runs that start after it was created.

    Feed it every message (:meth:`feed` returns True once every run it saw start has
    completed). A run is one the kernel reports as ``queued`` or ``running`` after the
    collector began: what marimo replays on connecting to a kernel that lived on (cells
    already ``idle``, with the outputs of earlier runs) is left out. Empty outputs (a cell
    whose last line is an assignment shows ``""``) are left out too.
    """

    def __init__(self) -> None:
        self.result = RunResult()
        self._runs: set[str] = set()
        self._pending: set[str] = set()

    @property
    def started(self) -> bool:
        """Whether a run has started since the collector began."""
        return bool(self._runs)

    def feed(self, frame: Frame) -> bool:
        data = frame.data if isinstance(frame.data, dict) else {}
        run_id = data.get("run_id")
        if not isinstance(run_id, str):
            return self.done
        if frame.op == "cell-op":
            if data.get("status") in ("queued", "running") and run_id not in self._runs:
                self._runs.add(run_id)
                self._pending.add(run_id)
            if run_id in self._runs:
                self._collect(data)
        elif frame.op == "completed-run" and run_id in self._runs:
            self._pending.discard(run_id)
            self.result.outcomes[run_id] = str(data.get("outcome"))
        return self.done

    @property
    def done(self) -> bool:
        """Whether a run started and every run that started has completed."""
        return bool(self._runs) and not self._pending

    def _collect(self, data: dict[str, Any]) -> None:
        cell_id = data.get("cell_id")
        if not isinstance(cell_id, str):
            return
        console = data.get("console")
        items = [data.get("output")] + (console if isinstance(console, list) else [console])
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("mimetype"), str):
                continue
            value = item.get("data")
            if value == "" or value is None or value == []:
                continue
            channel = item.get("channel")
            self.result.outputs.append(
                CellOutput(cell_id, channel if isinstance(channel, str) else "output",
                           item["mimetype"], value)
            )


async def run_cells(conn: Connector, codes: dict[str, str]) -> RunResult:
    """Edit ``codes`` (cell id to code), connect if needed, and return the outputs of the
    runs this starts, console included, once they have all completed.

    ``conn`` is a connector with a :class:`MarimoProtocol`. Outputs that marimo replays
    from an earlier run of a kernel that lived on are not included. Bound the wait with
    ``trio.fail_after``; connecting raises :class:`~fsm.ConnectionFailed` as
    ``connect()`` does.
    """
    from fsm.core._types import ConnState

    if not codes:
        raise ValueError("run_cells needs at least one cell to edit: nothing would run")
    messages = conn.messages()  # before anything can start a run
    collector = RunCollector()
    for cell_id, code in codes.items():
        conn.edit(cell_id, code)
    if conn.state is not ConnState.OPEN:
        await conn.connect()
    while True:
        frame = await messages.receive()
        if collector.feed(frame) and not conn.pending_edits:
            return collector.result
