"""The :class:`Source` every input becomes, and the file reader behind one made of files:
units read in order, each batch selected, ordered and cast to the projected schema.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import pyarrow as pa

from engine.errors import InputError, first_line
from engine.location import format_of
from engine.source.csv import (
    CSV_BLOCK_BYTES,
    READ_ERROR_COLUMN,
    csv_batches,
    csv_parsable,
    csv_tolerant_batches,
)
from engine.source.parquet import parquet_batches
from engine.source.shards import Unit

__all__ = ["DEFAULT_BATCH_ROWS", "BatchFactory", "FileReader", "Source"]


DEFAULT_BATCH_ROWS = 65_536
BatchFactory: TypeAlias = Callable[[list[str], int], Iterator[pa.RecordBatch]]
"""Yields batches holding (at least) the named columns; ``Source.reader`` selects, casts and
splits them to the projected schema and ``batch_rows``."""


@dataclass(frozen=True, slots=True)
class Source:
    """A readable input, opened once at the entry point.

    Attributes:
        schema: the full input schema (every column available to ``reader``).
        paths: the resolved files in read order (local absolute paths, or URIs without
            credentials); for a shard, only the files it reads; empty for in-memory data.
        num_rows: the row count when cheaply known (Parquet footers, in-memory data; a
            shard's own rows), else ``None`` (CSV, record batch readers).
        snapshot: what names this exact input when its paths alone do not (a Delta table:
            its URI, version and filter); ``None`` otherwise.
    """

    schema: pa.Schema
    paths: tuple[str, ...] = ()
    num_rows: int | None = None
    snapshot: str | None = None
    _batches: BatchFactory = field(
        default=lambda columns, batch_rows: iter(()), repr=False, compare=False
    )

    @property
    def is_csv(self) -> bool:
        """True for CSV files (whose column types are chosen by the reader, not the file)."""
        return isinstance(self._batches, FileReader) and self._batches.format == "csv"

    def typed_as(self, csv_types: Mapping[str, pa.DataType]) -> pa.Schema:
        """The schema ``reader(csv_types=csv_types)`` yields, without its error column.

        CSV columns named in ``csv_types`` take those types when the CSV reader can parse
        them (numbers, booleans, strings, dates, timestamps, decimals); any other input
        keeps its own schema.
        """
        if not self.is_csv:
            return self.schema
        return pa.schema(
            [
                column.with_type(csv_types[column.name])
                if column.name in csv_types and csv_parsable(csv_types[column.name])
                else column
                for column in self.schema
            ]
        )

    def reader(
        self,
        columns: Sequence[str] | None = None,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        csv_types: Mapping[str, pa.DataType] | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the input from its first row, with only ``columns`` read.

        Each call returns a fresh reader (except for a source made from a
        ``RecordBatchReader``, which can be read once). Rows come in a stable order: files in
        ``paths`` order, each file in its own order.

        Args:
            columns: the columns to read, in the order wanted; ``None`` for all of them.
            batch_rows: the most rows in one yielded batch.
            csv_types: for CSV, read these columns as these types, and flag rows with a
                value that does not parse in :data:`READ_ERROR_COLUMN` (always present
                then) instead of failing; see the module docstring. Ignored otherwise.

        Returns:
            A reader whose schema is ``schema`` restricted to ``columns`` (typed as
            :meth:`typed_as` and followed by the error column with ``csv_types``).

        Raises:
            InputError: a column is unknown, the data cannot be read, or a single-use
                reader was already consumed.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        names = self.schema.names if columns is None else _check_columns(self.schema, columns)
        factory = self._batches
        schema = self.schema
        if csv_types is not None and isinstance(factory, FileReader) and self.is_csv:
            schema = self.typed_as(csv_types)
            factory = replace(factory, schema=schema, row_errors=True)
        fields = [schema.field(name) for name in names]
        if isinstance(factory, FileReader) and factory.row_errors:
            fields.append(pa.field(READ_ERROR_COLUMN, pa.string()))
        target = pa.schema(fields)
        batches = _conformed(factory(names, batch_rows), target, batch_rows)
        return pa.RecordBatchReader.from_batches(target, batches)


@dataclass(frozen=True, slots=True)
class FileReader:
    """Reads a run's units, in order, as record batches of the unified ``schema``
    (with ``row_errors``, CSV values that do not parse flag their row instead of failing)."""

    units: tuple[Unit, ...]
    format: str
    schema: pa.Schema
    row_errors: bool = False

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        read = parquet_batches if self.format == "parquet" else csv_batches
        if self.row_errors:
            read = csv_tolerant_batches
        return itertools.chain.from_iterable(
            translated(unit.file.name, read(unit, self.schema, columns, batch_rows))
            for unit in self.units
        )


def translated(path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Re-raise pyarrow's failures while reading ``path`` as InputError naming the file."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        hint = ""
        if format_of(path) == "csv" and isinstance(exc, pa.ArrowInvalid):
            hint = (
                f"; CSV column types are inferred from each file's first {CSV_BLOCK_BYTES} "
                "bytes, so a later value of another type fails (convert the file to Parquet)"
            )
        raise InputError(f"cannot read {path}: {first_line(exc, limit=300)}{hint}") from exc


def _check_columns(schema: pa.Schema, columns: Sequence[str]) -> list[str]:
    names = list(columns)
    for name in names:
        if name not in schema.names:
            raise InputError(
                f"unknown column {name!r}; available columns: {', '.join(schema.names)}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"columns requested more than once: {', '.join(repeated)}")
    return names


def _conformed(
    batches: Iterator[pa.RecordBatch], target: pa.Schema, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Select, order and cast each batch to ``target``; split batches above ``batch_rows``."""
    for batch in batches:
        batch = batch.select(target.names)
        if not batch.schema.equals(target):
            batch = batch.cast(target)
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
