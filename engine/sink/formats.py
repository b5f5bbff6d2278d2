"""The two output formats: an uncompressed Arrow IPC file and a zstd Parquet file, both with
small results gathered (bounded) into large record batches and row groups.

Gathered results are written by one background thread, one write at a time and in order:
Arrow copies, compresses and writes without the GIL, so the event loop goes on sending while
the file is written (on a table of 1 KB rows, writing the output took a fifth of the loop's
time). A write's error is raised by the next write or by ``close``.

A local output is also synced to disk while it is written (``sync``, each time another
``EARLY_SYNC_BYTES`` are in the file, on a thread of its own so that the output thread does
not wait for the fsync): below the kernel's dirty-page thresholds (10 % of memory by
default) nothing of the output reached the disk before the final fsync, and the run then
waited for all of it after its last answer (36-120 ms for a 300 MB output on this machine's
disk; on a cloud volume that writes 125 MB/s it would be seconds, not measured).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

__all__ = [
    "IPC_BATCH_BYTES",
    "IPC_BATCH_ROWS",
    "PARQUET_COMPRESSION",
    "ROW_GROUP_BYTES",
    "ROW_GROUP_ROWS",
    "SERIAL_IPC",
    "IpcOutput",
    "Output",
    "ParquetOutput",
]

PARQUET_COMPRESSION = "zstd"


ROW_GROUP_ROWS = 65_536
"""Parquet results are buffered up to this many rows (or ``ROW_GROUP_BYTES``) per write."""


ROW_GROUP_BYTES = 64 * 1024 * 1024


#: Arrow IPC results are gathered into record batches of up to this many rows (or
#: ``IPC_BATCH_BYTES``): a file of 2,000 record batches of 100 rows reads back as 2,000 chunks,
#: and each write cost the loop a call into the writer.
IPC_BATCH_ROWS = 65_536
IPC_BATCH_BYTES = 16 * 1024 * 1024


#: A local output is synced to disk each time about this many more bytes are in the file.
EARLY_SYNC_BYTES = 64 * 1024 * 1024


class Output(Protocol):
    def write(self, table: pa.Table) -> None: ...
    def close(self, *, flush: bool) -> None: ...


SERIAL_IPC = ipc.IpcWriteOptions(use_threads=False)


class _Gather:
    """Small results held until together they reach ``rows`` rows or ``size`` bytes.

    Bytes are estimated from the first result of each gathering (``nbytes`` of a slice walks
    its buffers: once per gathering, not once per result).
    """

    def __init__(self, rows: int, size: int) -> None:
        self._max_rows = rows
        self._max_bytes = size
        self._held: list[pa.Table] = []
        self._rows = 0
        self._limit = rows

    def add(self, table: pa.Table) -> pa.Table | None:
        """Hold ``table``; the results held, as one table, once they reach the limit."""
        if not self._held and table.num_rows:
            per_row = table.nbytes / table.num_rows
            self._limit = max(1, min(self._max_rows, int(self._max_bytes / max(per_row, 1.0))))
        self._held.append(table)
        self._rows += table.num_rows
        return self.take() if self._rows >= self._limit else None

    def take(self) -> pa.Table | None:
        """The results held, as one table (None: none), and nothing held after."""
        if not self._held:
            return None
        held, self._held, self._rows = self._held, [], 0
        return pa.concat_tables(held)


class _GatheredOutput:
    """An output whose writer takes gathered results (see :class:`_Gather`), written in a
    background thread, one gathering at a time (the caller waits only when the previous one
    is not written yet: at most two gatherings are held)."""

    def __init__(
        self,
        sink: pa.NativeFile,
        schema: pa.Schema,
        *,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._writer = self._open_writer(sink, schema)
        self._gather = _Gather(*self._gather_limits())
        self._thread: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self._sync = sync
        self._sync_every = EARLY_SYNC_BYTES  # read when the output opens (tests lower it)
        self._synced_at = 0  # the file's size when the last sync began (output thread only)
        self._syncer: ThreadPoolExecutor | None = None
        self._syncing: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        gathered = self._gather.add(table)
        if gathered is not None:
            self._submit(gathered)

    def _submit(self, table: pa.Table) -> None:
        self._wait()  # in order, one at a time; raises the previous write's error
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="engine-output")
        self._writing = self._thread.submit(self._write_and_sync, table)

    def _write_and_sync(self, table: pa.Table) -> None:
        """On the output thread: write a gathering; once ``EARLY_SYNC_BYTES`` more are in
        the file and no sync is running, hand what was written to the OS and start one."""
        self._emit(table)
        if self._sync is None:
            return
        size = self._sink.tell()  # bytes written, compressed or not
        if size - self._synced_at < self._sync_every or not self._sync_done():
            return
        self._synced_at = size
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="engine-output-sync")
        self._sink.flush()  # the buffered stream's last MiB too
        self._syncing = self._syncer.submit(self._sync)

    def _sync_done(self) -> bool:
        """Whether no sync is running; a finished sync's error is raised here."""
        syncing = self._syncing
        if syncing is None:
            return True
        if not syncing.done():
            return False
        self._syncing = None
        syncing.result()
        return True

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _open_writer(self, sink: pa.NativeFile, schema: pa.Schema) -> Any:
        raise NotImplementedError

    def _gather_limits(self) -> tuple[int, int]:
        """A gathering is written once it holds this many rows, or bytes (read when the
        output opens, so a test may lower the module's limits)."""
        raise NotImplementedError

    def _emit(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self, *, flush: bool) -> None:
        """Write what is gathered (``flush``) and close; without ``flush`` (an abort) a
        write or sync in progress is waited for and its error, if any, dropped."""
        try:
            if flush:
                gathered = self._gather.take()
                if gathered is not None:
                    self._submit(gathered)
                self._wait()
                if self._syncing is not None:
                    self._syncing.result()  # its error, if any, is the output's
            else:
                with contextlib.suppress(Exception):  # aborting: the output is deleted anyway
                    self._wait()
        finally:
            try:
                if self._thread is not None:
                    self._thread.shutdown(wait=True)
                if self._syncer is not None:  # read only now: the output thread may start it
                    self._syncer.shutdown(wait=True)
                self._writer.close()
            finally:
                self._sink.close()


class IpcOutput(_GatheredOutput):
    """An uncompressed Arrow IPC file; small results are gathered into record batches of up
    to ``IPC_BATCH_ROWS`` rows (bounded by ``IPC_BATCH_BYTES``)."""

    def _open_writer(self, sink: pa.NativeFile, schema: pa.Schema) -> Any:
        return ipc.new_file(sink, schema, options=SERIAL_IPC)

    def _gather_limits(self) -> tuple[int, int]:
        return IPC_BATCH_ROWS, IPC_BATCH_BYTES

    def _emit(self, table: pa.Table) -> None:
        # one record batch, not one a result (dictionaries that differ are unified)
        self._writer.write_table(table.combine_chunks())


class ParquetOutput(_GatheredOutput):
    """A zstd Parquet file; small results are gathered into large row groups (bounded)."""

    def _open_writer(self, sink: pa.NativeFile, schema: pa.Schema) -> Any:
        return pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)

    def _gather_limits(self) -> tuple[int, int]:
        return ROW_GROUP_ROWS, ROW_GROUP_BYTES
