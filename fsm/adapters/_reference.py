"""The reference kernel protocol (DESIGN.md section 6): the adapter for :mod:`fsm.server`.

Edits go out as ``instantiate`` (a flush: one frame per batch frame, each under the
server's limit) and ``edit`` frames carrying a ``seq``; ``ack`` frames acknowledge
them; ``kernel-ready`` completes an attempt and says the highest seq the server holds
and the largest frame it takes (protocol v2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsm.adapters._base import AdapterLink, KernelProtocol
from fsm.core._buffer import EditBuffer
from fsm.core._frames import Frame

if TYPE_CHECKING:
    from fsm.core._buffer import FlushBatch
    from fsm.core._effects import SendEdit

__all__ = ["ReferenceProtocol"]


class ReferenceProtocol(KernelProtocol):
    """The reference kernel protocol (DESIGN.md section 6), spoken by :mod:`fsm.server`.

    ``token``, if given, is sent as a bearer ``Authorization`` header (a token in
    the URL's query works too); neither ever reaches a log line.
    """

    name = "reference"

    def __init__(self, token: str | None = None) -> None:
        self._token = token

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        if self._token is None:
            return []
        return [(b"Authorization", f"Bearer {self._token}".encode())]

    async def flush(self, link: AdapterLink, batch: FlushBatch) -> None:
        # One instantiate frame per batch frame, each under the server's limit and acked
        # on its own; only the last says auto_run.
        for frame in batch.frames:
            await link.send_frame(
                "instantiate",
                {"seq": frame.seq, "codes": frame.codes, "auto_run": frame.auto_run},
            )

    async def send_edit(self, link: AdapterLink, edit: SendEdit) -> None:
        await link.send_frame(
            "edit", {"seq": edit.seq, "cell_id": edit.cell_id, "code": edit.code}
        )

    def is_ready(self, frame: Frame) -> bool:
        if frame.op not in self.ready_ops:
            return False
        if not isinstance(frame.data, dict):
            raise ValueError(f"{frame.op} whose data is not an object")
        seq, max_frame_size = self.ready_info(frame)
        try:
            EditBuffer.check_ready(seq, max_frame_size)
        except ValueError as exc:
            raise ValueError(f"{frame.op}: {exc}") from None
        return True

    def ready_info(self, frame: Frame) -> tuple[int | None, int | None]:
        # Protocol v2: a server that says no seq has received none (0); no limit: 1 MiB.
        data = frame.data if isinstance(frame.data, dict) else {}
        return data.get("seq", 0), data.get("max_frame_size")

    def ack_seq(self, frame: Frame) -> int | None:
        if frame.op != "ack":
            return None
        data = frame.data
        seq = data.get("seq") if isinstance(data, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"ack without an integer seq: {data!r:.80}")
        return seq
