"""OpenAPI -> ModelSchema, and planning/applying casts: plain Arrow values, no endpoint."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from engine.errors import SchemaError, UsageError
from engine.schema import (
    CastPlan,
    ColumnSpec,
    ModelSchema,
    arrow_type,
    format_schema,
    parse_openapi,
    plan_cast,
)

# The example the Databricks docs give for GET /api/2.0/serving-endpoints/{name}/openapi,
# verbatim (seed 002). Note it disagrees with itself: the dataframe_split description requires
# only int_col, dataframe_records requires all three and lists an extra "becx_col".
SEED_OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "example-endpoint", "version": "2"},
    "servers": [{"url": "https://example.databricks.com/serving-endpoints/example-endpoint"}],
    "paths": {
        "/served-models/vanilla_simple_model-2/invocations": {
            "post": {
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "properties": {
                                            "dataframe_split": {
                                                "type": "object",
                                                "properties": {
                                                    "columns": {
                                                        "description": "required fields: int_col",
                                                        "type": "array",
                                                        "items": {
                                                            "type": "string",
                                                            "enum": [
                                                                "int_col",
                                                                "float_col",
                                                                "string_col",
                                                            ],
                                                        },
                                                    },
                                                    "data": {
                                                        "type": "array",
                                                        "items": {
                                                            "type": "array",
                                                            "prefixItems": [
                                                                {
                                                                    "type": "integer",
                                                                    "format": "int64",
                                                                },
                                                                {
                                                                    "type": "number",
                                                                    "format": "double",
                                                                },
                                                                {"type": "string"},
                                                            ],
                                                        },
                                                    },
                                                },
                                            },
                                            "params": {
                                                "type": "object",
                                                "properties": {
                                                    "sentiment": {
                                                        "type": "number",
                                                        "format": "double",
                                                        "default": "0.5",
                                                    }
                                                },
                                            },
                                        },
                                        "examples": [
                                            {
                                                "columns": ["int_col", "float_col", "string_col"],
                                                "data": [[3, 10.4, "abc"], [2, 20.4, "xyz"]],
                                            }
                                        ],
                                    },
                                    {
                                        "type": "object",
                                        "properties": {
                                            "dataframe_records": {
                                                "type": "array",
                                                "items": {
                                                    "required": [
                                                        "int_col",
                                                        "float_col",
                                                        "string_col",
                                                    ],
                                                    "type": "object",
                                                    "properties": {
                                                        "int_col": {
                                                            "type": "integer",
                                                            "format": "int64",
                                                        },
                                                        "float_col": {
                                                            "type": "number",
                                                            "format": "double",
                                                        },
                                                        "string_col": {"type": "string"},
                                                        "becx_col": {
                                                            "type": "object",
                                                            "format": "unknown",
                                                        },
                                                    },
                                                },
                                            },
                                            "params": {
                                                "type": "object",
                                                "properties": {
                                                    "sentiment": {
                                                        "type": "number",
                                                        "format": "double",
                                                        "default": "0.5",
                                                    }
                                                },
                                            },
                                        },
                                    },
                                ]
                            }
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "Successful operation",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "predictions": {
                                            "type": "array",
                                            "items": {"type": "number", "format": "double"},
                                        }
                                    },
                                }
                            }
                        },
                    }
                },
            }
        }
    },
}

PATH = "/served-models/vanilla_simple_model-2/invocations"


def seed() -> dict[str, Any]:
    return copy.deepcopy(SEED_OPENAPI)


def alternatives(doc: dict[str, Any]) -> list[dict[str, Any]]:
    body = doc["paths"][PATH]["post"]["requestBody"]
    result: list[dict[str, Any]] = body["content"]["application/json"]["schema"]["oneOf"]
    return result


def split_columns(doc: dict[str, Any]) -> dict[str, Any]:
    split = alternatives(doc)[0]["properties"]["dataframe_split"]
    columns: dict[str, Any] = split["properties"]["columns"]
    return columns


def doc_with_request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    request = {"requestBody": {"content": {"application/json": {"schema": schema}}}}
    return {"paths": {"/served-models/m-1/invocations": {"post": request}}}


def split_schema(columns: list[str], types: list[dict[str, Any]]) -> dict[str, Any]:
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string", "enum": columns}},
            "data": {"type": "array", "items": {"type": "array", "prefixItems": types}},
        },
    }
    return {"type": "object", "properties": {"dataframe_split": split}}


# --- parse_openapi: the seed document -----------------------------------------------------------


def test_seed_document_gives_split_columns_in_order_with_types() -> None:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    assert model.names == ("int_col", "float_col", "string_col")
    assert [c.type for c in model.columns] == [pa.int64(), pa.float64(), pa.string()]


def test_seed_document_required_columns_come_from_the_split_description() -> None:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    assert model.required == ("int_col",)
    assert model.columns[1] == ColumnSpec("float_col", pa.float64(), False)


def test_seed_document_prediction_type_params_and_served_model() -> None:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    assert model.prediction_type == pa.float64()
    assert dict(model.params) == {"sentiment": "0.5"}  # the default as given: a string
    assert model.served_model == "vanilla_simple_model-2"


def test_model_schema_params_are_read_only() -> None:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    with pytest.raises(TypeError):
        model.params["sentiment"] = 1  # type: ignore[index]


def test_format_schema_rows_for_the_seed_document() -> None:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    assert format_schema(model) == [
        ("int_col", "int64", "required"),
        ("float_col", "double", "optional"),
        ("string_col", "string", "optional"),
    ]


def test_format_schema_shows_unknown_types() -> None:
    model = ModelSchema(columns=(ColumnSpec("blob", None, False),))
    assert format_schema(model) == [("blob", "unknown", "optional")]


# --- parse_openapi: variations ------------------------------------------------------------------


def test_records_only_document_uses_items_properties_and_required() -> None:
    doc = seed()
    del alternatives(doc)[0]
    model = parse_openapi(doc)
    assert model is not None
    assert model.columns == (
        ColumnSpec("int_col", pa.int64(), True),
        ColumnSpec("float_col", pa.float64(), True),
        ColumnSpec("string_col", pa.string(), True),
        ColumnSpec("becx_col", None, False),
    )
    assert dict(model.params) == {"sentiment": "0.5"}


def test_records_required_column_without_a_property_is_still_listed() -> None:
    records = {"type": "array", "items": {"required": ["a", "z"], "properties": {"a": {}}}}
    doc = doc_with_request_schema({"type": "object", "properties": {"dataframe_records": records}})
    model = parse_openapi(doc)
    assert model is not None
    assert model.columns == (ColumnSpec("a", None, True), ColumnSpec("z", None, True))


def test_split_without_description_takes_required_from_records() -> None:
    doc = seed()
    del split_columns(doc)["description"]
    model = parse_openapi(doc)
    assert model is not None
    assert model.required == ("int_col", "float_col", "string_col")


def test_split_without_description_or_records_treats_every_column_as_required() -> None:
    doc = seed()
    del split_columns(doc)["description"]
    del alternatives(doc)[1]
    model = parse_openapi(doc)
    assert model is not None
    assert model.required == ("int_col", "float_col", "string_col")


@pytest.mark.parametrize(
    ("description", "required"),
    [
        ("required fields: int_col, string_col", ("int_col", "string_col")),
        ("Required fields:string_col.", ("string_col",)),
        ("required fields: ", ()),
        ("required fields: int_col, not_a_column", ("int_col",)),
    ],
)
def test_required_fields_description_forms(description: str, required: tuple[str, ...]) -> None:
    doc = seed()
    split_columns(doc)["description"] = description
    model = parse_openapi(doc)
    assert model is not None
    assert model.required == required


def test_prefix_items_shorter_than_columns_leave_the_rest_unknown() -> None:
    doc = doc_with_request_schema(split_schema(["a", "b"], [{"type": "integer"}]))
    model = parse_openapi(doc)
    assert model is not None
    assert [c.type for c in model.columns] == [pa.int64(), None]


def test_any_of_and_a_bare_request_schema_are_read_too() -> None:
    split = split_schema(["a"], [{"type": "boolean"}])
    for schema in ({"anyOf": [split]}, split):
        model = parse_openapi(doc_with_request_schema(schema))
        assert model is not None
        assert model.columns == (ColumnSpec("a", pa.bool_(), True),)


def test_missing_responses_leave_the_prediction_type_unknown() -> None:
    doc = seed()
    del doc["paths"][PATH]["post"]["responses"]
    model = parse_openapi(doc)
    assert model is not None
    assert model.prediction_type is None


@pytest.mark.parametrize(
    ("predictions", "expected"),
    [
        ({"type": "array", "items": {"type": "integer", "format": "int32"}}, pa.int32()),
        ({"type": "array", "items": {"type": "string"}}, pa.string()),
        ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, None),
        ({"type": "array", "items": {"type": "object", "properties": {"p": {}}}}, None),
        ({"type": "array", "items": {"type": "object", "format": "unknown"}}, None),
        ({"type": "array"}, None),
    ],
)
def test_prediction_type_from_predictions_items(
    predictions: dict[str, Any], expected: pa.DataType | None
) -> None:
    doc = seed()
    schema = doc["paths"][PATH]["post"]["responses"]["200"]["content"]["application/json"]
    schema["schema"]["properties"]["predictions"] = predictions
    model = parse_openapi(doc)
    assert model is not None
    if predictions.get("items", {}).get("items"):
        expected = pa.list_(pa.float64())
    assert model.prediction_type == expected


def test_a_path_that_is_not_a_served_model_has_no_served_model() -> None:
    doc = seed()
    doc["paths"] = {"/invocations": doc["paths"][PATH]}
    model = parse_openapi(doc)
    assert model is not None
    assert model.served_model is None


def test_the_first_usable_path_wins() -> None:
    doc = seed()
    unusable: dict[str, Any] = {"post": {"requestBody": {}}}
    doc["paths"] = {"/served-models/broken/invocations": unusable, **doc["paths"]}
    model = parse_openapi(doc)
    assert model is not None
    assert model.served_model == "vanilla_simple_model-2"


def test_a_param_without_default_maps_to_none() -> None:
    doc = seed()
    alternatives(doc)[0]["properties"]["params"]["properties"]["top_k"] = {"type": "integer"}
    model = parse_openapi(doc)
    assert model is not None
    assert dict(model.params) == {"sentiment": "0.5", "top_k": None}


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"openapi": "3.1.0"},
        {"paths": None},
        {"paths": []},
        {"paths": {"/served-models/m/invocations": "nonsense"}},
        {"paths": {"/served-models/m/invocations": {"post": {"requestBody": 5}}}},
        doc_with_request_schema({"oneOf": "not a list"}),
        doc_with_request_schema({"oneOf": [None, 3, "x"]}),
        doc_with_request_schema(split_schema([], [])),
        doc_with_request_schema(split_schema([1, 2], [{"type": "integer"}] * 2)),  # type: ignore[list-item]
        doc_with_request_schema(
            {"properties": {"dataframe_split": {"properties": {"columns": 7}}}}
        ),
        doc_with_request_schema({"properties": {"dataframe_records": {"items": []}}}),
    ],
)
def test_documents_without_a_usable_schema_give_none(doc: dict[str, Any]) -> None:
    assert parse_openapi(doc) is None


def test_a_non_mapping_document_gives_none() -> None:
    assert parse_openapi([]) is None  # type: ignore[arg-type]
    assert parse_openapi("openapi") is None  # type: ignore[arg-type]


def test_tensor_and_inputs_only_schemas_give_none() -> None:
    inputs = {
        "type": "object",
        "properties": {"inputs": {"type": "array", "items": {"type": "number"}}},
    }
    instances = {"type": "object", "properties": {"instances": {"type": "array"}}}
    assert parse_openapi(doc_with_request_schema({"oneOf": [inputs, instances]})) is None


# --- OpenAPI type -> Arrow type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "integer", "format": "int32"}, pa.int32()),
        ({"type": "integer", "format": "int64"}, pa.int64()),
        ({"type": "integer"}, pa.int64()),
        ({"type": "integer", "format": "int8"}, pa.int64()),
        ({"type": "number", "format": "float"}, pa.float32()),
        ({"type": "number", "format": "double"}, pa.float64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": "string"}, pa.string()),
        ({"type": "string", "format": "binary"}, pa.binary()),
        ({"type": "string", "format": "byte"}, pa.binary()),
        ({"type": "string", "format": "date-time"}, pa.timestamp("us")),
        ({"type": "string", "format": "date"}, pa.date32()),
        ({"type": "string", "format": "uuid"}, pa.string()),
        ({"type": ["integer", "null"]}, pa.int64()),
        ({"type": "array", "items": {"type": "integer", "format": "int32"}}, pa.list_(pa.int32())),
        (
            {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            pa.list_(pa.list_(pa.string())),
        ),
        (
            {
                "type": "object",
                "properties": {
                    "x": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
            pa.struct([("x", pa.float64()), ("tags", pa.list_(pa.string()))]),
        ),
        ({"type": "object", "format": "unknown"}, None),
        ({"type": "object", "properties": {}}, None),
        ({"type": "object", "properties": {"x": {"type": "object"}}}, None),
        ({"type": "array"}, None),
        ({"type": "array", "items": {"type": "object"}}, None),
        ({"type": "unknown"}, None),
        ({"type": ["integer", "string"]}, None),
        ({"type": 5}, None),
        ({}, None),
        (None, None),
        ("integer", None),
    ],
)
def test_openapi_types_map_to_arrow(spec: Any, expected: pa.DataType | None) -> None:
    assert arrow_type(spec) == expected


# --- plan_cast / apply: no model ----------------------------------------------------------------


def batch(**columns: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def model_of(*columns: ColumnSpec) -> ModelSchema:
    return ModelSchema(columns=columns, served_model="m-1")


def test_without_a_model_every_input_column_is_sent_as_is() -> None:
    rows = batch(b=pa.array(["x"]), a=pa.array([1]))
    plan = plan_cast(rows.schema, None)
    assert plan.columns == ("b", "a")
    assert plan.targets == (None, None)
    assert plan.apply(rows) is rows


def test_without_a_model_duplicate_input_columns_are_refused() -> None:
    schema = pa.schema([("a", pa.int64()), ("a", pa.string())])
    with pytest.raises(SchemaError) as info:
        plan_cast(schema, None)
    assert info.value.problems == ["column 'a' appears 2 times in the input; keep one"]


# --- plan_cast / apply: matching types ----------------------------------------------------------


def seed_model() -> ModelSchema:
    model = parse_openapi(SEED_OPENAPI)
    assert model is not None
    return model


SEED_MODEL = seed_model()


def test_matching_input_is_selected_in_model_order_and_extras_dropped() -> None:
    rows = batch(
        extra=pa.array([True, False]),
        string_col=pa.array(["abc", "xyz"]),
        int_col=pa.array([3, 2]),
        float_col=pa.array([10.4, 20.4]),
    )
    plan = plan_cast(rows.schema, SEED_MODEL)
    assert plan.columns == ("int_col", "float_col", "string_col")
    assert plan.targets == (None, None, None)
    sent = plan.apply(rows)
    assert sent.schema.names == ["int_col", "float_col", "string_col"]
    assert sent.to_pydict() == {
        "int_col": [3, 2],
        "float_col": [10.4, 20.4],
        "string_col": ["abc", "xyz"],
    }


def test_missing_optional_columns_are_not_sent() -> None:
    rows = batch(int_col=pa.array([1]))
    plan = plan_cast(rows.schema, SEED_MODEL)
    assert plan.columns == ("int_col",)
    assert plan.apply(rows).schema.names == ["int_col"]


def test_columns_of_unknown_model_type_are_sent_as_is() -> None:
    model = model_of(ColumnSpec("blob", None, True))
    rows = batch(blob=pa.array([{"k": 1}]))
    plan = plan_cast(rows.schema, model)
    assert plan.targets == (None,)
    assert plan.apply(rows).column(0).type == rows.column(0).type


# --- safe casts ---------------------------------------------------------------------------------

TS = dt.datetime(2026, 3, 1, 12, 30, 15, 123456)
DAY = dt.date(2026, 3, 1)
SAFE_CASTS: list[tuple[str, pa.Array, pa.DataType, list[Any]]] = [
    ("int8->int64", pa.array([-128, 127, None], pa.int8()), pa.int64(), [-128, 127, None]),
    ("int16->int32", pa.array([-3, 300], pa.int16()), pa.int32(), [-3, 300]),
    ("int32->int64", pa.array([2**31 - 1], pa.int32()), pa.int64(), [2**31 - 1]),
    ("uint8->int32", pa.array([255], pa.uint8()), pa.int32(), [255]),
    ("uint32->int64", pa.array([2**32 - 1], pa.uint32()), pa.int64(), [2**32 - 1]),
    ("uint64->int64 fits", pa.array([2**63 - 1, None], pa.uint64()), pa.int64(), [2**63 - 1, None]),
    ("int64->int32 fits", pa.array([-(2**31), 2**31 - 1]), pa.int32(), [-(2**31), 2**31 - 1]),
    ("int32->float64", pa.array([7, None], pa.int32()), pa.float64(), [7.0, None]),
    ("int64->float64", pa.array([2**53 + 1]), pa.float64(), [float(2**53 + 1)]),
    ("int64->float32", pa.array([3]), pa.float32(), [3.0]),
    ("float16->float64", pa.array(np.array([1.5], np.float16)), pa.float64(), [1.5]),
    ("float32->float64", pa.array([0.5, None], pa.float32()), pa.float64(), [0.5, None]),
    ("float64->float32", pa.array([0.25, -2.0]), pa.float32(), [0.25, -2.0]),
    ("decimal->float64", pa.array([Decimal("1.25")]), pa.float64(), [1.25]),
    ("large_string->string", pa.array(["a", None], pa.large_string()), pa.string(), ["a", None]),
    ("string_view->string", pa.array(["a"], pa.string_view()), pa.string(), ["a"]),
    ("large_binary->binary", pa.array([b"\x00"], pa.large_binary()), pa.binary(), [b"\x00"]),
    ("binary_view->binary", pa.array([b"x"], pa.binary_view()), pa.binary(), [b"x"]),
    ("fixed_binary->binary", pa.array([b"xy"], pa.binary(2)), pa.binary(), [b"xy"]),
    (
        "dictionary<string>->string",
        pa.array(["a", "b", None, "a"]).dictionary_encode(),
        pa.string(),
        ["a", "b", None, "a"],
    ),
    (
        "dictionary<int64>->float64",
        pa.array([1, 2, 1]).dictionary_encode(),
        pa.float64(),
        [1.0, 2.0, 1.0],
    ),
    ("date32->timestamp", pa.array([DAY]), pa.timestamp("us"), [dt.datetime(2026, 3, 1)]),
    ("date64->date32", pa.array([DAY], pa.date64()), pa.date32(), [DAY]),
    ("timestamp[ns]->[us]", pa.array([TS], pa.timestamp("ns")), pa.timestamp("us"), [TS]),
    (
        "timestamp[s]->[us]",
        pa.array([TS.replace(microsecond=0)], pa.timestamp("s")),
        pa.timestamp("us"),
        [TS.replace(microsecond=0)],
    ),
    (
        "timestamp tz->naive",
        pa.array([TS], pa.timestamp("us", tz="UTC")),
        pa.timestamp("us"),
        [TS],
    ),
    ("null->int64", pa.nulls(2), pa.int64(), [None, None]),
    ("null->list", pa.nulls(1), pa.list_(pa.int64()), [None]),
    ("bool->bool", pa.array([True, None]), pa.bool_(), [True, None]),
    (
        "list<int32>->list<int64>",
        pa.array([[1, 2], None, []], pa.list_(pa.int32())),
        pa.list_(pa.int64()),
        [[1, 2], None, []],
    ),
    (
        "large_list<float32>->list<float64>",
        pa.array([[0.5]], pa.large_list(pa.float32())),
        pa.list_(pa.float64()),
        [[0.5]],
    ),
    (
        "fixed_size_list->list",
        pa.array([[1, 2]], pa.list_(pa.int16(), 2)),
        pa.list_(pa.int64()),
        [[1, 2]],
    ),
    (
        "list<large_string>->list<string>",
        pa.array([["a"]], pa.list_(pa.large_string())),
        pa.list_(pa.string()),
        [["a"]],
    ),
    (
        "struct by name, extra field dropped",
        pa.array([{"b": "x", "a": 1, "c": 0}]),
        pa.struct([("a", pa.float64()), ("b", pa.string())]),
        [{"a": 1.0, "b": "x"}],
    ),
]


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [case[1:] for case in SAFE_CASTS],
    ids=[case[0] for case in SAFE_CASTS],
)
def test_safe_casts_are_planned_and_applied(
    source: pa.Array, target: pa.DataType, expected: list[Any]
) -> None:
    rows = batch(col=source, other=pa.array(["dropped"] * len(source)))
    plan = plan_cast(rows.schema, model_of(ColumnSpec("col", target, True)))
    assert plan.columns == ("col",)
    assert plan.targets == ((None,) if source.type == target else (target,))
    sent = plan.apply(rows)
    assert sent.schema.names == ["col"]
    assert sent.column(0).type == target
    assert sent.column(0).to_pylist() == expected


def test_timestamp_precision_finer_than_the_target_is_truncated() -> None:
    rows = batch(t=pa.array([1_001], pa.timestamp("ns")))
    sent = plan_cast(rows.schema, model_of(ColumnSpec("t", pa.timestamp("us"), True))).apply(rows)
    assert sent.column(0).cast(pa.int64()).to_pylist() == [1]


def test_apply_on_a_sliced_batch_keeps_the_slice() -> None:
    rows = batch(a=pa.array([1, 2, 3, 4], pa.int32())).slice(1, 2)
    plan = plan_cast(rows.schema, model_of(ColumnSpec("a", pa.int64(), True)))
    assert plan.apply(rows).column(0).to_pylist() == [2, 3]


def test_describe_says_what_happens_to_each_column() -> None:
    schema = pa.schema(
        [
            ("int_col", pa.int32()),
            ("float_col", pa.int64()),
            ("string_col", pa.string()),
            ("small", pa.int64()),
        ]
    )
    model = model_of(*SEED_MODEL.columns, ColumnSpec("small", pa.int32(), False))
    assert plan_cast(schema, model).describe() == [
        "int_col: int32 -> int64",
        "float_col: int64 -> double (may lose precision)",
        "string_col: string",
        "small: int64 -> int32 (checked: values must fit)",
    ]


# --- checked casts refused at apply time --------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (pa.array([1, 2**63], pa.uint64()), pa.int64()),
        (pa.array([1, 2**40]), pa.int32()),
        (pa.array([-1], pa.int8()), pa.uint8()),
        (pa.array([[1], [2**40]]), pa.list_(pa.int32())),
    ],
)
def test_a_value_that_does_not_fit_a_checked_cast_raises_schema_error(
    source: pa.Array, target: pa.DataType
) -> None:
    rows = batch(n=source)
    plan = plan_cast(rows.schema, model_of(ColumnSpec("n", target, True)))
    with pytest.raises(SchemaError, match=r"column 'n': a value does not fit") as info:
        plan.apply(rows)
    assert info.value.problems[0].startswith(f"column 'n': a value does not fit {target}")
    assert isinstance(info.value, UsageError)


def test_a_batch_missing_a_planned_column_raises_schema_error() -> None:
    plan = CastPlan(columns=("a",), targets=(pa.int64(),))
    with pytest.raises(SchemaError, match="'a' is missing from this batch"):
        plan.apply(batch(b=pa.array([1])))


def test_a_batch_whose_type_changed_since_planning_is_refused() -> None:
    plan = CastPlan(columns=("a",), targets=(pa.int64(),))
    with pytest.raises(SchemaError, match="found string, expected int64"):
        plan.apply(batch(a=pa.array(["1"])))


def test_cast_plan_needs_one_target_per_column() -> None:
    with pytest.raises(ValueError, match="one target per column"):
        CastPlan(columns=("a", "b"), targets=(None,))


# --- refusals -----------------------------------------------------------------------------------

REFUSALS: list[tuple[pa.DataType, pa.DataType]] = [
    (pa.string(), pa.float64()),
    (pa.large_string(), pa.int64()),
    (pa.float64(), pa.int64()),
    (pa.float32(), pa.int32()),
    (pa.float64(), pa.string()),
    (pa.int64(), pa.string()),
    (pa.bool_(), pa.int64()),
    (pa.int64(), pa.bool_()),
    (pa.string(), pa.bool_()),
    (pa.string(), pa.binary()),
    (pa.binary(), pa.string()),
    (pa.timestamp("us"), pa.date32()),
    (pa.string(), pa.timestamp("us")),
    (pa.int64(), pa.timestamp("us")),
    (pa.decimal128(10, 0), pa.int64()),
    (pa.list_(pa.string()), pa.list_(pa.int64())),
    (pa.list_(pa.float64()), pa.list_(pa.int64())),
    (pa.int64(), pa.list_(pa.int64())),
    (pa.struct([("a", pa.int64())]), pa.struct([("a", pa.int64()), ("b", pa.string())])),
    (pa.float64(), pa.struct([("a", pa.float64())])),
    (pa.dictionary(pa.int32(), pa.string()), pa.int64()),
]


@pytest.mark.parametrize(("found", "expected"), REFUSALS, ids=[f"{f}->{e}" for f, e in REFUSALS])
def test_incompatible_types_are_refused_before_sending(
    found: pa.DataType, expected: pa.DataType
) -> None:
    schema = pa.schema([("a", found)])
    with pytest.raises(SchemaError) as info:
        plan_cast(schema, model_of(ColumnSpec("a", expected, True)))
    assert info.value.problems == [
        f"column 'a': found {found}, expected {expected} — "
        "cast it upstream or choose another endpoint"
    ]


def test_every_problem_is_listed_in_one_error() -> None:
    model = model_of(
        ColumnSpec("a", pa.float64(), True),
        ColumnSpec("b", pa.int64(), True),
        ColumnSpec("Amount", pa.float64(), True),
        ColumnSpec("c", pa.string(), False),
        ColumnSpec("d", pa.int64(), False),
    )
    schema = pa.schema(
        [
            ("a", pa.string()),
            ("amount", pa.float64()),
            ("c", pa.int64()),
            ("d", pa.int32()),
            ("d", pa.int32()),
        ]
    )
    with pytest.raises(SchemaError) as info:
        plan_cast(schema, model)
    expected = [
        "column 'd' appears 2 times in the input; keep one",
        "column 'a': found string, expected double — cast it upstream or choose another endpoint",
        "missing required column 'b' (expected int64) — add it to the input",
        "missing required column 'Amount' (expected double) — did you mean 'amount'? "
        "Names are matched exactly: rename it",
        "column 'c': found int64, expected string — cast it upstream or choose another endpoint",
    ]
    assert info.value.problems == expected
    message = str(info.value)
    assert message.startswith(
        "the input does not fit the model signature of served model 'm-1' (5 problems):\n"
    )
    assert message.splitlines()[1:] == [f"  - {line}" for line in expected]


def test_missing_column_of_unknown_type_says_any_type() -> None:
    with pytest.raises(SchemaError) as info:
        plan_cast(pa.schema([("x", pa.int64())]), model_of(ColumnSpec("blob", None, True)))
    assert info.value.problems == [
        "missing required column 'blob' (expected any type) — add it to the input"
    ]


def test_did_you_mean_ignores_surrounding_spaces_and_skips_other_model_columns() -> None:
    model = model_of(ColumnSpec("a", pa.int64(), True), ColumnSpec("A", pa.int64(), False))
    with pytest.raises(SchemaError) as info:
        plan_cast(pa.schema([("A", pa.int64()), ("b ", pa.int64())]), model)
    assert info.value.problems == [
        "missing required column 'a' (expected int64) — add it to the input"
    ]
    with pytest.raises(SchemaError) as info:
        plan_cast(pa.schema([(" A ", pa.int64())]), model_of(ColumnSpec("a", pa.int64(), True)))
    assert "did you mean ' A '?" in info.value.problems[0]


def test_an_input_with_none_of_the_model_columns_is_refused() -> None:
    optional = tuple(ColumnSpec(c.name, c.type, False) for c in SEED_MODEL.columns)
    with pytest.raises(SchemaError) as info:
        plan_cast(pa.schema([("x", pa.int64())]), ModelSchema(columns=optional))
    assert info.value.problems == [
        "none of the model's columns (int_col, float_col, string_col) is in the input (found: x)"
    ]


def test_schema_error_is_a_usage_error_with_exit_code_2() -> None:
    with pytest.raises(SchemaError) as info:
        plan_cast(pa.schema([]), SEED_MODEL)
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2


def test_a_column_listed_twice_in_the_enum_keeps_its_first_type() -> None:
    types = [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}]
    doc = doc_with_request_schema(split_schema(["a", "b", "a"], types))
    model = parse_openapi(doc)
    assert model is not None
    assert model.columns == (ColumnSpec("a", pa.int64(), True), ColumnSpec("b", pa.string(), True))
