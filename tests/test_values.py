"""The immutable records (effects, flush batches, transitions) behave like frozen dataclasses."""

from __future__ import annotations

import copy
import pickle

import pytest

import fsm
from fsm import (
    Backoff,
    ConnState,
    Dial,
    Flush,
    FlushBatch,
    FlushFrame,
    HangUp,
    Phase,
    SendEdit,
    Transition,
)

SAMPLES = [
    Dial(attempt=1, timeout=10.0),
    Backoff(attempt=2, delay=0.25),
    Flush(FlushBatch(3, {"a": "x = 1"})),
    SendEdit(seq=4, cell_id="a", code="x = 2"),
    HangUp(graceful=True),
    FlushBatch(5, {}),
    FlushFrame(seq=6, codes={"a": "x"}, auto_run=False),
    FlushBatch((FlushFrame(7, {"a": "x"}, False), FlushFrame(8, {}, True)), undeliverable=("b",)),
    Transition(
        source=ConnState.OPEN,
        target=ConnState.CONNECTING,
        event="drop",
        attempt=0,
        delay=0.5,
        phase=Phase.BACKING_OFF,
        cause="reset",
    ),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_records_compare_by_type_and_fields(value: object) -> None:
    """A record equals a copy of itself and nothing of another type with the same fields."""
    assert value == copy.copy(value)
    assert value == copy.deepcopy(value)
    assert value != tuple(getattr(value, name) for name in type(value).__match_args__)
    assert value != object()


def test_records_of_different_types_with_equal_fields_differ() -> None:
    """Dial(1, 2.0) and Backoff(1, 2.0) are different effects."""
    assert Dial(1, 2.0) != Backoff(1, 2.0)
    assert len({Dial(1, 2.0), Backoff(1, 2.0), Dial(1, 2.0)}) == 2


def test_records_with_a_different_field_differ() -> None:
    """Changing any one field makes a record unequal."""
    assert SendEdit(1, "a", "x") != SendEdit(2, "a", "x")
    assert SendEdit(1, "a", "x") != SendEdit(1, "b", "x")
    assert SendEdit(1, "a", "x") != SendEdit(1, "a", "y")


@pytest.mark.parametrize(
    "value", [v for v in SAMPLES if not isinstance(v, Flush | FlushBatch | FlushFrame)],
    ids=lambda v: type(v).__name__,
)  # fmt: skip
def test_hashable_records_hash_by_value(value: object) -> None:
    """Equal records hash alike, so they work as set members and dict keys."""
    assert hash(value) == hash(copy.deepcopy(value))
    assert {value: 1}[copy.deepcopy(value)] == 1


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_records_are_immutable(value: object) -> None:
    """Assigning or deleting a field raises AttributeError; no new attribute can be added."""
    name = type(value).__match_args__[0]
    with pytest.raises(AttributeError, match="immutable"):
        setattr(value, name, 99)
    with pytest.raises(AttributeError, match="immutable"):
        delattr(value, name)
    with pytest.raises(AttributeError):
        value.extra = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_records_survive_pickling(value: object) -> None:
    """A pickled and unpickled record equals the original."""
    assert pickle.loads(pickle.dumps(value)) == value


def test_repr_names_every_field_in_order() -> None:
    """The repr reads like a dataclass's: the class name, then field=value in order."""
    assert repr(SendEdit(4, "a", "x = 2")) == "SendEdit(seq=4, cell_id='a', code='x = 2')"
    assert repr(HangUp(graceful=False)) == "HangUp(graceful=False)"
    assert repr(Transition(ConnState.OPEN, ConnState.CLOSING, "close")).startswith(
        "Transition(source=<ConnState.OPEN: 'OPEN'>, target=<ConnState.CLOSING: 'CLOSING'>, "
        "event='close', attempt=0, delay=None"
    )


def test_records_match_by_position_and_keyword() -> None:
    """A match statement destructures effects by position, in field order."""

    def describe(effect: fsm.Effect) -> str:
        match effect:
            case Dial(attempt, timeout):
                return f"dial {attempt} within {timeout}"
            case Backoff(delay=delay):
                return f"wait {delay}"
            case SendEdit(seq, cell_id, code):
                return f"send {seq} {cell_id} {code}"
            case _:
                return "other"

    assert describe(Dial(2, 10.0)) == "dial 2 within 10.0"
    assert describe(Backoff(1, 0.5)) == "wait 0.5"
    assert describe(SendEdit(7, "c", "y")) == "send 7 c y"
    assert describe(HangUp(True)) == "other"


def test_transition_fields_default_like_before() -> None:
    """Transition's optional fields default to 0 and None."""
    change = Transition(ConnState.NOT_STARTED, ConnState.CONNECTING, "connect")
    assert (change.attempt, change.delay, change.reason, change.phase, change.cause) == (
        0, None, None, None, None
    )  # fmt: skip


def test_a_flush_batch_reads_as_one_merged_batch() -> None:
    """FlushBatch.codes merges its frames' codes in order and FlushBatch.seq is the last frame's."""
    frames = (FlushFrame(7, {"a": "1", "b": "2"}, False), FlushFrame(8, {"c": "3"}, True))
    batch = FlushBatch(frames)
    assert batch.codes == {"a": "1", "b": "2", "c": "3"}
    assert list(batch.codes) == ["a", "b", "c"]
    assert batch.seq == 8
    assert pickle.loads(pickle.dumps(batch)) == batch


def test_the_short_form_of_a_flush_batch_is_one_running_frame() -> None:
    """FlushBatch(seq, codes) is a batch of exactly one frame with auto_run true."""
    assert FlushBatch(3, {"a": "x"}).frames == (FlushFrame(3, {"a": "x"}, True),)


def test_a_flush_batch_has_at_least_one_frame() -> None:
    """A batch of no frames raises ValueError: even an empty flush is one frame."""
    with pytest.raises(ValueError, match="at least one frame"):
        FlushBatch(())
