"""The codec's exactness rules, read back the way MLflow's server reads them (Python json)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math

import numpy as np
import pyarrow as pa
import pytest

from engine.codec import (
    ResponseFormatError,
    SplitRows,
    decode_predictions,
    encode_dataframe_split,
    slices_encode_alike,
)


def roundtrip(batch: pa.RecordBatch) -> dict:
    return json.loads(encode_dataframe_split(batch))["dataframe_split"]


def column(values: list, kind: pa.DataType) -> list:
    return [row[0] for row in roundtrip(pa.record_batch({"c": pa.array(values, kind)}))["data"]]


def test_int64_stays_integral_at_any_magnitude() -> None:
    values = [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), None]
    got = column(values, pa.int64())
    assert got == values
    assert all(isinstance(v, int) for v in got if v is not None)


def test_floats_round_trip_bit_exact_including_non_finite() -> None:
    values = [0.1, -0.0, 1e-308, 1.7976931348623157e308, math.nan, math.inf, -math.inf, None]
    got = column(values, pa.float64())
    assert got[:4] == values[:4]
    assert math.isnan(got[4])
    assert math.copysign(1.0, got[1]) == -1.0
    assert got[5:] == [math.inf, -math.inf, None]


def test_non_finite_floats_are_bare_tokens_not_strings() -> None:
    body = encode_dataframe_split(pa.record_batch({"c": pa.array([math.nan, math.inf])}))
    assert b"[NaN]" in body and b"[Infinity]" in body and b'"' + b"NaN" not in body


def test_float32_uses_its_own_shortest_form() -> None:
    body = encode_dataframe_split(pa.record_batch({"c": pa.array([0.1], pa.float32())}))
    assert b"[0.1]" in body


def test_strings_escape_and_keep_unicode() -> None:
    values = ['quote " backslash \\', "line\nbreak\t", "é 漢字 🙂", "\x00ctrl", None]
    assert column(values, pa.string()) == values


def test_marker_text_in_user_strings_is_left_alone() -> None:
    values = ["NaN", "Infinity", "\x00NaN"]
    batch = pa.record_batch({"s": pa.array(values), "f": pa.array([math.nan, 1.0, 2.0])})
    doc = roundtrip(batch)
    assert [row[0] for row in doc["data"]] == values


def test_timestamps_dates_decimals_binary_bools() -> None:
    when = dt.datetime(2026, 11, 22, 10, 30, 1, 123456)
    batch = pa.record_batch({
        "naive": pa.array([when], pa.timestamp("us")),
        "utc": pa.array([when.replace(tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC")),
        "day": pa.array([dt.date(2026, 1, 2)], pa.date32()),
        "money": pa.array([decimal.Decimal("12345678901234567.89")], pa.decimal128(20, 2)),
        "blob": pa.array([b"\x00\xff"], pa.binary()),
        "flag": pa.array([True], pa.bool_()),
    })
    row = roundtrip(batch)["data"][0]
    assert row[0] == "2026-11-22T10:30:01.123456"
    assert row[1] == "2026-11-22T10:30:01.123456+00:00"
    assert row[2] == "2026-01-02"
    assert row[3] == "12345678901234567.89"
    assert row[4] == "AP8="
    assert row[5] is True


def test_nested_lists_and_structs() -> None:
    kind = pa.list_(pa.struct([("a", pa.int64()), ("b", pa.list_(pa.float64()))]))
    values = [[{"a": 1, "b": [0.5, None]}], None, []]
    assert column(values, kind) == values


def test_params_and_column_names_are_sent() -> None:
    body = encode_dataframe_split(pa.record_batch({"x": [1]}), params={"temperature": 0.5})
    doc = json.loads(body)
    assert doc["dataframe_split"]["columns"] == ["x"] and doc["params"] == {"temperature": 0.5}


def test_decoding_accepts_bare_nan_and_the_three_shapes() -> None:
    assert decode_predictions(b'{"predictions": [1.5, NaN]}', expected_rows=2).to_pylist()[0] == 1.5
    assert decode_predictions(b'{"outputs": [1, 2]}', expected_rows=2).to_pylist() == [1, 2]
    assert decode_predictions(b"[3]", expected_rows=1).to_pylist() == [3]


def test_decoding_builds_structs_and_lists() -> None:
    got = decode_predictions(b'{"predictions": [{"label": "a", "p": [0.1, 0.9]}]}', expected_rows=1)
    assert pa.types.is_struct(got.type) and got.to_pylist() == [{"label": "a", "p": [0.1, 0.9]}]


def test_declared_type_is_honoured_and_ints_widen_to_double() -> None:
    got = decode_predictions(b'{"predictions": [1, 2, null]}', expected_rows=3,
                             prediction_type=pa.float64())
    assert got.type == pa.float64() and got.to_pylist() == [1.0, 2.0, None]


@pytest.mark.parametrize(
    ("body", "rows", "kind", "message"),
    [
        (b"<html>502</html>", 1, None, "not JSON"),
        (b'{"result": [1]}', 1, None, r"no 'predictions' list \(found: result\)"),
        (b'{"predictions": null}', 1, None, r"no 'predictions' list \('predictions' is null\)"),
        (b'{"outputs": {"a": 1}}', 1, None, r"'outputs' is an object"),
        (b'{"predictions": [1, 2]}', 3, None, "2 predictions for 3 rows"),
        (b'{"predictions": [1.5]}', 1, pa.int64(), "int64"),
    ],
)
def test_unusable_answers_say_what_is_wrong(body: bytes, rows: int, kind, message: str) -> None:
    with pytest.raises(ResponseFormatError, match=message):
        decode_predictions(body, expected_rows=rows, prediction_type=kind)


@pytest.mark.parametrize(
    ("values", "want_type"),
    [
        ([1.5, -2.0, 1e300], pa.float64()),
        ([1, 2, -(2**63)], pa.int64()),
        ([1, 2.5], pa.float64()),  # mixed numbers widen, as Arrow's inference does
        ([float("nan"), 1.0], pa.float64()),
        ([1, None], pa.int64()),  # nulls: Arrow's own conversion
        ([2**62, 1], pa.int64()),
        ([True, False], pa.bool_()),
        (["a", "b"], pa.string()),
    ],
)
def test_numeric_answers_decode_through_numpy_with_arrows_results(values, want_type) -> None:
    body = json.dumps({"predictions": values}).encode()
    array = decode_predictions(body, expected_rows=len(values))
    # what Arrow's own inference makes of the same parsed answer (the path before numpy)
    expected = pa.array(json.loads(body)["predictions"], from_pandas=False)
    assert array.type == expected.type == want_type
    assert [repr(v) for v in array.to_pylist()] == [repr(v) for v in expected.to_pylist()]


def test_integers_beyond_64_bits_come_back_as_doubles() -> None:
    # orjson parses them as floats; Arrow cannot hold them as integers anyway.
    array = decode_predictions(b"[1180591620717411303424, 1]", expected_rows=2)
    assert array.type == pa.float64() and array.to_pylist() == [2.0**70, 1.0]


def test_encoding_and_decoding_numbers_do_not_import_pandas() -> None:
    """pa.array and Array.to_numpy import pandas on first use (0.2 s, tens of MB): the codec's
    paths for plain numbers and strings never reach them."""
    import subprocess
    import sys

    table = pa.table({"f": [1.5, 2.0], "i": [1, 2], "s": ["a", "b"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    code = (
        "import sys, pyarrow as pa; "
        "from engine.codec import decode_predictions, encode_dataframe_split; "
        "batch = pa.ipc.open_stream(bytes.fromhex(sys.argv[1])).read_next_batch(); "
        "assert b'[1.5,1,\"a\"]' in encode_dataframe_split(batch); "
        "decode_predictions(b'{\"predictions\": [1.5, 2, 3]}', expected_rows=3); "
        "decode_predictions(b'[4, 5]', expected_rows=2); "
        "print('pandas' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sink.getvalue().to_pybytes().hex()],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_float32_inside_lists_uses_its_own_shortest_form() -> None:
    for kind in (pa.list_(pa.float32()), pa.large_list(pa.float32()), pa.list_(pa.float32(), 2)):
        body = encode_dataframe_split(pa.record_batch({"c": pa.array([[0.1, 3.4028235e38]], kind)}))
        assert b"[[[0.1,3.4028235e+38]]]" in body, kind
        assert b"0.10000000149011612" not in body


def test_nulls_and_non_finite_inside_lists_are_exact() -> None:
    values = [[0.1, None, math.nan], [math.inf, -math.inf, -0.0], None, []]
    for leaf in (pa.float32(), pa.float64()):
        got = column(values, pa.list_(leaf))
        assert got[0][0] == 0.1 and got[0][1] is None and math.isnan(got[0][2])
        assert got[1] == [math.inf, -math.inf, -0.0] and math.copysign(1.0, got[1][2]) == -1.0
        assert got[2:] == [None, []]


def test_int64_extremes_inside_lists_stay_integral() -> None:
    values = [[2**63 - 1, -(2**63), 2**53 + 1], None, [0]]
    for kind in (pa.list_(pa.int64()), pa.large_list(pa.int64())):
        assert column(values, kind) == values
    assert column([[None, 1]], pa.list_(pa.int64())) == [[None, 1]]


def test_sliced_list_columns_send_only_their_rows() -> None:
    variable = pa.array([[1.5], [2.5, 3.5], None, [4.5]], pa.list_(pa.float64())).slice(1, 3)
    assert column(variable, variable.type) == [[2.5, 3.5], None, [4.5]]
    fixed = pa.array([[1, 2], None, [3, 4]], pa.list_(pa.int32(), 2)).slice(1)
    assert column(fixed, fixed.type) == [None, [3, 4]]


def test_float16_lists_parse_back_to_the_same_values() -> None:
    halves = np.array([0.1, 65504, -0.0, 6e-08], dtype=np.float16)
    kind = pa.list_(pa.float16())
    batch = pa.record_batch({"c": pa.array([halves.tolist()], kind)})
    got = json.loads(encode_dataframe_split(batch))["dataframe_split"]["data"][0][0]
    assert np.array(got, dtype=np.float16).tobytes() == halves.tobytes()


def test_unicode_and_escapes_inside_lists_of_strings() -> None:
    values = [["é 漢字 🙂", 'q " \\ \n', "\x00"], None]
    assert column(values, pa.list_(pa.string())) == values


def _mixed_batch(rows: int) -> pa.RecordBatch:
    """Every kind of column whose bodies could differ by where a slice starts: a run of
    doubles broken by a null in one stretch, NaN and Infinity in another, escapes, lists."""
    rng = np.random.default_rng(7)
    columns: dict[str, pa.Array] = {}
    for k in range(9):
        values = rng.normal(size=rows).tolist()
        if k == 4:
            values[150] = None  # the run is whole outside rows 150-151 only
        columns[f"d{k}"] = pa.array(values, pa.float64())
    ints = rng.integers(-(2**62), 2**62, size=rows).tolist()
    ints[5] = 2**63 - 1
    columns["i"] = pa.array(ints, pa.int64())
    odd = rng.normal(size=rows).tolist()
    odd[30], odd[250] = math.nan, -math.inf
    columns["f"] = pa.array(odd, pa.float64())
    text = [f'row {i} "q" \\ é 🙂\n' if i % 7 else None for i in range(rows)]
    columns["s"] = pa.array(text, pa.string())
    lists = [[0.1, 2.5, float(i)] if i % 11 else None for i in range(rows)]
    lists[250] = [None, math.inf]  # the whole array's numbers are not null-free and finite
    columns["l"] = pa.array(lists, pa.list_(pa.float64()))
    columns["b"] = pa.array([i % 3 == 0 for i in range(rows)])
    return pa.record_batch(columns)


@pytest.mark.parametrize(("start", "stop"), [(0, 100), (100, 200), (200, 300), (37, 41), (0, 300)])
def test_rows_made_ready_once_give_each_slice_its_own_body(start: int, stop: int) -> None:
    batch = _mixed_batch(300)
    assert slices_encode_alike(batch.schema)
    params = {"temperature": 0.5}
    together = SplitRows(batch, params=params)
    alone = encode_dataframe_split(batch.slice(start, stop - start), params=params)
    assert together.body(start, stop) == alone
    assert b"NaN" in together.body(0, 300) and b"\x00" not in together.body(0, 300)


@pytest.mark.parametrize(
    "kind",
    [
        pa.list_(pa.float32()),
        pa.list_(pa.float16()),
        pa.large_list(pa.float32()),
        pa.list_(pa.float32(), 2),
        pa.dictionary(pa.int8(), pa.list_(pa.float32())),
    ],
    ids=str,
)
def test_lists_of_short_floats_are_not_made_ready_for_slices(kind: pa.DataType) -> None:
    """Their notation depends on the whole array (a null item anywhere: Python floats, not
    numpy's float32 form), so SplitRows would give a slice other bytes than its own body."""
    assert not slices_encode_alike(pa.schema([("x", pa.float64()), ("l", kind)]))


def test_why_lists_of_short_floats_are_not_made_ready_for_slices() -> None:
    """A null item in the second row changes how the first row's float32 numbers are written
    when the two are made ready together."""
    values = pa.array([[1e-6, 3e13], [1.0, None]], pa.list_(pa.float32()))
    batch = pa.record_batch({"l": values})
    assert SplitRows(batch).body(0, 1) != encode_dataframe_split(batch.slice(0, 1))
