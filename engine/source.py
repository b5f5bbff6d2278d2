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
* CSV for scoring (``reader(csv_types=...)``): the columns the endpoint types are parsed
  straight into the endpoint's types (so a first MiB of integers does not make a later 1.5
  fail), and a value that still does not parse does not end the run: the reader adds a
  :data:`READ_ERROR_COLUMN` holding, for that row, the file, line and value, and the
  pipeline rejects the row like one the endpoint refused. The fast typed parse is used until
  a file's first bad value; from there on that file is read as text and each column converted
  with the CSV reader's rules (trimmed, its null markers, its true/false words), so only the
  bad values are found. Lines are counted as the file's lines, header first, assuming no
  blank lines (the CSV reader skips those).
* Delta tables: a directory or URI holding ``_delta_log/`` is one snapshot of a table, read
  by :mod:`engine.delta` (time travel, ``--where``, shards by file) into the same ``Source``.
* Memory: Parquet is streamed row group by row group (``ParquetFile.iter_batches``), CSV block
  by block (``pyarrow.csv.open_csv``); no file is ever read whole.

Object stores and other filesystems: an input that is a URI (``s3://bucket/prefix/``,
``gs://bucket/data/*.parquet``, ``abfss://container@account.dfs.core.windows.net/dir``, ...)
is opened with ``pyarrow.fs.FileSystem.from_uri``, or with fsspec (``az://``, ``memory://``,
anything with an fsspec implementation installed) when pyarrow does not know the scheme.
Credentials are found the usual way for each store: S3 reads ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE`` / ``AWS_DEFAULT_REGION``,
instance and container roles, and ``AWS_ENDPOINT_URL`` for S3-compatible servers (MinIO,
Ceph, ...); GCS uses Application Default Credentials; Azure uses ``DefaultAzureCredential``
(``AZURE_*`` variables, managed identity). pyarrow's query options also work
(``s3://bucket/key?region=eu-west-1``); credentials in a URI are never printed. Prefixes work
like directories and globs like local globs (``*``, ``**``, ``[...]``; in a URI ``?`` starts
the query options instead): keys are listed, sorted, and names starting with ``.`` or ``_``
skipped. ``file://`` URIs are local paths.

Sharding (``shard=(i, n)``, the CLI's ``--shard I/N``): the input is cut into units in read
order (each Parquet row group; each CSV file whole, since a CSV file cannot be split without
reading it) and the units are dealt into ``n`` contiguous runs of about equal weight (rows
for Parquet, from the footers; bytes for CSV): a unit belongs to the shard its weight's
midpoint falls in. So ``n`` tasks cover every row exactly once; shard ``i``'s rows come
before shard ``i + 1``'s, so the shard outputs concatenated in shard order are the unsharded
output; each shard reads long runs of consecutive row groups (few opens, few object-store
requests). Every shard still reads every file's footer or first block, so all of them agree
on the unified schema. The files must not change while the shards run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine import volumes
from engine.errors import InputError, UsageError, first_line
from engine.lazy import pc
from engine.location import FORMATS, SUFFIXES, Location, find_files, format_of

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from engine.delta import TableRead

__all__ = [
    "CSV_BLOCK_BYTES",
    "FORMATS",
    "READ_ERROR_COLUMN",
    "Inputs",
    "Source",
    "check_shard",
    "deal",
    "open_source",
    "parse_shard",
]

CSV_BLOCK_BYTES = 1 << 20
"""Bytes per CSV read block; the first block of each file is the type-inference sample."""
DEFAULT_BATCH_ROWS = 65_536
READ_ERROR_COLUMN = "__engine_read_error__"
"""With ``csv_types``: why a row could not be read (null for a good row); never sent."""

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
        return isinstance(self._batches, _FileReader) and self._batches.format == "csv"

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
                if column.name in csv_types and _csv_parsable(csv_types[column.name])
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
        if csv_types is not None and isinstance(factory, _FileReader) and self.is_csv:
            schema = self.typed_as(csv_types)
            factory = replace(factory, schema=schema, row_errors=True)
        fields = [schema.field(name) for name in names]
        if isinstance(factory, _FileReader) and factory.row_errors:
            fields.append(pa.field(READ_ERROR_COLUMN, pa.string()))
        target = pa.schema(fields)
        batches = _conformed(factory(names, batch_rows), target, batch_rows)
        return pa.RecordBatchReader.from_batches(target, batches)


def open_source(
    inputs: Inputs,
    *,
    format: str | None = None,
    shard: tuple[int, int] | None = None,
    table: TableRead | None = None,
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
            snapshot and rows to read (:class:`engine.delta.TableRead`); a Delta table is
            read by :mod:`engine.delta` (needs the ``deltalake`` package).

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
    from engine import delta  # not at the top: engine.delta builds on this module

    table_root = delta.table_root(inputs)
    if table_root is not None:
        if format is not None:
            raise InputError(f"{table_root} is a Delta table; format= applies to files only")
        volumes.refuse_remote_table(table_root, "input")
        return delta.open_table(table_root, table or delta.TableRead(), shard=shard)
    if table is not None and table.chosen:
        raise UsageError(
            f"{table.flags()} appl{'y' if ',' in table.flags() else 'ies'} to Delta tables, "
            f"and the input is not one (no _delta_log/ in it): drop the flag, or name the "
            "table's directory"
        )
    if isinstance(inputs, str | os.PathLike):
        return _file_source([inputs], format, shard)
    in_memory = _in_memory_source(inputs)
    if in_memory is not None:
        if format is not None:
            raise InputError("format= applies to file inputs only; in-memory data has a schema")
        if shard is not None:
            raise UsageError("--shard applies to file inputs only; in-memory data is not split")
        return in_memory
    if isinstance(inputs, Sequence) and not isinstance(inputs, bytes | bytearray):
        items = list(inputs)
        if all(isinstance(item, str | os.PathLike) for item in items):
            return _file_source(items, format, shard)
    raise InputError(
        f"cannot read a {type(inputs).__name__}; pass paths, directories or globs, a pyarrow "
        "Table or RecordBatchReader, a polars DataFrame/LazyFrame or a pandas DataFrame"
    )


def parse_shard(text: str) -> tuple[int, int]:
    """Parse the CLI's ``--shard I/N`` into ``(i, n)``, checked as :func:`check_shard`.

    Raises:
        UsageError: not of the form ``I/N`` with ``0 <= I < N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise UsageError(
            f"--shard {text!r}: expected I/N, this task's shard I of N shards with 0 <= I < N "
            "(e.g. --shard 0/4 ... --shard 3/4)"
        )
    return check_shard((int(match[1]), int(match[2])))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Return ``shard`` as ``(i, n)`` if ``0 <= i < n``.

    Raises:
        UsageError: naming ``--shard``, when ``i`` or ``n`` is out of range or not an int.
    """
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise UsageError(f"--shard {shard!r}: expected I/N, a pair (i, n)") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise UsageError(f"--shard {index!r}/{count!r}: I and N must be whole numbers")
    if count < 1 or not 0 <= index < count:
        raise UsageError(
            f"--shard {index}/{count}: expected I/N with 0 <= I < N, e.g. --shard 0/{max(count, 2)}"
        )
    return index, count


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


# --- files: one format per run -------------------------------------------------------------


def _single_format(paths: Sequence[str]) -> str:
    by_format: dict[str, str] = {}
    for path in paths:
        kind = format_of(path)
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


# --- files: units and shards ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Unit:
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


def _file_source(
    items: Sequence[str | os.PathLike[str]], format: str | None, shard: tuple[int, int] | None
) -> Source:
    files = find_files(items, format)
    fmt = format or _single_format([file.name for file in files])
    split = shard is not None
    schema, units = _parquet_units(files, split) if fmt == "parquet" else _csv_units(files, split)
    if shard is not None:
        units = _merged(_dealt(units, shard))
    num_rows = sum(unit.rows or 0 for unit in units) if fmt == "parquet" else None
    paths = tuple(dict.fromkeys(unit.file.name for unit in units))
    reader = _FileReader(tuple(units), fmt, schema)
    return Source(schema=schema, paths=paths, num_rows=num_rows, _batches=reader)


def _parquet_units(files: Sequence[Location], split: bool) -> tuple[pa.Schema, list[_Unit]]:
    footers = [_parquet_footer(file) for file in files]
    pairs = list(zip(files, footers, strict=True))
    schema = _unify_all((file.name, file_schema) for file, (file_schema, _) in pairs)
    if not split:
        return schema, [_Unit(file, rows=sum(groups)) for file, (_, groups) in pairs]
    units = [
        _Unit(file, (group,), rows, rows)
        for file, (_, groups) in pairs
        for group, rows in enumerate(groups)
    ]
    return schema, units


def _csv_units(files: Sequence[Location], split: bool) -> tuple[pa.Schema, list[_Unit]]:
    schema = _unify_all((file.name, _csv_inferred(file)) for file in files)
    schema = pa.schema([_csv_readable(column) for column in schema])
    sizes = [max(file.info().size or 0, 0) if split else 0 for file in files]
    return schema, [_Unit(file, weight=size) for file, size in zip(files, sizes, strict=True)]


def _dealt(units: Sequence[_Unit], shard: tuple[int, int]) -> list[_Unit]:
    """Shard ``index``'s units: ``count`` contiguous runs of about equal weight.

    A unit belongs to the shard its weight's midpoint falls in, so every unit has exactly one
    shard, shards are in input order, and each differs from the ideal by under one unit.
    """
    return [units[i] for i in deal([unit.weight for unit in units], shard)]


def deal(weights: Sequence[int], shard: tuple[int, int]) -> list[int]:
    """The positions of the units shard ``i`` of ``n`` reads, given each unit's weight.

    ``n`` contiguous runs of about equal weight: a unit belongs to the shard its weight's
    midpoint falls in (all weights zero: dealt by position). Pure; :mod:`engine.delta` deals
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


def _merged(units: Sequence[_Unit]) -> list[_Unit]:
    """Join consecutive row-group units of one file, so each file is opened once."""
    merged: list[_Unit] = []
    for unit in units:
        last = merged[-1] if merged else None
        if last and last.file is unit.file and last.row_groups and unit.row_groups:
            merged[-1] = _Unit(
                unit.file,
                last.row_groups + unit.row_groups,
                (last.rows or 0) + (unit.rows or 0),
                last.weight + unit.weight,
            )
        else:
            merged.append(unit)
    return merged


# --- files: reading -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileReader:
    """Reads a run's units, in order, as record batches of the unified ``schema``
    (with ``row_errors``, CSV values that do not parse flag their row instead of failing)."""

    units: tuple[_Unit, ...]
    format: str
    schema: pa.Schema
    row_errors: bool = False

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        read = _parquet_batches if self.format == "parquet" else _csv_batches
        if self.row_errors:
            read = _csv_tolerant_batches
        return itertools.chain.from_iterable(
            _translated(unit.file.name, read(unit, self.schema, columns, batch_rows))
            for unit in self.units
        )


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
        raise InputError(f"cannot read {file.name} as Parquet: {_short(exc)}") from exc


def _parquet_batches(
    unit: _Unit, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    # pre_buffer=False: with it, pyarrow caches every row group it pre-buffered for the life
    # of the reader, so memory grew with the file (252 MiB for a 3M-row file vs 25 MiB).
    with _parquet_file(unit.file, pre_buffer=False, buffer_size=1 << 20) as file:
        if not columns:  # zero columns still need row counts: read the narrowest thing
            columns = schema.names[:1]
        row_groups = None if unit.row_groups is None else list(unit.row_groups)
        yield from file.iter_batches(batch_size=batch_rows, columns=columns, row_groups=row_groups)


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
        raise InputError(f"cannot read {file.name} as CSV: {_short(exc)}") from exc


def _csv_readable(column: pa.Field) -> pa.Field:
    """A column empty in every sample would be typed null and fail on a later value."""
    return column.with_type(pa.string()) if pa.types.is_null(column.type) else column


def _csv_batches(
    unit: _Unit, schema: pa.Schema, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    types = {f.name: f.type for f in schema}
    with _csv_open(unit.file, types, columns or schema.names[:1]) as reader:
        yield from reader


def _csv_tolerant_batches(
    unit: _Unit, schema: pa.Schema, columns: list[str], batch_rows: int
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


def _csv_parsable(data_type: pa.DataType) -> bool:
    """Types pyarrow's CSV reader parses a value into."""
    tests = (
        pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
        pa.types.is_large_string, pa.types.is_timestamp, pa.types.is_date, pa.types.is_decimal,
    )
    return any(test(data_type) for test in tests)


def _translated(path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
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


def _short(exc: BaseException) -> str:
    return first_line(exc, limit=300)


def read_errors(rows: pa.RecordBatch) -> pa.Array | None:
    """The rows' read errors (CSV values that did not parse), or None when there are none."""
    index = rows.schema.get_field_index(READ_ERROR_COLUMN)
    if index < 0:
        return None
    errors = rows.column(index)
    return errors if errors.null_count < len(errors) else None
