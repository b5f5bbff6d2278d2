""":func:`open_source`, the one entry: any supported input -> a :class:`Source`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import pyarrow as pa

from engine import volumes
from engine.errors import InputError, UsageError
from engine.location import FORMATS
from engine.source import delta
from engine.source.base import Source
from engine.source.files import file_source
from engine.source.memory import in_memory_source
from engine.source.shards import check_shard

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

__all__ = ["Inputs", "open_source"]


Inputs: TypeAlias = (
    "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | pa.Table | pa.RecordBatch"
    " | pa.RecordBatchReader | pl.DataFrame | pl.LazyFrame | pd.DataFrame"
)


def open_source(
    inputs: Inputs,
    *,
    format: str | None = None,
    shard: tuple[int, int] | None = None,
    table: delta.TableRead | None = None,
) -> Source:
    """Open any supported input as a :class:`Source`.

    Args:
        inputs: a path, directory or glob (``data/*.parquet``, ``data/**``), a URI of one
            (``s3://bucket/prefix/``, ``gs://bucket/day=*/*.parquet``), a sequence of those,
            a ``pyarrow.Table``/``RecordBatch``/``RecordBatchReader`` (a reader can be read
            only once), a polars ``DataFrame``/``LazyFrame`` or a pandas ``DataFrame``.
        format: ``"parquet"`` or ``"csv"`` to override detection by file extension
            (paths only).
        shard: ``(i, n)`` to read only shard ``i`` of ``n`` (``0 <= i < n``; file inputs
            only); see the module docstring for how units are dealt.
        table: for a Delta table (a directory or URI holding ``_delta_log/``), which
            snapshot and rows to read (:class:`engine.source.delta.TableRead`); a Delta table is
            read by :mod:`engine.source.delta` (needs the ``deltalake`` package).

    Returns:
        The opened source; file footers / CSV headers have been read, no data yet.

    Raises:
        InputError: nothing to read, a path is missing or unreadable, formats are mixed or
            unsupported, or the files' schemas disagree.
        UsageError: ``shard`` is out of range, or given with in-memory data.
    """
    if format is not None and format not in FORMATS:
        raise InputError(f"unsupported format {format!r}; choose one of: {', '.join(FORMATS)}")
    if shard is not None:
        shard = check_shard(shard)
    table_root = delta.table_root(inputs)
    if table_root is not None:
        if format is not None:
            raise InputError(f"{table_root} is a Delta table; format= applies to files only")
        volumes.refuse_remote_table(table_root, "input")
        return delta.open_table(table_root, table or delta.TableRead(), shard=shard)
    if table is not None and table.chosen:
        raise UsageError(
            f"{table.given()} appl{'y' if ',' in table.given() else 'ies'} to Delta tables, "
            f"and the input is not one (no _delta_log/ in it): drop it, or name the "
            "table's directory"
        )
    if isinstance(inputs, str | os.PathLike):
        return file_source([inputs], format, shard)
    in_memory = in_memory_source(inputs)
    if in_memory is not None:
        if format is not None:
            raise InputError("format= applies to file inputs only; in-memory data has a schema")
        if shard is not None:
            raise UsageError("`shard` applies to file inputs only; in-memory data is not split")
        return in_memory
    if isinstance(inputs, Sequence) and not isinstance(inputs, bytes | bytearray):
        items = list(inputs)
        if all(isinstance(item, str | os.PathLike) for item in items):
            return file_source(items, format, shard)
    raise InputError(
        f"cannot read a {type(inputs).__name__}; pass paths, directories or globs, a pyarrow "
        "Table or RecordBatchReader, a polars DataFrame/LazyFrame or a pandas DataFrame"
    )
