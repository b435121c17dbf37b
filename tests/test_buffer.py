"""Tests of EditBuffer: latest code per cell, kept until acknowledged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm import EditBuffer, EditBufferFull, EditTooLarge, FlushBatch, FlushFrame, LifecycleError
from fsm.core._frames import encode_frame

# -- recording edits ---------------------------------------------------------------------


def test_a_new_buffer_is_empty() -> None:
    """A new buffer holds nothing, has nothing in flight, and a default limit."""
    buffer = EditBuffer()
    assert len(buffer) == 0
    assert buffer.pending == {}
    assert buffer.unsent == {}
    assert buffer.in_flight_seqs == frozenset()
    assert buffer.limit == 10_000


def test_put_keeps_the_latest_code_per_cell_in_first_edit_order() -> None:
    """Re-editing a cell replaces its code but keeps the position of its first edit."""
    buffer = EditBuffer()
    buffer.put("b", "b1")
    buffer.put("a", "a1")
    buffer.put("c", "c1")
    buffer.put("b", "b2")
    buffer.put("a", "a2")
    assert list(buffer.pending.items()) == [("b", "b2"), ("a", "a2"), ("c", "c1")]
    assert buffer.unsent == buffer.pending
    assert len(buffer) == 3


def test_pending_is_a_copy() -> None:
    """Changing the dict pending returns does not change the buffer."""
    buffer = EditBuffer()
    buffer.put("a", "x")
    buffer.pending["a"] = "changed"
    buffer.pending.clear()
    assert buffer.pending == {"a": "x"}


def test_send_returns_increasing_sequence_numbers() -> None:
    """Each send returns a fresh, larger sequence number and keeps the edit pending."""
    buffer = EditBuffer()
    seqs = [buffer.send("a", "1"), buffer.send("b", "2"), buffer.send("a", "3")]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert buffer.pending == {"a": "3", "b": "2"}
    assert buffer.unsent == {}


# -- flushing ----------------------------------------------------------------------------


def test_take_flush_batches_every_pending_edit_under_one_seq() -> None:
    """take_flush puts every unsent edit in flight under one new seq, in cell order."""
    buffer = EditBuffer()
    buffer.put("b", "b1")
    buffer.put("a", "a1")
    buffer.put("b", "b2")
    batch = buffer.take_flush()
    assert isinstance(batch, FlushBatch)
    assert list(batch.codes.items()) == [("b", "b2"), ("a", "a1")]
    assert buffer.in_flight_seqs == frozenset({batch.seq})
    assert buffer.unsent == {}
    assert buffer.pending == {"b": "b2", "a": "a1"}


def test_take_flush_skips_edits_already_in_flight() -> None:
    """A flush carries only the unsent edits, not those already sent and awaiting an ack."""
    buffer = EditBuffer()
    sent = buffer.send("a", "a1")
    buffer.put("b", "b1")
    batch = buffer.take_flush()
    assert batch.codes == {"b": "b1"}
    assert buffer.in_flight_seqs == frozenset({sent, batch.seq})


def test_an_empty_flush_is_still_acknowledged_once() -> None:
    """A flush with nothing pending is an empty batch whose seq is acked once, then unknown."""
    buffer = EditBuffer()
    batch = buffer.take_flush()
    assert batch.codes == {}
    assert buffer.in_flight_seqs == frozenset()  # no edit waits on it
    assert buffer.ack(batch.seq) is True
    assert buffer.ack(batch.seq) is False
    assert buffer.in_flight_seqs == frozenset()


def test_flush_batches_get_fresh_seqs() -> None:
    """Successive flushes and sends never reuse a sequence number."""
    buffer = EditBuffer()
    seqs = []
    for i in range(5):
        buffer.put(f"c{i}", "x")
        seqs.append(buffer.take_flush().seq)
        seqs.append(buffer.send(f"s{i}", "y"))
    assert len(set(seqs)) == len(seqs)
    assert seqs == sorted(seqs)


# -- acknowledging ------------------------------------------------------------------------


def test_ack_removes_exactly_what_it_acknowledged() -> None:
    """ack(seq) forgets the edits sent under seq and nothing else."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    buffer.put("b", "b1")
    flush = buffer.take_flush()
    sent = buffer.send("c", "c1")
    buffer.put("d", "d1")
    assert buffer.ack(flush.seq) is True
    assert buffer.pending == {"c": "c1", "d": "d1"}
    assert buffer.in_flight_seqs == frozenset({sent})
    assert buffer.ack(sent) is True
    assert buffer.pending == {"d": "d1"}
    assert buffer.in_flight_seqs == frozenset()


def test_ack_keeps_an_edit_superseded_by_a_newer_send() -> None:
    """An ack for an older send of a cell keeps the cell when a newer send is in flight."""
    buffer = EditBuffer()
    buffer.put("a", "old")
    buffer.put("b", "b")
    flush = buffer.take_flush()
    newer = buffer.send("a", "new")
    assert buffer.ack(flush.seq) is True
    assert buffer.pending == {"a": "new"}
    assert buffer.ack(newer) is True
    assert buffer.pending == {}


def test_ack_keeps_an_edit_superseded_by_a_pending_edit() -> None:
    """An ack for a sent cell edited again since (not yet sent) keeps the newer pending code."""
    buffer = EditBuffer()
    seq = buffer.send("a", "old")
    buffer.put("a", "new")
    assert buffer.ack(seq) is True  # expected (it was sent), but it forgets nothing
    assert buffer.pending == {"a": "new"}
    assert buffer.unsent == {"a": "new"}


def test_ack_with_a_partly_superseded_batch_still_forgets_the_rest() -> None:
    """A batch whose cells were partly re-edited is still acknowledged for the others."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    buffer.put("b", "b1")
    flush = buffer.take_flush()
    buffer.put("a", "a2")
    assert buffer.ack(flush.seq) is True
    assert buffer.pending == {"a": "a2"}


@pytest.mark.parametrize("seq", [0, -1, 1, 99])
def test_ack_of_an_unknown_seq_returns_false(seq: int) -> None:
    """ack of a seq nothing waits on returns False and changes nothing."""
    buffer = EditBuffer()
    buffer.put("a", "x")
    assert buffer.ack(seq) is False
    assert buffer.pending == {"a": "x"}


def test_ack_twice_returns_false_the_second_time() -> None:
    """A seq is acknowledged once; a repeated ack returns False."""
    buffer = EditBuffer()
    seq = buffer.send("a", "x")
    assert buffer.ack(seq) is True
    assert buffer.ack(seq) is False


def test_a_cell_acked_then_edited_again_goes_to_the_end() -> None:
    """A cell forgotten after its ack starts a new entry at the end when edited again."""
    buffer = EditBuffer()
    seq = buffer.send("a", "1")
    buffer.put("b", "1")
    buffer.ack(seq)
    buffer.put("a", "2")
    assert list(buffer.pending) == ["b", "a"]


# -- requeueing ---------------------------------------------------------------------------


def test_requeue_returns_in_flight_edits_to_pending() -> None:
    """requeue makes every in-flight edit unsent again, and the next flush carries it."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    buffer.take_flush()
    buffer.send("b", "b1")
    buffer.requeue()
    assert buffer.in_flight_seqs == frozenset()
    assert buffer.unsent == {"a": "a1", "b": "b1"}
    again = buffer.take_flush()
    assert again.codes == {"a": "a1", "b": "b1"}
    assert buffer.ack(again.seq) is True
    assert buffer.pending == {}


def test_a_late_ack_for_a_requeued_seq_is_expected_and_forgets_nothing() -> None:
    """An ack arriving after requeue (a link closing gracefully) is known once, and the
    requeued edits stay pending: they go out again with the next flush."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    flush = buffer.take_flush()
    sent = buffer.send("b", "b1")
    buffer.requeue()
    assert buffer.ack(flush.seq) is True
    assert buffer.ack(sent) is True
    assert buffer.unsent == {"a": "a1", "b": "b1"}
    assert buffer.ack(flush.seq) is False  # each seq is acked once


def test_only_the_last_requeue_keeps_its_seqs_known() -> None:
    """Seqs retired by an earlier requeue are unknown after the next one: no link
    that could still ack them is left, and the record stays bounded."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    first = buffer.take_flush()
    buffer.requeue()
    second = buffer.take_flush()
    buffer.requeue()
    assert buffer.ack(first.seq) is False
    assert buffer.ack(second.seq) is True


def test_send_unsent_puts_each_pending_edit_in_flight_alone() -> None:
    """send_unsent gives every pending cell its own new seq; in-flight cells are left alone."""
    buffer = EditBuffer()
    in_flight = buffer.send("a", "a1")
    buffer.put("b", "b1")
    buffer.put("c", "c1")
    sent = buffer.send_unsent()
    assert [(cell, code) for _, cell, code in sent] == [("b", "b1"), ("c", "c1")]
    assert [seq for seq, _, _ in sent] == [in_flight + 1, in_flight + 2]
    assert buffer.unsent == {}
    assert buffer.send_unsent() == []
    assert buffer.ack(sent[0][0]) and buffer.pending == {"a": "a1", "c": "c1"}


# -- the limit ----------------------------------------------------------------------------


def test_limit_refuses_a_new_cell_and_drops_nothing() -> None:
    """At the limit a new cell raises EditBufferFull and every buffered edit is kept."""
    buffer = EditBuffer(limit=2)
    buffer.put("a", "1")
    buffer.send("b", "1")
    with pytest.raises(EditBufferFull, match="limit of 2") as info:
        buffer.put("c", "1")
    assert isinstance(info.value, LifecycleError)
    with pytest.raises(EditBufferFull):
        buffer.send("c", "1")
    assert buffer.pending == {"a": "1", "b": "1"}


def test_re_editing_a_cell_works_at_the_limit() -> None:
    """At the limit, a buffered cell can still be edited again, pending or sent."""
    buffer = EditBuffer(limit=2)
    buffer.put("a", "1")
    buffer.put("b", "1")
    buffer.put("a", "2")
    buffer.send("b", "2")
    assert buffer.pending == {"a": "2", "b": "2"}


def test_an_ack_makes_room_below_the_limit() -> None:
    """Once an ack frees a cell, a new cell fits again."""
    buffer = EditBuffer(limit=1)
    seq = buffer.send("a", "1")
    with pytest.raises(EditBufferFull):
        buffer.put("b", "1")
    buffer.ack(seq)
    buffer.put("b", "1")
    assert buffer.pending == {"b": "1"}


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "10", None])
def test_invalid_limit_raises_value_error(limit: Any) -> None:
    """A limit that is not an integer >= 1 raises ValueError."""
    with pytest.raises(ValueError, match="limit"):
        EditBuffer(limit)


# -- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_id", [1, None, b"a", ("a",), ""], ids=repr)
@pytest.mark.parametrize("method", ["put", "send"])
def test_cell_ids_must_be_non_empty_str(method: str, cell_id: Any) -> None:
    """A cell id that is not a non-empty str raises TypeError and records nothing."""
    buffer = EditBuffer()
    with pytest.raises(TypeError, match="cell_id"):
        getattr(buffer, method)(cell_id, "x")
    assert buffer.pending == {}
    assert buffer.in_flight_seqs == frozenset()


@pytest.mark.parametrize("code", [1, None, b"x", ["x"]], ids=repr)
@pytest.mark.parametrize("method", ["put", "send"])
def test_codes_must_be_str(method: str, code: Any) -> None:
    """A code that is not a str raises TypeError naming the cell and records nothing."""
    buffer = EditBuffer()
    buffer.put("a", "old")
    with pytest.raises(TypeError, match="'a'"):
        getattr(buffer, method)("a", code)
    assert buffer.pending == {"a": "old"}


def test_empty_code_is_a_valid_edit() -> None:
    """An empty string is a valid code (a cleared cell)."""
    buffer = EditBuffer()
    buffer.put("a", "")
    assert buffer.pending == {"a": ""}


# -- a property: nothing is ever lost -------------------------------------------------------

CELLS = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), CELLS, st.text(max_size=3)),
        st.tuples(st.just("send"), CELLS, st.text(max_size=3)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("deliver")),
        st.tuples(st.just("requeue")),
    ),
    max_size=40,
)


@given(OPS)
def test_no_edit_is_lost_whatever_the_order_of_operations(ops: list[tuple[Any, ...]]) -> None:
    """Every cell's latest code is either still pending or was delivered by an acked message."""
    buffer = EditBuffer()
    latest: dict[str, str] = {}
    server: dict[str, str] = {}
    wire: list[tuple[int, dict[str, str]]] = []  # sent, in order, not yet delivered
    for op in ops:
        if op[0] == "put":
            buffer.put(op[1], op[2])
            latest[op[1]] = op[2]
        elif op[0] == "send":
            wire.append((buffer.send(op[1], op[2]), {op[1]: op[2]}))
            latest[op[1]] = op[2]
        elif op[0] == "flush":
            batch = buffer.take_flush()
            wire.append((batch.seq, dict(batch.codes)))
        elif op[0] == "deliver" and wire:
            seq, codes = wire.pop(0)
            server.update(codes)
            buffer.ack(seq)
        elif op[0] == "requeue":
            wire.clear()  # the connection and whatever was on it are gone
            buffer.requeue()
        pending = buffer.pending
        assert set(pending) <= set(latest)
        for cell, code in latest.items():
            if cell in pending:
                assert pending[cell] == code
            else:
                assert server.get(cell) == code


# -- protocol v2: seqs ----------------------------------------------------------------------


def test_new_seqs_start_above_a_kernel_ready_seq() -> None:
    """After kernel-ready says seq 100, the flush and every later frame are numbered above it."""
    buffer = EditBuffer()
    buffer.put("a", "1")
    buffer.ready(seq=100)
    batch = buffer.take_flush()
    assert batch.seq == 101
    assert buffer.send("a", "2") == 102


def test_new_seqs_stay_above_the_clients_own_when_kernel_ready_says_less() -> None:
    """A kernel-ready seq below the client's last seq never makes a seq go back."""
    buffer = EditBuffer()
    sent = [buffer.send("a", str(n)) for n in range(5)]
    buffer.requeue()
    buffer.ready(seq=2)
    assert buffer.take_flush().seq == sent[-1] + 1


def test_seqs_are_assigned_when_content_leaves_the_buffer() -> None:
    """put takes no seq; the flush that carries it does, above every kernel-ready seq seen."""
    buffer = EditBuffer()
    buffer.put("a", "1")
    assert buffer.last_seq == 0
    buffer.ready(seq=7)
    buffer.ready(seq=3)  # a later, lower kernel-ready does not lower the floor
    assert buffer.take_flush().seq == 8


def test_a_peer_without_seqs_changes_no_numbering() -> None:
    """ready(seq=None) (marimo) neither moves the numbering nor detects a lost state."""
    buffer = EditBuffer()
    buffer.put("a", "1")
    first = buffer.take_flush()
    assert buffer.ack(first.seq)
    buffer.ready(seq=None)
    batch = buffer.take_flush()
    assert batch.seq == first.seq + 1
    assert batch.codes == {}


@pytest.mark.parametrize(
    ("seq", "size"), [(-1, None), (True, None), (2**53, None), ("1", None), (1.0, None),
                      (0, 10), (0, True), (0, 2.0)],
)  # fmt: skip
def test_values_no_kernel_ready_sends_are_refused(seq: Any, size: Any) -> None:
    """A seq outside [0, 2**53) or a frame limit too small for an empty flush raises ValueError."""
    buffer = EditBuffer()
    buffer.put("a", "1")
    with pytest.raises(ValueError, match=r"seq|max_frame_size"):
        buffer.ready(seq=seq, max_frame_size=size)
    assert buffer.max_frame_size == 1 << 20
    assert buffer.take_flush().seq == 1


# -- protocol v2: a server that lost its state ------------------------------------------------


def lost_state_buffer() -> tuple[EditBuffer, int]:
    """A buffer whose cells a and b were acknowledged, c acknowledged then edited again."""
    buffer = EditBuffer()
    buffer.put("a", "a1")
    buffer.put("b", "b1")
    buffer.put("c", "c1")
    first = buffer.take_flush()
    assert buffer.ack(first.seq)
    buffer.put("d", "d1")
    buffer.put("c", "c2")
    return buffer, first.seq


def test_a_kernel_ready_below_the_acked_seq_resends_every_cell() -> None:
    """A server that lost its state gets every cell ever edited, each with its latest code."""
    buffer, acked = lost_state_buffer()
    assert buffer.acknowledged == {"a": "a1", "b": "b1", "c": "c1"}
    buffer.ready(seq=acked - 1)
    batch = buffer.take_flush()
    assert batch.codes == {"a": "a1", "b": "b1", "c": "c2", "d": "d1"}
    assert list(batch.codes) == ["a", "b", "c", "d"]
    # Pending again until the new server acknowledges them.
    assert buffer.pending == batch.codes
    assert buffer.ack(batch.seq)
    assert buffer.pending == {}
    assert buffer.acknowledged == {"a": "a1", "b": "b1", "c": "c2", "d": "d1"}


@pytest.mark.parametrize("offset", [0, 1, 50])
def test_a_kernel_ready_at_or_above_the_acked_seq_resends_only_the_unacked(offset: int) -> None:
    """A server that kept its state (seq >= the highest acked) gets only unacknowledged edits."""
    buffer, acked = lost_state_buffer()
    buffer.ready(seq=acked + offset)
    assert buffer.take_flush().codes == {"d": "d1", "c": "c2"}


def test_the_full_resend_happens_once() -> None:
    """After the full resend, a later flush to the same server carries only what is unacked."""
    buffer, _ = lost_state_buffer()
    buffer.ready(seq=0)
    resent = buffer.take_flush()
    assert buffer.ack(resent.seq)
    buffer.put("e", "e1")
    buffer.ready(seq=resent.seq)
    assert buffer.take_flush().codes == {"e": "e1"}


def test_a_late_ack_of_a_retired_seq_counts_as_seen_acknowledged() -> None:
    """An ack for a seq sent before the last requeue raises the acked floor too."""
    buffer = EditBuffer()
    buffer.put("a", "1")
    batch = buffer.take_flush()
    buffer.requeue()
    assert buffer.ack(batch.seq) is True  # expected, forgets nothing
    buffer.ready(seq=0)
    assert buffer.take_flush().codes == {"a": "1"}


# -- flush batches under the frame limit ------------------------------------------------------


def frame_bytes(frame: FlushFrame, auto_run: bool | None = None) -> int:
    """Bytes of exactly what the reference protocol sends for ``frame``."""
    run = frame.auto_run if auto_run is None else auto_run
    data = {"seq": frame.seq, "codes": frame.codes, "auto_run": run}
    return len(encode_frame("instantiate", data).encode("utf-8"))


def empty_frame_bytes(seq: int) -> int:
    return len(encode_frame("instantiate", {"seq": seq, "codes": {}, "auto_run": False}))


def test_a_flush_over_the_limit_is_split_into_frames_in_cell_order() -> None:
    """Edits too many for one frame go out as several, each under the limit, in cell order."""
    buffer = EditBuffer(max_frame_size=2_000)
    codes = {f"cell-{n:03}": "x" * 90 for n in range(100)}
    for cell, code in codes.items():
        buffer.put(cell, code)
    batch = buffer.take_flush()
    assert len(batch.frames) > 1
    assert batch.codes == codes and list(batch.codes) == list(codes)
    assert all(frame_bytes(f) <= 2_000 for f in batch.frames)
    assert [f.auto_run for f in batch.frames] == [False] * (len(batch.frames) - 1) + [True]
    seqs = [f.seq for f in batch.frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert batch.seq == seqs[-1]
    assert buffer.in_flight_seqs == frozenset(seqs)


def test_frames_are_filled_right_up_to_the_limit() -> None:
    """A frame of exactly the limit is sent whole; one byte more starts the next frame."""
    cell_cost = len('"a":""')  # "a":"" with an empty code
    # Two cells: "a" and "b" with codes sized so the first frame is exactly the limit.
    code_a = "x" * 100
    code_b = "y" * 100
    seq = 1
    exact = empty_frame_bytes(seq) + (cell_cost + 100) * 2 + 1  # two entries and a comma
    for limit, frames in ((exact, 1), (exact - 1, 2)):
        buffer = EditBuffer(max_frame_size=limit)
        buffer.put("a", code_a)
        buffer.put("b", code_b)
        batch = buffer.take_flush()
        assert len(batch.frames) == frames, limit
        assert batch.codes == {"a": code_a, "b": code_b}
        if frames == 1:
            # Sized as if auto_run were false: exactly the limit; the last says true.
            assert frame_bytes(batch.frames[0], auto_run=False) == limit
            assert frame_bytes(batch.frames[0]) == limit - 1
        else:
            assert [list(f.codes) for f in batch.frames] == [["a"], ["b"]]


def test_frame_sizes_count_utf8_bytes_of_the_escaped_json() -> None:
    """Non-ASCII code is sized as the protocol encodes it (escaped JSON), never over the limit."""
    buffer = EditBuffer(max_frame_size=1_000)
    for n in range(40):
        buffer.put(f"c{n}", 'print("é ☃ 😀\\n\\t")' * 3)
    batch = buffer.take_flush()
    assert len(batch.frames) > 1
    assert all(frame_bytes(f) <= 1_000 for f in batch.frames)
    assert len(batch.codes) == 40


def test_an_empty_flush_is_one_frame_with_no_codes() -> None:
    """A flush with nothing pending is exactly one frame, no codes, auto_run true."""
    batch = EditBuffer().take_flush()
    assert len(batch.frames) == 1
    assert batch.frames[0].codes == {} and batch.frames[0].auto_run is True


def test_each_frame_is_acknowledged_on_its_own() -> None:
    """Acking one frame of a batch forgets exactly its cells; the others stay pending."""
    buffer = EditBuffer(max_frame_size=400)
    for n in range(6):
        buffer.put(f"c{n}", "z" * 100)
    batch = buffer.take_flush()
    first, *rest = batch.frames
    assert rest
    assert buffer.ack(first.seq)
    assert set(buffer.pending) == {c for f in rest for c in f.codes}


@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.text(max_size=300)), max_size=40),
    st.integers(min_value=500, max_value=3_000),
)
def test_every_frame_of_any_batch_fits_and_nothing_is_left_out(
    edits: list[tuple[str, str]], limit: int
) -> None:
    """Whatever the edits and the limit, the frames fit, merge to every unsent edit, in order."""
    buffer = EditBuffer()
    for cell, code in edits:
        buffer.put(cell, code)
    unsent = buffer.unsent
    buffer.ready(seq=0, max_frame_size=limit)
    batch = buffer.take_flush()
    assert all(frame_bytes(f) <= limit for f in batch.frames)
    carried = {c: code for c, code in unsent.items() if c not in batch.undeliverable}
    assert batch.codes == carried and list(batch.codes) == list(carried)
    for cell in batch.undeliverable:
        assert buffer.edit_size(cell, unsent[cell]) > limit


# -- edits too large for any frame --------------------------------------------------------------


@pytest.mark.parametrize("method", ["put", "send"])
def test_an_edit_too_large_for_a_frame_is_refused_at_the_call(method: str) -> None:
    """EditTooLarge names the cell, the size and the limit; the buffer is unchanged."""
    buffer = EditBuffer(max_frame_size=1_000)
    buffer.put("a", "small")
    seq_before = buffer.last_seq
    with pytest.raises(EditTooLarge) as info:
        getattr(buffer, method)("a", "x" * 1_000)
    error = info.value
    assert isinstance(error, LifecycleError) and isinstance(error, ValueError)
    assert (error.cell_id, error.limit) == ("a", 1_000)
    assert error.size == buffer.edit_size("a", "x" * 1_000) > 1_000
    assert "'a'" in str(error) and str(error.size) in str(error) and "1000" in str(error)
    assert buffer.pending == {"a": "small"}
    assert buffer.last_seq == seq_before


def test_the_largest_edit_accepted_fits_any_frame_that_carries_it() -> None:
    """An edit whose frame is exactly the limit is accepted and flushes; one byte more is not."""
    limit = 1_000
    buffer = EditBuffer(max_frame_size=limit)
    overhead = buffer.edit_size("a", "")
    fits = "x" * (limit - overhead)
    assert buffer.edit_size("a", fits) == limit
    buffer.put("a", fits)
    with pytest.raises(EditTooLarge):
        buffer.put("b", fits + "x")
    seq = buffer.send("a", fits)
    edit_frame = encode_frame("edit", {"seq": seq, "cell_id": "a", "code": fits})
    assert len(edit_frame) <= limit
    buffer.requeue()
    batch = buffer.take_flush()
    assert batch.undeliverable == () and frame_bytes(batch.frames[0]) <= limit


def test_escapes_count_towards_the_size_of_an_edit() -> None:
    """An edit of characters JSON escapes is sized escaped: 300 emoji are 3,602 bytes, not 300."""
    buffer = EditBuffer(max_frame_size=2_000)
    with pytest.raises(EditTooLarge) as info:
        buffer.put("a", "😀" * 300)
    assert info.value.size == buffer.edit_size("a", "") + 12 * 300


# -- an edit no frame can carry any more --------------------------------------------------------


def test_an_edit_a_lowered_limit_cannot_carry_is_reported_not_resent() -> None:
    """A kernel-ready lowering the limit below an accepted edit: reported, out of pending."""
    buffer = EditBuffer()
    buffer.put("big", "x" * 5_000)
    buffer.put("small", "y")
    buffer.ready(seq=0, max_frame_size=1_000)
    batch = buffer.take_flush()
    assert batch.undeliverable == ("big",)
    assert batch.codes == {"small": "y"}
    assert buffer.undeliverable == {"big": "x" * 5_000}
    assert buffer.pending == {"small": "y"}
    assert buffer.ack(batch.seq) and len(buffer) == 0
    # The same limit again: not resent, not reported again.
    buffer.requeue()
    buffer.ready(seq=batch.seq, max_frame_size=1_000)
    again = buffer.take_flush()
    assert again.undeliverable == () and again.codes == {}


def test_an_undeliverable_edit_goes_out_once_a_limit_allows_it() -> None:
    """A later kernel-ready with a limit large enough carries the undeliverable edit again."""
    buffer = EditBuffer()
    buffer.put("big", "x" * 5_000)
    buffer.ready(seq=0, max_frame_size=1_000)
    buffer.take_flush()
    buffer.requeue()
    buffer.ready(seq=0)  # 1 MiB again
    batch = buffer.take_flush()
    assert batch.codes == {"big": "x" * 5_000}
    assert buffer.undeliverable == {}


def test_a_new_edit_replaces_an_undeliverable_one() -> None:
    """Editing the cell again drops the undeliverable code: the new one is pending."""
    buffer = EditBuffer()
    buffer.put("big", "x" * 5_000)
    buffer.ready(seq=0, max_frame_size=1_000)
    buffer.take_flush()
    buffer.put("big", "short")
    assert buffer.undeliverable == {}
    assert buffer.pending == {"big": "short"}
