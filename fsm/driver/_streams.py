"""What a connector hands its consumers: the transition and message streams.

Both are bounded and weakly held (the connector keeps them in ``WeakSet`` s), so a
stream the application dropped costs nothing and a slow consumer never holds up the
reader: transitions keep the newest records, messages drop new ones (counted).
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Generic, Protocol, TypeVar

import trio

from fsm.core._frames import Frame
from fsm.core._types import Transition

__all__ = ["MessageStream", "TransitionStream"]

# The stream sets of a connector nobody has asked for streams yet: shared, always empty
# (a WeakSet costs about 0.9 KiB and 4 µs, and most connectors never get a stream).
# Never add to it: the first stream of a connector gives it a set of its own.
_NO_STREAMS: weakref.WeakSet[Any] = weakref.WeakSet()

_T = TypeVar("_T")


class _Feed(Generic[_T]):
    """A bounded, weakly held subscription: what a consumer has not read yet.

    The connector holds its feeds in a ``WeakSet``, so a feed the application dropped
    (an ``async for`` left by ``break``, a cancelled task) is freed with its buffer and
    stops receiving at once; a feed still referenced but not read holds at most
    ``maxlen`` items. Pushing never blocks and never waits for a consumer.
    """

    def __init__(self, maxlen: int, *, drop_oldest: bool) -> None:
        self._buffer: collections.deque[_T] = collections.deque()
        self._maxlen = maxlen
        self._drop_oldest = drop_oldest
        self._closed = False
        self._wakeup: trio.Event | None = None
        #: Items this stream lost because its consumer fell ``maxlen`` items behind.
        self.dropped = 0

    def __len__(self) -> int:
        """How many items are buffered, unread."""
        return len(self._buffer)

    def _push(self, item: _T) -> bool:
        """Buffer ``item``; False if the buffer was full and an item was dropped."""
        if self._closed:
            return True
        buffer = self._buffer
        kept = True
        if len(buffer) >= self._maxlen:
            self.dropped += 1
            kept = False
            if not self._drop_oldest:
                return False
            buffer.popleft()
        buffer.append(item)
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()
        return kept

    def _end(self) -> None:
        """No more items: a consumer gets what is buffered, then the end."""
        self._closed = True
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def receive_nowait(self) -> _T:
        """The next item; ``trio.WouldBlock`` if none is buffered, ``trio.EndOfChannel``
        once the stream has ended."""
        if self._buffer:
            return self._buffer.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> _T:
        """The next item, waiting for it; ``trio.EndOfChannel`` once the stream has ended."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._buffer:
            while not self._buffer:
                if self._closed:
                    raise trio.EndOfChannel
                if self._wakeup is None:
                    self._wakeup = trio.Event()
                await self._wakeup.wait()
            return self._buffer.popleft()
        item = self._buffer.popleft()
        # A schedule point that cannot lose the item, as trio's memory channels do.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self) -> _Feed[_T]:
        return self

    async def __anext__(self) -> _T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; what was buffered is dropped."""
        self._buffer.clear()
        self._end()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> _Feed[_T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Source(Protocol):
    """Where streams subscribe: a connector's stream sets, its backlog, whether it runs."""

    _subscribers: weakref.WeakSet[TransitionStream]
    _message_streams: weakref.WeakSet[MessageStream]
    _backlog: collections.deque[Frame]
    _running: bool


class TransitionStream(_Feed[Transition]):
    """An async iterator of :class:`~fsm.Transition` records, from its creation on.

    For a slow consumer it keeps the newest ``maxlen`` records (default 1,000) and drops
    the oldest, counting them in :attr:`dropped`: the latest state is the one that
    matters. A stream the application no longer references is freed and stops receiving.
    """

    def __init__(self, connector: _Source, maxlen: int = 1_000) -> None:
        super().__init__(maxlen, drop_oldest=True)
        if connector._subscribers is _NO_STREAMS:
            connector._subscribers = weakref.WeakSet()
        connector._subscribers.add(self)
        if not connector._running:
            self._end()


class MessageStream(_Feed[Frame]):
    """An async iterator of decoded server messages, from its creation on; see
    :meth:`Connector.messages`."""

    def __init__(self, connector: _Source, maxlen: int) -> None:
        super().__init__(maxlen, drop_oldest=False)
        backlog = connector._backlog
        if backlog and not connector._message_streams:
            # Messages that arrived while nobody listened go to the first listener.
            self._buffer.extend(backlog)
            backlog.clear()
        if connector._message_streams is _NO_STREAMS:
            connector._message_streams = weakref.WeakSet()
        connector._message_streams.add(self)
        if not connector._running:
            self._end()
