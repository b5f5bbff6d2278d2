"""OrderedWriter properties: whatever order results arrive in, the output is the input order."""

from __future__ import annotations

import os
import tempfile

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sink import OrderedWriter, OutputSpec, read_output

# One batch: its row count and whether every row was rejected (an all-null, null-typed
# prediction column), which exercises the deferred typing path as well as the ordering.
batch_shapes = st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12)


def _result(batch_id: int, rows: int, rejected: bool) -> pa.Table:
    ids = [batch_id * 10 + i for i in range(rows)]
    if rejected:
        prediction = pa.nulls(rows, pa.null())
        error = pa.array(["rejected"] * rows, pa.string())
    else:
        prediction = pa.array([i / 4 for i in ids], pa.float64())
        error = pa.nulls(rows, pa.string())
    return pa.table({"id": pa.array(ids, pa.int64()), "prediction": prediction, "error": error})


def _in_order(tables: list[pa.Table], prediction_type: pa.DataType) -> pa.Table:
    schema = pa.schema(
        [("id", pa.int64()), ("prediction", prediction_type), ("error", pa.string())]
    )
    return pa.concat_tables([table.cast(schema) for table in tables])


@settings(max_examples=150, deadline=None)
@given(
    shapes=batch_shapes,
    data=st.data(),
    suffix=st.sampled_from([".arrow", ".parquet"]),
)
def test_any_arrival_order_writes_the_in_order_concatenation(
    shapes: list[tuple[int, bool]], data: st.DataObject, suffix: str
) -> None:
    tables = [_result(i, rows, rejected) for i, (rows, rejected) in enumerate(shapes)]
    order = data.draw(st.permutations(range(len(tables))), label="arrival order")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, f"out{suffix}")
        writer = OrderedWriter(OutputSpec(path))
        released = 0
        for arrived, batch_id in enumerate(order, start=1):
            released += writer.add(batch_id, tables[batch_id])
            assert released == writer.next_batch_id
            assert writer.pending == arrived - released
        assert writer.finish() == path
        assert os.listdir(directory) == [f"out{suffix}"]
        written = read_output(path)
    typed = any(not rejected for _, rejected in shapes)  # an empty typed result decides too
    expected = _in_order(tables, pa.float64() if typed else pa.null())
    assert written.schema == expected.schema
    assert written.to_pylist() == expected.to_pylist()
    assert released == len(tables)
