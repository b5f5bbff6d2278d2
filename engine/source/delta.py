"""Delta tables in, with delta-rs (the ``deltalake`` package, imported only when used).

A directory or URI holding ``_delta_log/`` is a Delta table. :func:`open_table` loads one
snapshot (the latest, or ``TableRead.version`` / ``TableRead.timestamp``) and returns a
:class:`~engine.source.Source` like any other input: the table's files are read as a pyarrow
dataset with only the run's columns, in a stable order (commit time, then path), one file at a
time. ``TableRead.where`` is a SQL predicate: delta-rs prunes the files it cannot match
(exactly on partition columns, by min/max statistics on others) and each batch is then
filtered row by row with polars' SQL, so the rows read are exactly those matching.
``--shard I/N`` deals the table's files into N contiguous runs of about equal rows, as
:mod:`engine.source` deals Parquet row groups. Deletion vectors are applied: delta-rs gives
each marked file's live-row mask, and the rows it deletes are dropped as the file is read. A
table delta-rs cannot read correctly (column mapping, reader features it lacks) is refused
before anything is sent, with the reason and what to do instead.

Writing Delta tables is :mod:`engine.delta_sink`'s; what both need (what a table is, how
delta-rs opens it) is :mod:`engine.delta_table`'s.

(Over 400 lines because choosing a snapshot, filtering it, dealing its files and applying
deletion vectors only make sense together.)
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa

from engine.delta_table import (
    DELTA_LOG,
    INSTALL,
    deltalake_module,
    display_name,
    is_table,
    storage_options,
    table_uri,
)
from engine.errors import InputError, UsageError, first_line
from engine.location import is_uri, locate
from engine.source.base import Source
from engine.source.parquet import STREAMING, footer_bytes_per_row, rows_per_read, sized_batches
from engine.source.shards import deal

if TYPE_CHECKING:
    import pyarrow.dataset as pds

__all__ = ["TableRead", "open_table", "table_root"]

log = logging.getLogger("engine.delta")

#: Reader features delta-rs's Arrow reader applies; a table needing another is refused.
READABLE_FEATURES = frozenset({"timestampNtz", "variantType", "variantType-preview"})
_SPARK_HINT = "or score it with engine.spark.score, which reads Delta natively"


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TableRead:
    """Which snapshot and rows of a Delta table to read.

    Attributes:
        version: the table version to read (``--input-version``); ``None``: the latest.
        timestamp: read the version current at this time, an RFC 3339 / ISO 8601 string
            such as ``2025-01-31T00:00:00Z`` (``--input-timestamp``).
        where: a SQL predicate rows must match (``--where "country = 'FR' AND day >= 3"``).
    """

    version: int | None = None
    timestamp: str | None = None
    where: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.timestamp is not None:
            raise UsageError(
                "`input_version` and `input_timestamp` both pick the snapshot: give one"
            )
        if self.version is not None and (isinstance(self.version, bool) or self.version < 0):
            raise UsageError(f"`input_version` must be 0 or more, got {self.version!r}")
        if self.where is not None and not self.where.strip():
            raise UsageError("`where` is empty; give a predicate such as \"day = '2025-01-31'\"")

    @property
    def chosen(self) -> bool:
        """True when anything but the whole latest snapshot was asked for."""
        return any(v is not None for v in (self.version, self.timestamp, self.where))

    def given(self) -> str:
        """The parameters that were given, in backticks, for messages."""
        given = [("input_version", self.version), ("input_timestamp", self.timestamp)]
        given.append(("where", self.where))
        return ", ".join(f"`{name}`" for name, value in given if value is not None)


def table_root(inputs: object) -> str | None:
    """The Delta table ``inputs`` names (one path or URI), else ``None``.

    Raises:
        InputError: a Delta table is named among other inputs.
    """
    items: list[object] = [inputs] if isinstance(inputs, str | os.PathLike) else []
    if isinstance(inputs, list | tuple) and all(isinstance(i, str | os.PathLike) for i in inputs):
        items = list(inputs)
    texts = [os.fspath(item) for item in items if isinstance(item, str | os.PathLike)]
    tables = [text for text in texts if _may_be_table(text) and is_table(text)]
    if tables and len(texts) > 1:
        raise InputError(
            f"{tables[0]} is a Delta table: read it alone, one table per run (`shard='I/N'` "
            "splits it across tasks)"
        )
    return tables[0] if tables else None


def _may_be_table(text: str) -> bool:
    """Cheap test first: globs and data files are never a table's root."""
    name = text.rstrip("/").rsplit("/", 1)[-1].lower()
    address = text.partition("?")[0] if is_uri(text) else text
    return not any(c in address for c in "*[") and not name.endswith(
        (".parquet", ".pq", ".csv", ".csv.gz")
    )


def open_table(root: str, read: TableRead, *, shard: tuple[int, int] | None = None) -> Source:
    """Open one snapshot of the Delta table at ``root`` as a :class:`Source`.

    Raises:
        InputError: the table cannot be loaded at that version or time, or delta-rs cannot
            read it correctly (the message names the feature and what to do).
        UsageError: ``--where`` does not parse or names unknown columns; deltalake is
            missing.
    """
    table = _load(root, read)
    name = display_name(root)
    _check_readable(table, name)
    schema = pa.schema(table.schema().to_arrow())
    row_filter = _RowFilter.parse(read.where, schema) if read.where else None
    dataset = _dataset(table, read.where, name)
    fragments, rows = _ordered_fragments(table, dataset)
    if shard is not None:
        chosen = deal([r if r is not None else 0 for r in rows], shard)
        fragments, rows = [fragments[i] for i in chosen], [rows[i] for i in chosen]
    kept = _deletion_vectors(table, name)
    deleted = sum(len(kept[f.path]) - kept[f.path].true_count for f in fragments if f.path in kept)
    known = None if row_filter is not None or None in rows else sum(r or 0 for r in rows) - deleted
    version = int(table.version())
    snapshot = f"delta:{name}@{version}" + (f" where {read.where}" if read.where else "")
    reader = _TableBatches(name, dataset, tuple(fragments), schema, row_filter, kept)
    return Source(
        schema=schema, paths=(f"{name}@v{version}",), num_rows=known, snapshot=snapshot,
        _batches=reader,
    )


def _load(root: str, read: TableRead) -> Any:
    deltalake = deltalake_module()
    name = display_name(root)
    try:
        table = deltalake.DeltaTable(table_uri(root), storage_options=storage_options(root))
    except deltalake.exceptions.DeltaError as exc:
        raise InputError(f"cannot open Delta table {name}: {first_line(exc)}") from exc
    if read.version is None and read.timestamp is None:
        return table
    latest = int(table.version())
    if read.version is not None and read.version > latest:
        raise InputError(
            f"Delta table {name} has no version {read.version}: its latest is {latest}; "
            f"pass `input_version=0..{latest}`"
        )
    when = None if read.timestamp is None else _instant(read.timestamp)
    try:
        table.load_as_version(read.version if when is None else when)
    except (deltalake.exceptions.DeltaError, ValueError) as exc:
        what = f"version {read.version}" if when is None else read.timestamp
        raise InputError(
            f"cannot load Delta table {name} at {what}: {first_line(exc)} (see DESCRIBE "
            "HISTORY for the versions still in the log)"
        ) from exc
    if when is not None:
        _check_existed(root, int(table.version()), when)
    return table


def _instant(text: str) -> datetime.datetime:
    """``--input-timestamp`` as an aware datetime (UTC when it names no offset)."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"`input_timestamp` {text!r} is not an RFC 3339 / ISO 8601 time; e.g. "
            "2025-01-31T00:00:00Z or 2025-01-31 08:00:00+01:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _check_existed(root: str, version: int, when: datetime.datetime) -> None:
    """delta-rs answers a time before the oldest commit with that commit; refuse it instead
    (the table did not hold those rows then). Commit times are the log files' mtimes, as
    delta-rs reads them."""
    commit = locate(root)
    log_file = commit.below(f"{commit.path.rstrip('/')}/{DELTA_LOG}/{version:020d}.json")
    mtime = log_file.info().mtime
    if mtime is not None and mtime > when:
        raise InputError(
            f"Delta table {display_name(root)} has no version as of {when.isoformat()}: "
            f"its oldest version in the log, {version}, was committed at "
            f"{mtime.astimezone(datetime.UTC).isoformat()}; give a later `input_timestamp`"
        )


def _check_readable(table: Any, name: str) -> None:
    """Refuse what delta-rs's Arrow reader would read wrongly or not at all (deletion
    vectors are not among them: :func:`_deletion_vectors` applies them)."""
    protocol = table.protocol()
    features = set(protocol.reader_features or ())
    mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if "columnMapping" in features or mapping != "none":
        raise InputError(
            f"Delta table {name} uses column mapping (mode {mapping}), which delta-rs's Arrow "
            f"reader does not apply: export it to Parquet first, {_SPARK_HINT}"
        )
    unsupported = sorted(features - READABLE_FEATURES - {"deletionVectors"})
    if protocol.min_reader_version > 3 or unsupported:
        raise InputError(
            f"Delta table {name} needs reader version {protocol.min_reader_version}"
            + (f" with features {', '.join(unsupported)}" if unsupported else "")
            + f", which delta-rs cannot read: upgrade deltalake ({INSTALL} --upgrade), "
            f"{_SPARK_HINT}"
        )


def _dataset(table: Any, where: str | None, name: str) -> pds.FileSystemDataset:
    """The snapshot's files as a dataset; ``where`` prunes files when delta-rs can parse it
    (rows are filtered exactly afterwards either way)."""
    deltalake = deltalake_module()
    if where is not None:
        try:
            return _files(table, where)
        except (deltalake.exceptions.DeltaError, ValueError, pa.ArrowException) as exc:
            log.info("delta-rs cannot prune files by --where (%s): reading every file", exc)
    try:
        return _files(table, None)
    except (deltalake.exceptions.DeltaError, pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read Delta table {name}: {first_line(exc)}") from exc


def _files(table: Any, predicate: str | None) -> Any:
    if "deletionVectors" in (table.protocol().reader_features or ()):
        return _dataset_ignoring_deletion_vectors(table, predicate)
    return table.to_pyarrow_dataset(file_pruning_predicate=predicate)


def _dataset_ignoring_deletion_vectors(table: Any, predicate: str | None) -> Any:
    """``to_pyarrow_dataset`` without its refusal of the deletionVectors feature, built the
    way it builds its dataset (deltalake 1.x). Its files are read whole, so the deleted
    rows are dropped by :class:`_TableBatches` with :func:`_deletion_vectors`' masks."""
    import pyarrow.dataset as pds
    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    raw = table._table  # deltalake's own internals: pinned by the deltalake>=1.0,<2 range
    filesystem = pafs.PyFileSystem(
        DeltaStorageHandler.from_table(raw, table._storage_options, raw.get_add_file_sizes())
    )
    file_format = pds.ParquetFileFormat(
        default_fragment_scan_options=pds.ParquetFragmentScanOptions(pre_buffer=True)
    )
    schema = pa.schema(table.schema().to_arrow())
    fragments = [
        file_format.make_fragment(file, filesystem=filesystem, partition_expression=expression)
        for file, expression in raw.dataset_partitions(
            schema, table._encode_file_pruning_predicate(predicate)
        )
    ]
    return pds.FileSystemDataset(fragments, schema, file_format, filesystem)


def _ordered_fragments(
    table: Any, dataset: pds.FileSystemDataset
) -> tuple[list[pds.Fragment], list[int | None]]:
    """The dataset's files in commit order (then path), each with its row count if logged."""
    actions = pa.table(table.get_add_actions(flatten=True))
    columns = actions.to_pydict()
    logged = {
        path: (when, rows)
        for path, when, rows in zip(
            columns["path"], columns["modification_time"], columns["num_records"], strict=True
        )
    }
    fragments = list(dataset.get_fragments())
    keys = [logged.get(fragment.path, (None, None)) for fragment in fragments]
    order = sorted(
        range(len(fragments)),
        key=lambda i: (_epoch_ms(keys[i][0]), fragments[i].path),
    )
    return [fragments[i] for i in order], [keys[i][1] for i in order]


def _epoch_ms(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class _RowFilter:
    """``--where`` evaluated on each batch with polars' SQL (exact, unlike file pruning)."""

    text: str
    columns: tuple[str, ...]
    expr: Any = field(compare=False)

    @classmethod
    def parse(cls, text: str, schema: pa.Schema) -> _RowFilter:
        import polars as pl

        try:
            expr = pl.sql_expr(text)
            names = tuple(dict.fromkeys(expr.meta.root_names()))
        except Exception as exc:  # polars raises several types for SQL it cannot parse
            raise UsageError(f"`where` {text!r} does not parse as SQL: {exc}") from None
        unknown = [n for n in names if n not in schema.names]
        if unknown:
            raise UsageError(
                f"`where` {text!r} names column(s) not in the table: {', '.join(unknown)}; "
                f"its columns: {', '.join(schema.names)}"
            )
        row_filter = cls(text, names, expr)
        try:  # types are checked on an empty batch: a bad comparison fails here, not mid-run
            row_filter.mask(pa.RecordBatch.from_pylist([], schema=schema))
        except Exception as exc:
            raise UsageError(
                f"`where` {text!r} cannot be evaluated: {first_line(exc)}"
            ) from None
        return row_filter

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        import polars as pl

        frame = pl.from_arrow(batch.select(list(self.columns)))
        assert isinstance(frame, pl.DataFrame)
        matched = frame.select(self.expr.fill_null(False)).to_series().to_arrow()
        return matched.cast(pa.bool_())


def _deletion_vectors(table: Any, name: str) -> dict[str, pa.BooleanArray]:
    """Each file with a deletion vector (by its path in the log): which of its rows are
    live, in file order. Rows past the end of a mask are live (the Delta protocol's rule).

    Raises:
        InputError: a deletion vector names a file that is not in the snapshot.
    """
    if "deletionVectors" not in (table.protocol().reader_features or ()):
        return {}
    vectors = pa.RecordBatchReader.from_stream(table.deletion_vectors()).read_all()
    if not vectors.num_rows:
        return {}
    logged = pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist()
    by_suffix = {"/" + unquote(path).lstrip("/"): path for path in logged}
    kept: dict[str, pa.BooleanArray] = {}
    for uri, mask in zip(
        vectors.column("filepath").to_pylist(), vectors.column("selection_vector"), strict=True
    ):
        path = next((p for suffix, p in by_suffix.items() if unquote(uri).endswith(suffix)), None)
        if path is None:
            raise InputError(
                f"Delta table {name}: a deletion vector names {uri}, which is not one of the "
                f"snapshot's files; {_SPARK_HINT}"
            )
        kept[path] = pa.array(mask.values, pa.bool_())
    return kept


def _live(keep: pa.BooleanArray, start: int, rows: int) -> pa.BooleanArray:
    """``keep`` for rows ``start .. start + rows`` of a file, live past its end."""
    piece = keep.slice(start, rows)
    if len(piece) < rows:
        piece = pa.concat_arrays([piece, pa.array([True] * (rows - len(piece)), pa.bool_())])
    return piece


@dataclass(frozen=True, slots=True)
class _TableBatches:
    """Reads a snapshot's chosen files in order; a ``BatchFactory`` for :class:`Source`."""

    name: str
    dataset: pds.FileSystemDataset
    fragments: tuple[pds.Fragment, ...]
    schema: pa.Schema
    row_filter: _RowFilter | None
    #: live-row masks of the files with deletion vectors, by path
    kept: dict[str, pa.BooleanArray] = field(default_factory=dict)

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The files' rows, file by file, in reads of about ``READ_BYTES`` (as Parquet inputs
        are read); the rows a deletion vector deletes and those ``where`` rejects left out."""
        read = list(columns) or self.schema.names[:1]
        if self.row_filter is not None:
            read += [name for name in self.row_filter.columns if name not in read]
        width = 0.0  # bytes per row the files read so far decoded to (0: none yet)
        try:
            for fragment in self.fragments:
                keep = self.kept.get(fragment.path)
                position = 0  # the row's place in its file: what a deletion vector counts
                for batch in self._file(fragment, read, batch_rows, width):
                    if batch.num_rows:
                        width = batch.nbytes / batch.num_rows
                    if keep is not None:
                        live = _live(keep, position, batch.num_rows)
                        position += batch.num_rows
                        batch = batch.filter(live)
                    if self.row_filter is not None:
                        batch = batch.filter(self.row_filter.mask(batch))
                    yield batch
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read Delta table {self.name}: {first_line(exc)}") from exc

    def _file(
        self, fragment: pds.Fragment, read: list[str], batch_rows: int, per_row: float
    ) -> Iterator[pa.RecordBatch]:
        """One file's rows in the table's schema, about ``READ_BYTES`` at a time: sized by
        ``per_row``, the width the files before decoded to, or for the first file by what its
        first rows decode to (a probe, as for Parquet inputs; its footer's when the scanner
        reads it).

        Streamed from its row groups by ``ParquetFile.iter_batches`` when its columns map onto
        the table's simply (by name, a cast that exists, partition values, columns added
        since as nulls): pyarrow's dataset scanner decodes a whole row group at once, and on
        a table of embeddings with 100 MB row groups held 0.95 GB where this holds 0.2 GB.
        Anything else (dictionary columns, a partition value it cannot place) goes through
        the scanner, one batch and one file ahead (its defaults: 16 and 4).
        """
        import pyarrow.dataset as pds
        import pyarrow.parquet as pq

        target = pa.schema([self.dataset.schema.field(name) for name in read])
        options = self.dataset.format.read_options
        if not options.dictionary_columns:
            with self.dataset.filesystem.open_input_file(fragment.path) as handle:
                parquet = pq.ParquetFile(
                    handle,
                    **STREAMING,
                    coerce_int96_timestamp_unit=options.coerce_int96_timestamp_unit,
                )
                plan = _column_plan(parquet.schema_arrow, target, fragment.partition_expression)
                if plan is not None:
                    # no column from the file (all partition values): its first column still
                    # counts the rows
                    columns = [name for kind, name in plan if kind == "file"]
                    batches = sized_batches(
                        parquet, columns or parquet.schema_arrow.names[:1], batch_rows,
                        width=per_row,
                    )
                    yield from _fitted(batches, plan, target)
                    return
        if not per_row:
            per_row = _fragment_bytes_per_row(fragment, read)
        dataset = pds.FileSystemDataset(
            [fragment], self.dataset.schema, self.dataset.format, self.dataset.filesystem
        )
        yield from dataset.scanner(
            columns=read,
            batch_size=rows_per_read(per_row, batch_rows),
            batch_readahead=1,
            fragment_readahead=1,
        ).to_batches()


#: Where each of the table's columns comes from in one file: ("file", its name there),
#: ("value", a partition value, None for null) or ("null", None) for a column added since.
_Plan = list[tuple[str, Any]]


def _column_plan(
    file_schema: pa.Schema, target: pa.Schema, partition: pds.Expression
) -> _Plan | None:
    """How to build ``target`` from a file, or None when it is not simple (then the dataset
    scanner reads the file)."""
    import pyarrow.dataset as pds

    # Delta gives a file's partition values as ``column == value`` or ``is_null(column)``
    # (delta-rs adds min/max statistics of the file's own columns beside them).
    keys = pds.get_partition_keys(partition)
    plan: _Plan = []
    for wanted in target:
        if wanted.name in file_schema.names:
            source = file_schema.field(wanted.name).type
            if not source.equals(wanted.type):
                try:  # a cast kernel exists for the pair (a lossy value still fails later)
                    pa.array([], source).cast(wanted.type)
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
                    return None
            plan.append(("file", wanted.name))
        elif wanted.name in keys:
            try:
                pa.scalar(keys[wanted.name], wanted.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                return None
            plan.append(("value", keys[wanted.name]))
        else:  # not in the file, not partitioned by: added to the table since, null here
            plan.append(("null", None))
    return plan


def _fitted(
    batches: Iterator[pa.RecordBatch], plan: _Plan, target: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """A file's batches in the table's schema, as ``plan`` says."""
    for batch in batches:
        n = batch.num_rows
        arrays = []
        for wanted, (kind, value) in zip(target, plan, strict=True):
            if kind == "file":
                array = batch.column(value)
                arrays.append(array if array.type.equals(wanted.type) else array.cast(wanted.type))
            elif kind == "value" and value is not None:
                arrays.append(pa.repeat(pa.scalar(value, wanted.type), n))
            else:
                arrays.append(pa.nulls(n, wanted.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=target)


def _fragment_bytes_per_row(fragment: pds.Fragment, columns: list[str]) -> float:
    """The read columns' uncompressed bytes per row in the file's first row group, from its
    footer (0 when it cannot be read: the scan then reports the problem)."""
    try:
        return footer_bytes_per_row(fragment.metadata, columns)
    except (pa.ArrowException, OSError, AttributeError, IndexError):
        return 0.0
