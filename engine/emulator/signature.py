"""A model's input signature (MLflow ``ColSpec`` types) and its mapping to Arrow and OpenAPI.

Types are MLflow's names: ``boolean``, ``integer`` (int32), ``long`` (int64), ``float``,
``double``, ``string``, ``binary`` (base64 on the wire), ``datetime`` (ISO 8601 on the
wire) and ``array<T>`` of any of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "ColumnSpec",
    "ParamSpec",
    "Signature",
    "arrow_type",
    "mlflow_type",
    "numpy_name",
    "openapi_type",
]

_SCALAR_ARROW: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "datetime": pa.timestamp("us"),
}

_SCALAR_OPENAPI: dict[str, dict[str, str]] = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer", "format": "int32"},
    "long": {"type": "integer", "format": "int64"},
    "float": {"type": "number", "format": "float"},
    "double": {"type": "number", "format": "double"},
    "string": {"type": "string"},
    "binary": {"type": "string", "format": "binary"},
    "datetime": {"type": "string", "format": "date-time"},
}

#: The dtype names MLflow's scoring server quotes in "Failed to convert column ..." messages.
_NUMPY_NAMES = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "str",
    "binary": "bytes",
    "datetime": "datetime64[ns]",
}


def _element(type_name: str) -> str | None:
    """``T`` for ``array<T>``, else ``None``."""
    if type_name.startswith("array<") and type_name.endswith(">"):
        return type_name[len("array<") : -1]
    return None


def _check_type(type_name: str) -> str:
    element = _element(type_name)
    if element is not None:
        _check_type(element)
    elif type_name not in _SCALAR_ARROW:
        known = ", ".join([*_SCALAR_ARROW, "array<T>"])
        raise ValueError(f"unknown column type {type_name!r}; expected one of {known}")
    return type_name


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type a column of MLflow type ``type_name`` is converted to."""
    element = _element(type_name)
    if element is not None:
        return pa.list_(arrow_type(element))
    return _SCALAR_ARROW[type_name]


def openapi_type(type_name: str) -> dict[str, Any]:
    """The OpenAPI schema of one value of ``type_name`` (as Databricks writes it)."""
    element = _element(type_name)
    if element is not None:
        return {"type": "array", "items": openapi_type(element)}
    return dict(_SCALAR_OPENAPI[type_name])


def numpy_name(type_name: str) -> str:
    """The dtype name MLflow names in a conversion error for ``type_name``."""
    return "object" if _element(type_name) is not None else _NUMPY_NAMES[type_name]


def mlflow_type(data_type: pa.DataType) -> str:
    """The MLflow type name for an Arrow type, for signatures inferred from sample files."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"array<{mlflow_type(data_type.value_type)}>"
    checks: list[tuple[Any, str]] = [
        (pa.types.is_boolean, "boolean"),
        (lambda t: pa.types.is_integer(t) and t.bit_width <= 32, "integer"),
        (pa.types.is_integer, "long"),
        (lambda t: pa.types.is_floating(t) and t.bit_width <= 32, "float"),
        (pa.types.is_floating, "double"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
        (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
        (lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t), "datetime"),
    ]
    for check, name in checks:
        if check(data_type):
            return name
    raise ValueError(f"no MLflow column type for Arrow type {data_type}")


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One input column.

    Attributes:
        name: the column's name.
        type: an MLflow type name (``double``, ``long``, ``array<double>``, ...).
        required: whether a request without it (or with a null in it) is refused.
    """

    name: str
    type: str
    required: bool = True

    def __post_init__(self) -> None:
        _check_type(self.type)

    def arrow_type(self) -> pa.DataType:
        """The Arrow type values of this column are converted to."""
        return arrow_type(self.type)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One inference parameter with its default (``params`` in a request).

    Attributes:
        name: the parameter's name.
        type: an MLflow scalar type name.
        default: the value used when a request does not send it.
    """

    name: str
    type: str
    default: Any


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's inputs, parameters and prediction type.

    Attributes:
        columns: the input columns, in the model's order.
        params: inference parameters with defaults.
        output: the OpenAPI schema of one prediction (``predictions.items``).
    """

    columns: tuple[ColumnSpec, ...]
    params: tuple[ParamSpec, ...] = ()
    output: Mapping[str, Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(column.name for column in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        """The required column names, in order."""
        return tuple(column.name for column in self.columns if column.required)

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema of the table a model's ``predict`` receives."""
        return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in self.columns])

    def param_defaults(self) -> dict[str, Any]:
        """``{name: default}`` for every parameter."""
        return {param.name: param.default for param in self.params}

    @classmethod
    def of(
        cls,
        columns: Mapping[str, str] | Iterable[ColumnSpec | tuple[str, str] | tuple[str, str, bool]],
        *,
        params: Iterable[ParamSpec] = (),
        output: Mapping[str, Any] | None = None,
    ) -> Signature:
        """Build a signature from ``{name: type}``, ``(name, type[, required])`` or specs."""
        items = columns.items() if isinstance(columns, Mapping) else columns
        specs = tuple(c if isinstance(c, ColumnSpec) else ColumnSpec(*c) for c in items)
        return cls(specs, tuple(params), output)

    @classmethod
    def infer(cls, schema: pa.Schema, *, output: Mapping[str, Any] | None = None) -> Signature:
        """Infer a signature from a sample's Arrow schema: every column required."""
        return cls(tuple(ColumnSpec(f.name, mlflow_type(f.type)) for f in schema), (), output)
