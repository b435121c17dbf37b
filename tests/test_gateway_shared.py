"""Tests of the shared view of an upstream (fsm.servers.gateway._shared.UpstreamGate).

First the policy alone, fed with times and outcomes (it is sans-IO); then a fleet of real
connectors sharing one gate in front of one :class:`fsm.server.KernelServer`, over
in-memory streams on ``MockClock``, whose upstream goes away and comes back.
"""

from __future__ import annotations

import contextlib
import random
import re

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import fsm
from fsm import ConnState
from fsm.connector import Connector, StreamOpener
from fsm.core._frames import Frame
from fsm.gateway import Gateway
from fsm.server import KernelServer
from fsm.servers.gateway._shared import GatePolicy, UpstreamGate

PACE = GatePolicy(max_in_flight=4, rate=100.0)
SPACING = 1 / PACE.rate


def failing_gate(now: float = 0.0) -> UpstreamGate:
    """A gate that has just seen one fresh failure at ``now``."""
    gate = UpstreamGate(PACE, random.Random(0))
    assert gate.admit("scout", now) == 0.0
    gate.finished("scout", now, False)
    assert not gate.healthy
    return gate


# -- the policy alone ------------------------------------------------------------------


def test_gate_policy_rejects_bad_values() -> None:
    """Invalid GatePolicy fields raise ValueError or TypeError naming the field."""
    with pytest.raises(ValueError, match="max_in_flight"):
        GatePolicy(max_in_flight=0)
    with pytest.raises(ValueError, match="rate"):
        GatePolicy(rate=float("inf"))
    with pytest.raises(ValueError, match="busy_wait"):
        GatePolicy(busy_wait=-1)
    with pytest.raises(TypeError, match="probe"):
        GatePolicy(probe=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GatePolicy"):
        UpstreamGate(policy=PACE.rate)  # type: ignore[arg-type]


def test_healthy_gate_paces_dials_and_keeps_each_slot() -> None:
    """While healthy the first dial starts at once, later ones get slots 1/rate apart,
    and a session waking at its slot dials even though the pace moved on."""
    gate = UpstreamGate(PACE)
    assert gate.admit("a", 0.0) == 0.0
    delays = [gate.admit(name, 0.0) for name in "bcd"]
    assert delays == pytest.approx([SPACING, 2 * SPACING, 3 * SPACING])
    assert gate.waiting == 3
    gate.finished("a", 0.001, True)
    # "e" arrives later but before the pace is free: it queues behind "d".
    assert gate.admit("e", 0.005) == pytest.approx(4 * SPACING - 0.005)
    assert gate.admit("b", SPACING) == 0.0  # its own slot
    assert gate.in_flight == 1 and gate.waiting == 3


def test_healthy_gate_never_exceeds_in_flight_bound() -> None:
    """With every slot busy a session is deferred, and it dials once one frees."""
    gate = UpstreamGate(PACE)
    now = 0.0
    for i in range(PACE.max_in_flight):
        now += SPACING
        assert gate.admit(i, now) == 0.0
    late = gate.admit("late", now + SPACING)
    assert late > 0 and gate.in_flight == PACE.max_in_flight
    gate.finished(0, now + SPACING, True)
    assert gate.admit("late", now + SPACING + late) == 0.0
    assert gate.in_flight == PACE.max_in_flight


def test_failing_gate_sends_one_probe_per_shared_backoff() -> None:
    """After a failure only one dial at a time goes out, no sooner than the shared
    back-off; everyone else is given a slot behind the next probe."""
    gate = failing_gate()
    first_probe = gate.next_probe
    assert first_probe is not None
    assert 0.8 * 0.5 <= first_probe <= 0.5  # DEFAULT_PROBE: 0.5 s, jitter 0.2
    waits = {name: gate.admit(name, 0.1) for name in "abc"}
    assert waits["a"] == pytest.approx(first_probe - 0.1)
    assert waits["b"] == pytest.approx(first_probe + SPACING - 0.1)
    assert gate.in_flight == 0
    assert gate.admit("a", first_probe) == 0.0  # the probe
    # While it is out nobody else dials, whatever their slot says.
    assert gate.admit("b", first_probe + SPACING) > 0
    gate.finished("a", first_probe + 0.002, False)
    assert gate.failures == 2
    second_probe = gate.next_probe
    assert second_probe is not None
    assert second_probe - (first_probe + 0.002) >= 0.8 * 0.8  # the 2nd delay: 0.8 s
    assert gate.admit("c", first_probe + 2 * SPACING) > 0


def test_stale_failures_are_not_counted_again() -> None:
    """A burst of dials that were in flight together teaches the gate one failure."""
    gate = UpstreamGate(PACE)
    for i in range(3):
        assert gate.admit(i, i * SPACING) == 0.0
    for i in range(3):
        gate.finished(i, 0.05, False)
    assert gate.failures == 1
    assert gate.stats["failed"] == 1 and gate.stats["stale"] == 2


def test_probe_success_heals_and_waiters_return_at_the_pace() -> None:
    """A successful probe makes the gate healthy; sessions come back at their slots."""
    gate = failing_gate()
    probe = gate.next_probe
    assert probe is not None
    slots = {name: gate.admit(name, 0.1) + 0.1 for name in "pqrs"}
    assert gate.admit("p", slots["p"]) == 0.0
    gate.finished("p", slots["p"], True)
    assert gate.healthy and gate.next_probe is None
    for name in "qrs":
        assert gate.admit(name, slots[name]) == 0.0
        gate.finished(name, slots[name], True)
    assert sorted(slots.values()) == pytest.approx(
        [probe + k * SPACING for k in range(4)]
    )


def test_persons_connect_dials_first() -> None:
    """A person's Connect dials at once while failing, and with every slot busy it
    takes the first slot that frees, ahead of a session whose slot came earlier."""
    gate = failing_gate()
    assert gate.admit("person", 0.01, urgent=True) == 0.0
    gate.finished("person", 0.02, False)

    gate = UpstreamGate(PACE)
    for i in range(PACE.max_in_flight):
        assert gate.admit(i, i * SPACING) == 0.0
    queued = gate.admit("queued", 0.05)
    wait = gate.admit("person", 0.06, urgent=True)
    assert wait == pytest.approx(PACE.busy_wait)
    gate.finished(0, 0.07, True)
    # "queued" wakes first, but the freed slot is kept for the person.
    assert gate.admit("queued", 0.05 + queued) > 0
    assert gate.admit("person", 0.06 + wait) == 0.0


def test_forget_frees_a_waiting_session() -> None:
    """A session that stops waiting (closed, retried now) holds no slot."""
    gate = UpstreamGate(PACE)
    for i in range(PACE.max_in_flight):
        gate.admit(i, i * SPACING)
    gate.admit("person", 0.05, urgent=True)
    gate.admit("queued", 0.05)
    assert gate.waiting == 2
    gate.forget("person")
    gate.forget("queued")
    assert gate.waiting == 0
    gate.finished(0, 0.06, None)
    # The slot "queued" held is not handed on (a slot is a time on the pace), but the
    # freed dial slot is no longer kept for the person.
    assert gate.admit("next", 0.2) == 0.0


def test_gate_refuses_driver_mistakes() -> None:
    """Two dials for one session, or finishing one that never started, is a ValueError."""
    gate = UpstreamGate(PACE)
    gate.admit("a", 0.0)
    with pytest.raises(ValueError, match="already has a dial"):
        gate.admit("a", 0.0)
    with pytest.raises(ValueError, match="no dial in flight"):
        gate.finished("b", 0.0, True)


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=11),  # which session
            st.sampled_from(["admit", "urgent", "ok", "fail", "neutral", "forget"]),
            st.floats(min_value=0.0, max_value=3.0),  # time step
        ),
        max_size=200,
    )
)
def test_gate_invariants_under_any_sequence(ops: list[tuple[int, str, float]]) -> None:
    """Whatever the sessions do: never more dials in flight than the bound, every
    answer is 0 or a positive wait, and while failing at most one non-urgent dial."""
    gate = UpstreamGate(PACE, random.Random(1))
    now = 0.0
    flying: set[int] = set()
    urgent_out = 0
    for session, op, step in ops:
        now += step
        if op in ("admit", "urgent"):
            if session in flying:
                continue
            was_failing = not gate.healthy
            had = gate.in_flight
            delay = gate.admit(session, now, urgent=op == "urgent")
            assert delay >= 0.0 and delay < 60.0
            if delay == 0.0:
                flying.add(session)
                if was_failing and op == "admit":
                    assert had == 0 or urgent_out > 0
                if op == "urgent":
                    urgent_out += 1
        elif op == "forget":
            gate.forget(session)
        elif session in flying:
            flying.discard(session)
            urgent_out = max(0, urgent_out - 1)
            gate.finished(session, now, {"ok": True, "fail": False, "neutral": None}[op])
        assert gate.in_flight == len(flying) <= PACE.max_in_flight


def test_default_probe_schedule_is_short_and_never_gives_up() -> None:
    """The shared probe back-off starts at 0.5 s, caps at 5 s and has no give-up."""
    probe = GatePolicy().probe
    assert probe.nominal_delay(1) == 0.5
    assert probe.nominal_delay(50) == 5.0
    assert probe.max_attempts > 10**6
    assert isinstance(probe, fsm.RetryPolicy)


# -- a fleet of connectors sharing one gate, on virtual time ----------------------------

FLEET = 200
OUTAGE = 30.0
FLEET_GATE = GatePolicy(max_in_flight=8, rate=1000.0)


class Upstream:
    """One reference server behind in-memory streams, and a switch that makes it a dead
    host (every connect refused); every dial is recorded as (time, session id)."""

    def __init__(self, nursery: trio.Nursery, gate: UpstreamGate) -> None:
        self.server = KernelServer(handshake_timeout=30.0)
        self.nursery = nursery
        self.gate = gate
        self.down = False
        self.dials: list[tuple[float, str]] = []
        self.max_in_flight = 0

    def opener(self, session_id: str) -> StreamOpener:
        async def open_stream(host: str, port: int, secure: bool) -> trio.abc.Stream:
            self.dials.append((trio.current_time(), session_id))
            self.max_in_flight = max(self.max_in_flight, self.gate.in_flight)
            await trio.lowlevel.checkpoint()
            if self.down:
                raise ConnectionRefusedError(111, "Connection refused (simulated dead host)")
            client, server_side = trio.testing.memory_stream_pair()
            self.nursery.start_soon(self.server.handle_stream, server_side)
            return client

        return open_stream


def test_fleet_behind_one_gate_rides_out_an_outage() -> None:
    """200 sessions behind one gate lose their upstream for 30 virtual seconds: dials in
    flight never exceed the bound, the dead host sees about one probe per shared back-off,
    every deferral is an honest BACKING_OFF (same instant as the DIALING it replaces, no
    failure counted), a person's Connect dials next, and afterwards every session is
    OPEN with every edit the server's."""
    latest: dict[str, str] = {}
    defers: list[tuple[str, float, int]] = []
    deferred_at_dialing_time: list[bool] = []

    async def main() -> None:
        gate = UpstreamGate(FLEET_GATE, random.Random(7))
        async with trio.open_nursery() as nursery:
            upstream = Upstream(nursery, gate)
            async with contextlib.AsyncExitStack() as stack:
                conns = []
                for i in range(FLEET):
                    sid = f"fleet-{i}"
                    conn = await stack.enter_async_context(
                        fsm.open_connector(
                            "ws://kernel.invalid/ws", session_id=sid, rng=random.Random(i),
                            heartbeat_interval=None, open_stream=upstream.opener(sid),
                            dial_gate=gate,
                        )
                    )
                    watch(conn)
                    conns.append(conn)
                    conn.edit(f"{sid}-c", "x = 0")
                    latest[f"{sid}-c"] = "x = 0"
                with trio.fail_after(60):
                    async with trio.open_nursery() as starting:
                        for conn in conns:
                            starting.start_soon(conn.request, "run", {"cell_id": "none"})
                    for conn in conns:
                        await conn.wait_acked()
                assert upstream.max_in_flight <= FLEET_GATE.max_in_flight
                await trio.sleep(10)  # longer than min_uptime: the drop resets attempts

                upstream.down = True
                t_down = trio.current_time()
                await upstream.server.drop_all()
                await trio.sleep(OUTAGE / 2)
                for i, conn in enumerate(conns):  # edits while the upstream is away
                    conn.edit(f"fleet-{i}-c", f"x = {i}")
                    latest[f"fleet-{i}-c"] = f"x = {i}"
                assert all(c.state is ConnState.CONNECTING for c in conns)

                # A person's Connect on a session the gate is holding back dials next.
                person = next(c for c in conns if c.phase is fsm.Phase.BACKING_OFF)
                dials_before = len(upstream.dials)
                nursery.start_soon(person.connect)
                await trio.testing.wait_all_tasks_blocked()
                assert upstream.dials[dials_before][1] == person.session_id
                assert person.state is ConnState.CONNECTING  # failed: the host is down

                await trio.sleep_until(t_down + OUTAGE)
                outage_dials = [t for t, _ in upstream.dials if t_down <= t < t_down + OUTAGE]
                upstream.down = False
                t_up = trio.current_time()
                with trio.fail_after(120):
                    for conn in conns:
                        await conn.wait_acked()
                recovery = trio.current_time() - t_up

                # Alone, each of 200 sessions retries about 9 times in 30 s; behind the
                # gate the dead host sees the first burst and about one probe per
                # shared back-off (0.5 s growing to 5 s), plus the person's Connect.
                probes = 1 + sum(
                    1 for n in range(1, 100)
                    if sum(FLEET_GATE.probe.nominal_delay(k) * 0.8 for k in range(1, n)) < OUTAGE
                )
                assert len(outage_dials) <= FLEET_GATE.max_in_flight + probes + 1, outage_dials
                assert upstream.max_in_flight <= FLEET_GATE.max_in_flight
                assert all(c.state is ConnState.OPEN and not c.pending_edits for c in conns)
                assert all(c.close_reason is None for c in conns)
                for cell, code in latest.items():
                    assert upstream.server.cells.get(cell) == code, cell
                # Back within a probe's cap and one pass of the pace.
                assert recovery <= FLEET_GATE.probe.max_delay + FLEET / FLEET_GATE.rate + 1
                print(f"fleet: {len(outage_dials)} dials in the {OUTAGE:g} s outage, "
                      f"{len(defers)} deferrals, all OPEN {recovery:.2f} s after the return")
            nursery.cancel_scope.cancel()

    def watch(conn: Connector) -> None:
        last: list[tuple[float, fsm.Transition] | None] = [None]

        def observe(change: fsm.Transition) -> None:
            now = trio.current_time()
            if change.event == "defer":
                assert change.delay is not None and change.delay > 0
                assert change.phase is fsm.Phase.BACKING_OFF
                defers.append((conn.session_id, change.delay, change.attempt))
                # The DIALING it replaces began at this very instant, and no attempt
                # (link) was started for it; the failed-attempt count did not move.
                previous = last[0]
                assert previous is not None
                entered_at, entered = previous
                deferred_at_dialing_time.append(
                    entered_at == now
                    and entered.phase is fsm.Phase.DIALING
                    and entered.attempt == change.attempt
                    and conn._link is None
                )
            last[0] = (now, change)

        conn.lifecycle.observers.append(observe)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(defers) > FLEET  # the gate held sessions back, during the outage above all
    assert all(deferred_at_dialing_time)


def test_closing_a_gated_dial_frees_its_slot_at_once() -> None:
    """A dial abandoned by close() leaves the gate's count at once, so an immediate new
    cycle dials again (no "already in flight"), and the bound still holds."""
    gate = UpstreamGate(GatePolicy(max_in_flight=1))
    hung: list[float] = []

    async def black_hole(host: str, port: int, secure: bool) -> trio.abc.Stream:
        hung.append(trio.current_time())
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def main() -> None:
        async with fsm.open_connector(
            "ws://kernel.invalid/ws", open_stream=black_hole, dial_gate=gate,
            heartbeat_interval=None, rng=random.Random(0),
        ) as conn, trio.open_nursery() as nursery:

            async def connect() -> None:
                # Whether a connect() waiting across aclose() fails or waits for the
                # next cycle is not what this test is about.
                with contextlib.suppress(fsm.ConnectionFailed):
                    await conn.connect()

            nursery.start_soon(connect)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.in_flight == 1 and conn.phase is fsm.Phase.DIALING
            await conn.aclose()
            assert gate.in_flight == 0
            nursery.start_soon(connect)
            await trio.testing.wait_all_tasks_blocked()
            assert len(hung) == 2 and gate.in_flight == 1
            nursery.cancel_scope.cancel()
        assert gate.in_flight == 0 and gate.waiting == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- the gate inside a gateway -------------------------------------------------------------

GATEWAY_SESSIONS = 40


def run_gateway_outage(upstream_gate: GatePolicy | bool) -> dict[str, object]:
    """40 clients behind one Gateway (in-memory streams both ways, MockClock) whose
    upstream refuses every handshake (HTTP 503) for 20 s, then heals: what it saw."""
    seen: dict[str, object] = {}

    async def main() -> None:
        server = KernelServer(handshake_timeout=30.0)
        server.faults.refuse_handshakes = 10**9
        async with trio.open_nursery() as nursery:

            async def to_server(host: str, port: int, secure: bool) -> trio.abc.Stream:
                client, server_side = trio.testing.memory_stream_pair()
                nursery.start_soon(server.handle_stream, server_side)
                return client

            gateway = Gateway(
                "ws://kernel.invalid/ws", heartbeat_interval=None, open_stream=to_server,
                upstream_gate=upstream_gate,
            )
            await nursery.start(gateway.serve)

            async def to_gateway(host: str, port: int, secure: bool) -> trio.abc.Stream:
                client, server_side = trio.testing.memory_stream_pair()
                nursery.start_soon(gateway.handle_stream, server_side)
                return client

            async with contextlib.AsyncExitStack() as stack:
                conns = []
                for i in range(GATEWAY_SESSIONS):
                    conn = await stack.enter_async_context(fsm.open_connector(
                        gateway.url, session_id=f"gw-{i}", heartbeat_interval=None,
                        open_stream=to_gateway, rng=random.Random(i),
                    ))
                    conn.edit(f"gw-{i}-c", f"x = {i}")
                    conns.append(conn)
                with trio.fail_after(60):
                    for conn in conns:
                        await conn.connect()  # the client's connection to the gateway
                        await conn.request("run", {"cell_id": "none"})  # starts its upstream
                await trio.sleep(20)
                seen["handshakes_refused"] = server.handshakes
                upstream_frames = [
                    frame.data for frame in _drain(conns[-1]) if frame.op == "upstream"
                ]
                seen["deferred_frames"] = [
                    f for f in upstream_frames
                    if f["phase"] == "BACKING_OFF" and f["attempts"] == 0
                ]
                seen["max_attempts_seen"] = max(f["attempts"] for f in upstream_frames)
                seen["metrics_outage"] = gateway.metrics.render().decode()
                server.faults.refuse_handshakes = 0
                with trio.fail_after(600):
                    for conn in conns:
                        await conn.wait_acked()  # acked by the gateway: the kernel has it
                seen["cells"] = dict(server.cells)
                seen["counts"] = gateway.status()["counts"]
                seen["metrics_healed"] = gateway.metrics.render().decode()
            await gateway.shutdown()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return seen


def _drain(conn: Connector) -> list[Frame]:
    channel = conn.messages()
    frames = []
    while True:
        try:
            frames.append(channel.receive_nowait())
        except trio.WouldBlock:
            return frames


def test_gateway_sessions_share_one_view_of_their_upstream() -> None:
    """Inside a Gateway the gate is on by default: 40 sessions against a refusing upstream
    cost it a handful of handshakes instead of hundreds, a client sees its session's
    upstream BACKING_OFF with the gate's delay and no attempt counted, /metrics shows the
    gate probing with sessions waiting, and once the upstream heals every session is OPEN
    with its edit in the kernel and the gate is idle and healthy."""
    shared = run_gateway_outage(True)
    alone = run_gateway_outage(False)
    policy = GatePolicy()
    probes = sum(
        1 for n in range(1, 100)
        if sum(policy.probe.nominal_delay(k) * 0.8 for k in range(1, n)) < 20
    )
    assert shared["handshakes_refused"] <= policy.max_in_flight + probes
    assert alone["handshakes_refused"] >= 5 * GATEWAY_SESSIONS  # each retries on its own
    deferred = shared["deferred_frames"]
    assert isinstance(deferred, list) and deferred
    assert all(f["delay"] is not None and f["delay"] > 0 for f in deferred)
    outage, healed = str(shared["metrics_outage"]), str(shared["metrics_healed"])
    assert "fsm_gateway_upstream_gate_healthy 0.0" in outage
    waiting = re.search(r"^fsm_gateway_upstream_gate_waiting (\S+)$", outage, re.M)
    assert waiting is not None and float(waiting.group(1)) > 0
    assert "fsm_gateway_upstream_gate_healthy 1.0" in healed
    assert "fsm_gateway_upstream_gate_in_flight 0.0" in healed
    assert "fsm_gateway_upstream_gate_waiting 0.0" in healed
    assert "fsm_gateway_upstream_gate" not in str(alone["metrics_outage"])
    for seen in (shared, alone):
        assert seen["counts"] == {"OPEN": GATEWAY_SESSIONS}
        assert seen["cells"] == {f"gw-{i}-c": f"x = {i}" for i in range(GATEWAY_SESSIONS)}
