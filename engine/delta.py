"""Delta tables in and out, with delta-rs (the ``deltalake`` package, imported only here).

Reading: a directory or URI holding ``_delta_log/`` is a Delta table. :func:`open_table`
loads one snapshot (the latest, or ``TableRead.version`` / ``TableRead.timestamp``) and
returns a :class:`~engine.source.Source` like any other input: the table's files are read as
a pyarrow dataset with only the run's columns, in a stable order (commit time, then path),
one file at a time. ``TableRead.where`` is a SQL predicate: delta-rs prunes the files it
cannot match (exactly on partition columns, by min/max statistics on others) and each batch
is then filtered row by row with polars' SQL, so the rows read are exactly those matching.
``--shard I/N`` deals the table's files into N contiguous runs of about equal rows, as
:mod:`engine.source` deals Parquet row groups. A table delta-rs cannot read correctly
(deletion vectors, column mapping, reader features it lacks) is refused before anything is
sent, with the reason and what to do instead.

Writing: :class:`TableSink` takes results in batch order like any sink, stages them in a
local Arrow IPC file (through :class:`~engine.sink.OrderedWriter`, so ordering and typing are
the file outputs' own), and at ``finish`` writes them to the table in one commit: readers see
the whole run or nothing. The commit carries an application transaction
(:class:`RunTransaction`) whose id is a hash of the run's identity (the input snapshot, the
endpoint, served model and model version, params, kept columns, shard and output table).
Before anything is sent, a run whose transaction the table already holds (a task retried
after its commit, a rerun after a crash between the commit and the exit) writes nothing and
says so; ``resume=False`` (``--no-resume``) writes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

from engine.errors import InputError, OutputExistsError, StorageError, UsageError
from engine.sink import RESULT_COLUMNS, OrderedWriter, OutputSpec
from engine.source import Source, deal, is_uri, locate

if TYPE_CHECKING:
    import pyarrow.dataset as pds

__all__ = [
    "MODES",
    "OUTPUT_FORMATS",
    "RunTransaction",
    "TableRead",
    "TableSink",
    "TableWrite",
    "is_table",
    "open_table",
    "table_root",
]

log = logging.getLogger("engine.delta")

DELTA_LOG = "_delta_log"
INSTALL = "pip install 'databricks-batch-engine[delta]'"
MODES = ("error", "append", "overwrite")
OUTPUT_FORMATS = ("auto", "delta")
#: Reader features delta-rs's Arrow reader applies; a table needing another is refused.
READABLE_FEATURES = frozenset({"timestampNtz", "variantType", "variantType-preview"})
#: Prefix of the application transaction ids the engine commits with.
APP_ID_PREFIX = "databricks-batch-engine-"
#: Commit metadata key holding the app id, so a skipped rerun can name the version.
APP_ID_KEY = "engine.app_id"
#: How many commits back a skipped rerun looks for the version its transaction made.
HISTORY_LOOKBACK = 1000
_SPARK_HINT = "or score it with engine.spark.score, which reads Delta natively"


def _deltalake() -> Any:
    """The ``deltalake`` module, or a UsageError saying how to install it."""
    try:
        import deltalake
    except ImportError:
        raise UsageError(
            f"Delta tables need the deltalake package: {INSTALL} (pip install deltalake)"
        ) from None
    return deltalake


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
                "--input-version and --input-timestamp both pick the snapshot: give one"
            )
        if self.version is not None and (isinstance(self.version, bool) or self.version < 0):
            raise UsageError(f"--input-version must be 0 or more, got {self.version!r}")
        if self.where is not None and not self.where.strip():
            raise UsageError("--where is empty; give a predicate such as \"day = '2025-01-31'\"")

    @property
    def chosen(self) -> bool:
        """True when anything but the whole latest snapshot was asked for."""
        return any(v is not None for v in (self.version, self.timestamp, self.where))

    def flags(self) -> str:
        """The CLI flags that were given, for messages."""
        given = [("--input-version", self.version), ("--input-timestamp", self.timestamp)]
        given.append(("--where", self.where))
        return ", ".join(flag for flag, value in given if value is not None)


def is_table(text: str) -> bool:
    """True when ``text`` (a local path or URI) is a directory holding ``_delta_log/``."""
    if not is_uri(text) or text.lower().startswith("file://"):
        path = locate(text).path
        return os.path.isdir(os.path.join(path, DELTA_LOG))
    try:
        import pyarrow.fs as pafs

        return bool(locate(text).below(DELTA_LOG).info().type == pafs.FileType.Directory)
    except (InputError, pa.ArrowException, OSError):
        return False


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
            f"{tables[0]} is a Delta table: read it alone, one table per run (--shard I/N "
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
    name = _display_name(root)
    _check_readable(table, name)
    schema = pa.schema(table.schema().to_arrow())
    row_filter = _RowFilter.parse(read.where, schema) if read.where else None
    dataset = _dataset(table, read.where, name)
    fragments, rows = _ordered_fragments(table, dataset)
    if shard is not None:
        chosen = deal([r if r is not None else 0 for r in rows], shard)
        fragments, rows = [fragments[i] for i in chosen], [rows[i] for i in chosen]
    known = None if row_filter is not None or None in rows else sum(r or 0 for r in rows)
    version = int(table.version())
    snapshot = f"delta:{name}@{version}" + (f" where {read.where}" if read.where else "")
    reader = _TableBatches(name, dataset, tuple(fragments), schema, row_filter)
    return Source(
        schema=schema, paths=(f"{name}@v{version}",), num_rows=known, snapshot=snapshot,
        _batches=reader,
    )


def _load(root: str, read: TableRead) -> Any:
    deltalake = _deltalake()
    name = _display_name(root)
    try:
        table = deltalake.DeltaTable(_table_uri(root), storage_options=_storage_options(root))
    except deltalake.exceptions.DeltaError as exc:
        raise InputError(f"cannot open Delta table {name}: {_first_line(exc)}") from exc
    if read.version is None and read.timestamp is None:
        return table
    latest = int(table.version())
    if read.version is not None and read.version > latest:
        raise InputError(
            f"Delta table {name} has no version {read.version}: its latest is {latest}; "
            f"pass --input-version 0..{latest}"
        )
    try:
        table.load_as_version(read.version if read.version is not None else read.timestamp)
    except (deltalake.exceptions.DeltaError, ValueError) as exc:
        what = f"version {read.version}" if read.version is not None else read.timestamp
        raise InputError(
            f"cannot load Delta table {name} at {what}: {_first_line(exc)} (versions still "
            f"in the log: see DESCRIBE HISTORY; a timestamp is RFC 3339, e.g. "
            f"2025-01-31T00:00:00Z)"
        ) from exc
    return table


def _check_readable(table: Any, name: str) -> None:
    """Refuse what delta-rs's Arrow reader would read wrongly or not at all."""
    protocol = table.protocol()
    features = set(protocol.reader_features or ())
    mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if "deletionVectors" in features:
        raise InputError(
            f"Delta table {name} uses deletion vectors, which delta-rs cannot apply when it "
            "reads files (deleted rows would be scored): purge them first (REORG TABLE ... "
            "APPLY (PURGE) in Databricks), or set delta.enableDeletionVectors=false and "
            f"OPTIMIZE, {_SPARK_HINT}"
        )
    if "columnMapping" in features or mapping != "none":
        raise InputError(
            f"Delta table {name} uses column mapping (mode {mapping}), which delta-rs's Arrow "
            f"reader does not apply: export it to Parquet first, {_SPARK_HINT}"
        )
    unsupported = sorted(features - READABLE_FEATURES)
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
    deltalake = _deltalake()
    if where is not None:
        try:
            return table.to_pyarrow_dataset(file_pruning_predicate=where)
        except (deltalake.exceptions.DeltaError, ValueError, pa.ArrowException) as exc:
            log.info("delta-rs cannot prune files by --where (%s): reading every file", exc)
    try:
        return table.to_pyarrow_dataset()
    except (deltalake.exceptions.DeltaError, pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read Delta table {name}: {_first_line(exc)}") from exc


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
            raise UsageError(f"--where {text!r} does not parse as SQL: {exc}") from None
        unknown = [n for n in names if n not in schema.names]
        if unknown:
            raise UsageError(
                f"--where {text!r} names column(s) not in the table: {', '.join(unknown)}; "
                f"its columns: {', '.join(schema.names)}"
            )
        row_filter = cls(text, names, expr)
        try:  # types are checked on an empty batch: a bad comparison fails here, not mid-run
            row_filter.mask(pa.RecordBatch.from_pylist([], schema=schema))
        except Exception as exc:
            raise UsageError(
                f"--where {text!r} cannot be evaluated: {_first_line(exc)}"
            ) from None
        return row_filter

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        import polars as pl

        frame = pl.from_arrow(batch.select(list(self.columns)))
        assert isinstance(frame, pl.DataFrame)
        matched = frame.select(self.expr.fill_null(False)).to_series().to_arrow()
        return matched.cast(pa.bool_())


@dataclass(frozen=True, slots=True)
class _TableBatches:
    """Reads a snapshot's chosen files in order; a ``BatchFactory`` for :class:`Source`."""

    name: str
    dataset: pds.FileSystemDataset
    fragments: tuple[pds.Fragment, ...]
    schema: pa.Schema
    row_filter: _RowFilter | None

    def __call__(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.dataset as pds

        read = list(columns) or self.schema.names[:1]
        if self.row_filter is not None:
            read += [name for name in self.row_filter.columns if name not in read]
        chosen = pds.FileSystemDataset(
            list(self.fragments), self.dataset.schema, self.dataset.format,
            self.dataset.filesystem,
        )
        scanner = chosen.scanner(columns=read, batch_size=batch_rows, use_threads=True)
        try:
            for batch in scanner.to_batches():
                if self.row_filter is not None:
                    batch = batch.filter(self.row_filter.mask(batch))
                yield batch
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read Delta table {self.name}: {_first_line(exc)}") from exc


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TableWrite:
    """Where and how scored rows are written as a Delta table.

    Attributes:
        uri: the table's directory or URI (created if missing).
        mode: ``"error"`` (the default: refuse an existing table), ``"append"`` or
            ``"overwrite"`` (``--mode``).
        partition_by: output columns to partition by (``--partition-by``); for an append,
            empty means the table's own.
    """

    uri: str
    mode: str = "error"
    partition_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if len(set(self.partition_by)) != len(self.partition_by):
            raise UsageError(f"--partition-by names a column twice: {self.partition_by}")

    @classmethod
    def chosen(
        cls,
        output: str,
        *,
        output_format: str | None,
        mode: str | None,
        partition_by: Sequence[str] | str | None,
        overwrite: bool,
    ) -> TableWrite | None:
        """The Delta output ``output`` is, or ``None`` for a file output.

        A Delta table when ``output_format`` is ``"delta"`` or ``output`` already is one.

        Raises:
            UsageError: an unknown format or mode, or Delta-only options for a file output.
        """
        if (output_format or "auto") not in OUTPUT_FORMATS:
            raise UsageError(
                f"--output-format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}"
                " (auto: a Parquet or Arrow file by extension, or the Delta table already there)"
            )
        columns = _column_list(partition_by)
        if output_format == "delta" or is_table(output):
            chosen_mode = mode or ("overwrite" if overwrite else "error")
            return cls(uri=output, mode=chosen_mode, partition_by=columns)
        if columns or mode == "append":
            flag = "--partition-by" if columns else "--mode append"
            raise UsageError(
                f"{flag} applies to Delta outputs; {output} is a file: pass --output-format "
                "delta to write a Delta table there"
            )
        if mode is not None and mode not in MODES:
            raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
        return None

    def check(self) -> None:
        """Refuse an output that cannot be written in this mode, before anything is sent.

        Raises:
            OutputExistsError: the table exists and ``mode`` is ``"error"``.
            UsageError: the path is a file or a directory that is not a Delta table.
        """
        exists = is_table(self.uri)
        if exists and self.mode == "error":
            raise OutputExistsError(
                f"Delta table {_display_name(self.uri)} already exists; pass --mode append "
                "to add the scored rows, or --mode overwrite to replace its contents"
            )
        if exists or (is_uri(self.uri) and not self.uri.lower().startswith("file://")):
            return
        path = locate(self.uri).path
        if os.path.isfile(path):
            raise UsageError(
                f"output {self.uri} is a file; a Delta table is a directory: name a new one"
            )
        if os.path.isdir(path) and os.listdir(path):
            raise UsageError(
                f"output {self.uri} is a directory with files in it but no {DELTA_LOG}/: not a "
                "Delta table; name a new or empty directory"
            )

    def check_columns(self, kept: Sequence[str]) -> None:
        """Refuse partition columns the output will not have, and an append whose columns
        differ from the table's, before anything is sent."""
        names = [*kept, *RESULT_COLUMNS]
        missing = [c for c in self.partition_by if c not in kept]
        if missing:
            raise UsageError(
                f"--partition-by {', '.join(missing)}: not among the output's input columns "
                f"({', '.join(kept) or 'none'}); add them with --keep, or partition by those"
            )
        if self.mode != "append" or not is_table(self.uri):
            return
        existing = _open_output(self.uri)
        columns = list(pa.schema(existing.schema().to_arrow()).names)
        if sorted(columns) != sorted(names):
            raise UsageError(
                f"--mode append: Delta table {_display_name(self.uri)} has columns "
                f"{', '.join(columns)}, the output would have {', '.join(names)}; choose "
                "--keep to match, or --mode overwrite"
            )
        partitions = list(existing.metadata().partition_columns)
        if self.partition_by and list(self.partition_by) != partitions:
            raise UsageError(
                f"--partition-by {','.join(self.partition_by)}: Delta table "
                f"{_display_name(self.uri)} is partitioned by {','.join(partitions) or 'nothing'}"
                "; drop --partition-by to append with the table's own"
            )


@dataclass(frozen=True, kw_only=True)
class RunTransaction:
    """The application transaction a run's commit carries (Delta's ``txn`` action).

    Attributes:
        app_id: ``databricks-batch-engine-<hash of the run's identity>``.
        identity: what was hashed, for logs.
    """

    app_id: str
    identity: Mapping[str, Any]
    version: int = 1

    @classmethod
    def for_run(cls, identity: Mapping[str, Any]) -> RunTransaction:
        """The transaction named by ``identity`` (any JSON-able mapping)."""
        digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS))
        return cls(app_id=APP_ID_PREFIX + digest.hexdigest()[:32], identity=dict(identity))

    def committed_in(self, write: TableWrite) -> int | None:
        """The table version in which this run's rows were committed, or ``None``.

        For an overwrite, only when that commit is still the table's latest: a later commit
        changed what the overwrite left, and the rerun must overwrite again. ``-1`` when the
        transaction is there but its commit is beyond ``HISTORY_LOOKBACK``.
        """
        if not is_table(write.uri):
            return None
        table = _open_output(write.uri)
        if table.transaction_version(self.app_id) is None:
            return None
        latest = int(table.version())
        for commit in table.history(HISTORY_LOOKBACK):
            if commit.get(APP_ID_KEY) == self.app_id:
                version = int(commit["version"])
                return None if write.mode == "overwrite" and version != latest else version
        return None if write.mode == "overwrite" else -1


def input_snapshot(source: Source) -> str | None:
    """What names this input's content: a Delta snapshot, or each file's size and mtime;
    ``None`` for in-memory data (which has no name to find it by on a rerun)."""
    if source.snapshot is not None:
        return source.snapshot
    if not source.paths:
        return None
    parts = []
    for path in source.paths:
        info = locate(path).info()
        parts.append(f"{path}:{info.size}:{info.mtime_ns}")
    return "files:" + "|".join(parts)


class TableSink:
    """Stages ordered results in a local Arrow IPC file; ``finish`` commits them to the
    Delta table in one commit with the run's transaction (see the module docstring).

    Args:
        write: the table and mode.
        staging: the local file to stage in (replaced if a crash left one).
        transaction: the run's transaction, or ``None`` (in-memory input: no identity).
        prediction_type, kept_schema: as :class:`~engine.sink.OrderedWriter`.
    """

    def __init__(
        self,
        write: TableWrite,
        staging: Path,
        transaction: RunTransaction | None,
        *,
        prediction_type: pa.DataType | None,
        kept_schema: pa.Schema,
    ) -> None:
        self.write = write
        self.transaction = transaction
        self.version: int | None = None
        self._staged = OrderedWriter(
            OutputSpec(path=str(staging), overwrite=True),
            prediction_type=prediction_type,
            kept_schema=kept_schema,
        )

    def add(self, batch_id: int, table: pa.Table) -> int:
        return self._staged.add(batch_id, table)

    def finish(self) -> str:
        staged = self._staged.finish()
        try:
            self.version = _commit(self.write, staged, self.transaction)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        return self.write.uri

    def abort(self) -> None:
        self._staged.abort()


def _commit(write: TableWrite, staged: str, transaction: RunTransaction | None) -> int:
    """Write the staged rows as one commit; return the table version it made."""
    deltalake = _deltalake()
    properties = None
    if transaction is not None:
        properties = deltalake.CommitProperties(
            custom_metadata={APP_ID_KEY: transaction.app_id},
            app_transactions=[deltalake.Transaction(transaction.app_id, transaction.version)],
        )
    name = _display_name(write.uri)
    with pa.memory_map(staged) as source:
        file = ipc.open_file(source)
        rows = pa.RecordBatchReader.from_batches(
            file.schema, (file.get_batch(i) for i in range(file.num_record_batches))
        )
        try:
            deltalake.write_deltalake(
                _table_uri(write.uri), rows, mode=write.mode,
                partition_by=list(write.partition_by) or None,
                commit_properties=properties, storage_options=_storage_options(write.uri),
            )
        except deltalake.exceptions.DeltaError as exc:
            raise StorageError(
                f"cannot commit the scored rows to Delta table {name}: {_first_line(exc)}; "
                "nothing was committed: rerun the same command to retry from the checkpoint",
                path=write.uri,
            ) from exc
    version = int(_open_output(write.uri).version())
    log.info("committed the scored rows to Delta table %s as version %d", name, version)
    return version


def _open_output(uri: str) -> Any:
    deltalake = _deltalake()
    try:
        return deltalake.DeltaTable(_table_uri(uri), storage_options=_storage_options(uri))
    except deltalake.exceptions.DeltaError as exc:
        raise UsageError(f"cannot open Delta table {_display_name(uri)}: {exc}") from exc


# --- shared ---------------------------------------------------------------------------------


def _column_list(columns: Sequence[str] | str | None) -> tuple[str, ...]:
    if columns is None:
        return ()
    if isinstance(columns, str):
        columns = columns.split(",")
    return tuple(c.strip() for c in columns if c.strip())


def _table_uri(root: str) -> str:
    """What delta-rs opens: a local absolute path, or the URI as given."""
    if is_uri(root) and not root.lower().startswith("file://"):
        return root
    return locate(root).path


def _display_name(root: str) -> str:
    return locate(root).name if is_uri(root) else os.path.abspath(root)


def _storage_options(root: str) -> dict[str, str] | None:
    """delta-rs reads the store's usual environment variables itself; an S3-compatible
    server over plain http (MinIO, tests) also needs it allowed."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if root.startswith(("s3://", "s3a://")) and endpoint.startswith("http://"):
        return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
