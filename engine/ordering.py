"""Pure: results arrive by batch id in any order and leave in id order (one reorder buffer
for every sink: the file writer, the in-memory table, Spark's hand-over)."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["InOrder"]

T = TypeVar("T")


class InOrder(Generic[T]):
    """A reorder buffer keyed by batch id (0, 1, 2, ...).

    Attributes:
        next_id: the id the buffer waits for next; everything before it has left.
    """

    def __init__(self) -> None:
        self._pending: dict[int, T] = {}
        self.next_id = 0

    def add(self, batch_id: int, item: T) -> list[tuple[int, T]]:
        """Hold ``item``; returns every (id, item) that can now leave, in order.

        Raises:
            ValueError: the id already came (a caller bug: a batch delivered twice).
        """
        if batch_id < self.next_id or batch_id in self._pending:
            raise ValueError(f"batch {batch_id} was already added")
        self._pending[batch_id] = item
        ready = []
        while self.next_id in self._pending:
            ready.append((self.next_id, self._pending.pop(self.next_id)))
            self.next_id += 1
        return ready

    def waiting(self) -> list[int]:
        """The ids held, in order."""
        return sorted(self._pending)

    def __len__(self) -> int:
        """Items held, waiting for an earlier one."""
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()
