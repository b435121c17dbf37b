"""The edit buffer: every edit is kept until the server acknowledges it.

Theory of operation. The buffer keeps one entry per cell, holding that cell's
latest code and, once it has been sent, the sequence number it was sent with
(``None`` while only pending). Cells keep the order of their first edit.

- ``put`` records the code as pending (not OPEN, or OPEN while the driver's writer is
  busy); ``send`` (OPEN) records it as in flight under a fresh sequence number and
  returns that number; ``send_unsent`` does that for every pending entry.
- ``ready(seq, max_frame_size)`` notes what the server's ``kernel-ready`` said: the
  highest seq it has received for this session, and its frame limit.
- ``take_flush`` puts every pending entry in flight and returns the batch: this is what
  the transition into OPEN sends. A batch is one or more frames, each at most
  ``max_frame_size`` bytes and each under its own sequence number (below).
- ``ack(seq)`` forgets exactly the entries still carrying ``seq``, keeping their code
  as the cell's latest acknowledged code; an entry edited again since then carries a
  newer number (or none) and stays. Every sequence number sent is expected to be acked
  once, even one whose edits were all superseded.
- ``requeue`` (the connection was lost) turns every in-flight entry back into a
  pending one, so the next flush carries it again.

Sequence numbers (protocol v2, DESIGN.md section 6). Each new frame's seq is above
the buffer's own last one and above every ``kernel-ready`` seq seen, so a server that
kept the session's state never takes a new frame for an old one; seqs are assigned
when content leaves the buffer (``send``, ``send_unsent``, ``take_flush``).

A server that lost its state. When a ``kernel-ready`` seq is below the highest seq
the buffer has seen acknowledged, that server no longer holds what it acknowledged,
so the next flush carries every cell ever edited, with its latest code: the cells
acknowledged before (in the order of their first acknowledgement), then the others.
Those cells are pending again until acknowledged again.

Frame size. A frame's size is the length of exactly what the reference protocol
sends, ``encode_frame("instantiate", {"seq": N, "codes": {...}, "auto_run": ...})``
(JSON with ``ensure_ascii``, so characters are bytes in UTF-8 too). Each cell's
encoded contribution is computed once per flush; frames are filled in cell order and
sized as if ``auto_run`` were ``false`` (the last frame, which says ``true``, is one
byte smaller). Only the last frame of a batch runs the cells; an empty batch is one
frame with no codes.

- ``put`` and ``send`` refuse, with :class:`~fsm.EditTooLarge` and the buffer
  unchanged, an edit whose frame would exceed the limit known then, as an ``edit``
  frame and as a one-cell ``instantiate`` frame, sized with a 16-digit seq (no seq
  this client sends is longer): an accepted edit fits whatever seq carries it.
- A limit lowered by a later ``kernel-ready`` can leave an accepted edit that no frame
  can carry. The flush then takes it out of the pending edits (so it is never resent
  forever, and waiting for acknowledgements ends) and lists its cell in the batch's
  ``undeliverable``; :attr:`EditBuffer.undeliverable` keeps its code. A later flush
  whose limit is large enough carries it again; a new edit of the cell replaces it.

An edit is a dict assignment, never an engine event: editing is the hot path. The
size check costs a length comparison: a character is at most 12 bytes of JSON, so an
edit far below the limit needs no encoding.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from typing import Any, overload

from fsm.core._errors import EditBufferFull, EditTooLarge
from fsm.core._frames import MAX_FRAME_SIZE, encode_frame
from fsm.core._value import Value, set_field

__all__ = ["DEFAULT_EDIT_LIMIT", "MAX_SEQ", "EditBuffer", "FlushBatch", "FlushFrame"]

#: Default bound on distinct cells awaiting acknowledgement.
DEFAULT_EDIT_LIMIT = 10_000
#: The largest ``kernel-ready`` seq accepted (JavaScript's largest safe integer).
MAX_SEQ = 2**53 - 1
# Edits are sized with a seq of this many digits: seqs start above a kernel-ready
# seq <= MAX_SEQ, and 10**16 frames are never sent.
_SIZING_SEQ = 10**16 - 1
# The most bytes of JSON one character can take: a character outside the BMP is
# written as two \uXXXX escapes.
_MAX_BYTES_PER_CHAR = 12
#: The smallest frame limit accepted: an empty flush frame must fit.
MIN_FRAME_SIZE = len(
    encode_frame("instantiate", {"seq": _SIZING_SEQ, "codes": {}, "auto_run": False})
)


class FlushFrame(Value):
    """One ``instantiate`` frame of a flush: its seq, its cells' codes, whether it runs them."""

    __match_args__ = ("seq", "codes", "auto_run")
    __slots__ = __match_args__
    seq: int
    codes: dict[str, str]
    auto_run: bool

    def __init__(self, seq: int, codes: dict[str, str], auto_run: bool) -> None:
        set_field(self, "seq", seq)
        set_field(self, "codes", codes)
        set_field(self, "auto_run", auto_run)


def _batch(frames: tuple[FlushFrame, ...], undeliverable: tuple[str, ...]) -> FlushBatch:
    return FlushBatch(frames, undeliverable=undeliverable)


class FlushBatch(Value):
    """The edits sent on entering OPEN: one or more frames, in cell order.

    ``frames`` are sent in order, each under the server's frame limit, with its own
    seq and acknowledgement; only the last has ``auto_run`` true. ``undeliverable``
    names the cells no frame could carry (see :attr:`EditBuffer.undeliverable`).

    ``codes`` (every frame's codes merged, in order) and ``seq`` (the last frame's) are
    read-only conveniences for adapters that send a batch whole, as one request
    (marimo's HTTP). ``FlushBatch(seq, codes)`` builds a batch of one frame.
    """

    __match_args__ = ("frames", "undeliverable")
    __slots__ = ("_codes", *__match_args__)
    frames: tuple[FlushFrame, ...]
    undeliverable: tuple[str, ...]
    _codes: dict[str, str] | None

    @overload
    def __init__(
        self, frames: tuple[FlushFrame, ...], *, undeliverable: tuple[str, ...] = ()
    ) -> None: ...
    @overload
    def __init__(self, frames: int, codes: dict[str, str]) -> None: ...

    def __init__(
        self,
        frames: tuple[FlushFrame, ...] | int,
        codes: dict[str, str] | None = None,
        *,
        undeliverable: tuple[str, ...] = (),
    ) -> None:
        if isinstance(frames, int):
            frames = (FlushFrame(frames, dict(codes or {}), True),)
        if not frames:
            raise ValueError("a flush batch has at least one frame")
        set_field(self, "frames", tuple(frames))
        set_field(self, "undeliverable", tuple(undeliverable))
        set_field(self, "_codes", None)

    @property
    def seq(self) -> int:
        """The seq of the batch's last frame."""
        return self.frames[-1].seq

    @property
    def codes(self) -> dict[str, str]:
        """Every frame's codes, merged in order: the whole batch as one dict (read-only)."""
        codes: dict[str, str] | None = self._codes
        if codes is None:
            frames = self.frames
            if len(frames) == 1:
                codes = frames[0].codes
            else:
                codes = {}
                for frame in frames:
                    codes.update(frame.codes)
            set_field(self, "_codes", codes)
        return codes

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_batch, (self.frames, self.undeliverable))


class _Entry:
    # room: the longest code this cell's edits can have and still fit the frame limit
    # without being measured (see EditBuffer._set_frame_limit).
    __slots__ = ("code", "room", "seq")

    def __init__(self, code: str, seq: int | None, room: int) -> None:
        self.code = code
        self.seq = seq
        self.room = room


def _encoded(text: str) -> int:
    """Bytes of ``text`` as a JSON string in a frame (ASCII: characters are bytes)."""
    return len(encode_basestring_ascii(text))


def _frame_base(seq: int) -> int:
    """Bytes of an instantiate frame under ``seq`` with no codes (sized with auto_run false)."""
    return len(encode_frame("instantiate", {"seq": seq, "codes": {}, "auto_run": False}))


# An edit's largest frame is EDIT overhead + both strings, or INSTANTIATE overhead +
# both strings + ':'; the overheads are measured on the encoder itself.
_EDIT_OVERHEAD = len(encode_frame("edit", {"seq": _SIZING_SEQ, "cell_id": "", "code": ""})) - 4
_ONE_CELL_OVERHEAD = _frame_base(_SIZING_SEQ) + 1
_OVERHEAD = max(_EDIT_OVERHEAD, _ONE_CELL_OVERHEAD)


class EditBuffer:
    """Latest code per cell, kept until acknowledged; see the module docstring."""

    __slots__ = (
        "_acked",
        "_entries",
        "_fast_chars",
        "_frame_limit",
        "_in_flight",
        "_max_acked",
        "_next_seq",
        "_resend_all",
        "_retired",
        "_undeliverable",
        "limit",
    )

    def __init__(
        self, limit: int = DEFAULT_EDIT_LIMIT, *, max_frame_size: int = MAX_FRAME_SIZE
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"edit limit must be an integer >= 1, got {limit!r}")
        self.limit = limit
        # Updated in place, so a cell keeps the position of its first edit.
        self._entries: dict[str, _Entry] = {}
        # seq -> the cells still waiting on it, in cell order (a dict as an ordered set).
        self._in_flight: dict[int, dict[str, None]] = {}
        self._retired: set[int] = set()  # seqs in flight at the last requeue
        self._next_seq = 1
        self._acked: dict[str, str] = {}  # each cell's latest acknowledged code
        self._max_acked = 0  # the highest seq seen acknowledged
        self._resend_all = False
        self._undeliverable: dict[str, str] = {}
        self._frame_limit = MAX_FRAME_SIZE
        self._fast_chars = 0
        self._set_frame_limit(max_frame_size)

    def __len__(self) -> int:
        return len(self._entries)

    # -- limits and seqs -------------------------------------------------------------

    @property
    def max_frame_size(self) -> int:
        """The frame limit known now, in bytes: 1 MiB until a ``kernel-ready`` says otherwise."""
        return self._frame_limit

    @staticmethod
    def check_ready(seq: object, max_frame_size: object) -> None:
        """Raise ValueError unless ``seq`` and ``max_frame_size`` are what kernel-ready may say."""
        if seq is not None and (
            isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ
        ):
            raise ValueError(
                f"kernel-ready seq must be None or an integer in [0, {MAX_SEQ}], got {seq!r}"
            )
        if max_frame_size is not None and (
            isinstance(max_frame_size, bool)
            or not isinstance(max_frame_size, int)
            or max_frame_size < MIN_FRAME_SIZE
        ):
            raise ValueError(
                f"max_frame_size must be None or an integer >= {MIN_FRAME_SIZE} (bytes; an empty"
                f" flush frame must fit), got {max_frame_size!r}"
            )

    def _set_frame_limit(self, max_frame_size: int) -> None:
        self.check_ready(0, max_frame_size)
        self._frame_limit = max_frame_size
        # Codes up to this many characters (with their cell id) fit without encoding.
        self._fast_chars = fast = (max_frame_size - _OVERHEAD) // _MAX_BYTES_PER_CHAR - 2
        for cell_id, entry in self._entries.items():
            entry.room = fast - len(cell_id)

    def _entry(self, cell_id: str, code: str, seq: int | None) -> _Entry:
        return _Entry(code, seq, self._fast_chars - len(cell_id))

    def ready(self, seq: int | None = 0, max_frame_size: int | None = None) -> None:
        """A ``kernel-ready`` said ``seq`` and ``max_frame_size`` (None: 1 MiB); call before
        ``take_flush``. Raises ValueError (see :meth:`check_ready`), changing nothing.

        ``seq=None`` is for a peer without seqs (marimo): nothing is learnt from it, and
        no loss of state can be detected.
        """
        self.check_ready(seq, max_frame_size)
        self._set_frame_limit(MAX_FRAME_SIZE if max_frame_size is None else max_frame_size)
        if seq is None:
            self._resend_all = False
            return
        if seq >= self._next_seq:
            self._next_seq = seq + 1
        # Below what it acknowledged: the server lost its state (restarted without it).
        self._resend_all = seq < self._max_acked

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def edit_size(self, cell_id: str, code: str) -> int:
        """Bytes of the largest frame that may carry this edit alone (see the module docstring)."""
        return _OVERHEAD + _encoded(cell_id) + _encoded(code)

    # -- recording edits -------------------------------------------------------------

    def _check(self, cell_id: object, code: object) -> None:
        """Raise unless ``cell_id`` and ``code`` make an edit this buffer may accept."""
        if not isinstance(cell_id, str) or not cell_id:
            raise TypeError(f"cell_id must be a non-empty str, got {cell_id!r}")
        if not isinstance(code, str):
            raise TypeError(f"code for cell {cell_id!r} must be a str, got {type(code).__name__}")
        if len(code) + len(cell_id) > self._fast_chars:
            size = self.edit_size(cell_id, code)
            if size > self._frame_limit:
                raise EditTooLarge(cell_id, size, self._frame_limit)
        if cell_id not in self._entries and len(self._entries) >= self.limit:
            raise EditBufferFull(
                f"edit buffer holds its limit of {self.limit} cells awaiting acknowledgement;"
                f" edit to {cell_id!r} refused (nothing was dropped)"
            )

    def _record(self, cell_id: str, code: str, seq: int | None) -> None:
        # Checked by the caller: the types, the size and the limit.
        entry = self._entries.get(cell_id)
        if entry is None:
            self._undeliverable.pop(cell_id, None)  # a new edit replaces one none could carry
            self._entries[cell_id] = self._entry(cell_id, code, seq)
        else:
            self._forget_in_flight(cell_id, entry.seq)
            entry.code = code
            entry.seq = seq
        if seq is not None:
            self._in_flight[seq] = {cell_id: None}

    def _forget_in_flight(self, cell_id: str, seq: int | None) -> None:
        # The seq stays known even when nothing waits on it any more (its edits were
        # superseded), so that the server's ack for it is expected, not "unknown".
        if seq is not None:
            cells = self._in_flight.get(seq)
            if cells is not None:
                cells.pop(cell_id, None)

    def put(self, cell_id: str, code: str) -> None:
        """Record an edit made while not OPEN: pending until the next flush."""
        entry = self._entries.get(cell_id)
        if (
            entry is not None
            and entry.seq is None
            and type(code) is str
            and len(code) <= entry.room
        ):
            entry.code = code  # the hot path: a cell edited again before it was sent
            return
        self._check(cell_id, code)
        self._record(cell_id, code, None)

    def send(self, cell_id: str, code: str) -> int:
        """Record an edit sent at once (OPEN); return its sequence number."""
        entry = self._entries.get(cell_id) if type(cell_id) is str else None
        if entry is None or type(code) is not str or len(code) > entry.room:
            self._check(cell_id, code)  # raises before a seq is taken
            seq = self._new_seq()
            self._record(cell_id, code, seq)
            return seq
        # The hot path: a cell edited again (its id was checked on its first edit).
        seq = self._next_seq
        self._next_seq = seq + 1
        if entry.seq is not None:
            cells = self._in_flight.get(entry.seq)
            if cells is not None:
                cells.pop(cell_id, None)  # the seq stays known: its ack is expected
        entry.code = code
        entry.seq = seq
        self._in_flight[seq] = {cell_id: None}
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
                self._in_flight[seq] = {cell_id: None}
                sent.append((seq, cell_id, entry.code))
        return sent

    # -- flushing --------------------------------------------------------------------

    def _restore_lost(self) -> None:
        """Make every cell the server acknowledged pending again (it lost them)."""
        entries: dict[str, _Entry] = {}
        for cell_id, code in self._acked.items():
            if cell_id in self._undeliverable:
                continue  # its latest code is newer than the acknowledged one
            entry = self._entries.pop(cell_id, None)
            entries[cell_id] = entry if entry is not None else self._entry(cell_id, code, None)
        entries.update(self._entries)
        self._entries = entries

    def take_flush(self) -> FlushBatch:
        """Put every pending edit in flight as one batch of frames under the frame limit."""
        if self._resend_all:
            self._resend_all = False
            self._restore_lost()
        limit = self._frame_limit
        entries = self._entries
        if self._undeliverable:
            # Those a larger limit can carry now come back (after the others).
            for cell_id, code in list(self._undeliverable.items()):
                if self.edit_size(cell_id, code) <= limit:
                    del self._undeliverable[cell_id]
                    entries[cell_id] = self._entry(cell_id, code, None)
        frames: list[FlushFrame] = []
        undeliverable: list[str] = []
        seq = self._new_seq()
        base = _frame_base(seq)
        codes: dict[str, str] = {}
        size = base
        for cell_id, entry in list(entries.items()):
            if entry.seq is not None:
                continue  # in flight already (sent while OPEN)
            cost = _encoded(cell_id) + 1 + _encoded(entry.code)  # "cell":"code"
            if codes:
                if size + 1 + cost <= limit:
                    codes[cell_id] = entry.code
                    entry.seq = seq
                    size += 1 + cost
                    continue
                if base + cost <= limit:  # fits alone: the next frame starts with it
                    self._in_flight[seq] = dict.fromkeys(codes)
                    frames.append(FlushFrame(seq, codes, False))
                    seq = self._new_seq()
                    base = _frame_base(seq)
                    codes = {}
                    size = base
            if base + cost <= limit:
                codes[cell_id] = entry.code
                entry.seq = seq
                size += cost
            else:
                # Accepted under a larger limit: no frame can carry it now.
                del entries[cell_id]
                self._undeliverable[cell_id] = entry.code
                undeliverable.append(cell_id)
        # Registered even when empty: the server acks every frame.
        self._in_flight[seq] = dict.fromkeys(codes)
        frames.append(FlushFrame(seq, codes, True))
        return FlushBatch(tuple(frames), undeliverable=tuple(undeliverable))

    # -- acknowledgements and losses -------------------------------------------------

    def ack(self, seq: int) -> bool:
        """Forget the edits acknowledged by ``seq``; False if no ack for ``seq`` is expected."""
        cells = self._in_flight.pop(seq, None)
        if cells is None:
            if seq in self._retired:
                self._retired.discard(seq)
                if seq > self._max_acked:
                    self._max_acked = seq
                return True
            return False
        if seq > self._max_acked:
            self._max_acked = seq
        entries, acked = self._entries, self._acked
        for cell_id in cells:
            acked[cell_id] = entries.pop(cell_id).code
        return True

    def requeue(self) -> None:
        """Turn every in-flight edit back into a pending one (the connection was lost)."""
        for entry in self._entries.values():
            entry.seq = None
        self._retired = set(self._in_flight)
        self._in_flight.clear()

    # -- reads -----------------------------------------------------------------------

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

    @property
    def acknowledged(self) -> dict[str, str]:
        """Each cell's latest code the server acknowledged (resent to a server that lost it)."""
        return dict(self._acked)

    @property
    def undeliverable(self) -> dict[str, str]:
        """Accepted edits that no frame under the current limit can carry: cell id to code.

        Not pending (nothing waits for them), never resent under that limit; a flush under
        a limit large enough carries them again, a new edit of the cell replaces them.
        """
        return dict(self._undeliverable)

    @property
    def last_seq(self) -> int:
        """The seq the next frame would be numbered above."""
        return self._next_seq - 1
