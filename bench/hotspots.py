"""Where the time goes: cProfile, aggregated by package (fsm, python-statemachine, trio, ...).

    python bench/hotspots.py event    # one lifecycle event vs the raw engine (section 1)
    python bench/hotspots.py build    # a lifecycle and its first event vs a raw engine's
    python bench/hotspots.py open     # N connectors vs N bare WebSockets until OPEN (section 4;
                                      # the server runs in another process)
    python bench/hotspots.py open --gc-off   # the same without garbage-collector pauses

Profiling inflates call-heavy code more than the rest, so read the shares, not the
absolute times. Used for the analysis in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import pstats
import random
import time

from common import quiet_structlog

GROUPS = ("fsm/servers/reference/", "fsm/", "statemachine", "structlog", "trio_websocket",
          "wsproto", "h11", "trio")


def by_package(profile: cProfile.Profile) -> collections.Counter[str]:
    shares: collections.Counter[str] = collections.Counter()
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in (
        pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
    ):
        group = next((g for g in GROUPS if f"/{g}" in filename), None)
        if group is None:
            group = "builtins" if filename == "~" else "stdlib/other"
        shares[group] += tottime
    return shares


def show(title: str, shares: collections.Counter[str], per: int, unit: str) -> None:
    total = sum(shares.values())
    print(f"{title}: {total / per * 1e6:.1f} µs per {unit} (profiled)")
    for group, seconds in shares.most_common():
        print(f"  {group:16s} {seconds / per * 1e6:9.1f} µs  {seconds / total:6.1%}")


def profile_event(n: int) -> None:
    from shapes import RawMachine

    import fsm

    lc = fsm.ConnectionLifecycle(rng=random.Random(0))
    lc.connect()
    lc.ready()
    raw = RawMachine()
    raw.send("connect")
    raw.send("ready")
    for title, cycle in (
        ("ConnectionLifecycle", lambda: (lc.drop(100.0), lc.retry(), lc.ready())),
        ("raw python-statemachine", lambda: (raw.send("drop", uptime=100.0),
                                             raw.send("retry"), raw.send("ready"))),
    ):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            cycle()
        profile.disable()
        show(title, by_package(profile), 3 * n, "event")


def profile_build(n: int) -> None:
    from shapes import RawMachine

    import fsm

    for title, build in (
        ("ConnectionLifecycle + connect (no engine built: the shared one's cache)",
         lambda: fsm.ConnectionLifecycle(log_transitions=False).connect()),
        ("RawMachine() + connect", lambda: RawMachine().send("connect")),
    ):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            build()
        profile.disable()
        show(title, by_package(profile), n, "instance")


def profile_open(n: int) -> None:
    """N connectors vs N bare clients until OPEN, the server in another process."""
    import trio
    import trio_websocket
    from sockets import _Server, raise_file_limit

    from fsm import RetryPolicy
    from fsm.connector import open_connector

    raise_file_limit(n + 256)
    patient = RetryPolicy(connect_timeout=300.0)

    async def run(url: str, kind: str) -> tuple[cProfile.Profile, float]:
        opened = 0
        done = trio.Event()

        def arrived() -> None:
            nonlocal opened
            opened += 1
            if opened == n:
                done.set()

        async def connector(i: int) -> None:
            async with open_connector(url, session_id=f"c{kind}{i}", heartbeat_interval=None,
                                      policy=patient) as conn:
                await conn.connect()
                arrived()
                await trio.sleep_forever()

        async def bare(i: int) -> None:
            async with trio_websocket.open_websocket_url(f"{url}?session_id=b{kind}{i}") as ws:
                await ws.get_message()
                arrived()
                await trio.sleep_forever()

        async with trio.open_nursery() as clients:
            profile = cProfile.Profile()
            profile.enable()
            start = time.perf_counter()
            for i in range(n):
                clients.start_soon(connector if kind.startswith("connector") else bare, i)
            await done.wait()
            profile.disable()
            elapsed = time.perf_counter() - start
            clients.cancel_scope.cancel()
        return profile, elapsed

    with _Server() as server:
        trio.run(run, server.url, "connector-warm-up")
        for kind in ("bare", "connector"):
            profile, elapsed = trio.run(run, server.url, kind)
            shares = by_package(profile)
            show(f"{n} {kind} clients until OPEN ({elapsed:.2f} s profiled)", shares, n,
                 "connection")
            if kind == "connector":
                # Everything under the lifecycle's events: the decision cache (or the
                # shared engine on a miss), the callbacks, and our glue around them.
                events = sum(
                    cumtime for (filename, _line, func), (_cc, _nc, _tt, cumtime, _callers)
                    in pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
                    if filename.endswith("fsm/core/_lifecycle.py") and func == "_send"
                )
                total = sum(shares.values())
                print(f"  of which under ConnectionLifecycle._send (decided and run): "
                      f"{events / n * 1e6:.1f} µs  {events / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("what", choices=["event", "build", "open"])
    parser.add_argument("-n", type=int, default=0, help="iterations / connections")
    parser.add_argument("--gc-off", action="store_true",
                        help="disable the garbage collector, so that its pauses are not "
                        "charged to whatever function runs when one starts")
    args = parser.parse_args()
    quiet_structlog()
    if args.gc_off:
        gc.disable()
    if args.what == "event":
        profile_event(args.n or 1000)
    elif args.what == "build":
        profile_build(args.n or 200)
    else:
        profile_open(args.n or 200)


if __name__ == "__main__":
    main()
