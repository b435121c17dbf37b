"""A byte-level fault proxy: a TCP proxy on 127.0.0.1 that misbehaves on a seeded schedule.

It sits between a connector and a server and, per accepted TCP connection, applies one
:class:`ConnFault`:

- ``pass``: forward both ways untouched;
- ``cut_fin`` / ``cut_rst``: forward exactly ``after`` bytes in ``direction`` (so the cut
  usually falls inside a WebSocket frame), then close both sides with a FIN, or with a
  reset (``SO_LINGER`` 0);
- ``stall``: forward ``after`` client bytes, then nothing either way: the client's later
  bytes are *held* (read, so its writes still succeed, as on a half-open path), the
  server's are discarded. After ``hold`` seconds, or at :meth:`FaultProxy.release_all`,
  the held bytes are delivered to the server **late**, and forwarding resumes; if the
  client hung up meanwhile, its FIN is passed on after the held bytes;
- ``trickle``: the first ``after`` bytes in ``direction`` go one byte per write;
- ``delay``: every chunk in ``direction`` waits ``hold`` seconds before it is forwarded;
- ``blackhole``: accept, never connect upstream, never answer.

The proxy connects upstream as soon as it accepts (before any byte is forwarded), so the
server accepts TCP connections in the order the client made them, as it would without a
proxy.

:func:`random_plan` draws a plan from a seed; :attr:`FaultProxy.injected` counts the
faults that actually took effect, by kind.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

Kind = Literal["pass", "cut_fin", "cut_rst", "stall", "trickle", "delay", "blackhole"]
Direction = Literal["c2s", "s2c"]
KINDS: tuple[Kind, ...] = ("cut_fin", "cut_rst", "stall", "trickle", "delay", "blackhole")


@dataclass(frozen=True)
class ConnFault:
    """What the proxy does to one TCP connection (see the module docstring)."""

    kind: Kind = "pass"
    after: int = 0
    direction: Direction = "c2s"
    #: ``stall``: seconds before the held bytes go out (None: only at release_all);
    #: ``delay``: seconds per chunk.
    hold: float | None = None


PASS = ConnFault()


def random_plan(rng: random.Random, *, max_faults: int = 5, stall: float = 0.3) -> list[ConnFault]:
    """A seeded plan: faults for the first few connections, every later one passes.

    ``stall`` is a typical stall length (make it longer than the client's heartbeat
    interval plus time-out so that most stalls outlive the connection).
    """
    plan: list[ConnFault] = []
    for _ in range(rng.randint(0, max_faults)):
        kind = rng.choice(KINDS)
        direction: Direction = rng.choice(("c2s", "c2s", "s2c"))
        # Offsets spread over the handshake (~250 bytes each way), the first frames and
        # beyond: a cut usually lands inside a frame.
        after = int(rng.expovariate(1 / 400))
        if kind == "stall":
            hold = None if rng.random() < 0.5 else rng.uniform(0, 2 * stall)
            plan.append(ConnFault("stall", after, "c2s", hold))
        elif kind == "delay":
            plan.append(ConnFault("delay", 0, direction, rng.uniform(0.001, stall / 4)))
        elif kind == "trickle":
            plan.append(ConnFault("trickle", rng.randint(1, 600), direction))
        elif kind == "blackhole":
            plan.append(ConnFault("blackhole"))
        else:
            plan.append(ConnFault(kind, after, direction))
        if rng.random() < 0.3:
            plan.append(PASS)  # a healthy connection between faults
    return plan


def _reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a reset instead of a FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()


@dataclass(eq=False)
class _Link:
    """One proxied TCP connection."""

    index: int
    fault: ConnFault
    client: trio.SocketStream
    upstream: trio.SocketStream | None = None
    sent: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    stalled: bool = False
    #: Bytes held by a stall, per direction, delivered late in order.
    held: dict[str, bytearray] = field(
        default_factory=lambda: {"c2s": bytearray(), "s2c": bytearray()}
    )
    client_gone: bool = False
    release: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    nursery: trio.Nursery | None = None


class FaultProxy:
    """Proxy ``127.0.0.1:PORT`` to ``target_port``, one :class:`ConnFault` per connection.

    ``plan`` gives the faults of the first connections, in order; later ones pass.
    Use ``await nursery.start(proxy.serve)``; :attr:`port` is then bound.
    """

    def __init__(self, target_port: int, plan: Sequence[ConnFault] = ()) -> None:
        self.target_port = target_port
        self.plan = list(plan)
        self.port = 0
        self.connections = 0
        self.injected: collections.Counter[str] = collections.Counter()
        #: Client bytes that reached the server after being held by a stall.
        self.late_bytes = 0
        self._links: list[_Link] = []
        self._nursery: trio.Nursery | None = None
        self._upstream_turn = trio.Event()
        self._upstream_turn.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[FaultProxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                while True:
                    client = await listeners[0].accept()
                    # Numbered here, in accept order (a handler's start order is trio's to
                    # shuffle), and chained: each connects upstream after the one before.
                    index = self.connections
                    self.connections += 1
                    previous, self._upstream_turn = self._upstream_turn, trio.Event()
                    nursery.start_soon(self._handle, client, index, previous, self._upstream_turn)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def stall_now(self) -> None:
        """Stall the newest connection from now on, both ways, until :meth:`release_all`:
        a path that goes half-open at a moment the test chooses."""
        link = self._links[-1]
        if link.stalled or link.nursery is None:
            raise RuntimeError("the newest connection is stalled already or not forwarding")
        link.stalled = True
        link.fault = ConnFault("stall", link.sent["c2s"], "c2s", None)
        self.injected["stall"] += 1
        link.nursery.start_soon(self._stall, link)

    async def release_all(self) -> None:
        """Deliver every held byte now; return once each stalled connection has delivered
        and, where its client is gone, the server has closed its side (it read the lot)."""
        stalled = [link for link in self._links if link.stalled]
        for link in stalled:
            link.release.set()
        for link in stalled:
            await link.released.wait()
            if link.client_gone:
                await link.done.wait()

    async def _handle(
        self, client: trio.SocketStream, index: int, previous: trio.Event, mine: trio.Event
    ) -> None:
        fault = self.plan[index] if index < len(self.plan) else PASS
        link = _Link(index, fault, client)
        self._links.append(link)
        try:
            # The server must see connections in the order the client made them, as it
            # would without a proxy: connect upstream only after the previous one did.
            await previous.wait()
            if fault.kind == "blackhole":
                mine.set()
                self.injected["blackhole"] += 1
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while await client.receive_some(65536):
                        pass
                return
            try:
                link.upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            finally:
                mine.set()
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                nursery.start_soon(self._pump, link, "c2s", nursery)
                nursery.start_soon(self._pump, link, "s2c", nursery)
        finally:
            mine.set()
            link.released.set()
            link.done.set()
            if link.upstream is not None:
                await trio.aclose_forcefully(link.upstream)
            await trio.aclose_forcefully(client)

    async def _pump(self, link: _Link, direction: Direction, nursery: trio.Nursery) -> None:
        assert link.upstream is not None
        source, sink = (
            (link.client, link.upstream) if direction == "c2s" else (link.upstream, link.client)
        )
        try:
            while True:
                try:
                    data = await source.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                if not await self._forward(link, direction, bytes(data), sink, nursery):
                    nursery.cancel_scope.cancel()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        if direction == "c2s" and link.stalled and not link.released.is_set():
            # The client hung up while its bytes are held (a half-open path): they reach
            # the server late, then its FIN does; the server then closes its side, which
            # ends the s2c pump and the link.
            link.client_gone = True
            await link.released.wait()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await link.upstream.send_eof()
            return
        nursery.cancel_scope.cancel()  # one side hung up: pass it on to the other

    async def _forward(
        self,
        link: _Link,
        direction: Direction,
        data: bytes,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
    ) -> bool:
        """Forward ``data`` as the fault says; False when the connection must end now."""
        fault = link.fault
        if link.stalled and not link.released.is_set():
            link.held[direction] += data
            return True
        kind = fault.kind
        sent = link.sent[direction]
        triggers = kind in ("cut_fin", "cut_rst") or (kind == "stall" and not link.stalled)
        if triggers and direction == fault.direction and sent + len(data) > fault.after:
            head, tail = data[: fault.after - sent], data[fault.after - sent :]
            if head:
                await sink.send_all(head)
                link.sent[direction] += len(head)
            self.injected[kind] += 1
            if kind == "stall":
                link.stalled = True
                link.held[direction] += tail
                nursery.start_soon(self._stall, link)
                return True
            if kind == "cut_rst":
                _reset(link.client)
                assert link.upstream is not None
                _reset(link.upstream)
            return False
        if kind == "trickle" and direction == fault.direction and sent < fault.after:
            if sent == 0:
                self.injected["trickle"] += 1
            n = min(len(data), fault.after - sent)
            for i in range(n):
                await sink.send_all(data[i : i + 1])
                await trio.sleep(0)
            link.sent[direction] += n
            data = data[n:]
            if not data:
                return True
        elif kind == "delay" and direction == fault.direction:
            if sent == 0:
                self.injected["delay"] += 1
            assert fault.hold is not None
            await trio.sleep(fault.hold)
        await sink.send_all(data)
        link.sent[direction] += len(data)
        return True

    async def _stall(self, link: _Link) -> None:
        """End a stall after ``hold`` seconds or at release: deliver what it held, late and
        in order (the client's bytes to the server, the server's to a client still there),
        then let the connection forward again."""
        hold = link.fault.hold
        with trio.move_on_after(math.inf if hold is None else hold):
            await link.release.wait()
        assert link.upstream is not None
        try:
            # Bytes keep arriving (and being held) while the held ones are sent: loop until
            # nothing is left, then forwarding resumes with no await in between.
            while link.held["c2s"] or link.held["s2c"]:
                c2s, link.held["c2s"] = bytes(link.held["c2s"]), bytearray()
                if c2s:
                    await link.upstream.send_all(c2s)
                    self.late_bytes += len(c2s)
                s2c, link.held["s2c"] = bytes(link.held["s2c"]), bytearray()
                if s2c and not link.client_gone:
                    await link.client.send_all(s2c)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            link.released.set()
