"""The connector for asyncio applications, through trio's guest mode.

:func:`fsm.open_connector` is trio's. An asyncio application (a marimo or Jupyter
server, a FastAPI app) uses this module instead::

    import asyncio
    import fsm.driver._aio

    async def main() -> None:
        async with fsm.aio.open_connector("ws://127.0.0.1:8765") as conn:
            conn.edit("c1", "x = 1")        # sync, never blocks, as with trio
            await conn.connect()
            await conn.wait_acked()
            result = await conn.request("run", {"cell_id": "c1"})

    asyncio.run(main())

How: ``trio.lowlevel.start_guest_run`` (trio's supported way to run trio inside
another event loop) runs one trio run per asyncio loop, on the loop's own thread,
driven by the loop's callbacks. Every connector of that loop lives in it as a trio
task, so the connector, its lifecycle, its retries and its timers are exactly the trio
ones. The guest run starts with the first connector and ends with the last.

Calls cross over like this: properties and ``edit()`` are plain synchronous calls
(both loops share the thread, and neither runs while the other's code does); each
``await conn.x()`` starts a trio task for ``x`` and awaits an asyncio future that
task resolves. Cancelling the awaiting asyncio task cancels the trio task, and
exceptions (``ConnectionFailed`` with its ``__cause__``, ``NotConnected``, ...)
arrive as they are. Bound waits with ``asyncio.timeout()``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import trio

from fsm.core._errors import LifecycleError
from fsm.core._frames import Frame
from fsm.core._policy import RetryPolicy
from fsm.core._types import CloseReason, ConnState, Phase, Transition
from fsm.driver._connector import Connector, _not_running
from fsm.driver._connector import open_connector as _trio_open_connector

__all__ = ["AioConnector", "open_connector"]

_T = TypeVar("_T")


def _resolve(future: asyncio.Future[Any], result: outcome.Outcome[Any] | None) -> None:
    if future.done():
        return
    if result is None:
        future.cancel()
    elif isinstance(result, outcome.Error):
        future.set_exception(result.error)
    elif isinstance(result, outcome.Value):
        future.set_result(result.value)


class _GuestRun:
    """One trio run hosted by one asyncio loop: a nursery the connectors live in."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.closing = False
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[outcome.Outcome[None]] = loop.create_future()
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None

    def start(self) -> None:
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            done_callback=self._finished,
            # asyncio's Unix loops set the signal wakeup fd themselves.
            host_uses_signal_set_wakeup_fd=True,
        )

    def _finished(self, result: outcome.Outcome[None]) -> None:
        if not self.done.done():
            self.done.set_result(result)
        if not self.started.done():
            self.started.set_exception(
                LifecycleError("trio's guest run ended before it started")
            )

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.loop.call_soon(_resolve, self.started, outcome.Value(None))
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self.closing = True
        assert self.token is not None and self._stop is not None
        self.token.run_sync_soon(self._stop.set)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start ``fn`` as a trio task in the guest run (from asyncio code)."""
        assert self.token is not None and self.nursery is not None
        nursery = self.nursery
        self.token.run_sync_soon(nursery.start_soon, fn)


_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GuestRun] = (
    weakref.WeakKeyDictionary()
)


async def _acquire(loop: asyncio.AbstractEventLoop) -> _GuestRun:
    while True:
        run = _RUNS.get(loop)
        if run is None:
            run = _RUNS[loop] = _GuestRun(loop)
            run.start()
        elif run.closing:
            await asyncio.shield(run.done)
            if _RUNS.get(loop) is run:
                del _RUNS[loop]
            continue
        run.users += 1
        try:
            await asyncio.shield(run.started)
        except BaseException:
            await _release(run)
            raise
        return run


async def _release(run: _GuestRun) -> None:
    run.users -= 1
    if run.users > 0:
        return
    if run.started.done() and run.started.exception() is None:
        run.stop()
    await asyncio.shield(run.done)
    if _RUNS.get(run.loop) is run:
        del _RUNS[run.loop]
    run.done.result().unwrap()


class AioConnector:
    """A :class:`fsm.Connector` seen from asyncio: the same names, awaitable from asyncio.

    Made by :func:`open_connector`. ``connector`` is the trio connector itself (its
    methods must only be awaited from trio code).
    """

    def __init__(self, run: _GuestRun, connector: Connector) -> None:
        self._run = run
        self.connector = connector

    # -- reads and edits: synchronous, as with trio ---------------------------------------

    @property
    def state(self) -> ConnState:
        return self.connector.state

    @property
    def phase(self) -> Phase | None:
        return self.connector.phase

    @property
    def can_interact(self) -> bool:
        return self.connector.can_interact

    @property
    def is_not_started(self) -> bool:
        return self.connector.is_not_started

    @property
    def attempts(self) -> int:
        return self.connector.attempts

    @property
    def close_reason(self) -> CloseReason | None:
        return self.connector.close_reason

    @property
    def pending_edits(self) -> dict[str, str]:
        return self.connector.pending_edits

    @property
    def policy(self) -> RetryPolicy:
        return self.connector.policy

    @property
    def session_id(self) -> str:
        return self.connector.session_id

    def edit(self, cell_id: str, code: str) -> None:
        """Record an edit (see :meth:`fsm.Connector.edit`); never blocks."""
        self.connector.edit(cell_id, code)

    # -- awaitables: each runs as a trio task in the guest run ----------------------------

    async def _call(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        if not self.connector._running:
            # After the block (its guest run may be gone): the trio connector's own error.
            raise _not_running()
        run = self._run
        future: asyncio.Future[_T] = run.loop.create_future()
        scope = trio.CancelScope()

        async def task() -> None:
            result: outcome.Outcome[Any] | None = None
            try:
                with scope:
                    result = outcome.Value(await fn(*args))
            except Exception as exc:
                result = outcome.Error(exc)
            finally:
                # None: cancelled, by the asyncio caller or because the run is ending.
                if result is None and not future.cancelled():
                    result = outcome.Error(_not_running())
                run.loop.call_soon(_resolve, future, result)

        run.spawn(task)
        try:
            return await future
        except asyncio.CancelledError:
            if run.token is not None:
                run.token.run_sync_soon(scope.cancel)
            raise

    async def connect(self) -> None:
        """See :meth:`fsm.Connector.connect`."""
        await self._call(self.connector.connect)

    async def request(self, op: str, data: Any = None) -> Any:
        """See :meth:`fsm.Connector.request`."""
        return await self._call(self.connector.request, op, data)

    async def wait_for(self, state: ConnState) -> None:
        """See :meth:`fsm.Connector.wait_for` (bound it with ``asyncio.timeout``)."""
        await self._call(self.connector.wait_for, state)

    async def wait_acked(self) -> None:
        """See :meth:`fsm.Connector.wait_acked` (bound it with ``asyncio.timeout``)."""
        await self._call(self.connector.wait_acked)

    async def aclose(self) -> None:
        """See :meth:`fsm.Connector.aclose`."""
        await self._call(self.connector.aclose)

    def messages(self) -> _Stream[Frame]:
        """Decoded server messages from now on (see :meth:`fsm.Connector.messages`)."""
        return _Stream(self, self.connector.messages())

    def transitions(self) -> _Stream[Transition]:
        """Every transition from now on (see :meth:`fsm.Connector.transitions`)."""
        return _Stream(self, self.connector.transitions())


class _Stream(AsyncIterator[_T]):
    """A trio-side stream read from asyncio, one item per trio task."""

    def __init__(self, conn: AioConnector, stream: Any) -> None:
        self._conn = conn
        self._stream = stream

    def __aiter__(self) -> _Stream[_T]:
        return self

    async def __anext__(self) -> _T:
        async def receive() -> tuple[bool, Any]:
            try:
                return True, await self._stream.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return False, None

        more, item = await self._conn._call(receive)
        if not more:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


@asynccontextmanager
async def open_connector(url: str, **options: Any) -> AsyncIterator[AioConnector]:
    """``async with`` a connector from asyncio code; the arguments are those of
    :func:`fsm.open_connector`. On leaving the block it closes as the trio one does,
    and the last connector of the loop ends the guest run."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise LifecycleError(
            "fsm.aio.open_connector() is for asyncio code; under trio use fsm.open_connector()"
        ) from None
    run = await _acquire(loop)
    opened: asyncio.Future[Connector] = loop.create_future()
    closed: asyncio.Future[None] = loop.create_future()
    stop = trio.Event()

    async def serve() -> None:
        result: outcome.Outcome[None] = outcome.Value(None)
        try:
            async with _trio_open_connector(url, **options) as connector:
                loop.call_soon(_resolve, opened, outcome.Value(connector))
                await stop.wait()
        except Exception as exc:
            result = outcome.Error(exc)
        finally:
            if not opened.done():
                loop.call_soon(_resolve, opened, result if isinstance(result, outcome.Error)
                               else None)
            loop.call_soon(_resolve, closed, result)

    try:
        run.spawn(serve)
        connector = await opened
        try:
            yield AioConnector(run, connector)
        finally:
            assert run.token is not None
            run.token.run_sync_soon(stop.set)
            await asyncio.shield(closed)
    finally:
        await _release(run)
