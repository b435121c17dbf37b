"""Property-based testing with hypothesis: any history of faults, then a healthy server.

The code under test is ``settle``, a driver loop of the kind you write when you embed
the sans-IO core in your own I/O (see "Embedding"). Run with pytest or as a script.
"""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

import fsm
from fsm import ConnState, Flush, Phase

EVENTS = ["connect", "request", "ready", "fail", "retry", "drop", "reject", "shutdown",
          "close", "close_finished"]


# --8<-- [start:driver]
def settle(lc: fsm.ConnectionLifecycle) -> list[fsm.Effect]:
    """The code under test: connect, and drive the core against a healthy server."""
    effects = lc.connect()
    while lc.state is not ConnState.OPEN:
        if lc.state is ConnState.CLOSING:
            effects += lc.close_finished()  # the graceful close ends...
        elif lc.phase is Phase.BACKING_OFF:
            effects += lc.retry()  # ...the back-off timer fires...
        else:
            effects += lc.ready()  # ...and the server answers.
    return effects
# --8<-- [end:driver]


def send(lc: fsm.ConnectionLifecycle, event: str) -> None:
    """Send one event, as a faulty network and an impatient user would."""
    try:
        if event == "drop":
            lc.drop(uptime=0.0)
        else:
            getattr(lc, event)()
    except (fsm.InvalidTransition, fsm.NotConnected):
        pass  # not allowed in this state: refused, and the state is unchanged


# --8<-- [start:property]
cell_ids = st.sampled_from(["a", "b", "c"])
edits = st.lists(st.tuples(cell_ids, st.text(max_size=5)), max_size=6)


@settings(max_examples=50, deadline=None)  # engine events cost ~200 µs: no per-example deadline
@given(history=st.lists(st.sampled_from(EVENTS), max_size=30), edits=edits)
def test_connect_always_recovers_and_loses_no_edit(
    history: list[str], edits: list[tuple[str, str]]
) -> None:
    """Whatever happened before, connecting reaches OPEN with every edit sent once."""
    lc = fsm.ConnectionLifecycle(
        fsm.RetryPolicy(max_attempts=3), random.Random(0), log_transitions=False
    )
    for event in history:
        send(lc, event)
        assert lc.can_interact == (lc.state in (ConnState.NOT_STARTED, ConnState.OPEN))
    for cell_id, code in edits:
        lc.edit(cell_id, code)

    effects = settle(lc)

    assert lc.state is ConnState.OPEN
    assert lc.pending_edits == dict(edits)  # the latest code per cell, none acknowledged
    assert sum(isinstance(effect, Flush) for effect in effects) <= 1
# --8<-- [end:property]


if __name__ == "__main__":
    test_connect_always_recovers_and_loses_no_edit()
    print("property: ok")
