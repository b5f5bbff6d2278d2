"""Batcher: requests inside one input batch are views of it; only straddling rows are copied."""

from __future__ import annotations

import pyarrow as pa

from engine.batching import plan_batches
from engine.codec import encode_dataframe_split


def _address_range(batch: pa.RecordBatch) -> tuple[int, int]:
    data = batch.column(0).buffers()[1]
    return data.address, data.address + data.size


def test_requests_inside_an_input_batch_share_its_memory() -> None:
    first = pa.record_batch({"x": pa.array(range(2500), pa.int64())})
    second = pa.record_batch({"x": pa.array(range(2500, 5000), pa.int64())})
    batches = list(
        plan_batches(
            [first, second],
            rows_per_batch=1000,
            max_request_bytes=1 << 20,
            encode=encode_dataframe_split,
        )
    )
    assert [b.num_rows for b in batches] == [1000] * 5
    lo, hi = _address_range(first)
    for inside in batches[:2]:
        start, _ = _address_range(inside.rows)
        assert lo <= start < hi  # a view, not a copy
    lo2, hi2 = _address_range(second)
    for inside in batches[3:]:
        start, _ = _address_range(inside.rows)
        assert lo2 <= start < hi2
    straddling = batches[2].rows.column(0).to_pylist()
    assert straddling == list(range(2000, 3000))
