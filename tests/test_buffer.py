"""Tests of EditBuffer: latest code per cell, kept until acknowledged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm import EditBuffer, EditBufferFull, FlushBatch, LifecycleError

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
