"""Task and loop helpers: cancelling a task without its CancelledError leaking out, a budget
of bytes held at once, a sleep that wakes on time, and the one bridge from synchronous
callers into the engine's event loop.

:func:`run_sync` runs one coroutine to the end for a synchronous caller (``engine.score``,
Spark's driver); :class:`LoopThread` keeps an event loop on a thread of its own for callers
that stay synchronous while the engine runs (a Spark worker process, Airflow's operator, whose
signal handlers must not land inside the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "ByteBudget",
    "LoopThread",
    "PreciseSleep",
    "cancel_and_drop",
    "cancel_quietly",
    "run_sync",
]

T = TypeVar("T")


async def cancel_quietly(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end, swallowing *its* cancellation, never the
    caller's: a caller cancelled meanwhile (a TaskGroup shutting down) still is."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def cancel_and_drop(future: asyncio.Future[Any]) -> None:
    """Cancel ``future``, wait until it has ended and drop its outcome, whatever it is: for
    work that nobody will wait for any more. Unlike :func:`cancel_quietly`, its own error is
    not raised, nor logged as never retrieved (``cancel`` silences an error it already
    ended with; one it ends with after the cancel is retrieved here)."""
    future.cancel()
    await asyncio.wait({future})
    if not future.cancelled():
        future.exception()


class ByteBudget:
    """At most ``limit`` bytes held at once by what one producer hands on (a semaphore
    weighted by size).

    :meth:`acquire` waits until the size fits beside what is held; an item larger than the
    whole budget goes alone, once nothing else is held, so it waits but never deadlocks.
    ``peak`` is the most ever held.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget must be at least 1 byte, got {limit}")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.held and self.held + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.held += size
        self.peak = max(self.peak, self.held)

    def release(self, size: int) -> None:
        self.held -= size
        self._freed.set()


class PreciseSleep:
    """``asyncio.sleep`` that wakes within about 0.2 ms of the time asked, not up to 1 ms late.

    The event loop's selector waits in whole milliseconds, rounded up (``epoll_wait``), so a
    sleep of 5.4 ms lasts 6 ms or more: a pacer spacing requests 5.6 ms apart lost a tenth of
    its pace to it (``benchmarks/told_pace.py``: 161 requests/s sent with ``--qps 180``).
    Here the loop sleeps all but the last ``FINE_S``, and a thread of its own sleeps the rest
    (``nanosleep``: tens of microseconds late) and wakes the loop, which runs the sleeper
    about ``HANDOFF_S`` later. A thread, not a busy loop: one wake-up per sleep costs tens of
    microseconds of CPU, not a millisecond.

    One per event loop, used from that loop only (its thread is made on first use, and one
    thread serves one sleeper at a time). Once closed, it sleeps on the loop's timer alone.

    Args:
        clock: monotonic seconds.
        coarse: the loop's own sleep, for all but the last ``FINE_S``.
        fine: a blocking sleep, run on the thread for the rest.
    """

    #: The part of a wait slept on the thread: more than the loop's rounding (1 ms).
    FINE_S = 0.0015
    #: Woken from the thread, the loop runs the sleeper this long later (measured: a median of
    #: 0.13-0.16 ms here): the thread wakes that much early.
    HANDOFF_S = 0.0001

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        coarse: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
        fine: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._coarse = coarse
        self._fine = fine
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    async def __call__(self, delay: float) -> None:
        if self._closed:
            await self._coarse(delay)
            return
        deadline = self._clock() + delay
        if delay > self.FINE_S:
            await self._coarse(delay - self.FINE_S)
        left = deadline - self._clock()
        if left <= 0:
            await self._coarse(0)
            return
        # About the handoff left (the caller, woken early, asks again): sleep it all, or a
        # caller that waits for the clock would spin until then.
        rest = left - self.HANDOFF_S if left > 2 * self.HANDOFF_S else left
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pacer")
        await asyncio.get_running_loop().run_in_executor(self._pool, self._fine, rest)

    def close(self) -> None:
        """Let the thread go (a sleep under way ends on its own, within ``FINE_S``)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` returns to the end and return its result.

    In a thread with no running event loop it runs here (``asyncio.run``); called from inside
    one (a notebook, an async framework), on a worker thread with a loop of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class LoopThread:
    """An event loop running on a daemon thread of its own, usable from any thread.

    The loop starts at once; :meth:`close` ends it, as ``asyncio.run`` would (tasks still
    running are cancelled, async generators and the default executor shut down).
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its result (or error) arrives in the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` on the loop's thread; a no-op once the loop has closed."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        """Let the loop end (it finishes the callbacks already due, then cleans up)."""
        self.call_soon(self._loop.stop)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` for the loop's thread to end; True once it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        loop = self._loop
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
