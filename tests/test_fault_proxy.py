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
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

import fsm
from fsm.server import KernelServer
from tests._connector_helpers import wait_settled_acked
from tests.faultproxy import KINDS, ConnFault, FaultProxy, random_plan

HEARTBEAT_INTERVAL = 0.05
HEARTBEAT_TIMEOUT = 0.1
POLICY = fsm.RetryPolicy(
    max_attempts=25,
    initial_delay=0.005,
    max_delay=0.05,
    connect_timeout=0.5,
    min_uptime=0.2,
)
#: Scheduling slack on top of the connect time-out (2 shared cores, hundreds of tasks).
DIALING_SLACK = 1.0
#: How many schedules run at once.
CONCURRENCY = 40
#: Log events that mean a bug of the library, whatever the faults.
INTERNAL_ERRORS = frozenset(
    {"unexpected_error", "observer_failed", "driver_event_rejected", "release_failed"}
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
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    edits: int = 0
    cells_checked: int = 0
    late_bytes: int = 0
    lost_state: int = 0
    dialing_max: float = 0.0
    problems: list[str] = field(default_factory=list)


async def _settle(conn: Any, outcome: Outcome) -> None:
    """Wait until OPEN with nothing pending; a person presses Connect after a give-up."""
    while not await wait_settled_acked(conn):
        if conn.close_reason is not fsm.CloseReason.GAVE_UP:
            outcome.problems.append(f"settled CLOSED({conn.close_reason}): {conn.lifecycle.last_cause}")
        try:
            await conn.connect()
        except fsm.ConnectionFailed:
            continue


def _check_cells(server: KernelServer, expected: dict[str, str], when: str, outcome: Outcome) -> None:
    wrong = {c: server.cells.get(c) for c, code in expected.items() if server.cells.get(c) != code}
    if wrong:
        outcome.problems.append(
            f"{when}: server holds other code for {sorted(wrong)}: "
            + ", ".join(f"{c}={(v or '')[:30]!r} want {expected[c][:30]!r}" for c, v in wrong.items())
        )
    outcome.cells_checked += len(expected)


async def run_schedule(seed: int) -> Outcome:
    """Run the schedule of ``seed`` end to end; see the module docstring."""
    rng = random.Random(seed)
    plan = random_plan(rng, stall=HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT)
    script = random_script(rng, seed)
    outcome = Outcome(seed, plan)
    server = KernelServer(close_timeout=0.3, handshake_timeout=2.0)
    dialing_since: list[float] = []

    def observe(change: fsm.Transition) -> None:
        now = trio.current_time()
        if dialing_since:
            outcome.dialing_max = max(outcome.dialing_max, now - dialing_since.pop())
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

                async def press_connect() -> None:
                    try:
                        await conn.connect()
                    except fsm.ConnectionFailed:
                        pass  # the settle below presses it again

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
                            await server.lose_state()
                    await _settle(conn, outcome)
                    _check_cells(server, expected, "settled", outcome)
                    await proxy.release_all()
                    await _settle(conn, outcome)
                    _check_cells(server, expected, "after late bytes", outcome)
                    script_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    if dialing_since:
        outcome.dialing_max = max(outcome.dialing_max, trio.current_time() - dialing_since[0])
    if outcome.dialing_max > POLICY.connect_timeout + DIALING_SLACK:
        outcome.problems.append(f"DIALING for {outcome.dialing_max:.2f} s")
    outcome.faults = proxy.injected
    outcome.late_bytes = proxy.late_bytes
    return outcome


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

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            for seed in run:
                nursery.start_soon(one, seed)
    elapsed = trio.current_time() - started
    by_session = _log_problems(logs)
    for outcome in outcomes:
        outcome.problems.extend(by_session.get(f"fp-{outcome.seed}", []))
    failed = [o for o in outcomes if o.problems]
    faults: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        faults.update(outcome.faults)
    summary = (
        f"{len(outcomes)} schedules (seeds {run[0]}..{run[-1]}) in {elapsed:.1f} s: "
        f"faults {dict(sorted(faults.items()))}, {sum(o.edits for o in outcomes)} edits, "
        f"{sum(o.cells_checked for o in outcomes)} cell checks, "
        f"{sum(o.late_bytes for o in outcomes)} late bytes, "
        f"{sum(o.lost_state for o in outcomes)} state losses, "
        f"longest DIALING {max(o.dialing_max for o in outcomes):.2f} s"
    )
    print(summary)
    if len(run) == 1:
        for entry in logs:
            print(entry)
    assert not failed, summary + "\n" + "\n".join(
        f"FSM_FAULT_SEED={o.seed} plan={o.plan}: " + "; ".join(o.problems[:5]) for o in failed[:10]
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
