"""Sharding: the input cut into units in read order and dealt into ``n`` contiguous runs
of about equal weight (the rule is in :mod:`engine.source`'s docstring). ``deal`` is pure;
:mod:`engine.source.delta` deals a Delta table's files with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import UsageError
from engine.location import Location

__all__ = ["Unit", "check_shard", "deal", "dealt", "merged", "parse_shard"]


@dataclass(frozen=True, slots=True, eq=False)
class Unit:
    """A piece of the input read as one: some row groups of a Parquet file, or a whole file.

    Attributes:
        file: where it is.
        row_groups: the Parquet row groups, in order; ``None`` for the whole file.
        rows: its row count when known (Parquet).
        weight: what dealing shards balances: rows for Parquet, bytes for CSV.
    """

    file: Location
    row_groups: tuple[int, ...] | None = None
    rows: int | None = None
    weight: int = 0


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (the CLI's ``--shard I/N``) into ``(i, n)``, checked as :func:`check_shard`.

    Raises:
        UsageError: not of the form ``I/N`` with ``0 <= I < N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(
            f"`shard` {text!r}: expected I/N, this task's shard I of N shards with 0 <= I < N "
            "(e.g. `shard` 0/4 ... `shard` 3/4)"
        )
    return check_shard((int(match[1]), int(match[2])))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Return ``shard`` as ``(i, n)`` if ``0 <= i < n``.

    Raises:
        UsageError: naming `shard`, when ``i`` or ``n`` is out of range or not an int.
    """
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise UsageError(f"`shard` {shard!r}: expected I/N, a pair (i, n)") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise UsageError(f"`shard` {index!r}/{count!r}: I and N must be whole numbers")
    if count < 1 or not 0 <= index < count:
        raise UsageError(
            f"`shard` {index}/{count}: expected I/N with 0 <= I < N, e.g. `shard` 0/{max(count, 2)}"
        )
    return index, count


def dealt(units: Sequence[Unit], shard: tuple[int, int]) -> list[Unit]:
    """Shard ``index``'s units: ``count`` contiguous runs of about equal weight.

    A unit belongs to the shard its weight's midpoint falls in, so every unit has exactly one
    shard, shards are in input order, and each differs from the ideal by under one unit.
    """
    return [units[i] for i in deal([unit.weight for unit in units], shard)]


def deal(weights: Sequence[int], shard: tuple[int, int]) -> list[int]:
    """The positions of the units shard ``i`` of ``n`` reads, given each unit's weight.

    ``n`` contiguous runs of about equal weight: a unit belongs to the shard its weight's
    midpoint falls in (all weights zero: dealt by position). Pure; :mod:`engine.source.delta` deals
    a Delta table's files with it as this module deals Parquet row groups.
    """
    index, count = shard
    weights = list(weights)
    if sum(weights) == 0:  # nothing to balance (empty files): deal by position
        weights = [1] * len(weights)
    total, before, mine = sum(weights), 0, []
    for position, weight in enumerate(weights):
        owner = min(count - 1, (2 * before + weight) * count // (2 * total))
        before += weight
        if owner == index:
            mine.append(position)
    return mine


def merged(units: Sequence[Unit]) -> list[Unit]:
    """Join consecutive row-group units of one file, so each file is opened once."""
    merged: list[Unit] = []
    for unit in units:
        last = merged[-1] if merged else None
        if last and last.file is unit.file and last.row_groups and unit.row_groups:
            merged[-1] = Unit(
                unit.file,
                last.row_groups + unit.row_groups,
                (last.rows or 0) + (unit.rows or 0),
                last.weight + unit.weight,
            )
        else:
            merged.append(unit)
    return merged
