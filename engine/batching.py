"""Pure: a stream of record batches -> numbered request batches under a row and a byte cap.

Input record batches come in whatever sizes the reader yields; requests get exactly
``rows_per_batch`` rows (the last may have fewer), and any request whose encoded body is over
``max_request_bytes`` is split further. A single row that alone is over the cap becomes an
``oversize`` batch with no body: the pipeline rejects that row instead of failing the run.
Lazy and zero-copy where pyarrow allows: memory is one input batch plus one request batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from engine.errors import UsageError

__all__ = ["Batcher", "Piece", "RequestBatch", "fit", "plan_batches"]

#: Aim this far under the byte cap when splitting, so one estimate usually suffices.
_SPLIT_HEADROOM = 0.9


@dataclass(frozen=True, slots=True)
class RequestBatch:
    """One request's rows and body.

    Attributes:
        batch_id: 0, 1, 2, ... in input order.
        row_offset: index of this batch's first row in the whole input.
        rows: the input rows (every column read, including kept ones that are not sent).
        body: the encoded request; ``b""`` when ``oversize``.
        oversize: a single row whose encoding alone exceeds the byte cap.
    """

    batch_id: int
    row_offset: int
    rows: pa.RecordBatch
    body: bytes
    oversize: bool = False

    @property
    def num_rows(self) -> int:
        return int(self.rows.num_rows)


def plan_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    rows_per_batch: int,
    max_request_bytes: int,
    encode: Callable[[pa.RecordBatch], bytes],
) -> Iterator[RequestBatch]:
    """Yield request batches in input order with consecutive ids and exact row offsets."""
    batcher = Batcher(
        rows_per_batch=rows_per_batch, max_request_bytes=max_request_bytes, encode=encode
    )
    for batch in batches:
        yield from batcher.feed(batch)
    yield from batcher.finish()


class Batcher:
    """:func:`plan_batches`, pushed one input batch at a time.

    The pipeline reads input batches on a thread (file I/O and decoding release the GIL) and
    feeds them here on the event loop, so encoding, which holds the GIL, never contends with
    the loop from another thread.
    """

    def __init__(
        self,
        *,
        rows_per_batch: int,
        max_request_bytes: int,
        encode: Callable[[pa.RecordBatch], bytes],
    ) -> None:
        if rows_per_batch < 1:
            raise UsageError(f"`batch_rows` must be at least 1, got {rows_per_batch}")
        if max_request_bytes < 1024:
            raise UsageError(
                f"`max_request_bytes` must be at least 1024, got {max_request_bytes}"
            )
        self._rows = rows_per_batch
        self._cap = max_request_bytes
        self._encode = encode
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._batch_id = 0
        self._offset = 0

    def feed(self, batch: pa.RecordBatch) -> Iterator[RequestBatch]:
        """The request batches ``batch`` completes (its last rows wait for the next one)."""
        for chunk in self.split(batch):
            yield from self.number(chunk, fit(chunk, self._encode, self._cap))

    def finish(self) -> Iterator[RequestBatch]:
        """The last, short request batch, if rows are left."""
        for chunk in self.rest():
            yield from self.number(chunk, fit(chunk, self._encode, self._cap))

    def split(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """The ``rows_per_batch``-row chunks ``batch`` completes, not yet encoded."""
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        while self._pending_rows >= self._rows:
            yield self._take(self._rows)

    def rest(self) -> Iterator[pa.RecordBatch]:
        """The last, short chunk, if rows are left."""
        if self._pending_rows:
            yield self._take(self._pending_rows)

    def number(self, chunk: pa.RecordBatch, pieces: Iterable[Piece]) -> Iterator[RequestBatch]:
        """Request batches for ``chunk`` cut as :func:`fit` cut it, numbered in order."""
        for start, length, body, oversize in pieces:
            rows = chunk if length == chunk.num_rows else chunk.slice(start, length)
            yield RequestBatch(self._batch_id, self._offset, rows, body, oversize)
            self._batch_id += 1
            self._offset += length

    def _take(self, count: int) -> pa.RecordBatch:
        """The first ``count`` pending rows: a zero-copy slice, unless they straddle input
        batches (then only those rows are copied, never a whole input batch)."""
        taken: list[pa.RecordBatch] = []
        while count:
            head = self._pending[0]
            if head.num_rows <= count:
                taken.append(self._pending.pop(0))
            else:
                taken.append(head.slice(0, count))
                self._pending[0] = head.slice(count)
            count -= taken[-1].num_rows
            self._pending_rows -= taken[-1].num_rows
        return _merge(taken)


def _merge(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


#: One request cut from a chunk: (first row in the chunk, rows, body, oversize).
Piece = tuple[int, int, bytes, bool]


def fit(
    rows: pa.RecordBatch, encode: Callable[[pa.RecordBatch], bytes], cap: int, start: int = 0
) -> Iterator[Piece]:
    """``rows`` as one or more pieces whose bodies fit under ``cap``; ``start`` is where
    ``rows`` begins in the chunk the pieces' positions refer to."""
    body = encode(rows)
    if len(body) <= cap:
        yield start, rows.num_rows, body, False
        return
    if rows.num_rows == 1:
        yield start, 1, b"", True
        return
    pieces = min(rows.num_rows, max(2, math.ceil(len(body) / (cap * _SPLIT_HEADROOM))))
    size = math.ceil(rows.num_rows / pieces)
    for first in range(0, rows.num_rows, size):
        yield from fit(rows.slice(first, size), encode, cap, start + first)
