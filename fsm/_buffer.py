"""The edit buffer: every edit is kept until the server acknowledges it.

Theory of operation. The buffer keeps one entry per cell, holding that cell's
latest code and, once it has been sent, the sequence number it was sent with
(``None`` while only pending). Cells keep the order of their first edit.

- ``put`` records the code as pending (not OPEN, or OPEN while the driver's writer is
  busy); ``send`` (OPEN) records it as in flight under a fresh sequence number and
  returns that number; ``send_unsent`` does that for every pending entry.
- ``take_flush`` puts every pending entry in flight under one sequence number and
  returns the batch: this is what the transition into OPEN sends.
- ``ack(seq)`` forgets exactly the entries still carrying ``seq``; an entry edited
  again since then carries a newer number (or none) and stays. Every sequence number
  sent is expected to be acked once, even one whose edits were all superseded.
- ``requeue`` (the connection was lost) turns every in-flight entry back into a
  pending one, so the next flush carries it again.

An edit is a dict assignment, never an engine event: editing is the hot path.
"""

from __future__ import annotations

from fsm._errors import EditBufferFull
from fsm._value import Value, set_field

#: Default bound on distinct cells awaiting acknowledgement.
DEFAULT_EDIT_LIMIT = 10_000


class FlushBatch(Value):
    """The edits sent on entering OPEN: cell id to latest code, in cell order."""

    __match_args__ = ("seq", "codes")
    __slots__ = __match_args__
    seq: int
    codes: dict[str, str]

    def __init__(self, seq: int, codes: dict[str, str]) -> None:
        set_field(self, "seq", seq)
        set_field(self, "codes", codes)


class _Entry:
    __slots__ = ("code", "seq")

    def __init__(self, code: str, seq: int | None) -> None:
        self.code = code
        self.seq = seq


class EditBuffer:
    """Latest code per cell, kept until acknowledged; see the module docstring."""

    __slots__ = ("_entries", "_in_flight", "_next_seq", "_retired", "limit")

    def __init__(self, limit: int = DEFAULT_EDIT_LIMIT) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"edit limit must be an integer >= 1, got {limit!r}")
        self.limit = limit
        # Updated in place, so a cell keeps the position of its first edit.
        self._entries: dict[str, _Entry] = {}
        self._in_flight: dict[int, set[str]] = {}
        self._retired: set[int] = set()  # seqs in flight at the last requeue
        self._next_seq = 1

    def __len__(self) -> int:
        return len(self._entries)

    def _record(self, cell_id: str, code: str, seq: int | None) -> None:
        entry = self._entries.get(cell_id) if type(cell_id) is str else None
        if entry is not None and type(code) is str:
            # The hot path: a cell edited again (its id was checked on its first edit).
            self._forget_in_flight(cell_id, entry.seq)
            entry.code = code
            entry.seq = seq
            if seq is not None:
                self._in_flight[seq] = {cell_id}
            return
        if not isinstance(cell_id, str) or not cell_id:
            raise TypeError(f"cell_id must be a non-empty str, got {cell_id!r}")
        if not isinstance(code, str):
            raise TypeError(f"code for cell {cell_id!r} must be a str, got {type(code).__name__}")
        entry = self._entries.get(cell_id)
        if entry is None:
            if len(self._entries) >= self.limit:
                raise EditBufferFull(
                    f"edit buffer holds its limit of {self.limit} cells awaiting acknowledgement;"
                    f" edit to {cell_id!r} refused (nothing was dropped)"
                )
            self._entries[cell_id] = _Entry(code, seq)
        else:
            self._forget_in_flight(cell_id, entry.seq)
            entry.code = code
            entry.seq = seq
        if seq is not None:
            self._in_flight.setdefault(seq, set()).add(cell_id)

    def _forget_in_flight(self, cell_id: str, seq: int | None) -> None:
        # The seq stays known even when nothing waits on it any more (its edits were
        # superseded), so that the server's ack for it is expected, not "unknown".
        if seq is not None:
            cells = self._in_flight.get(seq)
            if cells is not None:
                cells.discard(cell_id)

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def put(self, cell_id: str, code: str) -> None:
        """Record an edit made while not OPEN: pending until the next flush."""
        entry = self._entries.get(cell_id)
        if entry is not None and entry.seq is None and type(code) is str:
            entry.code = code  # the hot path: a cell edited again before it was sent
            return
        self._record(cell_id, code, None)

    def send(self, cell_id: str, code: str) -> int:
        """Record an edit sent at once (OPEN); return its sequence number."""
        seq = self._new_seq()
        self._record(cell_id, code, seq)
        return seq

    def send_unsent(self) -> list[tuple[int, str, str]]:
        """Put every pending edit in flight, each under its own new sequence number.

        Returns ``(seq, cell_id, code)`` in cell order: what a driver that holds the
        edits made while OPEN until its writer is free sends next.
        """
        sent = []
        for cell_id, entry in self._entries.items():
            if entry.seq is None:
                seq = self._new_seq()
                entry.seq = seq
                self._in_flight[seq] = {cell_id}
                sent.append((seq, cell_id, entry.code))
        return sent

    def take_flush(self) -> FlushBatch:
        """Put every pending edit in flight under one new sequence number."""
        seq = self._new_seq()
        codes: dict[str, str] = {}
        cells: set[str] = set()
        for cell_id, entry in self._entries.items():
            if entry.seq is None:
                entry.seq = seq
                codes[cell_id] = entry.code
                cells.add(cell_id)
        # Registered even when empty: the server acks every flush.
        self._in_flight[seq] = cells
        return FlushBatch(seq, codes)

    def ack(self, seq: int) -> bool:
        """Forget the edits acknowledged by ``seq``; False if no ack for ``seq`` is expected."""
        cells = self._in_flight.pop(seq, None)
        if cells is None:
            if seq in self._retired:
                self._retired.discard(seq)
                return True
            return False
        for cell_id in cells:
            del self._entries[cell_id]
        return True

    def requeue(self) -> None:
        """Turn every in-flight edit back into a pending one (the connection was lost)."""
        for entry in self._entries.values():
            entry.seq = None
        self._retired = set(self._in_flight)
        self._in_flight.clear()

    @property
    def pending(self) -> dict[str, str]:
        """Every edit not yet acknowledged, pending or in flight: cell id to latest code."""
        return {cell_id: entry.code for cell_id, entry in self._entries.items()}

    @property
    def unsent(self) -> dict[str, str]:
        """The edits recorded while not OPEN and not yet flushed."""
        return {
            cell_id: entry.code for cell_id, entry in self._entries.items() if entry.seq is None
        }

    @property
    def in_flight_seqs(self) -> frozenset[int]:
        """Sequence numbers whose acknowledgement would forget edits still in flight."""
        return frozenset(seq for seq, cells in self._in_flight.items() if cells)
