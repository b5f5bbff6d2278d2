""":class:`OrderedWriter`: results in, in any order; one file out, in batch order, typed,
schema-checked and published atomically.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from types import TracebackType

import pyarrow as pa

from engine import volumes
from engine.durable import filesystem_type, fsync_directory, fsync_path
from engine.errors import EngineError, UsageError, storage_error
from engine.location import locate
from engine.ordering import InOrder
from engine.sink.columns import RESULT_COLUMNS, fit_result
from engine.sink.formats import IpcOutput, Output, ParquetOutput
from engine.sink.predictions import PredictionTyping
from engine.sink.publish import (
    close_remote,
    publish_local,
    publish_remote,
    remote_filesystem,
    remote_stream,
    remote_temp,
    temp_beside,
)
from engine.sink.spec import OutputSpec, check_output, is_remote_output

__all__ = [
    "OrderedWriter",
]

MAX_LISTED_IDS = 20


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
        self._remote = locate(spec.path) if is_remote_output(spec.path) else None
        if kept_schema is not None and set(kept_schema.names) & set(RESULT_COLUMNS):
            raise UsageError(f"kept columns cannot be named {' or '.join(RESULT_COLUMNS)}")
        self.spec = spec
        self._kept = kept_schema
        #: the last result schema that fitted as it was: the pipeline's results all share it,
        #: so one C++ comparison (0.05 us) accepts them instead of fit_result (5 us, timed)
        self._fitted: pa.Schema | None = None
        self._order: InOrder[pa.Table] = InOrder()
        self._rows_written = 0
        self._out: Output | None = None
        self._typing = PredictionTyping(
            prediction_type,
            spill_beside=spec.path if self._remote is None else None,
            schema_for=self._output_schema,
            write=self._write,
        )
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
        return self._typing.type

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
        if self._fitted is None or not table.schema.equals(self._fitted):
            fitted, self._kept = fit_result(batch_id, table, self._kept)
            self._fitted = table.schema if fitted is table else None
            table = fitted
        ready = self._order.add(batch_id, table)
        with self._storage("write"):
            for ready_id, ready_table in ready:
                self._rows_written += ready_table.num_rows
                self._typing.take(ready_id, ready_table)
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
        schema = self._output_schema(self._typing.finish())
        out = self._out or self._open_output(schema)
        if self._remote is not None and volumes.is_volume_filesystem(self._remote.filesystem):
            return self._publish_to_volume(out)
        if self._remote is not None:
            close_remote(out, self._remote)
            assert self._tmp is not None
            publish_remote(self._tmp, self._remote, overwrite=self.spec.overwrite)
            self._state = "finished"
            return self.spec.path
        out.close(flush=True)
        assert self._tmp is not None
        fsync_path(self._tmp)
        publish_local(self._tmp, self.spec.path, overwrite=self.spec.overwrite)
        self._state = "finished"
        fsync_directory(os.path.dirname(os.path.abspath(self.spec.path)))
        return self.spec.path

    def _publish_to_volume(self, out: Output) -> str:
        """Close the local file and upload it whole (see :mod:`engine.volumes`)."""
        assert self._remote is not None and self._tmp is not None
        out.close(flush=True)
        try:
            volumes.publish(
                self._tmp, remote_filesystem(self._remote), self._remote.path,
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
        self._typing.discard()
        if self._tmp is not None and self._remote is not None and not self._spooled:
            with contextlib.suppress(Exception):  # best effort: it is hidden, and not the output
                remote_filesystem(self._remote).delete_file(self._tmp)
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

    # --- checking and writing -----------------------------------------------------------

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the writer for {self.spec.path} is already {self._state}")

    def _output_schema(self, prediction_type: pa.DataType) -> pa.Schema:
        kept = list(self._kept) if self._kept is not None else []
        return pa.schema([*kept, ("prediction", prediction_type), ("error", pa.string())])

    def _write(self, table: pa.Table) -> None:
        out = self._out or self._open_output(table.schema)
        out.write(table)

    def _open_output(self, schema: pa.Schema) -> Output:
        output_type = ParquetOutput if self.spec.is_parquet else IpcOutput
        # A Volume through the Files API (no rename): finish locally, then one PUT.
        self._spooled = self._remote is not None and volumes.is_volume_filesystem(
            self._remote.filesystem
        )
        sync = None
        if self._remote is None or self._spooled:
            self._tmp = temp_beside(None if self._spooled else self.spec.path)
            # Buffered: one write call per MiB instead of several per result.
            sink = pa.BufferedOutputStream(pa.OSFile(self._tmp, "wb"), buffer_size=1 << 20)
            if not self._spooled and not _on_fuse(self._tmp):
                # a spool is uploaded and deleted, and a FUSE mount (/dbfs, /Volumes on a
                # cluster) may upload a file at each fsync: only a disk is synced early
                sync = functools.partial(fsync_path, self._tmp)
        else:
            self._tmp = remote_temp(self._remote)
            sink = remote_stream(self._remote, self._tmp)
        self._out = output_type(sink, schema, sync=sync)
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


def _on_fuse(path: str) -> bool:
    """On a FUSE filesystem (``fuse``, ``fuse.s3fs``, ``fuseblk``...)."""
    kind = filesystem_type(os.path.dirname(os.path.abspath(path)))
    return kind is not None and kind.startswith("fuse")
