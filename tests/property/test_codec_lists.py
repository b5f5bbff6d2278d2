"""Property: every number inside a list column parses back to the very value that was sent."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import encode_dataframe_split

float32s = st.floats(width=32) | st.none()
float64s = st.floats(width=64) | st.none()
int64s = st.integers(-(2**63), 2**63 - 1) | st.none()


def _bits(values: list, dtype: type) -> list:
    """Each value's bit pattern (so -0.0 differs from 0.0), "nan" for any NaN (JSON's bare
    NaN carries no sign or payload), None for null."""
    return [
        None if v is None else "nan" if v != v else np.array(v, dtype=dtype).tobytes()
        for v in values
    ]


def _sent(batch: pa.RecordBatch) -> list:
    """What Python's json (MLflow's parser) reads back for the first column."""
    return [row[0] for row in json.loads(encode_dataframe_split(batch))["dataframe_split"]["data"]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(float32s, max_size=6) | st.none(), max_size=20),
    st.sampled_from(["list", "large_list"]),
    st.integers(0, 3),
)
def test_float32_lists_round_trip_bit_exact(rows: list, kind: str, cut: int) -> None:
    list_type = pa.list_(pa.float32()) if kind == "list" else pa.large_list(pa.float32())
    array = pa.array(rows, list_type).slice(min(cut, len(rows)))
    got = _sent(pa.record_batch({"c": array}))
    want = array.to_pylist()
    assert [r is None for r in got] == [r is None for r in want]
    for sent, original in zip(got, want, strict=True):
        if original is not None:
            assert _bits(sent, np.float32) == _bits(original, np.float32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(float64s, min_size=3, max_size=3) | st.none(), max_size=20))
def test_fixed_size_float64_lists_round_trip_bit_exact(rows: list) -> None:
    array = pa.array(rows, pa.list_(pa.float64(), 3))
    got = _sent(pa.record_batch({"c": array}))
    for sent, original in zip(got, array.to_pylist(), strict=True):
        assert (sent is None) == (original is None)
        if original is not None:
            assert _bits(sent, np.float64) == _bits(original, np.float64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(int64s, max_size=5) | st.none(), max_size=20))
def test_int64_lists_round_trip_exactly(rows: list) -> None:
    array = pa.array(rows, pa.list_(pa.int64()))
    assert _sent(pa.record_batch({"c": array})) == rows


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(), max_size=4) | st.none(), max_size=10))
def test_string_lists_round_trip_exactly(rows: list) -> None:
    array = pa.array(rows, pa.list_(pa.string()))
    assert _sent(pa.record_batch({"c": array})) == rows
