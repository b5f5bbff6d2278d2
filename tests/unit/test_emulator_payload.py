"""The emulator's request parsing and signature enforcement, MLflow scoring-server style."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest

from engine.emulator.apierror import ApiError
from engine.emulator.payload import parse_body, parse_request
from engine.emulator.signature import ColumnSpec, Signature

SIG = Signature(
    (
        ColumnSpec("a", "double"),
        ColumnSpec("b", "long"),
        ColumnSpec("s", "string", required=False),
    )
)


def _split(columns: list[str], data: list[list[object]]) -> bytes:
    return orjson.dumps({"dataframe_split": {"columns": columns, "data": data}})


def _error(body: bytes, signature: Signature = SIG) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_request(body, signature)
    return info.value


def test_dataframe_split_becomes_typed_columns_in_signature_order() -> None:
    parsed = parse_request(_split(["b", "a", "s"], [[1, 2.5, "x"], [3, 4, None]]), SIG)
    assert parsed.table.schema.types == [pa.float64(), pa.int64(), pa.string()]
    assert parsed.table.to_pydict() == {"a": [2.5, 4.0], "b": [1, 3], "s": ["x", None]}


def test_records_instances_and_inputs_give_the_same_table() -> None:
    rows = [{"a": 1.5, "b": 2}, {"a": 3.0, "b": 4, "s": "z"}]
    records = parse_request(orjson.dumps({"dataframe_records": rows}), SIG).table
    instances = parse_request(orjson.dumps({"instances": rows}), SIG).table
    inputs = parse_request(
        orjson.dumps({"inputs": {"a": [1.5, 3.0], "b": [2, 4], "s": [None, "z"]}}), SIG
    ).table
    assert records.equals(instances) and records.equals(inputs)
    assert records.column("s").to_pylist() == [None, "z"]


def test_extra_columns_are_ignored_like_mlflow() -> None:
    parsed = parse_request(_split(["a", "b", "zzz"], [[1.0, 2, "extra"]]), SIG)
    assert parsed.table.column_names == ["a", "b", "s"]


def test_missing_required_column_is_invalid_parameter_value_naming_it() -> None:
    error = _error(_split(["a"], [[1.0]]))
    assert (error.status, error.error_code) == (400, "INVALID_PARAMETER_VALUE")
    assert "Model is missing inputs ['b']" in error.message


def test_fractional_float_for_long_column_fails_conversion() -> None:
    error = _error(_split(["a", "b"], [[1.0, 2.5]]))
    assert (error.status, error.error_code) == (400, "BAD_REQUEST")
    assert error.message.startswith("Invalid input. Data is not compatible with model signature.")
    assert "Failed to convert column b to type 'int64'" in error.message


def test_integral_float_for_long_column_and_int_for_double_are_accepted() -> None:
    parsed = parse_request(_split(["a", "b"], [[1, 2.0]]), SIG)
    assert parsed.table.to_pydict() == {"a": [1.0], "b": [2], "s": [None]}


def test_string_for_double_column_fails_naming_float64() -> None:
    error = _error(_split(["a", "b"], [["x", 1]]))
    assert "Failed to convert column a to type 'float64'" in error.message


def test_null_in_required_column_fails_but_optional_null_is_fine() -> None:
    assert "Failed to convert column a" in _error(_split(["a", "b"], [[None, 1]])).message
    assert parse_request(_split(["a", "b", "s"], [[1.0, 1, None]]), SIG).table.num_rows == 1


def test_bare_nan_and_infinity_are_parsed_like_python_json() -> None:
    body = (
        b'{"dataframe_split": {"columns": ["a", "b"], '
        b'"data": [[NaN, 1], [Infinity, 2], [-Infinity, 3]]}}'
    )
    values = parse_request(body, SIG).table.column("a").to_pylist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


def test_invalid_json_is_bad_request_failed_to_parse() -> None:
    error = _error(b'{"dataframe_split": ')
    assert (error.status, error.error_code) == (400, "BAD_REQUEST")
    assert error.message.startswith("Failed to parse input")
    assert parse_body(b"[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    "document",
    [
        {"rows": []},
        {},
        {"dataframe_split": {"columns": [], "data": []}, "instances": []},
        [1, 2],
    ],
)
def test_wrong_missing_or_several_format_keys_name_the_accepted_ones(document: object) -> None:
    error = _error(orjson.dumps(document))
    assert error.error_code == "BAD_REQUEST"
    for key in ("dataframe_split", "dataframe_records", "instances", "inputs"):
        assert key in error.message


def test_ragged_split_rows_are_refused() -> None:
    error = _error(_split(["a", "b"], [[1.0, 2], [1.0]]))
    assert error.error_code == "BAD_REQUEST" and "columns passed" in error.message


def test_int32_overflow_and_bool_for_long_fail() -> None:
    narrow = Signature((ColumnSpec("i", "integer"),))
    assert "to type 'int32'" in _error(_split(["i"], [[2**40]]), narrow).message
    assert "to type 'int64'" in _error(_split(["a", "b"], [[1.0, True]])).message


def test_params_merge_over_defaults_and_unknown_params_fail() -> None:
    from engine.emulator.signature import ParamSpec

    sig = Signature(SIG.columns, params=(ParamSpec("scale", "double", 1.0),))
    body = {"dataframe_records": [{"a": 1, "b": 1}], "params": {"scale": 2.0}}
    assert parse_request(orjson.dumps(body), sig).params == {"scale": 2.0}
    assert parse_request(_split(["a", "b"], [[1, 1]]), sig).params == {"scale": 1.0}
    body["params"] = {"nope": 1}
    assert "nope" in _error(orjson.dumps(body), sig).message


def test_row_keys_are_the_same_for_split_and_records_and_follow_row_key_column() -> None:
    split = parse_request(_split(["b", "a"], [[1, 2.5]]), SIG).row_keys
    records = parse_request(orjson.dumps({"dataframe_records": [{"a": 2.5, "b": 1}]}), SIG).row_keys
    assert split == records == ["[2.5,1,null]"]
    keyed = parse_request(_split(["a", "b"], [[2.5, 7], [3.5, 8]]), SIG, row_key="b").row_keys
    assert keyed == ["7", "8"]


def test_arrays_datetimes_and_binary_convert() -> None:
    sig = Signature(
        (ColumnSpec("v", "array<double>"), ColumnSpec("t", "datetime"), ColumnSpec("bin", "binary"))
    )
    body = _split(["v", "t", "bin"], [[[1, 2.5], "2024-05-01T12:00:00", "aGk="]])
    table = parse_request(body, sig).table
    assert table.column("v").to_pylist() == [[1.0, 2.5]]
    assert table.column("bin").to_pylist() == [b"hi"]
    assert str(table.column("t")[0]).startswith("2024-05-01 12:00:00")
