"""No edit lost, end to end, under byte-level faults (invariants 3 and 5 of DESIGN section 8).

Each *schedule* is drawn from one seed: a plan of faults for the fault proxy
(tests/faultproxy.py: cuts mid-frame with FIN and RST, half-open stalls whose held bytes
reach the server late, trickled bytes, delayed chunks, a black hole) and a client script
(edits, pauses, a person's Connect, the server losing its state). A real connector talks
through the proxy to a real :class:`fsm.server.KernelServer`, and every schedule checks:

- once the client settles OPEN with nothing pending, the server holds exactly the
  client's latest code for every edited cell (invariant 5);
- the same again after every byte a stall held back has been delivered to the server;
- no attempt stays DIALING longer than the connect time-out (plus scheduling slack);
- no internal-error log event (``unexpected_error``, ``observer_failed``, ...).

Many schedules run at once in one trio run. ``FSM_FAULT_SCHEDULES=N`` sets how many
(default 500), ``FSM_FAULT_SEED=S`` replays one (with its log printed), and
``FSM_FAULT_BASE=B`` starts from seed B. Under ``HYPOTHESIS_PROFILE=ci`` (or ``CI``) the seeds
are 0..N-1 on every run; otherwise the base seed is random and printed with any failure.
A replay repeats the schedule's faults and edits; the timing of real sockets does not repeat.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from _connector_helpers import wait_settled_acked, wait_state
from faultproxy import KINDS, ConnFault, FaultProxy, random_plan
from structlog.testing import capture_logs

import fsm
from fsm.server import KernelServer

HEARTBEAT_INTERVAL = 0.1
HEARTBEAT_TIMEOUT = 0.15
POLICY = fsm.RetryPolicy(
    max_attempts=25,
    initial_delay=0.005,
    max_delay=0.05,
    connect_timeout=1.0,
    min_uptime=0.2,
)
#: Slack on top of the connect time-out and the event loop's measured lateness.
DIALING_SLACK = 0.5
#: Loop turns between an attempt's deadline and the transition that ends its DIALING.
LATE_TURNS = 3
#: How often the lateness monitor wakes up.
LAG_PROBE = 0.02
#: How many schedules run at once.
CONCURRENCY = 32
#: Log events that mean a bug of the library, whatever the faults.
INTERNAL_ERRORS = frozenset(
    {
        "unexpected_error",
        "observer_failed",
        "driver_event_rejected",
        "release_failed",
        "connection_error",  # the server's: anything but a peer going away
    }
)
#: Bound for one schedule, from start to its last check.
SCHEDULE_LIMIT = 30.0


def _ci() -> bool:
    return os.environ.get("HYPOTHESIS_PROFILE") == "ci" or bool(os.environ.get("CI"))


def seeds() -> list[int]:
    """The seeds of this run (see the module docstring)."""
    if "FSM_FAULT_SEED" in os.environ:
        return [int(os.environ["FSM_FAULT_SEED"])]
    count = int(os.environ.get("FSM_FAULT_SCHEDULES", "500"))
    if "FSM_FAULT_BASE" in os.environ:
        base = int(os.environ["FSM_FAULT_BASE"])
    else:
        base = 0 if _ci() else random.SystemRandom().randrange(10**6)
    return list(range(base, base + count))


@dataclass
class Step:
    """One action of a client script."""

    kind: str  # "edit", "pause", "connect", "lose_state"
    cell: str = ""
    code: str = ""
    seconds: float = 0.0


def random_script(rng: random.Random, seed: int) -> list[Step]:
    """Edits to a few cells (now and then a large one), pauses, a Connect, a state loss."""
    cells = [f"c{i}" for i in range(rng.randint(1, 5))]
    steps: list[Step] = []
    version = 0
    for _ in range(rng.randint(3, 16)):
        roll = rng.random()
        if roll < 0.6:
            version += 1
            cell = rng.choice(cells)
            code = f"# {seed}/{cell}/{version}\n"
            if rng.random() < 0.15:
                code += "x" * rng.randint(1_000, 40_000)  # spans many TCP segments
            steps.append(Step("edit", cell, code))
        elif roll < 0.9:
            steps.append(Step("pause", seconds=rng.uniform(0, 0.15)))
        elif roll < 0.97:
            steps.append(Step("connect"))
        else:
            steps.append(Step("lose_state"))
    # Lazy: nothing connects until a Connect; every script has one somewhere.
    if not any(s.kind == "connect" for s in steps):
        steps.insert(rng.randint(0, len(steps)), Step("connect"))
    return steps


@dataclass
class Outcome:
    """What one schedule did and found."""

    seed: int
    plan: list[ConnFault]
    fence: bool = True
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    edits: int = 0
    cells_checked: int = 0
    late_bytes: int = 0
    lost_state: int = 0
    #: Codes the server did not apply: frames from a fenced connection, stale seqs.
    fenced_frames: int = 0
    stale_codes: int = 0
    #: (entered, left) of every DIALING phase, on trio's clock.
    dialing: list[tuple[float, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def _settle(conn: Any, outcome: Outcome) -> None:
    """Wait until OPEN with nothing pending; a person presses Connect after a give-up."""
    while not await wait_settled_acked(conn):
        if conn.close_reason is not fsm.CloseReason.GAVE_UP:
            cause = conn.lifecycle.last_cause
            outcome.problems.append(f"settled CLOSED({conn.close_reason}): {cause}")
        try:
            await conn.connect()
        except fsm.ConnectionFailed:
            continue


def _check_cells(
    server: KernelServer, expected: dict[str, str], when: str, outcome: Outcome
) -> None:
    wrong = {c: server.cells.get(c) for c, code in expected.items() if server.cells.get(c) != code}
    if wrong:
        outcome.problems.append(
            f"{when}: server holds other code for {sorted(wrong)}: "
            + ", ".join(f"{c}={(v or '')[:30]!r} want {want[:30]!r}"
                        for c, v in wrong.items() for want in [expected[c]])
        )
    outcome.cells_checked += len(expected)


async def run_schedule(seed: int) -> Outcome:
    """Run the schedule of ``seed`` end to end; see the module docstring."""
    rng = random.Random(seed)
    plan = random_plan(rng, stall=HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT)
    script = random_script(rng, seed)
    # Half the schedules run against a server that does not fence older connections, so
    # late frames are read and only the seqs keep them from overwriting newer code.
    fence = rng.random() < 0.5
    outcome = Outcome(seed, plan, fence=fence)
    server = KernelServer(close_timeout=0.3, handshake_timeout=2.0, fence=fence)
    dialing_since: list[float] = []

    def observe(change: fsm.Transition) -> None:
        now = trio.current_time()
        if dialing_since:
            outcome.dialing.append((dialing_since.pop(), now))
        if change.target is fsm.ConnState.CONNECTING and change.phase is fsm.Phase.DIALING:
            dialing_since.append(now)

    with trio.fail_after(SCHEDULE_LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            proxy = FaultProxy(server.port, plan)
            await nursery.start(proxy.serve)
            async with fsm.open_connector(
                f"ws://127.0.0.1:{proxy.port}/ws",
                session_id=f"fp-{seed}",
                policy=POLICY,
                rng=random.Random(seed),
                heartbeat_interval=HEARTBEAT_INTERVAL,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                close_timeout=0.3,
            ) as conn:
                conn.lifecycle.observers.append(observe)
                expected: dict[str, str] = {}
                opened_before_loss = -1

                async def press_connect() -> None:
                    with contextlib.suppress(fsm.ConnectionFailed):
                        await conn.connect()  # if it fails, the settle below presses again

                async with trio.open_nursery() as script_nursery:
                    for step in script:
                        if step.kind == "edit":
                            conn.edit(step.cell, step.code)
                            expected[step.cell] = step.code
                            outcome.edits += 1
                        elif step.kind == "pause":
                            await trio.sleep(step.seconds)  # the script's own timing
                        elif step.kind == "connect":
                            script_nursery.start_soon(press_connect)
                        elif step.kind == "lose_state":
                            outcome.lost_state += 1
                            opened_before_loss = server.connections_opened
                            await server.lose_state()
                    await _settle(conn, outcome)
                    while server.connections_opened <= opened_before_loss:
                        # Still OPEN on the connection the state loss reset, with nothing
                        # pending: the client has not noticed yet. Settle on the next one.
                        await wait_state(conn, fsm.ConnState.CONNECTING, fsm.ConnState.CLOSED)
                        await _settle(conn, outcome)
                    _check_cells(server, expected, "settled", outcome)
                    await proxy.release_all()
                    await _settle(conn, outcome)
                    _check_cells(server, expected, "after late bytes", outcome)
                    script_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    if dialing_since:
        outcome.dialing.append((dialing_since[0], trio.current_time()))
    outcome.faults = proxy.injected
    outcome.late_bytes = proxy.late_bytes
    for state in server.sessions.values():
        outcome.fenced_frames += state.fenced_frames
        outcome.stale_codes += state.stale_codes
    return outcome


class LagMonitor:
    """Measures how late the event loop wakes a sleeping task, over time.

    Hundreds of connections share one trio thread (on 2 shared cores), so a time-out can
    fire late by however late the loop runs; the DIALING bound allows for exactly that.
    """

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (woke at, lateness)

    async def run(self) -> None:
        while True:
            asked = trio.current_time() + LAG_PROBE
            await trio.sleep_until(asked)
            now = trio.current_time()
            self.samples.append((now, now - asked))

    def worst(self, start: float, end: float) -> float:
        """The worst lateness seen from ``start`` to one probe after ``end``."""
        return max((lag for t, lag in self.samples if start <= t <= end + LAG_PROBE), default=0.0)


def _dialing_problems(outcome: Outcome, lag: LagMonitor) -> list[str]:
    """Every DIALING phase longer than the connect time-out plus the loop's lateness then."""
    problems = []
    for start, end in outcome.dialing:
        # The time-out fires a loop turn late, and the attempt's clean-up takes a few
        # more turns before the failure is reported: each turn as late as the loop runs.
        allowed = POLICY.connect_timeout + LATE_TURNS * lag.worst(start, end) + DIALING_SLACK
        if end - start > allowed:
            problems.append(f"DIALING for {end - start:.2f} s (allowed {allowed:.2f} s)")
    return problems


def _log_problems(logs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Internal-error log events, by session id."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for entry in logs:
        level = entry.get("log_level")
        if entry.get("event") in INTERNAL_ERRORS or level in ("error", "critical"):
            found[str(entry.get("session_id"))].append(f"{entry.get('event')}: {entry}")
    return found


async def test_random_fault_schedules_lose_no_edit() -> None:
    """Under every random fault schedule the server ends with exactly the client's latest
    code for every edited cell, at settle and after every late byte, no attempt overstays
    DIALING, and nothing logs an internal error."""
    run = seeds()
    outcomes: list[Outcome] = []
    limiter = trio.CapacityLimiter(CONCURRENCY)
    started = trio.current_time()

    async def one(seed: int) -> None:
        async with limiter:
            try:
                outcomes.append(await run_schedule(seed))
            except trio.TooSlowError:
                failed = Outcome(seed, [])
                failed.problems.append(f"schedule did not finish within {SCHEDULE_LIMIT:g} s")
                outcomes.append(failed)

    lag = LagMonitor()
    with capture_logs() as logs:
        async with trio.open_nursery() as monitor:
            monitor.start_soon(lag.run)
            async with trio.open_nursery() as nursery:
                for seed in run:
                    nursery.start_soon(one, seed)
            monitor.cancel_scope.cancel()
    elapsed = trio.current_time() - started
    by_session = _log_problems(logs)
    for outcome in outcomes:
        outcome.problems.extend(by_session.get(f"fp-{outcome.seed}", []))
        outcome.problems.extend(_dialing_problems(outcome, lag))
    failed = [o for o in outcomes if o.problems]
    faults: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        faults.update(outcome.faults)
    summary = (
        f"{len(outcomes)} schedules (seeds {run[0]}..{run[-1]}) in {elapsed:.1f} s: "
        f"faults {dict(sorted(faults.items()))}, {sum(o.edits for o in outcomes)} edits, "
        f"{sum(o.cells_checked for o in outcomes)} cell checks, "
        f"{sum(o.late_bytes for o in outcomes)} late bytes, "
        f"{sum(o.fenced_frames for o in outcomes)} frames on fenced connections and "
        f"{sum(o.stale_codes for o in outcomes)} stale codes not applied, "
        f"{sum(o.lost_state for o in outcomes)} state losses, "
        f"longest DIALING {max((e - s for o in outcomes for s, e in o.dialing), default=0):.2f} s, "
        f"event loop late by up to {max((g for _, g in lag.samples), default=0):.2f} s"
    )
    print(summary)
    if len(run) == 1:
        for entry in logs:
            print(entry)
    if failed:
        # The first failure's story, as the logs tell it (client and server side).
        first = f"fp-{failed[0].seed}"
        story = [
            " ".join(f"{k}={v}" for k, v in e.items() if k not in ("session_id", "log_level"))
            for e in logs
            if e.get("session_id") == first and e.get("log_level") != "debug"
        ]
        print(f"log of {first}:", *story[-80:], sep="\n  ")
    assert not failed, summary + "\n" + "\n".join(
        f"FSM_FAULT_SEED={o.seed} fence={o.fence} plan={o.plan}: " + "; ".join(o.problems[:5])
        for o in failed[:10]
    )
    assert len(outcomes) == len(run)
    if len(run) >= 100:
        # The schedules really injected every kind of fault.
        assert set(KINDS) <= set(faults), faults


@pytest.mark.parametrize("kind", KINDS)
def test_random_plans_cover_every_fault_kind(kind: str) -> None:
    """Across 100 seeds, random_plan draws every kind of fault."""
    drawn = {f.kind for seed in range(100) for f in random_plan(random.Random(seed))}
    assert kind in drawn


# --------------------------------------------------------------------------- the scenarios


async def test_a_late_stale_frame_after_reconnect_never_overwrites_newer_code() -> None:
    """Scenario 1: an edit sent on a path that went half-open, delivered to the server only
    after the client reconnected, re-flushed and had a newer edit of the same cell acked,
    leaves the server holding the newer code."""
    server = KernelServer(cells={"x": "v0"}, close_timeout=5.0)
    with trio.fail_after(SCHEDULE_LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            proxy = FaultProxy(server.port)
            await nursery.start(proxy.serve)
            async with fsm.open_connector(
                f"ws://127.0.0.1:{proxy.port}/ws",
                session_id="scenario-1",
                policy=POLICY,
                rng=random.Random(1),
                heartbeat_interval=HEARTBEAT_INTERVAL,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                close_timeout=0.3,
            ) as conn:
                changes = conn.transitions()
                await conn.connect()
                await conn.wait_acked()
                proxy.stall_now()
                conn.edit("x", "v1")  # held on the half-open path
                async for change in changes:
                    if change.event == "drop":
                        break  # the heartbeat gave up on the stalled connection
                await conn.wait_acked()  # reconnected, v1 flushed again and acked
                assert server.cells == {"x": "v1"}
                conn.edit("x", "v2")
                await conn.wait_acked()
                assert server.cells == {"x": "v2"}
                await proxy.release_all()  # the stale v1 frame reaches the server now
                assert proxy.late_bytes > 0
                await conn.wait_acked()
                assert conn.state is fsm.ConnState.OPEN
                assert server.cells == {"x": "v2"}
                await changes.aclose()
            nursery.cancel_scope.cancel()


async def test_offline_edits_over_a_frame_limit_all_arrive_and_a_too_large_one_is_refused() -> None:
    """Scenario 2: 1,200 cells of 1 KB edited offline (1.2 MB, over the 1 MiB frame limit)
    all reach the server in several acknowledged frames; a 2 MiB cell is refused at edit()
    with EditTooLarge and blocks nothing."""
    code = "#" * 1_000
    with trio.fail_after(SCHEDULE_LIMIT):
        async with trio.open_nursery() as nursery:
            server = KernelServer()
            await nursery.start(server.serve)
            async with fsm.open_connector(
                server.url, policy=POLICY, rng=random.Random(2), heartbeat_interval=None
            ) as conn:
                for i in range(1_200):
                    conn.edit(f"cell-{i:04}", f"{code}{i}")
                with pytest.raises(fsm.EditTooLarge) as refused:
                    conn.edit("huge", "x" * (2 << 20))
                assert refused.value.cell_id == "huge"
                assert refused.value.limit == 1 << 20
                assert "huge" not in conn.pending_edits
                await conn.connect()
                await conn.wait_acked()
                assert len(server.cells) == 1_200
                assert all(server.cells[f"cell-{i:04}"] == f"{code}{i}" for i in range(1_200))
                instantiates = [f for _, f in server.received if f.op == "instantiate"]
                assert len(instantiates) >= 2
                assert [f.data["auto_run"] for f in instantiates] == [False] * (
                    len(instantiates) - 1
                ) + [True]
                assert server.client_close_codes == []
                assert server.connections_opened == 1
            nursery.cancel_scope.cancel()


async def test_a_server_that_lost_its_state_gets_the_whole_document() -> None:
    """After the server restarts without its state, the client's next flush carries every
    cell it edited (acknowledged before or not), so the server holds the whole document."""
    with trio.fail_after(SCHEDULE_LIMIT):
        async with trio.open_nursery() as nursery:
            server = KernelServer(cells={"a": "initial"})
            await nursery.start(server.serve)
            async with fsm.open_connector(
                server.url,
                session_id="lost",
                policy=POLICY,
                rng=random.Random(3),
                heartbeat_interval=None,
            ) as conn:
                conn.edit("a", "a1")
                conn.edit("b", "b1")
                await conn.connect()
                await conn.wait_acked()
                assert conn.pending_edits == {}
                await server.lose_state()
                conn.edit("c", "c1")
                await server.wait_until(lambda s: s.connections_opened >= 2)
                await conn.wait_acked()
                assert server.cells == {"a": "a1", "b": "b1", "c": "c1"}
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the proxy itself


class Sink:
    """A TCP server that records, per connection, the bytes received and how it ended."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.endings: list[str] = []  # "eof" or "reset", per connection
        self.port = 0
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[Sink] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = bytearray()
        self.received.append(data)
        self._wake()
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
                self._wake()
            self.endings.append("eof")
        except trio.BrokenResourceError:
            self.endings.append("reset")
        self._wake()

    async def until(self, predicate: Any) -> None:
        while not predicate(self):
            await self.changed.wait()


async def _through_proxy(fault: ConnFault, payload: bytes) -> tuple[Sink, FaultProxy, bytes]:
    """Send ``payload`` through a proxy applying ``fault``; returns what the client read."""
    sink = Sink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        proxy = FaultProxy(sink.port, [fault])
        await nursery.start(proxy.serve)
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        read = b""
        async with client:
            await client.send_all(payload)
            if fault.kind in ("cut_fin", "cut_rst"):
                with contextlib.suppress(trio.BrokenResourceError):
                    read = bytes(await client.receive_some(100))  # the proxy hung up
            elif fault.kind == "stall":
                await sink.until(lambda s: s.received and len(s.received[0]) >= fault.after)
                assert bytes(sink.received[0]) == payload[: fault.after]
                await proxy.release_all()
                await sink.until(lambda s: len(s.received[0]) == len(payload))
            elif fault.kind != "blackhole":
                await sink.until(lambda s: s.received and len(s.received[0]) == len(payload))
        if fault.kind != "blackhole":
            await sink.until(lambda s: s.endings)
        nursery.cancel_scope.cancel()
    return sink, proxy, read


@pytest.mark.parametrize("kind", ["cut_fin", "cut_rst"])
async def test_a_cut_forwards_exactly_its_offset_then_hangs_up(kind: str) -> None:
    """A cut forwards exactly ``after`` bytes, then ends both sides: with a FIN (the server
    sees EOF) or with a reset (the server sees the connection reset)."""
    with trio.fail_after(10):
        sink, proxy, read = await _through_proxy(ConnFault(kind, 37), bytes(range(200)))  # type: ignore[arg-type]
    assert bytes(sink.received[0]) == bytes(range(37))
    assert sink.endings == ["eof" if kind == "cut_fin" else "reset"]
    assert read == b"" and proxy.injected == {kind: 1}


async def test_a_stall_holds_the_bytes_and_delivers_them_late_in_order() -> None:
    """A stall forwards ``after`` bytes, holds the rest, and delivers them, in order, only
    when released."""
    payload = bytes(range(256)) * 4
    with trio.fail_after(10):
        sink, proxy, _ = await _through_proxy(ConnFault("stall", 100, "c2s", None), payload)
    assert bytes(sink.received[0]) == payload
    assert proxy.late_bytes == len(payload) - 100
    assert proxy.injected == {"stall": 1}


@pytest.mark.parametrize(
    "fault", [ConnFault("trickle", 50), ConnFault("delay", 0, "c2s", 0.05), ConnFault()]
)
async def test_trickled_delayed_and_passed_bytes_arrive_intact(fault: ConnFault) -> None:
    """Trickled, delayed and untouched connections deliver every byte, in order."""
    payload = b"0123456789" * 30
    with trio.fail_after(10):
        sink, proxy, _ = await _through_proxy(fault, payload)
    assert bytes(sink.received[0]) == payload
    assert proxy.injected == ({fault.kind: 1} if fault.kind != "pass" else {})


async def test_a_blackhole_accepts_and_never_connects_upstream() -> None:
    """A black hole takes the client's bytes and never opens a connection to the server."""
    with trio.fail_after(10):
        sink, proxy, _ = await _through_proxy(ConnFault("blackhole"), b"GET / HTTP/1.1\r\n\r\n")
    assert sink.received == []
    assert proxy.injected == {"blackhole": 1}
