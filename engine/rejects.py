"""Rejected rows counted by their error message, with a few example row numbers each, in
bounded memory (``max_groups`` messages; the rest are counted together). Pure: the run's
accounting (:mod:`engine.stats`) holds one, the report shows it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

__all__ = ["OTHER_MESSAGES", "RejectGroups"]

#: Distinct error messages kept; rows with any other message are counted as one group.
DEFAULT_MAX_GROUPS = 50
#: Example row numbers kept per message.
DEFAULT_EXAMPLES = 5
#: Longest message kept (a message quoting a whole row is cut here).
MAX_MESSAGE_CHARS = 500
#: The group the rows of messages beyond ``max_groups`` are counted in.
OTHER_MESSAGES = "(other messages)"


class RejectGroups:
    """Rejected rows counted by error message, with up to ``examples`` row numbers each."""

    def __init__(
        self, *, max_groups: int = DEFAULT_MAX_GROUPS, examples: int = DEFAULT_EXAMPLES
    ) -> None:
        self.max_groups = max_groups
        self.examples = examples
        self.counts: Counter[str] = Counter()
        self.rows: dict[str, list[int]] = {}

    def add(self, errors: pa.Array | pa.ChunkedArray, *, row_offset: int) -> None:
        """Count the non-null messages of ``errors``; row ``i`` is input row ``row_offset + i``."""
        values = errors.to_pylist()
        for index, message in enumerate(values):
            if message is None:
                continue
            self.add_one(str(message), row_offset + index)

    def add_one(self, message: str, row: int) -> None:
        key = message[:MAX_MESSAGE_CHARS]
        if key not in self.counts and len(self.counts) >= self.max_groups:
            key = OTHER_MESSAGES
        self.counts[key] += 1
        examples = self.rows.setdefault(key, [])
        if len(examples) < self.examples:
            examples.append(row)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def groups(self) -> list[dict[str, Any]]:
        """``[{"message", "rows", "examples"}]``, the most frequent first."""
        return [
            {"message": message, "rows": count, "examples": sorted(self.rows[message])}
            for message, count in self.counts.most_common()
        ]
