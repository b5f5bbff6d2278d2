"""Property: request batches rejoin to the input, in order, under any chunking and caps."""

from __future__ import annotations

import json
import math

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.batching import plan_batches
from engine.codec import encode_dataframe_split

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def chunked_input(draw: st.DrawFn) -> tuple[pa.Table, list[pa.RecordBatch]]:
    rows = draw(st.integers(min_value=0, max_value=300))
    ints = draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.none(), min_size=rows, max_size=rows))
    floats = draw(st.lists(finite | st.none() | st.just(math.nan), min_size=rows, max_size=rows))
    texts = draw(st.lists(st.text(max_size=40) | st.none(), min_size=rows, max_size=rows))
    table = pa.table({"i": pa.array(ints, pa.int64()), "f": pa.array(floats, pa.float64()),
                      "s": pa.array(texts, pa.string())})
    cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=6)))
    bounds = [0, *cuts, rows]
    chunks = [table.slice(a, b - a).combine_chunks().to_batches()[0]
              for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return table, chunks


@settings(max_examples=150, deadline=None)
@given(chunked_input(), st.integers(1, 64), st.integers(1024, 8192))
def test_batches_rejoin_to_the_input_in_order(data, rows_per_batch: int, cap: int) -> None:
    table, chunks = data
    batches = list(plan_batches(chunks, rows_per_batch=rows_per_batch, max_request_bytes=cap,
                                encode=encode_dataframe_split))
    assert [b.batch_id for b in batches] == list(range(len(batches)))
    offsets, total = [], 0
    for batch in batches:
        offsets.append(total)
        total += batch.num_rows
    assert [b.row_offset for b in batches] == offsets
    assert total == table.num_rows
    assert all(0 < b.num_rows <= rows_per_batch for b in batches)
    assert all(len(b.body) <= cap for b in batches if not b.oversize)
    assert all(b.num_rows == 1 and b.body == b"" for b in batches if b.oversize)
    rejoined = pa.Table.from_batches([b.rows for b in batches], schema=table.schema)
    # Arrow's equals() treats NaN as unequal to itself: compare the bits of the float column.
    assert rejoined.select(["i", "s"]).equals(table.select(["i", "s"]))
    assert same_floats(rejoined.column("f").to_pylist(), table.column("f").to_pylist())


def same_floats(left: list, right: list) -> bool:
    return len(left) == len(right) and all(
        (a is None and b is None) or (a != a and b != b) or a == b
        for a, b in zip(left, right, strict=True)
    )


@settings(max_examples=150, deadline=None)
@given(chunked_input())
def test_bodies_decode_to_the_same_values_python_json_reads(data) -> None:
    table, chunks = data
    for chunk in chunks:
        doc = json.loads(encode_dataframe_split(chunk))["dataframe_split"]
        assert doc["columns"] == ["i", "f", "s"]
        got = list(zip(*doc["data"], strict=True)) if doc["data"] else [(), (), ()]
        assert list(got[0]) == chunk.column(0).to_pylist()
        assert same_floats(list(got[1]), chunk.column(1).to_pylist())
        assert list(got[2]) == chunk.column(2).to_pylist()
