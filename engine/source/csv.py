"""CSV files: types inferred from each file's first block and imposed on all of them; for
scoring, columns parsed straight into the endpoint's types, a value that does not parse
flagged in :data:`READ_ERROR_COLUMN` instead of ending the run (see :mod:`engine.source`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv

from engine.errors import InputError, first_line
from engine.lazy import pc
from engine.location import Location
from engine.source.schemas import unify_all
from engine.source.shards import Unit

__all__ = [
    "CSV_BLOCK_BYTES",
    "READ_ERROR_COLUMN",
    "csv_batches",
    "csv_parsable",
    "csv_tolerant_batches",
    "csv_units",
    "read_errors",
]


CSV_BLOCK_BYTES = 1 << 20
"""Bytes per CSV read block; the first block of each file is the type-inference sample."""
READ_ERROR_COLUMN = "__engine_read_error__"
"""With ``csv_types``: why a row could not be read (null for a good row); never sent."""


@contextlib.contextmanager
def _csv_open(
    file: Location,
    column_types: dict[str, pa.DataType] | None,
    columns: list[str] | None,
    *,
    skip_rows: int = 0,
) -> Iterator[Any]:
    with contextlib.ExitStack() as stack:
        source: Any = file.path
        if file.filesystem is not None:  # "detect": .csv.gz is decompressed, as locally
            source = stack.enter_context(file.filesystem.open_input_stream(file.path))
        yield stack.enter_context(
            pcsv.open_csv(
                source,
                read_options=pcsv.ReadOptions(
                    block_size=CSV_BLOCK_BYTES, skip_rows_after_names=skip_rows
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types=column_types, include_columns=columns
                ),
            )
        )


def _csv_inferred(file: Location) -> pa.Schema:
    try:
        with _csv_open(file, None, None) as reader:
            return reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {file.name} as CSV: {first_line(exc, limit=300)}") from exc


def _csv_readable(column: pa.Field) -> pa.Field:
    """A column empty in every sample would be typed null and fail on a later value."""
    return column.with_type(pa.string()) if pa.types.is_null(column.type) else column


def csv_units(files: Sequence[Location], split: bool) -> tuple[pa.Schema, list[Unit]]:
    schema = unify_all((file.name, _csv_inferred(file)) for file in files)
    schema = pa.schema([_csv_readable(column) for column in schema])
    sizes = [max(file.info().size or 0, 0) if split else 0 for file in files]
    return schema, [Unit(file, weight=size) for file, size in zip(files, sizes, strict=True)]


def csv_batches(
    unit: Unit, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    types = {f.name: f.type for f in schema}
    with _csv_open(unit.file, types, columns or schema.names[:1]) as reader:
        yield from reader


def csv_tolerant_batches(
    unit: Unit, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Typed CSV batches plus an (all-null) error column; from a file's first value that does
    not parse on, its rows as text, converted column by column, bad values flagged."""
    columns = columns or schema.names[:1]
    types = {f.name: f.type for f in schema}
    done = 0
    try:
        with _csv_open(unit.file, types, columns) as reader:
            for batch in reader:
                yield batch.append_column(
                    READ_ERROR_COLUMN, pa.nulls(batch.num_rows, pa.string())
                )
                done += batch.num_rows
        return
    except pa.ArrowInvalid:
        pass  # a value that does not parse (or a malformed line, which fails again below)
    text_types = {name: pa.string() for name in columns if not _is_text(types[name])}
    with _csv_open(unit.file, {**types, **text_types}, columns, skip_rows=done) as reader:
        for batch in reader:
            yield _converted(batch, schema, unit.file.name, first_line=done + 2)
            done += batch.num_rows


def _converted(
    batch: pa.RecordBatch, schema: pa.Schema, path: str, *, first_line: int
) -> pa.RecordBatch:
    """``batch`` (text where ``schema`` wants other types) converted, with the error column."""
    arrays: list[pa.Array] = []
    problems: dict[int, list[str]] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        target = schema.field(name).type
        if column.type == target:
            arrays.append(column)
            continue
        converted, bad = _parsed(column, target)
        arrays.append(converted)
        for row in bad:
            value = column[row].as_py()
            problems.setdefault(row, []).append(f"column '{name}': {value!r} is not a {target}")
    error_column = pa.nulls(batch.num_rows, pa.string())
    if problems:
        error_column = pa.array(
            [
                f"{path}, line {first_line + row}: " + "; ".join(problems[row])
                if row in problems
                else None
                for row in range(batch.num_rows)
            ],
            pa.string(),
        )
    return pa.RecordBatch.from_arrays(
        [*arrays, error_column], names=[*batch.schema.names, READ_ERROR_COLUMN]
    )


def _parsed(text: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """``text`` as ``target`` by the CSV reader's rules; the rows that do not parse are null
    and listed (found by halving, so a few bad values cost a few small casts)."""
    options = pcsv.ConvertOptions()
    trimmed = pc.utf8_trim_whitespace(text)
    nulls = pc.is_in(trimmed, value_set=pa.array(options.null_values, pa.string()))
    trimmed = pc.if_else(nulls, pa.scalar(None, pa.string()), trimmed)
    if pa.types.is_boolean(target):
        words = pa.array([*options.true_values, *options.false_values], pa.string())
        known = pc.or_(pc.is_in(trimmed, value_set=words), pc.is_null(trimmed))
        trues = pc.is_in(trimmed, value_set=pa.array(options.true_values, pa.string()))
        values = pc.if_else(pc.is_null(trimmed), pa.scalar(None, pa.bool_()), trues)
        unknown = [int(i) for i in pc.indices_nonzero(pc.invert(known)).to_pylist()]
        return pc.if_else(known, values, pa.scalar(None, pa.bool_())), unknown
    bad: list[int] = []
    pieces = _cast_halving(trimmed, target, 0, bad)
    return pa.concat_arrays(pieces), bad


def _cast_halving(
    text: pa.Array, target: pa.DataType, offset: int, bad: list[int]
) -> list[pa.Array]:
    try:
        return [text.cast(target)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(text) == 1:
            bad.append(offset)
            return [pa.nulls(1, target)]
    half = len(text) // 2
    return _cast_halving(text.slice(0, half), target, offset, bad) + _cast_halving(
        text.slice(half), target, offset + half, bad
    )


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def csv_parsable(data_type: pa.DataType) -> bool:
    """Types pyarrow's CSV reader parses a value into."""
    tests = (
        pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
        pa.types.is_large_string, pa.types.is_timestamp, pa.types.is_date, pa.types.is_decimal,
    )
    return any(test(data_type) for test in tests)


def read_errors(rows: pa.RecordBatch) -> pa.Array | None:
    """The rows' read errors (CSV values that did not parse), or None when there are none."""
    index = rows.schema.get_field_index(READ_ERROR_COLUMN)
    if index < 0:
        return None
    errors = rows.column(index)
    return errors if errors.null_count < len(errors) else None
