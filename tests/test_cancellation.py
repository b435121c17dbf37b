"""Cancellation at every checkpoint of connect, flush, close and reconnect, systematically.

DESIGN.md section 8, invariant 8: "Cancellation at any point leaves a consistent state and
leaks no task or socket." Rather than cancelling at a few hand-picked places, each
scenario is run again and again on virtual time (``trio.testing.MockClock`` with
``autojump_threshold=0``, client and :class:`fsm.server.KernelServer` joined by
``trio.testing.memory_stream_pair()``), and a trio :class:`~trio.abc.Instrument` cancels
a cancel scope after exactly ``k`` task steps of ANY task (client, server or test) for
``k = 0, 1, 2, ...``, until a run completes its phase without being cancelled: that last
``k`` is the number of checkpoints in the phase, and each of them was cancelled once.
Trio's scheduler is seeded identically for every run, so run ``k + 1`` follows run ``k``
step for step up to the cancellation.

Two scopes are cancelled, each in a sweep of its own:

- ``block``: the scope enclosing the whole ``async with open_connector(...)`` block, so
  the connector's own tasks are cancelled wherever they are. The block must exit CLOSED
  (reason USER) with no task, no link, no timer and no stream left, and every edit must
  still be pending in the connector or acknowledged in ``server.cells``.
- ``call``: the scope around the public calls of the phase only (``connect()``,
  ``wait_acked()``, ``aclose()``). The connector must carry on undisturbed: it then
  settles OPEN with every edit acknowledged, and exits as cleanly as above.

The phases: (a) a lazy connect up to OPEN (attempt, handshake, kernel-ready), (b) the
flush of the edits buffered before connecting and its ack, (c) a graceful close from OPEN,
(d) the reconnect after ``server.drop_all()`` with an edit in flight. A smaller sweep of
(a) and (c) runs over real TCP on 127.0.0.1 and also checks that no ResourceWarning is
left. A last sweep replaces the cancellation by a user's "restart" (``aclose()`` then
``connect()``) at every step of a connect.

The number of checkpoints cancelled per scenario is printed (``pytest -s``), kept in
:data:`CHECKPOINTS`, and recomputed by :func:`checkpoint_counts` or by
``python tests/test_cancellation.py``.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import hypothesis  # noqa: F401  # its trio plugin makes trio's scheduling deterministic
import pytest
import trio
import trio.testing
from _connector_helpers import all_tasks, serving
from structlog.testing import capture_logs

import fsm
from fsm import CloseReason, ConnState
from fsm.connector import Connector, open_tcp
from fsm.server import Faults, KernelServer

URL = "ws://kernel.invalid/ws"
#: Round numbers and no jitter: every run follows the same schedule.
POLICY = fsm.RetryPolicy(
    max_attempts=25,
    initial_delay=1.0,
    multiplier=2.0,
    max_delay=8.0,
    jitter=0.0,
    connect_timeout=10.0,
    min_uptime=5.0,
)
#: The server must never give up on a connection by itself, or a leaked client stream
#: would be hidden by the server's own time-out (virtual time jumps to it at once).
SERVER_HANDSHAKE_TIMEOUT = 10.0**6
#: Seconds (virtual, or real on TCP) to wait for what must happen at once.
PROMPTLY = 5.0
#: An upper bound for k: a phase with more steps than this is a bug in the sweep itself.
MAX_STEPS = 5_000

#: Checkpoints cancelled per "scenario/scope" (or "scenario/scope/tcp"), as sweeps run.
CHECKPOINTS: dict[str, int] = {}

#: Log events that must never appear, whatever the cancellation: an error the driver did
#: not expect, or an event it fed the lifecycle in a state that has no transition for it
#: (a task reporting on a link that was abandoned meanwhile).
BAD_EVENTS = frozenset({"unexpected_error", "release_failed", "driver_event_rejected"})


# --------------------------------------------------------------------------- the instrument


class AfterSteps(trio.abc.Instrument):
    """Calls ``action`` once ``k`` task steps (of any task) have run since :meth:`arm`.

    ``k == 0`` calls it in :meth:`arm` itself, before any other task runs.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.armed = False
        self.steps = 0
        self.fired = False
        self.action: Callable[[], None] | None = None

    def arm(self) -> None:
        if self.fired or self.armed:
            return
        self.armed = True
        if self.k == 0:
            self._fire()

    def disarm(self) -> None:
        self.armed = False

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.armed:
            self.steps += 1
            if self.steps >= self.k:
                self._fire()

    def _fire(self) -> None:
        assert self.action is not None
        self.armed = False
        self.fired = True
        self.action()


def _seed_trio_scheduler(seed: int) -> None:
    """Make trio's batch shuffling repeat from run to run (a private knob; tests only)."""
    rng = getattr(getattr(trio._core, "_run", None), "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(seed)


# --------------------------------------------------------------------------- the harness


class TrackedStream(trio.abc.Stream):
    """A client stream that records whether it was closed."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@dataclass
class Ctx:
    """What a scenario's steps see."""

    conn: Connector
    server: KernelServer
    cut: AfterSteps
    #: The latest code the test gave each cell: what must never be lost.
    latest: dict[str, str] = field(default_factory=dict)

    def edit(self, cell_id: str, code: str) -> None:
        self.conn.edit(cell_id, code)
        self.latest[cell_id] = code


Step = Callable[[Ctx], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """``setup`` runs unarmed; ``phase`` arms the instrument, does its work, and disarms."""

    name: str
    setup: Step
    phase: Step


@dataclass
class RunResult:
    """Whether the action fired in the phase, and after how many steps (or the sweep's k)."""

    fired: bool
    steps: int


def lost_edits(ctx: Ctx) -> dict[str, str]:
    """Edits whose latest code is neither pending in the connector nor in ``server.cells``."""
    pending = ctx.conn.pending_edits
    lost: dict[str, str] = {}
    for cell_id, code in ctx.latest.items():
        if cell_id in pending:
            if pending[cell_id] != code:
                lost[cell_id] = code
        elif ctx.server.cells.get(cell_id) != code:
            lost[cell_id] = code
    return lost


def check_consistent(conn: Connector) -> None:
    """The state is one of the five and the derived flags agree with it."""
    state = conn.state
    assert state in set(ConnState)
    assert conn.can_interact == (state in (ConnState.NOT_STARTED, ConnState.OPEN))
    assert conn.is_not_started == (state is ConnState.NOT_STARTED)
    assert (conn.close_reason is not None) == (state is ConnState.CLOSED)


async def heal(ctx: Ctx) -> None:
    """Reconnect if needed (a no-op when OPEN), edit once more, wait until all is acked."""
    await ctx.conn.connect()
    ctx.edit("healed", "yes")
    await ctx.conn.wait_acked()


async def _run(
    scenario: Scenario,
    scope: str,
    k: int,
    *,
    tcp: bool = False,
    action: Callable[[Ctx], Callable[[], None]] | None = None,
    server: KernelServer | None = None,
) -> RunResult:
    """One run of ``scenario``; after ``k`` steps ``action(ctx)()`` runs (default: cancel)."""
    cut = AfterSteps(k)
    trio.lowlevel.add_instrument(cut)
    srv = server if server is not None else KernelServer(handshake_timeout=SERVER_HANDSHAKE_TIMEOUT)
    streams: list[TrackedStream] = []
    async with trio.open_nursery() as server_nursery:
        serve = serving(srv) if tcp else nullcontext_async()
        async with serve:

            async def opener(host: str, port: int, secure: bool) -> trio.abc.Stream:
                if tcp:
                    inner = await open_tcp(host, port, secure)
                else:
                    inner, server_side = trio.testing.memory_stream_pair()
                    server_nursery.start_soon(srv.handle_stream, server_side)
                stream = TrackedStream(inner)
                streams.append(stream)
                return stream

            await trio.testing.wait_all_tasks_blocked()
            before = all_tasks()
            victim = trio.CancelScope()
            ctx: Ctx | None = None
            outer: AbstractContextManager[object] = victim if scope == "block" else nullcontext()
            with outer:
                async with fsm.open_connector(
                    srv.url if tcp else URL,
                    open_stream=opener,
                    policy=POLICY,
                    rng=random.Random(0),
                    session_id="cancel-sweep",
                    heartbeat_interval=30.0,
                    heartbeat_timeout=10.0,
                    close_timeout=2.0,
                ) as conn:
                    ctx = Ctx(conn, srv, cut)
                    cut.action = action(ctx) if action is not None else victim.cancel
                    await scenario.setup(ctx)
                    if scope == "block":
                        await scenario.phase(ctx)
                    else:
                        with victim:
                            await scenario.phase(ctx)
                        cut.disarm()
                        check_consistent(conn)
                        with trio.fail_after(600 if not tcp else PROMPTLY):
                            await heal(ctx)
                        assert conn.state is ConnState.OPEN and conn.pending_edits == {}
                        assert lost_edits(ctx) == {}
            trio.lowlevel.remove_instrument(cut)
            assert ctx is not None
            # The block exited: CLOSED, nothing in flight, no task, no stream, no edit lost.
            assert conn.state is ConnState.CLOSED
            assert conn.close_reason is CloseReason.USER
            check_consistent(conn)
            assert conn._link is None and conn._timer is None
            assert conn._nursery is not None and not conn._nursery.child_tasks
            assert all(s.closed for s in streams), "a client stream was left open"
            with trio.fail_after(PROMPTLY):
                await srv.wait_until(lambda s: s.tcp_connections == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert all_tasks() == before, "a task outlived the connector"
            assert lost_edits(ctx) == {}
        server_nursery.cancel_scope.cancel()
    return RunResult(fired=cut.fired, steps=cut.steps)


class nullcontext_async:
    """``contextlib.nullcontext`` for ``async with``, typed for mypy."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def run_once(
    scenario: Scenario,
    scope: str,
    k: int,
    *,
    tcp: bool = False,
    action: Callable[[Ctx], Callable[[], None]] | None = None,
    server_factory: Callable[[], KernelServer] | None = None,
    seed: int = 0,
) -> RunResult:
    """One run, in its own ``trio.run`` (virtual time unless ``tcp``), with logs checked."""
    _seed_trio_scheduler(seed)
    result: list[RunResult] = []

    async def main() -> None:
        with trio.fail_after(24 * 3600 if not tcp else 30):
            server = server_factory() if server_factory is not None else None
            result.append(await _run(scenario, scope, k, tcp=tcp, action=action, server=server))

    with capture_logs() as logs:
        if tcp:
            trio.run(main)
        else:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    bad = [e for e in logs if e["event"] in BAD_EVENTS]
    assert bad == [], bad
    return result[0]


def sweep(
    scenario: Scenario,
    scope: str,
    *,
    tcp: bool = False,
    action: Callable[[Ctx], Callable[[], None]] | None = None,
    server_factory: Callable[[], KernelServer] | None = None,
    seed: int = 0,
) -> RunResult:
    """Run ``scenario`` with k = 0, 1, 2, ... until the action no longer fires in the phase.

    That last k, the number of checkpoints cancelled, is returned as ``steps``, recorded in
    :data:`CHECKPOINTS` and printed.
    """
    for k in range(MAX_STEPS):
        try:
            outcome = run_once(
                scenario,
                scope,
                k,
                tcp=tcp,
                action=action,
                server_factory=server_factory,
                seed=seed,
            )
        except BaseException as exc:
            exc.add_note(
                f"scenario {scenario.name!r}, scope {scope!r}, seed {seed}: "
                f"action after k={k} steps"
            )
            raise
        if not outcome.fired:
            key = f"{scenario.name}/{scope}" + ("/tcp" if tcp else "")
            key += f"/seed={seed}" if seed else ""
            CHECKPOINTS[key] = k
            print(f"cancellation sweep {key}: {k} checkpoints")
            outcome.steps = k
            return outcome
    raise AssertionError(f"{scenario.name}: more than {MAX_STEPS} steps")


# --------------------------------------------------------------------------- the scenarios


async def _buffer_two_edits(ctx: Ctx) -> None:
    ctx.edit("a", "1")
    ctx.edit("b", "2")


async def _connect_phase(ctx: Ctx) -> None:
    ctx.cut.arm()
    await ctx.conn.connect()
    ctx.cut.disarm()


async def _flush_phase(ctx: Ctx) -> None:
    # Armed by the transition into OPEN: exactly when the flush is handed to the sender.
    def arm_on_open(change: fsm.Transition) -> None:
        if change.target is ConnState.OPEN:
            ctx.cut.arm()

    ctx.conn.lifecycle.observers.append(arm_on_open)
    try:
        await ctx.conn.connect()
        await ctx.conn.wait_acked()
        ctx.cut.disarm()
    finally:
        ctx.conn.lifecycle.observers.remove(arm_on_open)


async def _open_with_one_in_flight(ctx: Ctx) -> None:
    ctx.edit("a", "1")
    await ctx.conn.connect()
    await ctx.conn.wait_acked()
    ctx.edit("b", "2")  # in flight when the phase starts


async def _close_phase(ctx: Ctx) -> None:
    ctx.cut.arm()
    await ctx.conn.aclose()
    ctx.cut.disarm()


async def _reconnect_phase(ctx: Ctx) -> None:
    ctx.cut.arm()
    await ctx.server.drop_all()
    ctx.edit("c", "3")  # made while reconnecting
    await ctx.conn.wait_acked()
    ctx.cut.disarm()


SCENARIOS = {
    "connect": Scenario("connect", _buffer_two_edits, _connect_phase),
    "flush": Scenario("flush", _buffer_two_edits, _flush_phase),
    "close": Scenario("close", _open_with_one_in_flight, _close_phase),
    "reconnect": Scenario("reconnect", _open_with_one_in_flight, _reconnect_phase),
}


@pytest.mark.parametrize("scope", ["block", "call"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_cancellation_at_every_checkpoint(name: str, scope: str) -> None:
    """Cancelling at each checkpoint of the phase leaves a consistent, leak-free connector."""
    outcome = sweep(SCENARIOS[name], scope)
    assert outcome.steps >= 10  # a phase of real work, not a sweep that never armed


@pytest.mark.parametrize("name", ["connect", "close"])
def test_cancellation_at_every_checkpoint_over_tcp(name: str) -> None:
    """Over real TCP on 127.0.0.1, cancelling at each step leaks no socket: no ResourceWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        outcome = sweep(SCENARIOS[name], "block", tcp=True)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    assert outcome.steps >= 10


def _restart(ctx: Ctx) -> Callable[[], None]:
    """The action of the restart sweep: wake a task that does ``aclose()`` then ``connect()``."""
    go = trio.Event()

    async def restart() -> None:
        await go.wait()
        await ctx.conn.aclose()
        with contextlib.suppress(fsm.ConnectionFailed):
            await ctx.conn.connect()

    assert ctx.conn._nursery is not None
    ctx.conn._nursery.start_soon(restart)
    return go.set


async def _connect_racing_a_restart(ctx: Ctx) -> None:
    ctx.cut.arm()
    # Closed by the restart before it reached OPEN: the restart connects again.
    with contextlib.suppress(fsm.ConnectionFailed):
        await ctx.conn.connect()
    ctx.cut.disarm()
    with trio.fail_after(600):
        await heal(ctx)


def _refuse_the_second_handshake() -> KernelServer:
    server = KernelServer(handshake_timeout=SERVER_HANDSHAKE_TIMEOUT)
    server.fault_plan.extend([Faults(), Faults(refuse_handshakes=1)])
    return server


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restart_at_every_step_of_a_connect(seed: int) -> None:
    """aclose() then connect() at any step of a connect ends OPEN with every edit acked."""
    # Each scheduler seed gives other interleavings of the restarting task and the link
    # task; the second handshake is refused, so a cycle wrongly made OPEN by the old link
    # would have no link left to get out of it (the bug this sweep found).
    outcome = sweep(
        Scenario("restart", _buffer_two_edits, _connect_racing_a_restart),
        "block",
        action=_restart,
        server_factory=_refuse_the_second_handshake,
        seed=seed,
    )
    assert outcome.steps >= 10


def checkpoint_counts() -> dict[str, int]:
    """Run every sweep on virtual time; return the checkpoints cancelled per scenario/scope."""
    for scenario in SCENARIOS.values():
        for scope in ("block", "call"):
            sweep(scenario, scope)
    return dict(CHECKPOINTS)


if __name__ == "__main__":  # pragma: no cover - a convenience for the README's figures
    started = time.perf_counter()
    counts = checkpoint_counts()
    for key, value in counts.items():
        print(f"{key:20} {value:5}")
    total = sum(counts.values())
    runs = total + len(counts)  # each sweep ends with one run that is not cancelled
    print(f"{total} checkpoints cancelled in {runs} runs, {time.perf_counter() - started:.1f} s")
