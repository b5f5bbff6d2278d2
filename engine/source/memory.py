"""In-memory inputs (Arrow tables, record batches and readers, polars and pandas frames)
as a :class:`~engine.source.base.Source`, converted once here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from engine.errors import InputError, first_line
from engine.source.base import Source

__all__ = ["in_memory_source"]


def in_memory_source(obj: object) -> Source | None:
    if isinstance(obj, pa.Table):
        return _table_source(obj)
    if isinstance(obj, pa.RecordBatch):
        return _table_source(pa.Table.from_batches([obj]))
    if isinstance(obj, pa.RecordBatchReader):
        return Source(schema=obj.schema, _batches=_OnceReader(obj))
    library = type(obj).__module__.partition(".")[0]
    if library == "polars":
        return _table_source(_polars_to_arrow(obj))
    if library == "pandas":
        return _table_source(_pandas_to_arrow(obj))
    return None


def _table_source(table: pa.Table) -> Source:
    def batches(columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        return iter(table.select(columns).to_batches(max_chunksize=batch_rows))

    return Source(schema=table.schema, num_rows=table.num_rows, _batches=batches)


class _OnceReader:
    """Hands out a ``RecordBatchReader``'s batches once; a second read is an error."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader: pa.RecordBatchReader | None = reader

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self._reader is None:
            raise InputError(
                "this source wraps a RecordBatchReader, which can be read only once; "
                "pass a Table or files to read the input again"
            )
        reader, self._reader = self._reader, None
        return iter(reader)


def _polars_to_arrow(frame: Any) -> pa.Table:
    import polars as pl

    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect(engine="streaming")
    if not isinstance(frame, pl.DataFrame):
        raise InputError(f"cannot read a polars {type(frame).__name__}; pass a DataFrame")
    return frame.to_arrow()


def _pandas_to_arrow(frame: Any) -> pa.Table:
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"cannot read a pandas {type(frame).__name__}; pass a DataFrame")
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(
            f"cannot convert the pandas DataFrame to Arrow: {first_line(exc, limit=300)}"
        ) from exc
