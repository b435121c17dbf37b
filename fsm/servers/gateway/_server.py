"""The gateway server: HTTP and WebSocket on one port, sessions, eviction, shutdown.

See DESIGN.md section 10 and docs/gateway.md. One task per TCP connection reads the
request (h11) and either answers it or upgrades it; an upgraded client gets a reader
(this task) and a writer (a bounded queue, so nothing upstream ever waits on a client).
Upstream connectors run in a nursery of their own, which outlives the clients' during
shutdown: clients are closed first (1001), then every upstream politely.
"""

from __future__ import annotations

import collections
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from fsm.adapters._base import KernelProtocol, normalise_url
from fsm.adapters._reference import ReferenceProtocol
from fsm.core._frames import MAX_FRAME_SIZE, BadFrame, decode_frame
from fsm.core._policy import RetryPolicy
from fsm.driver._transport import StreamOpener
from fsm.servers import _http
from fsm.servers.gateway._metrics import CONTENT_TYPE, GatewayMetrics
from fsm.servers.gateway._page import render_page
from fsm.servers.gateway._session import (
    REASON_BAD_FRAME,
    ClientLink,
    Session,
    Upstream,
    error_frame,
    log,
)
from fsm.servers.gateway._shared import GatePolicy, UpstreamGate

#: The longest client session id accepted (the page's are 32 hex digits).
MAX_SESSION_ID = 256
#: Retry-After (seconds) of a 503 when every session has a client attached.
RETRY_AFTER_FULL = 5


class SessionsFull(Exception):
    """No session can be evicted to make room for a new one."""


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (
        minimum <= value < float("inf")
    ):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {value!r}")


class Gateway:
    """A lazy gateway: one session per client session id, each with a lazy upstream.

    ``upstream`` is the kernel server's URL (``ws://``/``http://``, no session id).
    ``token`` protects every request but ``GET /health``; ``upstream_token`` is sent
    upstream (reference protocol). ``marimo`` names a notebook file: every session then
    shares one upstream marimo session (:class:`fsm.marimo.MarimoProtocol`). ``policy``
    is the upstream :class:`~fsm.RetryPolicy`. A detached session lives ``session_ttl``
    seconds; at most ``max_sessions`` exist (None: no bound). ``max_frame_size`` bounds a
    client frame (1009 above it); ``send_queue`` bounds the frames queued for one client
    (1013 when full); ``replay_limit`` bounds the upstream messages kept for a reattach;
    ``max_requests`` bounds the requests of one session waiting for the upstream
    (``busy`` past it). Every ``client_heartbeat`` seconds (None: never) each client is
    pinged and closed (1011) if it does not answer within as long, so that a vanished
    peer frees its session. ``open_stream`` opens the upstream byte streams (tests and
    benchmarks pass in-memory ones). ``upstream_gate`` is how the sessions share their
    upstream (:class:`~fsm.gateway.UpstreamGate`: bounded, paced dials, one probe while it
    fails): ``True`` the default :class:`~fsm.gateway.GatePolicy`, a ``GatePolicy``, or
    ``False`` (every session dials on its own). Serve it with
    ``await nursery.start(gw.serve)``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        token: str | None = None,
        upstream_token: str | None = None,
        marimo: str | None = None,
        policy: RetryPolicy | None = None,
        session_ttl: float = 120.0,
        max_sessions: int | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        send_queue: int = 1024,
        replay_limit: int = 1000,
        max_requests: int = 64,
        close_timeout: float = 2.0,
        handshake_timeout: float = 10.0,
        heartbeat_interval: float | None = 20.0,
        client_heartbeat: float | None = 20.0,
        open_stream: StreamOpener | None = None,
        upstream_gate: GatePolicy | bool = True,
    ) -> None:
        self.upstream = normalise_url(upstream)
        if isinstance(upstream_gate, GatePolicy):
            self.gate: UpstreamGate | None = UpstreamGate(upstream_gate)
        elif isinstance(upstream_gate, bool):
            self.gate = UpstreamGate() if upstream_gate else None
        else:
            raise TypeError(
                f"upstream_gate must be a GatePolicy or a bool, got {type(upstream_gate).__name__}"
            )
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a RetryPolicy, got {type(policy).__name__}")
        _check_number("session_ttl", session_ttl, minimum=0)
        if max_sessions is not None:
            _check_number("max_sessions", max_sessions, minimum=1, integer=True)
        _check_number("max_frame_size", max_frame_size, minimum=64, integer=True)
        _check_number("send_queue", send_queue, minimum=1, integer=True)
        _check_number("replay_limit", replay_limit, minimum=0, integer=True)
        _check_number("max_requests", max_requests, minimum=1, integer=True)
        self._token = token
        self._upstream_token = upstream_token
        self.marimo = marimo
        self.policy = policy
        self.session_ttl = float(session_ttl)
        self.max_sessions = max_sessions
        self.max_frame_size = max_frame_size
        self.send_queue = send_queue
        self.replay_limit = replay_limit
        self.max_requests = max_requests
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout
        self.heartbeat_interval = heartbeat_interval
        if client_heartbeat is not None:
            _check_number("client_heartbeat", client_heartbeat, minimum=0.001)
        self.client_heartbeat = client_heartbeat
        self.open_stream = open_stream
        #: The cells a marimo notebook holds, read from its file: what every session
        #: offers before its upstream ever connects.
        self._notebook: dict[str, str] = {}
        if marimo is not None and upstream_token is not None:
            raise ValueError(
                "upstream_token is for the reference protocol; a marimo upstream is reached"
                " with the token its own page carries (run marimo with --no-token)"
            )
        if marimo is not None:
            self._marimo_protocol()  # fail now, not on the first session, if marimo is absent
            from fsm.adapters._marimo_notebook import notebook_cells

            try:
                self._notebook = dict(notebook_cells(marimo))
            except OSError as exc:
                raise ValueError(f"cannot read the marimo notebook {marimo!r}: {exc}") from exc

        self.host = "127.0.0.1"
        self.port = 0
        self.sessions: dict[str, Session] = {}
        #: Detached sessions, oldest detach first: the expiry and eviction order.
        self._detached: dict[str, Session] = {}
        self._clients: set[ClientLink] = set()
        self._shared: Upstream | None = None
        self.metrics = GatewayMetrics(self._counts, lambda: len(self._clients), self.gate)
        self._reaper_wake = trio.Event()
        self._changed = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._upstreams: trio.Nursery | None = None
        self._accepting = False

    # -- observation ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The client endpoint, ``ws://HOST:PORT/ws`` (never with a token)."""
        return f"ws://{self._netloc}/ws"

    @property
    def page_url(self) -> str:
        """The page, ``http://HOST:PORT/`` (never with a token)."""
        return f"http://{self._netloc}/"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url_for(self, session_id: str, token: str | None = None) -> str:
        """The client endpoint with ``session_id`` (and ``token``) in its query."""
        query = {"session_id": session_id} | ({"token": token} if token is not None else {})
        return f"{self.url}?{urllib.parse.urlencode(query)}"

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` answers."""
        return {
            "sessions": [s.status() for s in self.sessions.values()],
            "counts": self._counts(),
        }

    def _counts(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for session in self.sessions.values():
            conn = session.upstream.conn
            counts[conn.state.value if conn is not None else "NOT_STARTED"] += 1
        return dict(counts)

    def _notify(self) -> None:
        # Called on every edit too: only pay for a new Event when someone waits.
        if self._changed.statistics().tasks_waiting:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[Gateway], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every session change."""
        while not predicate(self):
            await self._changed.wait()

    # -- running ------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: ephemeral) until :meth:`shutdown`."""
        if self._stopped.is_set() or self._upstreams is not None:
            raise RuntimeError("a Gateway serves once")
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.host = host
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as upstreams:
                self._upstreams = upstreams
                if self.marimo is not None:
                    self._shared = Upstream(self, f"gw_{secrets.token_hex(8)}",
                                            self._marimo_protocol())
                    self._shared.doc.update(self._notebook)
                    await upstreams.start(self._shared.run)
                async with trio.open_nursery() as clients:
                    accept = trio.CancelScope()

                    async def listen() -> None:
                        with accept:
                            await trio.serve_listeners(
                                self.handle_stream, listeners, handler_nursery=clients
                            )

                    clients.start_soon(listen)
                    clients.start_soon(self._reap)
                    self._accepting = True
                    log.info("gateway_listening", host=host, port=self.port,
                             upstream=_http_safe(self.upstream), marimo=self.marimo)
                    task_status.started(self)
                    await self._stop.wait()
                    self._accepting = False
                    accept.cancel()
                    for client in list(self._clients):
                        client.close(1001, "going away", "shutdown")
                    with trio.move_on_after(self.close_timeout + 1):
                        await self.wait_until(lambda g: not g._clients)
                    clients.cancel_scope.cancel()
                for session in list(self.sessions.values()):
                    self._end_session(session, "shutdown")
                if self._shared is not None:
                    self._shared.close()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()
            log.info("gateway_stopped")

    async def shutdown(self) -> None:
        """Close every client (1001), then every upstream politely; returns once done."""
        self._stop.set()
        if self._upstreams is None and not self._stopped.is_set():
            return  # never served: nothing to close
        await self._stopped.wait()

    # -- sessions -----------------------------------------------------------------------

    def _marimo_protocol(self) -> KernelProtocol:
        try:
            from fsm.adapters._marimo import MarimoProtocol
        except ImportError as exc:
            raise ValueError(
                "--marimo needs the marimo extra: pip install 'fsm-kernel-lifecycle[marimo]'"
                f" ({exc})"
            ) from exc
        return MarimoProtocol(self.marimo)

    async def _session_for(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            self._make_room()
            if self._shared is not None:
                upstream = self._shared
            else:
                upstream = Upstream(
                    self, session_id, ReferenceProtocol(self._upstream_token), self.gate
                )
            session = Session(self, session_id, upstream)
            self.sessions[session_id] = session
            self._detached[session_id] = session  # until its client attaches
            upstream.sessions.add(session)
            log.info("session_created", session_id=session_id)
            self._notify()
            if upstream is not self._shared:
                assert self._upstreams is not None
                await self._upstreams.start(upstream.run)
        # A second handshake for a session being created waits for its connector.
        await session.upstream.started.wait()
        return session

    def _make_room(self) -> None:
        if self.max_sessions is None or len(self.sessions) < self.max_sessions:
            return
        victim = next((s for s in self._detached.values() if not s.pending), None)
        if victim is None:
            victim = next(iter(self._detached.values()), None)
            if victim is None:
                raise SessionsFull
            log.warning("session_evicted_with_pending", session_id=victim.session_id,
                        pending=victim.pending)
        self._end_session(victim, "max_sessions")

    def _end_session(self, session: Session, cause: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.session_id, None)
        self._detached.pop(session.session_id, None)
        session.upstream.sessions.discard(session)
        if session.upstream is not self._shared:
            session.upstream.close()
        if cause in ("ttl", "max_sessions"):
            self.metrics.evictions.labels(cause).inc()
        log.info("session_ended", session_id=session.session_id, cause=cause,
                 pending=session.pending)
        self._notify()

    def _upstream_failed(self, session: Session) -> None:
        client = session.client
        self._end_session(session, "upstream_error")
        if client is not None:
            client.close(1011, "upstream failed", "upstream_error")

    def _wake_reaper(self) -> None:
        self._reaper_wake.set()
        self._notify()

    async def _reap(self) -> None:
        """Expire detached sessions ``session_ttl`` after their client left, oldest first."""
        while True:
            wake = self._reaper_wake = trio.Event()
            oldest = next(iter(self._detached.values()), None)
            if oldest is None or oldest.detached_at is None:
                await wake.wait()
                continue
            deadline = oldest.detached_at + self.session_ttl
            if trio.current_time() >= deadline:
                self._end_session(oldest, "ttl")
                continue
            with trio.move_on_at(deadline):
                await wake.wait()

    # -- connections ----------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: a TCP stream, or an in-memory one in tests and benchmarks."""
        try:
            request = None
            with trio.move_on_after(self.handshake_timeout):
                try:
                    request = await _http.read_request(stream)
                except _http.BadRequest:
                    await self._refuse(stream, 400, "bad request")
                    return
            if request is not None:
                await self._route(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ConnectionClosed):
            pass  # the peer went away
        except Exception as exc:
            # One broken connection must never take the gateway down.
            log.error("connection_error", error=repr(exc))
        finally:
            await trio.aclose_forcefully(stream)

    async def _refuse(
        self, stream: trio.abc.Stream, status: int, message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.metrics.refusals.labels(str(status)).inc()
        await stream.send_all(_http.error_response(status, message, headers))

    async def _route(self, stream: trio.abc.Stream, request: _http.Request) -> None:
        if request.method == "GET" and request.path == "/health" and not request.is_upgrade:
            await stream.send_all(_http.json_response(200, {"status": "healthy"}))
            return
        if not _http.authorized(request, self._token):
            await self._refuse(stream, 401, "a valid token is required (?token= or Bearer)",
                               [("WWW-Authenticate", "Bearer")])
            return
        if request.is_upgrade:
            await self._upgrade(stream, request)
            return
        if request.method != "GET":
            await self._refuse(stream, 405, "only GET is served", [("Allow", "GET")])
        elif request.path == "/":
            await stream.send_all(_http.response(200, render_page(), "text/html; charset=utf-8"))
        elif request.path == "/status":
            await stream.send_all(_http.json_response(200, self.status()))
        elif request.path == "/metrics":
            await stream.send_all(_http.response(200, self.metrics.render(), CONTENT_TYPE))
        elif request.path == "/ws":
            await self._refuse(stream, 426, "a WebSocket upgrade is required",
                               [("Upgrade", "websocket")])
        else:
            await self._refuse(stream, 404, "not found")

    async def _upgrade(self, stream: trio.abc.Stream, request: _http.Request) -> None:
        if request.path != "/ws":
            await self._refuse(stream, 404, "not found")
            return
        if not request.is_valid_websocket:
            await self._refuse(stream, 400, "not a valid WebSocket handshake")
            return
        session_id = request.first("session_id") or f"anon_{secrets.token_hex(16)}"
        if len(session_id) > MAX_SESSION_ID:
            await self._refuse(stream, 400, f"session_id longer than {MAX_SESSION_ID}")
            return
        if not self._accepting:
            await self._refuse(stream, 503, "the gateway is shutting down")
            return
        try:
            session = await self._session_for(session_id)
        except SessionsFull:
            log.warning("session_refused", session_id=session_id, sessions=len(self.sessions))
            await self._refuse(stream, 503, "the gateway holds its maximum of sessions",
                               [("Retry-After", str(RETRY_AFTER_FULL))])
            return
        if session.closed:
            await self._refuse(stream, 503, "the session ended; connect again")
            return
        async with trio.open_nursery() as nursery:
            ws_request = None
            with trio.move_on_after(self.handshake_timeout):
                ws_request = await wrap_server_stream(
                    nursery,
                    _http.ReplayStream(stream, request.raw),
                    message_queue_size=4,
                    max_message_size=self.max_frame_size,
                )
            if ws_request is not None:
                ws = await ws_request.accept()
                await self._serve_client(session, ws)
            nursery.cancel_scope.cancel()

    async def _serve_client(self, session: Session, ws: WebSocketConnection) -> None:
        client = ClientLink(ws, session, self.send_queue)
        self._clients.add(client)
        session.attach(client)
        self._notify()
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.write)
                    if self.client_heartbeat is not None:
                        nursery.start_soon(
                            client.keepalive, self.client_heartbeat, self.client_heartbeat
                        )
                    with client.read_scope:
                        while True:
                            try:
                                message = await ws.get_message()
                            except ConnectionClosed:
                                break
                            try:
                                self._dispatch(client, message)
                            except Exception as exc:
                                # A gateway bug must cost this client only, and say so.
                                log.error("client_frame_error", session_id=session.session_id,
                                          error=repr(exc))
                                client.close(1011, "internal error", "internal_error")
                    client.close(1000, "", "")  # the writer finishes the frame it is sending
            finally:
                session.detach(client)
            await self._finish_client(client)
        finally:
            # Only now: shutdown waits for this, so the 1001 close handshake is not cut.
            self._clients.discard(client)
            self._notify()

    async def _finish_client(self, client: ClientLink) -> None:
        ws = client.ws
        request = client.close_request
        if request is not None and request[2] and ws.closed is None:
            code, reason, cause = request
            with trio.move_on_after(self.close_timeout):
                await ws.aclose(code, reason)
        else:
            closed = ws.closed
            cause = "oversized" if closed is not None and closed.code == 1009 else "client"
        self.metrics.client_closes.labels(cause).inc()
        log.info("client_closed", session_id=client.session.session_id, cause=cause,
                 code=int(ws.closed.code) if ws.closed is not None else None)

    def _dispatch(self, client: ClientLink, message: str | bytes) -> None:
        session = client.session
        if session.client is not client or session.closed:
            return  # fenced: a newer connection is this session's writer
        try:
            frame = decode_frame(message, max_size=self.max_frame_size)
        except BadFrame as exc:
            if exc.close_code is not None:
                cause = {1003: "binary", 1007: "not_json", 1009: "oversized"}[exc.close_code]
                log.info("bad_client_frame", session_id=session.session_id, reason=exc.reason)
                client.close(exc.close_code, exc.reason, cause)
            else:
                client.push(error_frame(None, exc.reason, REASON_BAD_FRAME))
            return
        if frame.op in ("instantiate", "edit"):
            session.take_edit(frame)
        else:
            session.take_request(frame)


def _http_safe(url: str) -> str:
    from fsm.core._redact import redact_url

    return redact_url(url)
