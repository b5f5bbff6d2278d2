"""Anything readable -> one pyarrow ``RecordBatchReader``, once, at the entry.

``open_source`` accepts files, directories, globs, Arrow tables and readers, and polars or
pandas frames, and returns a :class:`Source`: the input's schema, its files, and a way to
stream record batches of just the columns the run needs. Everything after this module sees
one code path: ``source.reader(columns)``.

Rules a reader of the code should know:

* Paths: directories are walked recursively for ``.parquet``/``.pq``/``.csv``/``.csv.gz``
  files; files and directories whose names start with ``.`` or ``_`` (``_SUCCESS``,
  ``_temporary/``, ``.crc``) are skipped, in directories and in glob matches alike. A file
  named explicitly is always read. Files are deduplicated by absolute path and read in
  lexicographic order of that path, each from its first row to its last.
* One format per run: mixing Parquet and CSV is refused (``format=`` picks one explicitly).
* One schema per run: every file must have the same column names (in any order). Types may
  differ only by a lossless-in-practice widening, which is applied when reading: null to any
  type, a narrower to a wider integer, integer or float32 to float64, string to large_string.
  Anything else is an :class:`~engine.errors.InputError` naming the file and the columns.
* CSV: types are inferred from each file's first block (``CSV_BLOCK_BYTES``), unified across
  files by the rule above, and the unified types are then imposed on every file, so a column
  cannot be int64 in one file and double in the next. A column empty in every sampled block is
  read as string. A value later in a file that does not fit its column's type is an
  ``InputError`` naming the file.
* Memory: Parquet is streamed row group by row group (``ParquetFile.iter_batches``), CSV block
  by block (``pyarrow.csv.open_csv``); no file is ever read whole.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

__all__ = ["CSV_BLOCK_BYTES", "FORMATS", "Inputs", "Source", "open_source"]

FORMATS = ("parquet", "csv")
SUFFIXES: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
}
CSV_BLOCK_BYTES = 1 << 20
"""Bytes per CSV read block; the first block of each file is the type-inference sample."""
DEFAULT_BATCH_ROWS = 65_536

Inputs: TypeAlias = (
    "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | pa.Table | pa.RecordBatch"
    " | pa.RecordBatchReader | pl.DataFrame | pl.LazyFrame | pd.DataFrame"
)
BatchFactory: TypeAlias = Callable[[list[str], int], Iterator[pa.RecordBatch]]
"""Yields batches holding (at least) the named columns; ``Source.reader`` selects, casts and
splits them to the projected schema and ``batch_rows``."""


@dataclass(frozen=True, slots=True)
class Source:
    """A readable input, opened once at the entry point.

    Attributes:
        schema: the full input schema (every column available to ``reader``).
        paths: the resolved files in read order; empty for in-memory data.
        num_rows: the row count when cheaply known (Parquet footers, in-memory data), else
            ``None`` (CSV, record batch readers).
    """

    schema: pa.Schema
    paths: tuple[str, ...] = ()
    num_rows: int | None = None
    _batches: BatchFactory = field(
        default=lambda columns, batch_rows: iter(()), repr=False, compare=False
    )

    def reader(
        self, columns: Sequence[str] | None = None, *, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        """Stream the input from its first row, with only ``columns`` read.

        Each call returns a fresh reader (except for a source made from a
        ``RecordBatchReader``, which can be read once). Rows come in a stable order: files in
        ``paths`` order, each file in its own order.

        Args:
            columns: the columns to read, in the order wanted; ``None`` for all of them.
            batch_rows: the most rows in one yielded batch.

        Returns:
            A reader whose schema is ``schema`` restricted to ``columns``.

        Raises:
            InputError: a column is unknown, the data cannot be read, or a single-use
                reader was already consumed.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        names = self.schema.names if columns is None else _check_columns(self.schema, columns)
        target = pa.schema([self.schema.field(name) for name in names])
        batches = _conformed(self._batches(names, batch_rows), target, batch_rows)
        return pa.RecordBatchReader.from_batches(target, batches)


def open_source(inputs: Inputs, *, format: str | None = None) -> Source:
    """Open any supported input as a :class:`Source`.

    Args:
        inputs: a path, directory or glob (``data/*.parquet``, ``data/**``), a sequence of
            those, a ``pyarrow.Table``/``RecordBatch``/``RecordBatchReader`` (a reader can be
            read only once), a polars ``DataFrame``/``LazyFrame`` or a pandas ``DataFrame``.
        format: ``"parquet"`` or ``"csv"`` to override detection by file extension
            (paths only).

    Returns:
        The opened source; file footers / CSV headers have been read, no data yet.

    Raises:
        InputError: nothing to read, a path is missing or unreadable, formats are mixed or
            unsupported, or the files' schemas disagree.
    """
    if format is not None and format not in FORMATS:
        raise InputError(f"unsupported format {format!r}; choose one of: {', '.join(FORMATS)}")
    if isinstance(inputs, str | os.PathLike):
        return _file_source([inputs], format)
    in_memory = _in_memory_source(inputs)
    if in_memory is not None:
        if format is not None:
            raise InputError("format= applies to file inputs only; in-memory data has a schema")
        return in_memory
    if isinstance(inputs, Sequence) and not isinstance(inputs, bytes | bytearray):
        items = list(inputs)
        if all(isinstance(item, str | os.PathLike) for item in items):
            return _file_source(items, format)
    raise InputError(
        f"cannot read a {type(inputs).__name__}; pass paths, directories or globs, a pyarrow "
        "Table or RecordBatchReader, a polars DataFrame/LazyFrame or a pandas DataFrame"
    )


# --- in-memory inputs -------------------------------------------------------------------


def _in_memory_source(obj: object) -> Source | None:
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
        raise InputError(f"cannot convert the pandas DataFrame to Arrow: {_short(exc)}") from exc


# --- files: finding them --------------------------------------------------------------------


def _file_source(items: Sequence[str | os.PathLike[str]], format: str | None) -> Source:
    if not items:
        raise InputError("no input given; pass at least one file, directory or glob")
    paths = sorted({path for item in items for path in _expand(os.fspath(item), format)})
    fmt = format or _single_format(paths)
    schema, num_rows = _parquet_schema(paths) if fmt == "parquet" else _csv_schema(paths)
    files = _FileReader(tuple(paths), fmt, schema)
    return Source(schema=schema, paths=tuple(paths), num_rows=num_rows, _batches=files)


def _expand(item: str, format: str | None) -> list[str]:
    if os.path.isdir(item):
        found = _scan_directory(item, format)
        if not found:
            raise InputError(
                f"directory {item} holds no {_suffix_list(format)} files "
                "(names starting with '.' or '_' are skipped)"
            )
        return found
    if os.path.isfile(item):
        return [os.path.abspath(item)]
    if _has_magic(item):
        return _expand_glob(item, format)
    raise InputError(f"input not found: {item}")


def _expand_glob(pattern: str, format: str | None) -> list[str]:
    root = _glob_root(pattern)
    found: list[str] = []
    for match in glob.glob(pattern, recursive=True):
        if _is_hidden(os.path.relpath(match, root)):
            continue
        if os.path.isdir(match):
            found.extend(_scan_directory(match, format))
        else:
            found.append(os.path.abspath(match))
    if not found:
        raise InputError(f"no files match {pattern!r}")
    return found


def _scan_directory(directory: str, format: str | None) -> list[str]:
    found: list[str] = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        for name in files:
            kind = _format_of(name)
            if not _is_hidden(name) and kind is not None and format in (None, kind):
                found.append(os.path.abspath(os.path.join(parent, name)))
    return found


def _glob_root(pattern: str) -> str:
    """The directory above the first wildcard; components below it are checked for hiding."""
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if _has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.curdir


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _is_hidden(relative: str) -> bool:
    return any(
        part.startswith((".", "_"))
        for part in relative.split(os.sep)
        if part not in ("", ".", "..")
    )


def _format_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    return next((kind for suffix, kind in SUFFIXES.items() if name.endswith(suffix)), None)


def _suffix_list(format: str | None = None) -> str:
    return "/".join(suffix for suffix, kind in SUFFIXES.items() if format in (None, kind))


def _single_format(paths: Sequence[str]) -> str:
    by_format: dict[str, str] = {}
    for path in paths:
        kind = _format_of(path)
        if kind is None:
            suffix = os.path.splitext(path)[1] or "(no extension)"
            raise InputError(
                f"unsupported file extension {suffix!r}: {path}; supported: "
                f"{', '.join(SUFFIXES)} (or pass format='parquet' or format='csv')"
            )
        by_format.setdefault(kind, path)
    if len(by_format) > 1:
        examples = " and ".join(f"{path} ({kind})" for kind, path in sorted(by_format.items()))
        raise InputError(
            f"the input mixes formats, e.g. {examples}; read one format per run "
            "(narrow the glob, e.g. data/*.parquet, or pass format=)"
        )
    return next(iter(by_format))


# --- files: schemas -------------------------------------------------------------------------


def _promote(left: pa.DataType, right: pa.DataType) -> pa.DataType | None:
    """The type both can be read as, or ``None``; see the module docstring for the rule."""
    if left.equals(right):
        return left
    if pa.types.is_null(left) or pa.types.is_null(right):
        return right if pa.types.is_null(left) else left
    if pa.types.is_signed_integer(left) and pa.types.is_signed_integer(right):
        return left if left.bit_width >= right.bit_width else right
    numeric = (pa.types.is_signed_integer, pa.types.is_unsigned_integer, pa.types.is_floating)
    if all(any(test(t) for test in numeric) for t in (left, right)) and (
        pa.types.is_floating(left) or pa.types.is_floating(right)
    ):
        return pa.float64()
    strings = {pa.string(), pa.large_string()}
    if left in strings and right in strings:
        return pa.large_string()
    return None


def _unify(schema: pa.Schema, other: pa.Schema, first: str, path: str) -> pa.Schema:
    """``schema`` widened to also hold ``other`` (the schema of ``path``), or InputError."""
    if set(schema.names) != set(other.names) or len(other.names) != len(schema.names):
        missing = [name for name in schema.names if name not in other.names]
        extra = [name for name in other.names if name not in schema.names]
        raise InputError(
            f"{path} has different columns from {first}: "
            f"missing {missing or 'none'}, extra {extra or 'none'}; all files must share a schema"
        )
    fields, conflicts = [], []
    for here in schema:
        there = other.field(here.name)
        promoted = _promote(here.type, there.type)
        if promoted is None:
            conflicts.append(f"{here.name}: {here.type} in {first}, {there.type} in {path}")
            promoted = here.type
        fields.append(pa.field(here.name, promoted, here.nullable or there.nullable, here.metadata))
    if conflicts:
        raise InputError(
            f"{path} does not share the schema of {first}; column types differ: "
            + "; ".join(conflicts)
        )
    return pa.schema(fields)


def _unify_all(schemas: Iterable[tuple[str, pa.Schema]]) -> pa.Schema:
    pairs = iter(schemas)
    first, schema = next(pairs)
    schema = pa.schema(list(schema))  # drop file-level metadata (pandas index notes, ...)
    for path, other in pairs:
        schema = _unify(schema, other, first, path)
    return schema


# --- files: reading -------------------------------------------------------------------------


def _parquet_schema(paths: Sequence[str]) -> tuple[pa.Schema, int]:
    footers = [_parquet_footer(path) for path in paths]
    schema = _unify_all((path, schema) for path, (schema, _) in zip(paths, footers, strict=True))
    return schema, sum(rows for _, rows in footers)


def _csv_schema(paths: Sequence[str]) -> tuple[pa.Schema, None]:
    schema = _unify_all((path, _csv_inferred(path)) for path in paths)
    return pa.schema([_csv_readable(column) for column in schema]), None


@dataclass(frozen=True, slots=True)
class _FileReader:
    """Reads a run's files, in order, as record batches of the unified ``schema``."""

    paths: tuple[str, ...]
    format: str
    schema: pa.Schema

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        read = _parquet_batches if self.format == "parquet" else _csv_batches
        return itertools.chain.from_iterable(
            _translated(path, read(path, self.schema, columns, batch_rows)) for path in self.paths
        )


def _parquet_footer(path: str) -> tuple[pa.Schema, int]:
    try:
        with pq.ParquetFile(path) as file:
            return file.schema_arrow, file.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {path} as Parquet: {_short(exc)}") from exc


def _parquet_batches(
    path: str, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    # pre_buffer=False: with it, pyarrow caches every row group it pre-buffered for the life
    # of the reader, so memory grew with the file (252 MiB for a 3M-row file vs 25 MiB).
    with pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20) as file:
        if not columns:  # zero columns still need row counts: read the narrowest thing
            columns = schema.names[:1]
        yield from file.iter_batches(batch_size=batch_rows, columns=columns)


def _csv_open(
    path: str, column_types: dict[str, pa.DataType] | None, columns: list[str] | None
) -> Any:
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(column_types=column_types, include_columns=columns),
    )


def _csv_inferred(path: str) -> pa.Schema:
    try:
        with _csv_open(path, None, None) as reader:
            return reader.schema
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {path} as CSV: {_short(exc)}") from exc


def _csv_readable(column: pa.Field) -> pa.Field:
    """A column empty in every sample would be typed null and fail on a later value."""
    return column.with_type(pa.string()) if pa.types.is_null(column.type) else column


def _csv_batches(
    path: str, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    types = {f.name: f.type for f in schema}
    with _csv_open(path, types, columns or schema.names[:1]) as reader:
        yield from reader


def _translated(path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Re-raise pyarrow's failures while reading ``path`` as InputError naming the file."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        hint = ""
        if _format_of(path) == "csv" and isinstance(exc, pa.ArrowInvalid):
            hint = (
                f"; CSV column types are inferred from each file's first {CSV_BLOCK_BYTES} "
                "bytes, so a later value of another type fails (convert the file to Parquet)"
            )
        raise InputError(f"cannot read {path}: {_short(exc)}{hint}") from exc


# --- shared -----------------------------------------------------------------------------


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


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
