"""Encoder processes cut, encode and key chunks exactly as the loop does, in input order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pyarrow as pa

from engine.encoders import EncoderPool, EncodeSpec
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
    try:
        return [pieces async for _, pieces in pool.map(_groups(groups))]
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
    pieces = [piece for group in inline for chunk in group for piece in chunk]
    assert sum(length for _, length, *_ in pieces) == 3000
    assert all(len(body) <= 2048 and key.startswith("x3") for _, _, body, _, key in pieces)
    assert len({key for *_, key in pieces}) == len(pieces)
