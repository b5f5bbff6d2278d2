"""Request body -> typed Arrow table, the way MLflow's scoring server enforces a signature.

Pure: bytes in, a :class:`ScoringInput` or an :class:`~engine.emulator.apierror.ApiError` out.
Columns are converted whole by pyarrow (no per-cell Python for scalar types); the messages
are MLflow's, so a client can classify them as it would a real endpoint's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.emulator.apierror import ApiError
from engine.emulator.signature import ColumnSpec, Signature, arrow_type, numpy_name

__all__ = ["FORMAT_KEYS", "ScoringInput", "parse_body", "parse_request", "to_table"]

#: The request shapes MLflow's scoring server accepts; a body must hold exactly one.
FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")

_CONVERSION_PREFIX = "Invalid input. Data is not compatible with model signature."

Columns = dict[str, Sequence[Any]]


@dataclass(frozen=True, slots=True)
class ScoringInput:
    """A request ready for the model.

    Attributes:
        table: the signature's columns, typed, in the signature's order.
        params: the request's ``params`` over the signature's defaults.
        row_keys: one accounting key per row (see :func:`row_keys`).
    """

    table: pa.Table
    params: dict[str, Any]
    row_keys: list[str]


def parse_body(body: bytes) -> Any:
    """JSON -> Python, allowing the bare ``NaN``/``Infinity`` Python's json module writes."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # slower, but accepts NaN, Infinity, -Infinity like MLflow
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400,
            "BAD_REQUEST",
            "Failed to parse input from JSON. Ensure that input is a valid JSON formatted "
            f"string. Error: '{exc}'",
        ) from None


def parse_request(
    body: bytes, signature: Signature, row_key: str | None = None, *, keys: bool = True
) -> ScoringInput:
    """Parse and enforce one invocation body (``keys=False`` skips the per-row keys).

    Raises:
        ApiError: 400 ``BAD_REQUEST`` (unparseable, wrong format keys, failed conversion) or
            400 ``INVALID_PARAMETER_VALUE`` (a required column is missing).
    """
    document = parse_body(body)
    key, payload = _format_of(document)
    columns, rows = _columns(key, payload, signature)
    _check_missing(columns, signature)
    table = to_table(columns, rows, signature)
    params = _params(document.get("params"), signature)
    keyed = row_keys(columns, rows, signature, row_key) if keys else []
    return ScoringInput(table, params, keyed)


def _format_of(document: Any) -> tuple[str, Any]:
    keys = [k for k in FORMAT_KEYS if k in document] if isinstance(document, dict) else []
    if len(keys) != 1:
        received = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise ApiError(
            400,
            "BAD_REQUEST",
            "Invalid input. The input must be a JSON dictionary with exactly one of the input "
            "fields {'dataframe_split', 'dataframe_records', 'instances', 'inputs'}. "
            f"Received dictionary with input fields: {received}.",
        )
    return keys[0], document[keys[0]]


def _columns(key: str, payload: Any, signature: Signature) -> tuple[Columns, int]:
    if key == "dataframe_split":
        return _split_columns(payload)
    if isinstance(payload, dict) and key == "inputs":
        return _columnar(payload)
    if isinstance(payload, list) and all(isinstance(r, dict) for r in payload):
        return _record_columns(payload, signature)
    if isinstance(payload, list) and len(signature.columns) == 1:
        return {signature.columns[0].name: payload}, len(payload)
    raise _bad_shape(
        key, "a list of records" + (" or a dict of columns" if key == "inputs" else "")
    )


def _bad_shape(key: str, expected: str) -> ApiError:
    return ApiError(
        400,
        "BAD_REQUEST",
        f"Invalid input. Failed to parse input: '{key}' must be {expected} "
        "matching the model signature.",
    )


def _split_columns(payload: Any) -> tuple[Columns, int]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise _bad_shape("dataframe_split", 'an object {"columns": [...], "data": [[...], ...]}')
    data: list[Any] = payload["data"]
    names = payload.get("columns")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad_shape("dataframe_split", "an object whose 'columns' is a list of names")
    try:
        widths = set(map(len, data))
    except TypeError:
        raise _bad_shape("dataframe_split", "an object whose 'data' rows are lists") from None
    if widths - {len(names)}:
        raise ApiError(
            400,
            "BAD_REQUEST",
            f"Invalid input. Failed to parse input: {len(names)} columns passed, passed data "
            f"had {max(widths - {len(names)})} columns.",
        )
    transposed = list(zip(*data, strict=True)) if data else [() for _ in names]
    return dict(zip(names, transposed, strict=True)), len(data)


def _columnar(payload: dict[str, Any]) -> tuple[Columns, int]:
    lengths = {len(v) if isinstance(v, list) else -1 for v in payload.values()}
    if len(lengths) > 1 or -1 in lengths:
        raise _bad_shape("inputs", "a dict of equally long column lists")
    return dict(payload), lengths.pop() if lengths else 0


def _record_columns(records: list[dict[str, Any]], signature: Signature) -> tuple[Columns, int]:
    present: set[str] = set().union(*records) if records else set()
    names = [name for name in signature.names if name in present]
    return {name: [r.get(name) for r in records] for name in names}, len(records)


def _check_missing(columns: Columns, signature: Signature) -> None:
    missing = [name for name in signature.required if name not in columns]
    if not missing:
        return
    extra = [name for name in columns if name not in signature.names]
    note = f" Note that there were extra inputs: {extra}." if extra else ""
    described = ", ".join(
        f"'{c.name}': {c.type}{'' if c.required else ' (optional)'}" for c in signature.columns
    )
    raise ApiError(
        400,
        "INVALID_PARAMETER_VALUE",
        f"Failed to enforce schema of data with schema [{described}]. "
        f"Error: Model is missing inputs {missing}.{note}",
    )


def to_table(columns: Columns, rows: int, signature: Signature) -> pa.Table:
    """Convert raw JSON columns to the signature's Arrow table; absent optional columns are null.

    Raises:
        ApiError: 400 ``BAD_REQUEST`` naming the first column that does not convert.
    """
    arrays = []
    for spec in signature.columns:
        values = columns.get(spec.name)
        if values is None:
            arrays.append(pa.nulls(rows, arrow_type(spec.type)))
        else:
            arrays.append(convert_column(values, spec))
    return pa.Table.from_arrays(arrays, schema=signature.arrow_schema())


def convert_column(values: Sequence[Any], spec: ColumnSpec) -> pa.Array:
    """One column of JSON values -> an Arrow array of ``spec.type``.

    Raises:
        ApiError: 400 ``BAD_REQUEST`` "Failed to convert column ..." when a value does not fit
            (a fractional number for an integer column, a string for a number, a null in a
            required column, ...).
    """
    try:
        array = _convert(values, spec.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise _conversion_error(spec, str(exc)) from None
    if spec.required and array.null_count:
        raise _conversion_error(spec, "a required column may not contain null values")
    return array


def _convert(values: Sequence[Any], type_name: str) -> pa.Array:
    target = arrow_type(type_name)
    if type_name in ("integer", "long"):
        return _to_integer(pa.array(values), target)
    if type_name == "binary":
        return pa.array([None if v is None else _b64(v) for v in values], type=target)
    if type_name == "datetime":
        return pc.cast(pa.array(values, type=pa.string()), target)
    return pa.array(values, type=target)


def _to_integer(raw: pa.Array, target: pa.DataType) -> pa.Array:
    """Integers, and integral floats (``3.0``); a fraction or a bool is a failure."""
    if pa.types.is_boolean(raw.type) or not (
        pa.types.is_integer(raw.type)
        or pa.types.is_floating(raw.type)
        or pa.types.is_null(raw.type)
    ):
        raise TypeError(f"values of type {raw.type} are not integers")
    return pc.cast(raw, target)  # safe cast: refuses 1.5, NaN and out-of-range values


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from None


def _conversion_error(spec: ColumnSpec, detail: str) -> ApiError:
    return ApiError(
        400,
        "BAD_REQUEST",
        f"{_CONVERSION_PREFIX} Failed to convert column {spec.name} to type "
        f"'{numpy_name(spec.type)}'. Error: '{detail}'",
    )


def _params(sent: Any, signature: Signature) -> dict[str, Any]:
    params = signature.param_defaults()
    if sent is None:
        return params
    if not isinstance(sent, dict):
        raise ApiError(400, "BAD_REQUEST", "Invalid input. 'params' must be a JSON object.")
    unknown = sorted(set(sent) - set(params))
    if unknown:
        raise ApiError(
            400,
            "BAD_REQUEST",
            f"Invalid input. Unrecognized params {unknown}; the model accepts {sorted(params)}.",
        )
    return {**params, **sent}


def row_keys(columns: Columns, rows: int, signature: Signature, row_key: str | None) -> list[str]:
    """One key per row: ``str`` of the ``row_key`` column if sent, else the row's JSON values.

    The JSON key lists the signature's columns in order (absent ones as ``null``), so the
    same row sent as ``dataframe_split`` or ``dataframe_records`` gets the same key.
    """
    if row_key is not None and row_key in columns:
        return [str(value) for value in columns[row_key]]
    nulls = [None] * rows
    ordered = [columns.get(name, nulls) for name in signature.names]
    return [orjson.dumps(row).decode() for row in zip(*ordered, strict=True)]
