"""Parquet files: footers (schema, row-group sizes) and batches streamed row group by
row group, never a whole file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import InputError, first_line
from engine.location import Location
from engine.source.schemas import unify_all
from engine.source.shards import Unit

__all__ = [
    "STREAMING",
    "footer_bytes_per_row",
    "parquet_batches",
    "parquet_units",
    "rows_per_read",
    "sized_batches",
]


@contextlib.contextmanager
def _parquet_file(file: Location, **options: Any) -> Iterator[pq.ParquetFile]:
    """A ParquetFile by path (local), or over an input file its filesystem opened."""
    with contextlib.ExitStack() as stack:
        source: Any = file.path
        if file.filesystem is not None:
            source = stack.enter_context(file.filesystem.open_input_file(file.path))
        yield stack.enter_context(pq.ParquetFile(source, **options))


def _parquet_footer(file: Location) -> tuple[pa.Schema, tuple[int, ...]]:
    """The file's schema and the row count of each of its row groups."""
    try:
        with _parquet_file(file) as parquet:
            meta = parquet.metadata
            return parquet.schema_arrow, tuple(
                meta.row_group(i).num_rows for i in range(meta.num_row_groups)
            )
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"cannot read {file.name} as Parquet: {first_line(exc, limit=300)}"
        ) from exc


def parquet_units(files: Sequence[Location], split: bool) -> tuple[pa.Schema, list[Unit]]:
    footers = [_parquet_footer(file) for file in files]
    pairs = list(zip(files, footers, strict=True))
    schema = unify_all((file.name, file_schema) for file, (file_schema, _) in pairs)
    if not split:
        return schema, [Unit(file, rows=sum(groups)) for file, (_, groups) in pairs]
    units = [
        Unit(file, (group,), rows, rows)
        for file, (_, groups) in pairs
        for group, rows in enumerate(groups)
    ]
    return schema, units


#: A read holds about this much at most: ``batch_rows`` rows of narrow columns, fewer of wide
#: ones (16k rows of 50 KB documents would be 800 MB decoded at once).
READ_BYTES = 16 * 1024 * 1024


#: How every Parquet file is opened to stream it. pre_buffer=False: with it, pyarrow caches
#: every row group it pre-buffered for the life of the reader, so memory grew with the file
#: (252 MiB for a 3M-row file vs 25 MiB).
STREAMING: dict[str, Any] = {"pre_buffer": False, "buffer_size": 1 << 20}


def parquet_batches(
    unit: Unit, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The unit's rows in batches of at most ``batch_rows`` rows and about ``READ_BYTES``."""
    with _parquet_file(unit.file, **STREAMING) as file:
        if not columns:  # zero columns still need row counts: read the narrowest thing
            columns = schema.names[:1]
        row_groups = None if unit.row_groups is None else list(unit.row_groups)
        yield from sized_batches(file, columns, batch_rows, row_groups)


def sized_batches(
    file: pq.ParquetFile,
    columns: list[str],
    batch_rows: int,
    row_groups: list[int] | None = None,
    width: float = 0.0,
) -> Iterator[pa.RecordBatch]:
    """``row_groups`` of ``file`` (None: all) in reads of at most ``batch_rows`` rows and
    about ``READ_BYTES``: rows of ``width`` bytes, or when that is 0 of what the first rows
    measure decoded (:func:`_probe`)."""
    groups = list(range(file.metadata.num_row_groups)) if row_groups is None else row_groups
    if not groups:
        return
    first = None
    if not width:
        width, first = _probe(file, columns, groups[0], batch_rows)
        if first is not None and first.nbytes > READ_BYTES:
            first = None  # sized by the footer's guess, the probe outgrew a read: drop it
    reads = file.iter_batches(
        batch_size=rows_per_read(width, batch_rows), columns=columns, row_groups=groups
    )
    if first is None:
        yield from reads
        return
    # The probe's rows are the first read: the first request need not wait for a whole read
    # (16 MiB of embeddings: 65 ms here, longer from object storage). The reads then start
    # again from the top and skip them; the probe decoded them once more, as it always did.
    yield first
    skip = first.num_rows
    for batch in reads:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0


#: Rows decoded to measure a file's width before it is read.
PROBE_ROWS = 1024


def _probe(
    file: pq.ParquetFile, columns: list[str], group: int, batch_rows: int
) -> tuple[float, pa.RecordBatch | None]:
    """Bytes per row of the first rows of row group ``group``, decoded, and those rows (None
    when the group has none).

    The footer's sizes count encoded pages: a dictionary-encoded column of a few long
    strings (a repeated prompt) is 11 bytes a row there and 8 KB decoded, so a read sized by
    the footer alone was 128 MiB where 16 were meant. The footer only sizes the probe.
    """
    guess = footer_bytes_per_row(file.metadata, columns, group)
    probe = min(PROBE_ROWS, rows_per_read(guess, batch_rows))
    first = next(file.iter_batches(batch_size=probe, columns=columns, row_groups=[group]), None)
    if first is None or not first.num_rows:
        return guess, None
    return float(first.nbytes) / int(first.num_rows), first


def footer_bytes_per_row(meta: pq.FileMetaData, columns: list[str], group: int = 0) -> float:
    """The read columns' uncompressed size per row in one row group, as its footer says."""
    row_group = meta.row_group(group)
    if not row_group.num_rows:
        return 0.0
    wanted = set(columns)
    size = 0
    for index in range(row_group.num_columns):
        chunk = row_group.column(index)
        path = chunk.path_in_schema
        if path in wanted or path.split(".", 1)[0] in wanted:
            size += chunk.total_uncompressed_size
    return size / int(row_group.num_rows)


def rows_per_read(bytes_per_row: float, batch_rows: int) -> int:
    """At most ``batch_rows``, and few enough rows of ``bytes_per_row`` (0: unknown) to hold
    about ``READ_BYTES``."""
    if bytes_per_row <= 0:
        return batch_rows
    return max(1, min(batch_rows, int(READ_BYTES / bytes_per_row)))
