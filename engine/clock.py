"""The injected clock and sleep every timing decision reads and waits through.

Every timing decision in the engine reads a :data:`Clock` and waits through a :data:`Sleep`
passed in by the caller, so tests can run time fast (or virtually) instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["Clock", "Sleep"]

#: Monotonic seconds.
Clock = Callable[[], float]
#: Waits that many seconds.
Sleep = Callable[[float], Awaitable[None]]
