"""The reference kernel server: the peer of the reference kernel protocol, with fault injection.

This is a small, real WebSocket server (trio + trio-websocket) that speaks the protocol of
DESIGN.md section 6 and can be told to misbehave in every way a connector must survive.
It is used by the test-suite, by demos, and by ``fsm serve --port P`` (see :func:`main`).

Protocol (server side), JSON text frames ``{"op": str, "data": object}`` over one WebSocket
at ``ws://HOST:PORT/ws?session_id=ID``:

* after the handshake the server sends first ``{"op": "kernel-ready", "data": {"session_id":
  ID, "cell_ids": [...], "codes": [...], "seq": N, "max_frame_size": M}}``, where ``seq`` is
  the highest seq received for this session (0 if none) and ``max_frame_size`` the largest
  client frame it takes (:data:`~fsm.core._frames.MAX_FRAME_SIZE` unless configured);
* **one writer per session, fenced** (protocol v2): accepting a connection for a session
  first stops applying frames from every older connection of that session, then sends
  ``kernel-ready``; the older ones are closed with 1008, reason ``replaced``;
* ``instantiate`` (``{"seq": N, "codes": {cell_id: code}, "auto_run": true}``, merging: cells
  absent keep their code) and ``edit`` (``{"seq": N, "cell_id": ..., "code": ...}``) update
  :attr:`KernelServer.cells` **by seq**: per session and cell the server keeps the seq of the
  code it holds and applies a cell's code only from a frame with a greater seq; every such
  frame is answered with ``{"op": "ack", "data": {"seq": N}}``, applied or not;
* every other op goes to the *handler* (see :data:`Handler`); the default one,
  :func:`default_handler`, answers ``run`` (``{"cell_id": ...}``) with a ``cell-op`` frame
  ``{"cell_id": ..., "output": {"mimetype": "text/plain", "data": CODE}}`` that echoes the
  cell's current code (``"output": null, "error": "unknown cell"`` for a cell it does not
  know), and logs any other op as ``unknown_op``;
* frames it will not take close the connection: 1003 for a binary frame, 1007 for text that
  is not JSON or not a JSON object, 1009 for a frame over ``max_frame_size`` (in UTF-8 bytes);
  an object without an ``op``, or an ``instantiate``/``edit`` whose data is malformed, is
  logged once as ``bad_frame`` and the connection is kept.

:meth:`KernelServer.lose_state` simulates a restart that lost everything (cells back to the
initial ones, every session's seqs forgotten, every connection reset), so a client's
full-document resend can be tested end to end.

Plain HTTP on the same port: ``GET /health`` answers 200 ``{"status":"healthy"}`` (no token
needed, like marimo); any other non-upgrade request gets 404 (426 on ``/ws``). An upgrade
request for a path other than ``/ws`` is rejected with 404; when the server has a token, a
handshake without ``?token=T`` or ``Authorization: Bearer T`` is rejected with 401.

Faults (:class:`Faults`) are injected through the mutable :attr:`KernelServer.faults`, which is
read when a TCP connection arrives (so a change applies to subsequent connections), except
``freeze`` and the ``refuse_handshakes`` counter, which are live. For a scripted sequence,
:attr:`KernelServer.fault_plan` holds one :class:`Faults` per future connection.
:meth:`KernelServer.close_all` and :meth:`KernelServer.drop_all` act on current connections.

Observable state for tests is public (counters, :attr:`~KernelServer.cells`, ...) and
:meth:`KernelServer.wait_until` wakes on every change the server makes, so tests never sleep.

Where things are: the HTTP front (``_front``: handshake-level faults, routing, the token,
the upgrade), the fault plan (``_faults``), the sessions (``_session``: kernel-ready,
frames, seqs, acks, the handler) and the server (``_server``: listening, connections,
fencing, closing, observation). The package imports only the standard library, trio,
trio-websocket, h11 (through :mod:`fsm.servers._http`, shared with the gateway),
structlog and the core's frames and logger: it must stay usable while the client side
is being rewritten, and it must never share code paths with the client it is meant to
test.
"""

from __future__ import annotations

from fsm.servers.reference._faults import Faults, malformed_frames
from fsm.servers.reference._server import DEFAULT_HOST, KernelServer, main
from fsm.servers.reference._session import Handler, Session, SessionState, default_handler

__all__ = [
    "DEFAULT_HOST",
    "Faults",
    "Handler",
    "KernelServer",
    "Session",
    "SessionState",
    "default_handler",
    "main",
    "malformed_frames",
]
