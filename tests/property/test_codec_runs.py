"""Property: runs of numeric columns (written from one 2-D numpy array) send the very bytes
the column-by-column path sends, and every value parses back to the one that was sent."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import codec
from engine.codec import encode_dataframe_split

float64s = st.floats(width=64)
int64s = st.integers(-(2**63), 2**63 - 1)
# Extremes first, so small examples reach them: int64 ends, -0.0, subnormals, float max.
EDGE_FLOATS = [0.0, -0.0, 5e-324, -1.7976931348623157e308, 1e16, 0.1, 3.0, 1e-7]
EDGE_INTS = [-(2**63), 2**63 - 1, 0, -1, 2**53 + 1]


def _column_by_column(batch: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as patch:
        patch.setattr(codec, "_MIN_RUN", 10**9)
        return encode_dataframe_split(batch)


def _batch(layout: list[str], rows: int, data: st.DataObject) -> pa.RecordBatch:
    columns = {}
    for index, kind in enumerate(layout):
        if kind == "f":
            values = data.draw(st.lists(float64s, min_size=rows, max_size=rows))
            columns[f"c{index}"] = pa.array(values, pa.float64())
        elif kind == "i":
            values = data.draw(st.lists(int64s, min_size=rows, max_size=rows))
            columns[f"c{index}"] = pa.array(values, pa.int64())
        elif kind == "n":  # a double column with nulls: never part of a run
            values = data.draw(st.lists(float64s | st.none(), min_size=rows, max_size=rows))
            columns[f"c{index}"] = pa.array(values, pa.float64())
        else:
            values = data.draw(st.lists(st.text(max_size=5), min_size=rows, max_size=rows))
            columns[f"c{index}"] = pa.array(values, pa.string())
    return pa.record_batch(columns)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(st.tuples(st.sampled_from("fins"), st.integers(1, 11)), max_size=4),
    rows=st.integers(0, 12),
    cut=st.integers(0, 3),
    data=st.data(),
)
def test_runs_send_the_column_by_column_bytes(
    segments: list[tuple[str, int]], rows: int, cut: int, data: st.DataObject
) -> None:
    layout = [kind for kind, length in segments for _ in range(length)]
    with pytest.MonkeyPatch.context() as monkeypatch:
        batch = _batch(layout, rows + cut, data).slice(cut)
        assert encode_dataframe_split(batch) == _column_by_column(batch, monkeypatch)


def _bits(value: object) -> object:
    return "nan" if value != value else np.array(value, dtype=np.float64).tobytes()


def test_runs_round_trip_extremes_bit_exact() -> None:
    floats = {f"f{i}": pa.array(EDGE_FLOATS, pa.float64()) for i in range(8)}
    ints = {f"i{i}": pa.array((EDGE_INTS * 2)[:8], pa.int64()) for i in range(8)}
    batch = pa.record_batch({**floats, **ints})
    rows = json.loads(encode_dataframe_split(batch))["dataframe_split"]["data"]
    assert [[_bits(v) for v in row[:8]] for row in rows] == [
        [_bits(v) for v in [value] * 8] for value in EDGE_FLOATS
    ]
    assert [row[8:] for row in rows] == [[v] * 8 for v in (EDGE_INTS * 2)[:8]]
    assert all(type(v) is float for row in rows for v in row[:8])  # 3.0 stays a float
    assert all(type(v) is int for row in rows for v in row[8:])


def test_non_finite_values_leave_the_run_to_bare_tokens() -> None:
    values = [1.5, float("nan"), float("inf"), float("-inf")]
    batch = pa.record_batch({f"f{i}": pa.array(values, pa.float64()) for i in range(8)})
    body = encode_dataframe_split(batch)
    assert b"NaN" in body and b"-Infinity" in body and b"null" not in body
    rows = json.loads(body)["dataframe_split"]["data"]
    assert [_bits(row[0]) for row in rows] == [_bits(v) for v in values]


def test_a_run_is_one_fragment_per_row() -> None:
    batch = pa.record_batch({f"f{i}": pa.array([1.0, 2.5], pa.float64()) for i in range(8)})
    parts, marked = codec._row_parts(list(batch.columns))
    assert len(parts) == 1 and not marked
    assert encode_dataframe_split(batch) == (
        b'{"dataframe_split":{"columns":["f0","f1","f2","f3","f4","f5","f6","f7"],'
        b'"data":[[1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0],[2.5,2.5,2.5,2.5,2.5,2.5,2.5,2.5]]}}'
    )
