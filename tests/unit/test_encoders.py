"""Encoder processes cut, encode and key chunks exactly as the loop does, in input order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pyarrow as pa
import pytest

from engine.encoders import INLINE_GROUP_BYTES, EncoderPool, EncodeSpec, _made_ready_together
from engine.schema import CastPlan


def _spec() -> EncodeSpec:
    return EncodeSpec(
        cast=CastPlan(("x", "s"), (None, None)),
        params={"t": 1},
        max_request_bytes=2048,
        endpoint="e",
        model_version="m@1",
        keyed=True,
    )


async def _groups(groups: list[list[pa.RecordBatch]]) -> AsyncIterator[list[pa.RecordBatch]]:
    for group in groups:
        yield group


async def _collect(pool: EncoderPool, groups: list[list[pa.RecordBatch]]) -> list:
    """Each chunk's pieces, in input order (inline, the first group comes chunk by chunk)."""
    try:
        return [chunk async for _, pieces in pool.map(_groups(groups)) for chunk in pieces]
    finally:
        pool.close()


def test_worker_processes_give_the_inline_results_in_order() -> None:
    source = pa.record_batch(
        {"x": pa.array(range(3000), pa.float64()), "s": pa.array([f"row {i}" for i in range(3000)])}
    )
    groups = [
        [source.slice(i, 250) for i in range(start, start + 1000, 250)]
        for start in range(0, 3000, 1000)
    ]
    inline = asyncio.run(_collect(EncoderPool(_spec(), workers=0), groups))
    pooled = asyncio.run(_collect(EncoderPool(_spec(), workers=2), groups))
    assert pooled == inline
    assert len(inline) == len(pooled) == 12  # one entry per chunk
    pieces = [piece for chunk in inline for piece in chunk]
    assert sum(length for _, length, *_ in pieces) == 3000
    assert all(len(body) <= 2048 and key.startswith("x3") for _, _, body, _, key in pieces)
    assert len({key for *_, key in pieces}) == len(pieces)


def test_inline_encoding_hands_over_each_chunk_before_encoding_the_next() -> None:
    """The first request of the first read is sent before the rest of the read is encoded;
    later reads are encoded whole (a loop turn per request costs CPU)."""
    encoded: list[int] = []

    class Counting:
        def pieces(self, chunks: list[pa.RecordBatch]) -> list[list[tuple]]:
            encoded.append(len(chunks))
            return [[(0, chunk.num_rows, b"{}", False, "")] for chunk in chunks]

    source = pa.record_batch({"x": pa.array(range(400), pa.float64())})
    chunks = [source.slice(i, 100) for i in range(0, 400, 100)]

    async def first() -> tuple[list[pa.RecordBatch], list[int]]:
        pool = EncoderPool(Counting(), workers=0)  # type: ignore[arg-type]
        async for got, _ in pool.map(_groups([chunks])):
            return got, list(encoded)
        raise AssertionError("nothing was yielded")

    got, encoded_by_then = asyncio.run(first())
    assert got == [chunks[0]]
    assert encoded_by_then == [1]

    encoded.clear()

    async def groups() -> list[int]:
        pool = EncoderPool(Counting(), workers=0)  # type: ignore[arg-type]
        return [len(got) async for got, _ in pool.map(_groups([chunks, chunks]))]

    assert asyncio.run(groups()) == [1, 1, 1, 1, 4]
    assert encoded == [1, 1, 1, 1, 4]


def test_inline_encoding_of_wide_rows_goes_a_few_requests_at_a_time() -> None:
    """A read is encoded whole only while its rows are small: 16 bodies of 4 MB each
    (embeddings) would all wait for the byte budget at once."""
    encoded: list[int] = []

    class Counting:
        def pieces(self, chunks: list[pa.RecordBatch]) -> list[list[tuple]]:
            encoded.append(len(chunks))
            return [[(0, chunk.num_rows, b"{}", False, "")] for chunk in chunks]

    wide = pa.record_batch({"s": pa.array(["x" * 2048] * 1000)})  # ~2 MB a chunk
    chunks = [wide.slice(i, 250) for i in range(0, 1000, 250)]  # ~0.5 MB each
    assert 0.4 * 2**20 < chunks[0].nbytes < 0.6 * 2**20

    async def groups() -> list[int]:
        pool = EncoderPool(Counting(), workers=0)  # type: ignore[arg-type]
        first = [wide.slice(0, 1)]
        return [len(got) async for got, _ in pool.map(_groups([first, chunks * 4]))]

    sizes = asyncio.run(groups())
    assert sizes[0] == 1 and sum(sizes[1:]) == 16 and encoded == sizes
    # at most INLINE_GROUP_BYTES (4 MiB) of rows at once, and no fewer than fit
    per_group = INLINE_GROUP_BYTES // chunks[0].nbytes
    assert sizes[1:] == [per_group, per_group], sizes


def test_small_chunks_made_ready_together_give_each_chunk_its_own_pieces_and_keys() -> None:
    """Rows made ready for their bodies once for a whole group of small chunks: the same
    bodies, cuts and keys as chunk by chunk, an oversize chunk cut under the cap as before."""
    strings = [f"row {i}" for i in range(1000)]
    strings[650] = "x" * 3000  # its chunk's body is over the 2 KiB cap: fit cuts it
    source = pa.record_batch({"x": pa.array(range(1000), pa.float64()), "s": pa.array(strings)})
    chunks = [source.slice(i, 20) for i in range(0, 1000, 20)]
    assert _made_ready_together(chunks)
    spec = _spec()
    together = spec.pieces(chunks)
    alone = [spec.pieces([chunk])[0] for chunk in chunks]
    assert together == alone
    assert [len(pieces) for pieces in together].count(1) == len(chunks) - 1  # one was cut
    assert all(len(body) <= 2048 for pieces in together for _, _, body, over, _ in pieces
               if not over)


def test_chunks_of_long_strings_or_many_rows_are_made_ready_one_by_one() -> None:
    """Where together is slower (measured: 200-character cells, 825 KiB chunks)."""
    text = pa.record_batch({"t": pa.array(["y" * 200] * 400)})
    assert not _made_ready_together([text.slice(i, 100) for i in range(0, 400, 100)])
    wide = pa.record_batch({f"c{k}": pa.array(range(4000), pa.float64()) for k in range(40)})
    assert not _made_ready_together([wide.slice(i, 1000) for i in range(0, 4000, 1000)])
    narrow = pa.record_batch({"c": pa.array(range(400), pa.float64())})
    assert not _made_ready_together([narrow])  # one chunk: nothing to share
    assert _made_ready_together([narrow.slice(0, 200), narrow.slice(200, 200)])
    as_ints = pa.record_batch({"c": pa.array(range(200), pa.int64())})
    assert not _made_ready_together([narrow.slice(0, 200), as_ints])  # no one batch holds both


def test_chunks_whose_schemas_differ_are_cut_and_keyed_one_by_one() -> None:
    first = pa.record_batch({"x": pa.array([1.5, 2.5]), "s": pa.array(["a", "b"])})
    second = pa.record_batch({"x": pa.array([3, 4]), "s": pa.array(["c", None])})
    spec = _spec()
    assert spec.pieces([first, second]) == [spec.pieces([first])[0], spec.pieces([second])[0]]


@pytest.mark.parametrize(
    "kind", [pa.list_(pa.float32()), pa.list_(pa.float16()), pa.list_(pa.float32(), 2)], ids=str
)
def test_chunks_with_lists_of_short_floats_keep_the_bodies_they_have_alone(
    kind: pa.DataType,
) -> None:
    """A null item in one row changes how a whole array of float32 lists is written: such
    chunks are encoded one by one, so each keeps its own body and checkpoint key."""
    lists = [[1e-6, 3e13] for _ in range(400)]
    lists[350] = [1.0, None]
    lists[370] = None  # a null row (a fixed-size list's items under it are null too)
    source = pa.record_batch(
        {"x": pa.array(range(400), pa.float64()), "l": pa.array(lists, kind)}
    )
    chunks = [source.slice(i, 100) for i in range(0, 400, 100)]
    assert _made_ready_together(chunks)
    spec = EncodeSpec(
        cast=CastPlan(("x", "l"), (None, None)),
        params=None,
        max_request_bytes=1 << 20,
        endpoint="e",
        model_version="m@1",
        keyed=True,
    )
    assert spec.pieces(chunks) == [spec.pieces([chunk])[0] for chunk in chunks]


def test_columns_kept_for_the_output_but_not_sent_do_not_stop_chunks_going_together() -> None:
    """Only the columns sent count: a long text column kept for the output (not the model's)
    is neither copied into the group nor weighed against its thresholds."""
    source = pa.record_batch(
        {
            "x": pa.array(range(1000), pa.float64()),
            "s": pa.array([f"row {i}" for i in range(1000)]),
            "notes": pa.array(["n" * 300] * 1000),
        }
    )
    chunks = [source.slice(i, 100) for i in range(0, 1000, 100)]
    assert not _made_ready_together(chunks)  # with "notes", cells average over 64 bytes
    spec = _spec()  # sends x and s
    sent = spec._sent(chunks)
    assert sent is not None and _made_ready_together(sent)
    assert all(chunk.schema.names == ["x", "s"] for chunk in sent)
    assert spec.pieces(chunks) == [spec.pieces([chunk])[0] for chunk in chunks]
    missing = EncodeSpec(
        cast=CastPlan(("x", "y"), (None, None)), params=None, max_request_bytes=2048,
        endpoint="e", model_version="m@1", keyed=True,
    )
    assert missing._sent(chunks) is None  # the cast plan's own error comes per chunk
