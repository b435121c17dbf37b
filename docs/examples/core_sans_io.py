"""The sans-IO core: events in, effects out; no sockets, no clock, no trio."""

import random

import fsm
from fsm import Backoff, ConnState, Dial, Flush, HangUp, Phase, SendEdit

# --8<-- [start:core]
lc = fsm.ConnectionLifecycle(
    policy=fsm.RetryPolicy(max_attempts=3, jitter=0),  # no jitter: delays are exact
    rng=random.Random(0),
    log_transitions=False,
)
lc.edit("c1", "x = 1")  # NOT_STARTED: buffered
assert lc.state is ConnState.NOT_STARTED and lc.can_interact and lc.is_not_started

assert lc.connect() == [Dial(attempt=1, timeout=10.0)]  # start attempt 1 within 10 s
assert lc.state is ConnState.CONNECTING and lc.phase is Phase.DIALING and not lc.can_interact

assert lc.fail("refused") == [Backoff(attempt=1, delay=1.0)]  # wait 1 s, then retry()
assert lc.retry() == [Dial(attempt=2, timeout=10.0)]

[flush] = lc.ready()  # OPEN: the edits made so far go out in one batch
assert isinstance(flush, Flush) and flush.batch.codes == {"c1": "x = 1"}
assert lc.state is ConnState.OPEN and lc.attempts == 1

assert lc.edit("c2", "y = 2") == SendEdit(seq=2, cell_id="c2", code="y = 2")  # sent now
assert lc.pending_edits == {"c1": "x = 1", "c2": "y = 2"}  # until acknowledged
assert lc.ack(flush.batch.seq) and lc.ack(2) and lc.pending_edits == {}

assert lc.close() == [HangUp(graceful=True)]  # OPEN -> CLOSING
assert lc.close_finished() == [] and lc.state is ConnState.CLOSED
assert lc.close_reason is fsm.CloseReason.USER
# --8<-- [end:core]

# --8<-- [start:give-up]
lc.connect()  # a new cycle from CLOSED
for _ in range(2):
    lc.fail()
    lc.retry()
assert lc.fail() == []  # the third failure of max_attempts=3: no more attempts
assert lc.state is ConnState.CLOSED and lc.close_reason is fsm.CloseReason.GAVE_UP
assert lc.connect() == [Dial(attempt=1, timeout=10.0)]  # and connect() always recovers
# --8<-- [end:give-up]

print("sans-IO core: ok")
