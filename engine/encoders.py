"""Encoding and keying request batches off the event loop, in worker processes.

Encoding holds the GIL (orjson, Arrow's Python conversions), so threads would only take turns
with the loop: the work goes to processes instead. The loop cuts input into request-sized
chunks (zero-copy slices), sends a group of chunks to a worker as Arrow IPC (pickled record
batches), and gets back, per chunk, how :func:`~engine.batching.fit` cut it, the bodies and
their checkpoint keys; it numbers the pieces in input order. With no workers (one core, or
``--encoders 0``, the default) the same function runs inline on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from engine.batching import Piece, fit
from engine.checkpoint import batch_key
from engine.codec import SplitRows, encode_dataframe_split, slices_encode_alike
from engine.schema import CastPlan
from engine.source import read_errors

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["EncodeSpec", "EncoderPool", "KeyedPiece", "default_encoders", "row_bytes"]

#: A piece and its checkpoint key ("" when the run keeps no checkpoint, or for oversize rows).
KeyedPiece = tuple[int, int, bytes, bool, str]


def default_encoders() -> int:
    """0: encode on the loop unless ``--encoders`` asks for processes.

    Measured on a 2-core machine shared with the server (benchmarks/tables.py, 200k-row wide
    and 120k-row text tables): one encoder process made runs ~2x slower (spawning it costs
    ~0.6 s before the first request, and shipping rows and bodies between processes costs
    more CPU than encoding saves). Not yet measured on larger machines.
    """
    return 0


@dataclass(frozen=True, slots=True)
class EncodeSpec:
    """Everything a worker needs to turn rows into bodies and keys (picklable)."""

    cast: CastPlan
    params: Mapping[str, Any] | None
    max_request_bytes: int
    endpoint: str
    model_version: str
    keyed: bool

    def encode(self, rows: pa.RecordBatch) -> bytes:
        return encode_dataframe_split(self.cast.apply(rows), params=self.params)

    def pieces(self, chunks: list[pa.RecordBatch]) -> list[list[KeyedPiece]]:
        """Each chunk cut into requests under the byte cap, with bodies and keys."""
        sent = self._sent(chunks)
        if sent is not None and _made_ready_together(sent):
            rows = self.cast.apply(pa.concat_batches(sent))
            if slices_encode_alike(rows.schema):
                return self._pieces_together(chunks, rows)
        return [
            [
                self._keyed(chunk, piece)
                for piece in fit(chunk, self.encode, self.max_request_bytes)
            ]
            for chunk in chunks
        ]

    def _sent(self, chunks: list[pa.RecordBatch]) -> list[pa.RecordBatch] | None:
        """The chunks with only the columns sent (zero-copy), or None when one is missing
        or appears twice (encoded chunk by chunk, the cast plan then says so)."""
        if not chunks:
            return None
        schema = chunks[0].schema
        columns = list(self.cast.columns)
        if any(schema.get_field_index(name) < 0 for name in columns):
            return None
        if columns == list(schema.names):
            return chunks
        return [chunk.select(columns) for chunk in chunks]

    def _pieces_together(
        self, chunks: list[pa.RecordBatch], cast: pa.RecordBatch
    ) -> list[list[KeyedPiece]]:
        """As :meth:`pieces`, the chunks' rows (``cast``: all of them, cast) made ready for
        their bodies at once (:class:`~engine.codec.SplitRows`); a chunk whose body is over the
        cap is cut by :func:`~engine.batching.fit` as before."""
        rows = SplitRows(cast, params=self.params)
        keyed: list[list[KeyedPiece]] = []
        start = 0
        for chunk in chunks:
            stop = start + chunk.num_rows
            body = rows.body(start, stop)
            start = stop
            if len(body) <= self.max_request_bytes:
                pieces: list[Piece] = [(0, chunk.num_rows, body, False)]
            else:
                pieces = list(fit(chunk, self.encode, self.max_request_bytes))
            keyed.append([self._keyed(chunk, piece) for piece in pieces])
        return keyed

    def _keyed(self, chunk: pa.RecordBatch, piece: Piece) -> KeyedPiece:
        start, length, body, oversize = piece
        key = ""
        if self.keyed and not oversize:
            # Why rows could not be read is not in the body: key it too, so a fixed value
            # is read again on resume instead of keeping its old error.
            keyed = body
            unreadable = read_errors(chunk.slice(start, length))
            if unreadable is not None:
                reasons = "\x00".join(str(e) for e in unreadable.to_pylist())
                keyed = body + b"\x00" + reasons.encode()
            key = batch_key(keyed, endpoint=self.endpoint, model_version=self.model_version)
        return start, length, body, oversize, key


#: Chunks of at most this many bytes, of cells of at most ``TOGETHER_CELL_BYTES`` on average,
#: are made ready for their bodies together (:meth:`EncodeSpec.pieces`). Measured in-process,
#: two runs each, a 16k-row read: 100-row chunks of 4 numeric and short-string columns (6
#: KiB) 2.8-3.3x faster together, of 50 such columns (82 KiB) 1.7x; 300 rows of 50 columns
#: (250 KiB) 1.1x faster, 1000 rows of them (825 KiB) 1.1-1.5x slower, and 100 rows of
#: 200-character strings (100 KiB, 200 bytes a cell) 1.4-1.7x slower (likely their values
#: leaving the CPU's caches between being made and being written; not measured). The bound
#: sits under the 250 KiB that still gained: not tuned further.
TOGETHER_CHUNK_BYTES = 128 * 1024
TOGETHER_CELL_BYTES = 64


def _made_ready_together(chunks: list[pa.RecordBatch]) -> bool:
    if len(chunks) < 2 or not chunks[0].num_columns:
        return False
    schema = chunks[0].schema
    if not all(chunk.schema.equals(schema) for chunk in chunks[1:]):
        return False  # one batch cannot hold them (a source whose schema changed mid-way)
    per_row = row_bytes(chunks)
    rows = max(chunk.num_rows for chunk in chunks)
    columns = int(chunks[0].num_columns)
    return per_row * rows <= TOGETHER_CHUNK_BYTES and per_row / columns <= TOGETHER_CELL_BYTES


_worker_spec: EncodeSpec | None = None


def _start_worker(spec: EncodeSpec) -> None:
    global _worker_spec
    _worker_spec = spec


def _encode_in_worker(rows: pa.RecordBatch, lengths: list[int]) -> list[list[KeyedPiece]]:
    assert _worker_spec is not None, "the encoder process was not initialised"
    starts = itertools.accumulate(lengths, initial=0)
    return _worker_spec.pieces([rows.slice(s, n) for s, n in zip(starts, lengths, strict=False)])


def _compact(chunks: list[pa.RecordBatch]) -> pa.RecordBatch:
    """The chunks' rows in fresh buffers: pickling a slice can carry its parent's whole
    buffers (a 16k-row input batch per 1000-row request, measured on list columns)."""
    return pa.concat_batches(chunks) if len(chunks) > 1 else pa.concat_batches([chunks[0]])


#: Encoding inline, the input rows encoded at once before the loop hands them on: a whole
#: 16k-row read on narrow rows (fewer loop turns), a few requests on wide ones (a read of
#: embeddings is 16 bodies of 4 MB, which waited for the byte budget all at once).
INLINE_GROUP_BYTES = 4 * 1024 * 1024


def row_bytes(chunks: list[pa.RecordBatch]) -> float:
    """Bytes per row of the first chunk, for all of them (chunks of one read are alike).

    Once per read, not per chunk: ``nbytes`` of a slice walks its buffers (9 us for four
    columns), which at 100-row requests was 3 % of the loop's time.
    """
    first = chunks[0] if chunks else None
    if first is None or not first.num_rows:
        return 0.0
    return float(first.nbytes) / int(first.num_rows)


def _by_size(chunks: list[pa.RecordBatch], limit: int) -> list[list[pa.RecordBatch]]:
    """``chunks`` in order, in groups of at most about ``limit`` input bytes (at least one
    each)."""
    per_row = row_bytes(chunks)
    groups: list[list[pa.RecordBatch]] = []
    size = float(limit)
    for chunk in chunks:
        weight = chunk.num_rows * per_row
        if size + weight > limit:
            groups.append([])
            size = 0
        groups[-1].append(chunk)
        size += weight
    return groups


class EncoderPool:
    """Encodes groups of chunks in ``workers`` processes, results in submission order.

    At most ``2 * workers`` groups are in flight, so memory stays bounded.
    """

    def __init__(self, spec: EncodeSpec, *, workers: int) -> None:
        self.spec = spec
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 0:
            import concurrent.futures  # only with --encoders: the process pool's imports
            import multiprocessing

            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                # spawn: forking a process that runs threads and an event loop is unsafe
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(spec,),
            )

    async def map(
        self, groups: AsyncIterator[list[pa.RecordBatch]]
    ) -> AsyncIterator[tuple[list[pa.RecordBatch], list[list[KeyedPiece]]]]:
        """(chunks, their pieces) for each group, in the order the groups came."""
        if self._executor is None:
            starting = True
            async for chunks in groups:
                if not starting:
                    for group in _by_size(chunks, INLINE_GROUP_BYTES):
                        yield group, self.spec.pieces(group)
                    continue
                # The first read: hand each request to the loop before encoding the next, so
                # the first request does not wait for all 16 of a 16k-row read (embeddings:
                # 0.18 s). Only then: a loop turn per request costs CPU (100-row requests:
                # 8.9 -> 10.4 us/row) and, once requests are queued, buys nothing.
                starting = False
                for chunk in chunks:
                    yield [chunk], self.spec.pieces([chunk])
                    await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        in_flight: collections.deque[tuple[list[pa.RecordBatch], asyncio.Future[Any]]]
        in_flight = collections.deque()
        async for chunks in groups:
            lengths = [chunk.num_rows for chunk in chunks]
            future = loop.run_in_executor(
                self._executor, _encode_in_worker, _compact(chunks), lengths
            )
            in_flight.append((chunks, future))
            while in_flight and (len(in_flight) >= 2 * self.workers or in_flight[0][1].done()):
                head, pending = in_flight.popleft()
                yield head, await pending
        while in_flight:
            head, pending = in_flight.popleft()
            yield head, await pending

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
