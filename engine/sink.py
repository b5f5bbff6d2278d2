"""Ordered, schema-checked Arrow IPC / Parquet writer; atomic finish.

Results arrive out of order (many requests are in flight); :class:`OrderedWriter` keeps
each one until every earlier batch has been written, so the output's rows are in input
order. The caller bounds how many results can be waiting (its in-flight window); this class
does not add a second bound.

The output never appears half-written: rows go to a hidden temporary file beside it
(``.<name>.<random>.tmp``), which ``finish`` flushes, fsyncs and moves into place, then fsyncs
the directory. ``abort`` (and leaving a ``with`` block by an exception) deletes the temporary
file instead.

Output schema: the kept input columns, then ``prediction``, then ``error`` (string; null for a
scored row). Decisions a reader should know:

* Format by extension: ``.parquet``/``.pq`` is Parquet (zstd, row groups of at least
  ``ROW_GROUP_ROWS`` rows where the run is that long); ``.arrow``/``.ipc``/``.feather`` or no
  extension is an uncompressed Arrow IPC file, which readers can memory-map without a decode
  step. Any other extension (``out.csv``) is refused before anything is sent, rather than
  writing Arrow IPC under a name that promises another format.
* Files get mode 0666 less the umask, as ``open()`` would give them.
* ``prediction``'s type is ``prediction_type`` when given. Otherwise the first result, in batch
  order, whose predictions are not all-null decides it; results before it (every row
  rejected) wait in a spill file on disk, so memory stays flat however many there are. A
  later result of another type is cast when that is lossless (int64 -> double, a struct
  missing some fields -> nulls there) and refused otherwise. If no result ever has a typed
  prediction, the column is written with Arrow's null type: it unifies with any type when
  outputs are combined later, where a made-up string type would not.
* Without ``overwrite`` the final move never replaces a file: if one appears at the path
  during the run, ``finish`` raises :class:`~engine.errors.OutputExistsError`.

Outputs on object stores (``s3://bucket/out.parquet``, ``gs://``, ``abfss://``, fsspec
URIs; filesystems and credentials as in :mod:`engine.source`) are written the same way:
rows stream to a hidden temporary object beside the output (``.<name>.<random>.tmp``, a
multipart upload on S3), which ``finish`` closes and then moves to the output key (on S3 a
server-side CopyObject, then a delete of the temporary object; on ADLS Gen2 a rename).
Readers therefore see no object, or the whole file: S3 makes an object visible only when the
request creating it (here the copy) has completed. Writing straight to the output key as one
multipart upload would be atomic too, but pyarrow exposes no way to abort an upload from
Python, and closing (even by garbage collection after an error) completes it, so a failed
run would publish a truncated file; with the temporary key, ``abort`` deletes the temporary
object and a killed process leaves only an incomplete upload (invisible; expire it with a
bucket lifecycle rule). The costs: S3 copies at most 5 GiB in one request, so a larger
output fails at ``finish`` (split the run with ``--shard``), and object stores have no
atomic create-if-absent here, so the "never replace" check is made just before the copy,
not with it. Results held for their type spill to the local temporary directory.

Unity Catalog Volumes (``/Volumes/...``) are local files where they are mounted (a cluster),
written as above. Elsewhere the Files API has no rename, so the output is written to a local
temporary file and published by one ``PUT`` (``overwrite=false`` unless ``overwrite``, so the
server refuses to replace a file atomically); see :mod:`engine.volumes`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from engine import volumes
from engine.durable import fsync_directory, fsync_path
from engine.errors import EngineError, InputError, OutputExistsError, UsageError, storage_error
from engine.location import Location, is_uri, locate
from engine.ordering import InOrder

__all__ = [
    "PARQUET_COMPRESSION",
    "RESULT_COLUMNS",
    "ROW_GROUP_ROWS",
    "OrderedWriter",
    "OutputSpec",
    "check_output",
    "read_output",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
IPC_SUFFIXES = (".arrow", ".ipc", ".feather")
"""Arrow IPC file extensions (Feather v2 is the IPC file format); any other is refused."""
PARQUET_COMPRESSION = "zstd"
ROW_GROUP_ROWS = 65_536
"""Parquet results are buffered up to this many rows (or ``ROW_GROUP_BYTES``) per write."""
ROW_GROUP_BYTES = 64 * 1024 * 1024
RESULT_COLUMNS = ("prediction", "error")
MAX_LISTED_IDS = 20
S3_MAX_COPY_BYTES = 5 * 1024**3
"""The largest object S3 copies in one request (CopyObject), and so the largest output."""
_STORES_WITH_BUCKETS = ("s3", "gcs", "abfs")


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """Where results go.

    Attributes:
        path: a local file path or a URI (``s3://bucket/key.parquet``); Parquet when it ends
            with ``.parquet``/``.pq``, else an Arrow IPC file (``.arrow``/``.ipc``/``.feather``
            or no extension); :func:`check_output` refuses any other extension.
        overwrite: replace an existing file at ``path`` (never a directory).
    """

    path: str
    overwrite: bool = False

    @property
    def is_parquet(self) -> bool:
        """True when the output is written as Parquet."""
        return self.path.lower().endswith(PARQUET_SUFFIXES)


def check_output(spec: OutputSpec) -> None:
    """Refuse an output path that cannot be written, before any request is sent.

    Args:
        spec: the output to check; nothing is created.

    Raises:
        OutputExistsError: the file exists and ``spec.overwrite`` is false.
        UsageError: the path is a directory, or its parent cannot be created or written.
    """
    path = spec.path
    _check_format(path)
    if _remote(path):
        location = locate(path)
        _check_remote_output(location, overwrite=spec.overwrite)
        if volumes.is_volume_filesystem(location.filesystem):
            volumes.check_writable(location.filesystem, location.path)
        return
    if os.path.isdir(path):
        example = os.path.join(path, "predictions.parquet")
        raise UsageError(f"output {path} is a directory; give a file path such as {example}")
    if os.path.lexists(path) and not spec.overwrite:
        raise OutputExistsError(
            f"output {path} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    _check_parent(os.path.dirname(os.path.abspath(path)))


def _check_format(path: str) -> None:
    """Refuse an extension the engine does not write (``out.csv`` would hold Arrow IPC)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if not (dot and stem) or name.lower().endswith(PARQUET_SUFFIXES + IPC_SUFFIXES):
        return  # no extension: Arrow IPC, as documented
    raise UsageError(
        f"output {path}: the engine does not write '.{suffix}' files; it writes Parquet "
        f"(.parquet, .pq) or Arrow IPC (.arrow, .ipc, .feather): name the output e.g. "
        f"{stem}.parquet"
    )


def _remote(path: str) -> bool:
    return is_uri(path) and not path.lower().startswith("file://")


def _check_remote_output(location: Location, *, overwrite: bool) -> None:
    filesystem, name = location.filesystem, location.name
    assert filesystem is not None
    bucket, _, key = location.path.strip("/").partition("/")
    if filesystem.type_name in _STORES_WITH_BUCKETS:
        if not key:
            raise UsageError(f"output {name} names no object; give one such as {name}/out.parquet")
        if _info(filesystem, bucket, name).type != pafs.FileType.Directory:
            raise UsageError(f"cannot write {name}: bucket or container {bucket!r} not found")
    kind = _info(filesystem, location.path, name).type
    if kind == pafs.FileType.Directory:
        raise UsageError(
            f"output {name} is a directory (a prefix with objects under it); "
            f"give an object such as {name.rstrip('/')}/predictions.parquet"
        )
    if kind != pafs.FileType.NotFound and not overwrite:
        raise OutputExistsError(
            f"output {name} already exists; pass --overwrite (overwrite=True) to replace it"
        )


def _info(filesystem: pafs.FileSystem, path: str, name: str) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"cannot check output {name}: {exc}") from exc


def _check_parent(directory: str) -> None:
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"cannot create output directory {directory}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {existing}: permission denied")


def read_output(path: str | os.PathLike[str]) -> pa.Table:
    """Read a finished output (Parquet or Arrow IPC, by extension) into a table.

    Args:
        path: the output file.

    Returns:
        The whole output as one table.

    Raises:
        InputError: the file is missing or not a readable output.
    """
    text = os.fspath(path)
    if _remote(text):
        return _read_remote_output(locate(text))
    if not os.path.isfile(text):
        raise InputError(f"no output file at {text}")
    try:
        if OutputSpec(text).is_parquet:
            return pq.read_table(text)
        with pa.memory_map(text) as source:
            return ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read output {text}: {exc}") from exc


def _read_remote_output(location: Location) -> pa.Table:
    filesystem = location.filesystem
    assert filesystem is not None
    if location.info().type != pafs.FileType.File:
        raise InputError(f"no output file at {location.name}")
    try:
        with filesystem.open_input_file(location.path) as source:
            if OutputSpec(location.name).is_parquet:
                return pq.read_table(source)
            return ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read output {location.name}: {exc}") from exc


class OrderedWriter:
    """Writes result tables in ``batch_id`` order to one file, atomically.

    Results may be added in any order; each waits until all earlier ids have arrived. The
    output schema is the kept input columns + ``prediction`` + ``error`` (string). Used as a
    context manager, an exception aborts (no output, no temp file) and a clean exit finishes.

    Args:
        spec: where to write; checked with :func:`check_output` again here.
        prediction_type: the type of ``prediction``; every result is cast to it. ``None`` to
            take it from the results (see the module docstring).
        kept_schema: the kept input columns; ``None`` to take them from the first result.

    Raises:
        OutputExistsError: as :func:`check_output`.
        UsageError: as :func:`check_output`, or ``kept_schema`` names a result column.
    """

    def __init__(
        self,
        spec: OutputSpec,
        *,
        prediction_type: pa.DataType | None = None,
        kept_schema: pa.Schema | None = None,
    ) -> None:
        check_output(spec)
        # None for a local path, which keeps the local rename-and-fsync path.
        self._remote = locate(spec.path) if _remote(spec.path) else None
        if kept_schema is not None and set(kept_schema.names) & set(RESULT_COLUMNS):
            raise UsageError(f"kept columns cannot be named {' or '.join(RESULT_COLUMNS)}")
        self.spec = spec
        self._prediction_type = prediction_type
        self._declared_type = prediction_type is not None
        self._kept = kept_schema
        self._order: InOrder[pa.Table] = InOrder()
        self._rows_written = 0
        self._decided_by: int | None = None
        self._out: _Output | None = None
        self._held: _Spill | None = None
        self._state = "open"
        # Created with the first write, so a writer that is never used leaves nothing behind.
        self._tmp: str | None = None
        self._spooled = False  # True: self._tmp is a local file bound for a Volume

    @property
    def next_batch_id(self) -> int:
        """The id the writer is waiting for."""
        return self._order.next_id

    @property
    def pending(self) -> int:
        """How many out-of-order results are waiting for an earlier id."""
        return len(self._order)

    @property
    def rows_written(self) -> int:
        """Rows that have left the reorder buffer, in order (final once ``finish`` returns)."""
        return self._rows_written

    @property
    def prediction_type(self) -> pa.DataType | None:
        """The ``prediction`` column's type, or ``None`` while it is not yet known."""
        return self._prediction_type

    def add(self, batch_id: int, table: pa.Table | pa.RecordBatch) -> int:
        """Accept one batch's results; write it and any results it unblocks.

        Args:
            batch_id: the batch's position in the input, from 0.
            table: the kept columns, ``prediction`` and ``error`` for the batch's rows.

        Returns:
            How many batches left the reorder buffer in order because of this call.

        Raises:
            ValueError: the id is negative or was already added.
            EngineError: the table's columns or types do not fit the output.
        """
        self._require_open()
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        ready = self._order.add(batch_id, self._checked(batch_id, table))
        with self._storage("write"):
            for ready_id, ready_table in ready:
                self._emit(ready_id, ready_table)
        return len(ready)

    @contextlib.contextmanager
    def _storage(self, action: str) -> Iterator[None]:
        """Turn the OS's I/O errors (disk full, permission, read-only, gone) into one
        StorageError naming the output and the cause."""
        try:
            yield
        except OSError as exc:
            raise storage_error(f"{action} the output", self.spec.path, exc) from exc

    def finish(self, expected_batches: int | None = None) -> str:
        """Write what is left, fsync, and move the file into place.

        Args:
            expected_batches: when given, ids ``0..expected_batches-1`` must all have
                arrived, and no others.

        Returns:
            The output path.

        Raises:
            EngineError: some batches never arrived (their ids are listed).
            OutputExistsError: a file appeared at the path during the run and
                ``overwrite`` is false.
        """
        self._require_open()
        self._check_complete(expected_batches)
        with self._storage("finish writing"):
            return self._finish()

    def _finish(self) -> str:
        if self._held is not None:
            self._release_held(pa.null())
        schema = self._output_schema(self._prediction_type or pa.null())
        out = self._out or self._open_output(schema)
        if self._remote is not None and volumes.is_volume_filesystem(self._remote.filesystem):
            return self._publish_to_volume(out)
        if self._remote is not None:
            _close_remote(out, self._remote)
            assert self._tmp is not None
            _publish_remote(self._tmp, self._remote, overwrite=self.spec.overwrite)
            self._state = "finished"
            return self.spec.path
        out.close(flush=True)
        assert self._tmp is not None
        fsync_path(self._tmp)
        _publish(self._tmp, self.spec.path, overwrite=self.spec.overwrite)
        self._state = "finished"
        fsync_directory(os.path.dirname(os.path.abspath(self.spec.path)))
        return self.spec.path

    def _publish_to_volume(self, out: _Output) -> str:
        """Close the local file and upload it whole (see :mod:`engine.volumes`)."""
        assert self._remote is not None and self._tmp is not None
        out.close(flush=True)
        try:
            volumes.publish(
                self._tmp, _remote_filesystem(self._remote), self._remote.path,
                overwrite=self.spec.overwrite,
            )
        finally:
            os.unlink(self._tmp)
        self._state = "finished"
        return self.spec.path

    def abort(self) -> None:
        """Close and delete the temporary files; nothing appears at the output path.

        Safe to call more than once, and a no-op after a successful ``finish``.
        """
        if self._state != "open":
            return
        self._state = "aborted"
        self._order.clear()
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close(flush=False)
        if self._held is not None:
            self._held.discard()
        if self._tmp is not None and self._remote is not None and not self._spooled:
            with contextlib.suppress(Exception):  # best effort: it is hidden, and not the output
                _remote_filesystem(self._remote).delete_file(self._tmp)
        elif self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)

    def __enter__(self) -> OrderedWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            try:
                self.finish()
            except BaseException:
                self.abort()
                raise

    # --- checking and typing ------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the writer for {self.spec.path} is already {self._state}")

    def _checked(self, batch_id: int, table: pa.Table) -> pa.Table:
        """The table with its kept columns fitted to the output and ``error`` as string."""
        if self._kept is not None and _fits(table.schema, self._kept):
            return table  # the pipeline's results always do: one C++ comparison per batch
        missing = [name for name in RESULT_COLUMNS if name not in table.column_names]
        if missing:
            raise EngineError(f"batch {batch_id}'s result has no {' or '.join(missing)} column")
        kept_names = [name for name in table.column_names if name not in RESULT_COLUMNS]
        if self._kept is None:
            self._kept = pa.schema([table.schema.field(name) for name in kept_names])
        if set(kept_names) != set(self._kept.names) or len(kept_names) != len(self._kept):
            raise EngineError(
                f"batch {batch_id}'s kept columns are {kept_names}, "
                f"but the output's are {self._kept.names}"
            )
        columns = [
            _cast(table.column(f.name), f.type, f"batch {batch_id} column {f.name!r}")
            for f in self._kept
        ]
        error = _cast(table.column("error"), pa.string(), f"batch {batch_id} column 'error'")
        names = [*self._kept.names, *RESULT_COLUMNS]
        return pa.Table.from_arrays([*columns, table.column("prediction"), error], names=names)

    def _emit(self, batch_id: int, table: pa.Table) -> None:
        """Take one result in batch order: hold it until typed, or write it."""
        self._rows_written += table.num_rows
        prediction = table.column("prediction")
        if self._prediction_type is None:
            if pa.types.is_null(prediction.type):
                self._hold(table)
                return
            self._prediction_type, self._decided_by = prediction.type, batch_id
        if self._held is not None:
            self._release_held(self._prediction_type)
        self._write(self._typed(batch_id, table))

    def _typed(self, batch_id: int, table: pa.Table) -> pa.Table:
        target = self._prediction_type
        column = table.column("prediction")
        if column.type.equals(target):
            return table
        if self._declared_type:
            origin = "the declared prediction type"
        else:
            origin = f"the type batch {self._decided_by} set"
        where = f"batch {batch_id}'s predictions ({column.type}) do not convert to {origin}"
        hint = "" if self._declared_type else "; declare the prediction type up front"
        if _is_text(column.type) and not _is_text(target):  # parsing text is not a widening
            raise EngineError(f"{where}: text is not parsed into {target}{hint}")
        index = table.schema.get_field_index("prediction")
        return table.set_column(index, "prediction", _cast(column, target, where, hint))

    def _output_schema(self, prediction_type: pa.DataType) -> pa.Schema:
        kept = list(self._kept) if self._kept is not None else []
        return pa.schema([*kept, ("prediction", prediction_type), ("error", pa.string())])

    # --- holding and writing --------------------------------------------------------------

    def _hold(self, table: pa.Table) -> None:
        if self._held is None:
            beside = self.spec.path if self._remote is None else None
            self._held = _Spill(_temp_beside(beside, ".held.tmp"), table.schema)
        self._held.add(table)

    def _release_held(self, prediction_type: pa.DataType) -> None:
        held, self._held = self._held, None
        assert held is not None
        target = self._output_schema(prediction_type)
        for batch in held.drain():
            self._write(pa.Table.from_batches([batch]).cast(target))

    def _write(self, table: pa.Table) -> None:
        out = self._out or self._open_output(table.schema)
        out.write(table)

    def _open_output(self, schema: pa.Schema) -> _Output:
        output_type = _ParquetOutput if self.spec.is_parquet else _IpcOutput
        # A Volume through the Files API (no rename): finish locally, then one PUT.
        self._spooled = self._remote is not None and volumes.is_volume_filesystem(
            self._remote.filesystem
        )
        if self._remote is None or self._spooled:
            self._tmp = _temp_beside(None if self._spooled else self.spec.path)
            # Buffered: one write call per MiB instead of several per result.
            sink = pa.BufferedOutputStream(pa.OSFile(self._tmp, "wb"), buffer_size=1 << 20)
        else:
            self._tmp = _remote_temp(self._remote)
            sink = _remote_stream(self._remote, self._tmp)
        self._out = output_type(sink, schema)
        return self._out

    def _check_complete(self, expected_batches: int | None) -> None:
        waiting = self._order.waiting()
        next_id = self._order.next_id
        end = (waiting[-1] if waiting else next_id - 1) + 1
        if expected_batches is not None:
            end = expected_batches
        missing = [i for i in range(next_id, end) if i not in set(waiting)]
        extra = [i for i in waiting if expected_batches is not None and i >= end]
        if missing or extra:
            problem = f"batches {_id_list(missing)} never arrived" if missing else ""
            if extra:
                problem += ("; " if problem else "") + f"unexpected batches {_id_list(extra)}"
            raise EngineError(
                f"cannot finish {self.spec.path}: {problem} "
                f"({len(waiting)} later results were waiting); nothing was written there"
            )


# --- output files -----------------------------------------------------------------------


class _Output(Protocol):
    def write(self, table: pa.Table) -> None: ...
    def close(self, *, flush: bool) -> None: ...


#: Results are ~1000 rows: handing their buffers to Arrow's thread pool costs more than it
#: saves (wide table, 51 columns: 0.44 ms per result serially, 0.7-1.3 ms threaded).
_SERIAL_IPC = ipc.IpcWriteOptions(use_threads=False)


class _IpcOutput:
    """An uncompressed Arrow IPC file; each result is written as it comes."""

    def __init__(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        self._sink = sink
        self._writer = ipc.new_file(self._sink, schema, options=_SERIAL_IPC)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self, *, flush: bool) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


class _ParquetOutput:
    """A zstd Parquet file; small results are gathered into large row groups (bounded)."""

    def __init__(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        self._sink = sink
        self._writer = pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._bytes = 0

    def write(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._rows, self._bytes = [], 0, 0

    def close(self, *, flush: bool) -> None:
        try:
            if flush:
                self._flush()
        finally:
            try:
                self._writer.close()
            finally:
                self._sink.close()


class _Spill:
    """Results waiting, in order, for the prediction type; kept on disk, not in memory."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self._sink = pa.OSFile(path, "wb")
        self._writer = ipc.new_stream(self._sink, schema, options=_SERIAL_IPC)

    def add(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Yield every held batch in order, then delete the spill file."""
        self._close()
        try:
            with pa.OSFile(self.path, "rb") as source:  # copies: the file is deleted next
                yield from ipc.open_stream(source)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _close(self) -> None:
        if not self._sink.closed:
            try:
                self._writer.close()
            finally:
                self._sink.close()


# --- helpers ----------------------------------------------------------------------------


def _fits(schema: pa.Schema, kept: pa.Schema) -> bool:
    """``schema`` is exactly the kept columns, then ``prediction``, then a string ``error``."""
    n = len(kept)
    return (
        len(schema) == n + 2
        and schema.names[n:] == list(RESULT_COLUMNS)
        and schema.field(n + 1).type == pa.string()
        and pa.schema(list(schema)[:n]).equals(kept)
    )


def _cast(column: Any, target: pa.DataType, where: str, hint: str = "") -> Any:
    """Cast ``column`` losslessly, or raise EngineError saying ``where``, why, and ``hint``."""
    if column.type.equals(target):
        return column
    dropped = _dropped_fields(column.type, target)
    if dropped:
        raise EngineError(f"{where}: {target} has no field(s) {', '.join(dropped)}{hint}")
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        message = f"{where}: cannot cast {column.type} to {target}: {exc}{hint}"
        raise EngineError(message) from exc


def _dropped_fields(source: pa.DataType, target: pa.DataType, prefix: str = "") -> list[str]:
    """Struct fields a cast would silently drop (pyarrow drops them without an error)."""
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        targets = {target.field(i).name: target.field(i).type for i in range(target.num_fields)}
        dropped: list[str] = []
        for i in range(source.num_fields):
            child = source.field(i)
            if child.name not in targets:
                dropped.append(prefix + child.name)
            else:
                dropped += _dropped_fields(child.type, targets[child.name], f"{child.name}.")
        return dropped
    listlike = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(test(source) for test in listlike) and any(test(target) for test in listlike):
        return _dropped_fields(source.value_type, target.value_type, prefix)
    return []


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _temp_beside(path: str | None, suffix: str = ".tmp") -> str:
    """A new hidden local file beside ``path`` (``None``: in the system's temp directory).

    Created with mode 0666 less the umask, like any file a program writes: the output is this
    file renamed, and mkstemp's 0600 would make it unreadable to the group that reads outputs.
    """
    if path is None:
        directory, name = tempfile.gettempdir(), "engine"
    else:
        directory, name = os.path.split(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _remote_filesystem(location: Location) -> pafs.FileSystem:
    assert location.filesystem is not None
    return location.filesystem


def _remote_temp(location: Location) -> str:
    """A hidden key beside the output (same bucket, so the final copy stays server-side)."""
    parent, _, name = location.path.rpartition("/")
    return f"{parent}/.{name}.{secrets.token_hex(8)}.tmp"


def _remote_stream(location: Location, tmp: str) -> pa.NativeFile:
    try:
        return _remote_filesystem(location).open_output_stream(tmp, compression=None)
    except (pa.ArrowException, OSError) as exc:
        raise EngineError(f"cannot write beside {location.name}: {exc}") from exc


def _close_remote(out: _Output, location: Location) -> None:
    """Finish the upload of the temporary object (it is not the output yet)."""
    try:
        out.close(flush=True)
    except (pa.ArrowException, OSError) as exc:
        raise EngineError(f"cannot finish writing {location.name}: {exc}") from exc


def _publish_remote(tmp: str, location: Location, *, overwrite: bool) -> None:
    """Move the finished temporary object to the output key (see the module docstring)."""
    filesystem = _remote_filesystem(location)
    if not overwrite and location.info().type != pafs.FileType.NotFound:
        raise OutputExistsError(
            f"{location.name} appeared while the run was writing and was left untouched; "
            "pass --overwrite (overwrite=True) to replace it"
        )
    try:
        try:
            filesystem.move(tmp, location.path)
        except pa.ArrowNotImplementedError:  # stores without a move (Azure flat namespace)
            filesystem.copy_file(tmp, location.path)
            filesystem.delete_file(tmp)
    except (pa.ArrowException, OSError) as exc:
        hint = _copy_limit_hint(filesystem, tmp)
        message = f"cannot move the finished output into {location.name}: {exc}{hint}"
        raise EngineError(message) from exc


def _copy_limit_hint(filesystem: pafs.FileSystem, tmp: str) -> str:
    if filesystem.type_name != "s3":
        return ""
    try:
        size = filesystem.get_file_info(tmp).size or 0
    except (pa.ArrowException, OSError):
        return ""
    if size <= S3_MAX_COPY_BYTES:
        return ""
    return (
        f"; the output is {size / 1024**3:.1f} GiB and S3 copies at most 5 GiB in one "
        "request: split the run with --shard I/N so each output is smaller"
    )


def _publish(tmp: str, path: str, *, overwrite: bool) -> None:
    """Move ``tmp`` to ``path``; without ``overwrite``, never replace an existing file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails atomically if ``path`` exists, unlike a rename
    except FileExistsError:
        raise OutputExistsError(
            f"{path} appeared while the run was writing and was left untouched; "
            "pass --overwrite (overwrite=True) to replace it"
        ) from None
    except OSError:  # no hard links on this filesystem: check, then rename
        if os.path.lexists(path):
            raise OutputExistsError(f"{path} appeared while the run was writing") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)




def _id_list(ids: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``, at most ``MAX_LISTED_IDS`` ranges."""
    ranges: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    more = (
        f" and {len(ranges) - MAX_LISTED_IDS} more ranges" if len(ranges) > MAX_LISTED_IDS else ""
    )
    return ", ".join(ranges[:MAX_LISTED_IDS]) + more
