"""Time for the emulator: a monotonic clock and a sleep, both injectable.

Everything time-based in the emulator (token expiry, start/stop transitions, the QPS
bucket, injected latency) reads :data:`Clock` and waits through :data:`Sleep`, so tests
move a :class:`FakeClock` instead of waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Clock", "FakeClock", "Sleep"]

#: Monotonic seconds.
Clock = Callable[[], float]
#: Waits the given number of seconds.
Sleep = Callable[[float], Awaitable[None]]


class FakeClock:
    """A clock that only moves when told to; its :meth:`sleep` moves it instead of waiting.

    Example:
        >>> clock = FakeClock()
        >>> clock.advance(5.0)
        >>> clock()
        5.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance the clock by it, and yield to the loop once."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
