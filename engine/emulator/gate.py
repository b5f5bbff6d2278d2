"""Provisioned concurrency: a FIFO gate whose limit may change while requests hold slots.

``asyncio.Semaphore`` cannot be resized, and replacing it on a limit change would let the
requests already inside escape the count. The gate keeps one count across changes: lowering
the limit admits nobody until enough holders leave; raising it admits waiters at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ConcurrencyGate"]


class ConcurrencyGate:
    """At most ``limit`` holders (None: no cap); others wait in arrival order.

    Example:
        >>> gate = ConcurrencyGate(1)
        >>> gate.try_enter(), gate.try_enter()
        (True, False)
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def full(self) -> bool:
        """No slot is free (or others already wait for one)."""
        at_cap = self.limit is not None and self.held >= self.limit
        return at_cap or bool(self._waiters)

    def set_limit(self, limit: int | None) -> None:
        """Change the cap; waiters that now fit are admitted."""
        self.limit = limit
        self._admit_waiters()

    def try_enter(self) -> bool:
        """Take a slot if one is free now."""
        if self.full:
            return False
        self.held += 1
        return True

    async def enter(self) -> None:
        """Take a slot, waiting in line for one."""
        if self.try_enter():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # admitted just as we were cancelled: hand the slot on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        """Give a slot back."""
        self.held -= 1
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiters and (self.limit is None or self.held < self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)
