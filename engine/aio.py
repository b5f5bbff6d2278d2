"""Time and task helpers every async module shares: the injected clock and sleep, and
cancelling a task without its CancelledError leaking out.

Every timing decision in the engine reads a :data:`Clock` and waits through a :data:`Sleep`
passed in by the caller, so tests can run time fast (or virtually) instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Clock", "Sleep", "cancel_quietly"]

#: Monotonic seconds.
Clock = Callable[[], float]
#: Waits that many seconds.
Sleep = Callable[[float], Awaitable[None]]


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
