"""The two output formats: an uncompressed Arrow IPC file written result by result, and a
zstd Parquet file whose small results are gathered into large row groups (bounded).
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

__all__ = [
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


class Output(Protocol):
    def write(self, table: pa.Table) -> None: ...
    def close(self, *, flush: bool) -> None: ...


SERIAL_IPC = ipc.IpcWriteOptions(use_threads=False)


class IpcOutput:
    """An uncompressed Arrow IPC file; each result is written as it comes."""

    def __init__(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        self._sink = sink
        self._writer = ipc.new_file(self._sink, schema, options=SERIAL_IPC)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self, *, flush: bool) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


class ParquetOutput:
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
