"""The endpoint's OpenAPI document -> the columns and types the model expects; fit a batch to it.

Two steps, both before any row is sent:

1. :func:`parse_openapi` reads ``GET /api/2.0/serving-endpoints/{name}/openapi`` into a
   :class:`ModelSchema`. It prefers the ``dataframe_split`` request shape (column names from
   ``columns.items.enum``, types from ``data.items.prefixItems``, required columns from the
   ``"required fields: a, b"`` description) and falls back to ``dataframe_records``
   (``items.properties`` / ``items.required``). Endpoints without a logged signature, and
   tensor-style models that only accept ``inputs``/``instances``, give ``None``: the caller
   then sends the input columns as they are.
2. :func:`plan_cast` compares the input's Arrow schema with it and returns a :class:`CastPlan`,
   or raises one :class:`~engine.errors.SchemaError` that lists every problem at once.
   :meth:`CastPlan.apply` then selects and casts each batch with ``pyarrow.compute``.

Which casts are allowed. JSON carries no widths, and MLflow's scoring server parses each
column into the signature's type itself, so a cast here only has to keep the *values* right:

* same kind, any width: ints to ints, floats to floats, strings/binaries from their large and
  view variants, lists from large and fixed-size lists, timestamps across units and zones,
  date64 to date32, a struct with the target's fields (by name);
* ints (and decimals) to floats: MLflow accepts ints for doubles; precision beyond 2**53 is
  lost, exactly as the server would lose it;
* float64 to a float32 column: pandas and polars default to float64 and the server parses the
  JSON number into float32 anyway, so refusing would reject nearly every input;
* narrowing or sign changes (int64 -> int32, uint64 -> int64) are *checked*: a value that does
  not fit raises :class:`~engine.errors.SchemaError` from :meth:`CastPlan.apply`;
* dictionary columns are decoded, then their values are checked as above; an all-null column
  fits anything.

Everything else (text to numbers, floats to ints, numbers to text, ...) is refused: a cast that
guesses is worse than an error before the first request.

(Over 400 lines because parsing the OpenAPI schema and planning the casts are one contract (what
the endpoint takes).)
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from engine.errors import SchemaError
from engine.lazy import pc

__all__ = [
    "CastPlan",
    "ColumnSpec",
    "ModelSchema",
    "arrow_type",
    "format_schema",
    "parse_openapi",
    "plan_cast",
]

_SERVED_MODEL_PATH = re.compile(r"/served-models/(?P<served>[^/]+)/invocations/?")
_REQUIRED_FIELDS = re.compile(r"required fields:(?P<names>.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One input column the model expects.

    Attributes:
        name: the column name, matched exactly.
        type: the Arrow type to send, or ``None`` when the schema does not say
            (``object``/``unknown``): the column is sent as it is.
        required: whether the model refuses a request without it.
    """

    name: str
    type: pa.DataType | None
    required: bool


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """What an endpoint's OpenAPI document says about its model's inputs and outputs.

    Attributes:
        columns: the input columns, in the model's order.
        prediction_type: the Arrow type of one prediction, or ``None`` when absent, unknown
            or an object (the decoder then infers it).
        params: inference parameter name -> its default, as the document gives it.
        served_model: the served model from ``/served-models/<served>/invocations``.
    """

    columns: tuple[ColumnSpec, ...]
    prediction_type: pa.DataType | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    served_model: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every column name, in the model's order."""
        return tuple(column.name for column in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        """The names of the required columns, in the model's order."""
        return tuple(column.name for column in self.columns if column.required)


# --- OpenAPI -> ModelSchema ---------------------------------------------------------------------


def parse_openapi(doc: Mapping[str, Any]) -> ModelSchema | None:
    """Read the model's input columns from an endpoint's OpenAPI document.

    Tolerates missing or odd pieces: anything it cannot read counts as absent, never a
    ``KeyError``. With several ``.../invocations`` paths, the first usable one wins.

    Args:
        doc: the parsed JSON of ``GET /api/2.0/serving-endpoints/{name}/openapi``.

    Returns:
        The schema, or ``None`` when the document has no usable ``dataframe_split`` or
        ``dataframe_records`` shape (no signature logged, or a tensor/``inputs``-only model).
    """
    for path, item in _mapping(_get(doc, "paths")).items():
        post = _get(item, "post")
        columns = _columns(_request_alternatives(post))
        if columns:
            match = _SERVED_MODEL_PATH.search(str(path))
            return ModelSchema(
                columns=columns,
                prediction_type=_prediction_type(post),
                params=MappingProxyType(_params(_request_alternatives(post))),
                served_model=match.group("served") if match else None,
            )
    return None


def _get(node: object, *keys: str) -> Any:
    """``node[k1][k2]...``, or ``None`` as soon as a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _mapping(node: object) -> Mapping[Any, Any]:
    return node if isinstance(node, Mapping) else {}


def _list(node: object) -> list[Any]:
    return list(node) if isinstance(node, list | tuple) else []


def _request_alternatives(post: object) -> list[Mapping[str, Any]]:
    """The request body shapes: the ``oneOf``/``anyOf`` entries, or the schema itself."""
    schema = _get(post, "requestBody", "content", "application/json", "schema")
    listed = _list(_get(schema, "oneOf")) or _list(_get(schema, "anyOf")) or [schema]
    return [alt for alt in listed if isinstance(alt, Mapping)]


def _columns(alternatives: list[Mapping[str, Any]]) -> tuple[ColumnSpec, ...]:
    split = _first(alternatives, "dataframe_split")
    records = _first(alternatives, "dataframe_records")
    return _split_columns(split, records) or _records_columns(records)


def _first(alternatives: list[Mapping[str, Any]], shape: str) -> Any:
    for alt in alternatives:
        found = _get(alt, "properties", shape)
        if isinstance(found, Mapping):
            return found
    return None


def _split_columns(split: object, records: object) -> tuple[ColumnSpec, ...]:
    """Columns from ``dataframe_split``; required ones from its description, else records'."""
    names = _list(_get(split, "properties", "columns", "items", "enum"))
    if not names or not all(isinstance(n, str) for n in names):
        return ()
    types = _list(_get(split, "properties", "data", "items", "prefixItems"))
    required = _described_required(_get(split, "properties", "columns", "description"), names)
    if required is None:
        required = _records_required(records, names)
    columns: dict[str, ColumnSpec] = {}
    for i, name in enumerate(names):
        kind = arrow_type(types[i] if i < len(types) else None)
        columns.setdefault(name, ColumnSpec(name, kind, name in required))  # first one wins
    return tuple(columns.values())


def _described_required(description: object, names: Sequence[str]) -> frozenset[str] | None:
    """Parse ``"required fields: a, b"``; ``None`` when there is no such description."""
    if not isinstance(description, str):
        return None
    match = _REQUIRED_FIELDS.search(description)
    if match is None:
        return None
    listed = {part.strip().rstrip(".").strip() for part in match.group("names").split(",")}
    return frozenset(name for name in names if name in listed)


def _records_required(records: object, names: Sequence[str]) -> frozenset[str]:
    """``items.required`` of ``dataframe_records``; every column when it says nothing.

    MLflow marks signature columns required unless told otherwise, so "unknown" means
    required: the user hears about a missing column before sending, not from the server.
    """
    listed = _get(records, "items", "required")
    if isinstance(listed, list):
        return frozenset(str(name) for name in listed)
    return frozenset(names)


def _records_columns(records: object) -> tuple[ColumnSpec, ...]:
    properties = _mapping(_get(records, "items", "properties"))
    names = [str(name) for name in properties]
    required = _records_required(records, names)
    names += [name for name in sorted(required) if name not in properties]
    return tuple(ColumnSpec(n, arrow_type(properties.get(n)), n in required) for n in names)


def _prediction_type(post: object) -> pa.DataType | None:
    responses = _mapping(_get(post, "responses"))
    ok = responses.get("200", responses.get(200))
    schema = _get(ok, "content", "application/json", "schema")
    items = _get(schema, "properties", "predictions", "items")
    if _openapi_type(items) == "object":
        return None  # one object per row: let the decoder infer its fields
    return arrow_type(items)


def _params(alternatives: list[Mapping[str, Any]]) -> dict[str, Any]:
    for alt in alternatives:
        properties = _get(alt, "properties", "params", "properties")
        if isinstance(properties, Mapping):
            return {str(name): _get(spec, "default") for name, spec in properties.items()}
    return {}


def _openapi_type(spec: object) -> str | None:
    """The schema's ``type``; for OpenAPI 3.1 lists such as ``["integer", "null"]``, the one
    non-null entry."""
    kind = _get(spec, "type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return kind if isinstance(kind, str) else None


_SCALAR_TYPES: Mapping[tuple[str, str | None], pa.DataType] = {
    ("integer", "int32"): pa.int32(),
    ("integer", "int64"): pa.int64(),
    ("integer", None): pa.int64(),
    ("number", "float"): pa.float32(),
    ("number", "double"): pa.float64(),
    ("number", None): pa.float64(),
    ("boolean", None): pa.bool_(),
    ("string", None): pa.string(),
    ("string", "binary"): pa.binary(),
    ("string", "byte"): pa.binary(),
    ("string", "date-time"): pa.timestamp("us"),
    ("string", "date"): pa.date32(),
}


def arrow_type(spec: object) -> pa.DataType | None:
    """The Arrow type for one OpenAPI schema, or ``None`` when unknown (send as is).

    An unlisted ``format`` falls back to its type's default (``integer`` -> int64, ``number``
    -> float64, ``string`` -> string); arrays and objects map recursively, and an array or
    object with any unknown part is unknown as a whole.
    """
    kind = _openapi_type(spec)
    if kind == "array":
        item = arrow_type(_get(spec, "items"))
        return None if item is None else pa.list_(item)
    if kind == "object":
        return _struct_type(_mapping(_get(spec, "properties")))
    if kind is None:
        return None
    fmt = _get(spec, "format")
    fmt = fmt if isinstance(fmt, str) else None
    return _SCALAR_TYPES.get((kind, fmt), _SCALAR_TYPES.get((kind, None)))


def _struct_type(properties: Mapping[str, Any]) -> pa.DataType | None:
    fields = [(str(name), arrow_type(spec)) for name, spec in properties.items()]
    if not fields or any(kind is None for _, kind in fields):
        return None
    return pa.struct([pa.field(name, kind) for name, kind in fields])


def format_schema(model: ModelSchema) -> list[tuple[str, str, str]]:
    """Rows of (column, type, ``required``/``optional``) for ``validate``/``describe``."""
    return [
        (c.name, "unknown" if c.type is None else str(c.type), _requirement(c.required))
        for c in model.columns
    ]


def _requirement(required: bool) -> str:
    return "required" if required else "optional"


# --- input schema -> CastPlan -------------------------------------------------------------------


class _Fit(enum.IntEnum):
    """How a found type fits a target type; a nested type fits as its worst part."""

    SAME = 0  # nothing to do
    SAFE = 1  # the cast keeps every value exactly
    LOSSY = 2  # accepted precision loss the server would cause anyway (cast unchecked)
    CHECKED = 3  # the cast checks each value; apply() refuses a batch with one that does not fit
    NO = 4  # refused


@dataclass(frozen=True, slots=True)
class CastPlan:
    """Which input columns to send, and the type each is cast to first.

    Attributes:
        columns: the model's columns present in the input, in the model's order.
        targets: the type to cast each column to; ``None`` sends it as it is.
        found: the input type of each column, for :meth:`describe` (may be empty).
    """

    columns: tuple[str, ...]
    targets: tuple[pa.DataType | None, ...]
    found: tuple[pa.DataType, ...] = ()

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.columns):
            raise ValueError("CastPlan needs one target per column")

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Select the model's columns (dropping the rest) and cast them.

        Raises:
            SchemaError: the batch lacks a planned column, or a checked cast met a value that
                does not fit (e.g. an int64 too large for an int32 column).
        """
        untouched = all(target is None for target in self.targets)
        if untouched and list(batch.schema.names) == list(self.columns):
            return batch
        arrays = [
            _cast_column(batch, name, target)
            for name, target in zip(self.columns, self.targets, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, names=list(self.columns))

    def describe(self) -> list[str]:
        """One human line per sent column, e.g. ``"int_col: int32 -> int64"``."""
        found = self.found or (None,) * len(self.columns)
        return [
            _describe_column(name, source, target)
            for name, source, target in zip(self.columns, found, self.targets, strict=True)
        ]


def plan_cast(input_schema: pa.Schema, model: ModelSchema | None) -> CastPlan:
    """Decide which input columns to send and how to cast them, before anything is sent.

    Args:
        input_schema: the Arrow schema of the input.
        model: the endpoint's schema; ``None`` sends every input column as it is (the caller
            warns that nothing could be checked).

    Returns:
        The plan. Extra input columns are not sent; optional model columns missing from the
        input are simply left out.

    Raises:
        SchemaError: listing every problem at once, one line per column, expected vs found.
    """
    counts = Counter(input_schema.names)
    problems = [
        f"column '{name}' appears {n} times in the input; keep one"
        for name, n in counts.items()
        if n > 1
    ]
    if model is None:
        specs = tuple(ColumnSpec(name, None, True) for name in counts)
    else:
        specs = model.columns
    columns: list[str] = []
    targets: list[pa.DataType | None] = []
    found: list[pa.DataType] = []
    for spec in specs:
        if counts[spec.name] != 1:
            if counts[spec.name] == 0 and spec.required:
                problems.append(_missing_column(spec, input_schema.names, specs))
            continue
        kind = input_schema.field(spec.name).type
        if spec.type is not None and _fit(kind, spec.type) is _Fit.NO:
            problems.append(
                f"column '{spec.name}': found {kind}, expected {spec.type} — "
                "cast it upstream or choose another endpoint"
            )
        columns.append(spec.name)
        targets.append(None if spec.type is None or kind == spec.type else spec.type)
        found.append(kind)
    if model is not None and model.columns and not columns and not problems:
        problems.append(
            f"none of the model's columns ({', '.join(model.names)}) is in the input "
            f"(found: {', '.join(input_schema.names) or 'no columns'})"
        )
    if problems:
        raise SchemaError(_schema_message(model, problems), problems)
    return CastPlan(columns=tuple(columns), targets=tuple(targets), found=tuple(found))


def _missing_column(spec: ColumnSpec, present: Sequence[str], specs: Sequence[ColumnSpec]) -> str:
    expected = "any type" if spec.type is None else str(spec.type)
    line = f"missing required column '{spec.name}' (expected {expected})"
    wanted = {s.name for s in specs}
    key = spec.name.strip().casefold()
    close = [n for n in present if n not in wanted and n.strip().casefold() == key]
    if close:
        return line + f" — did you mean '{close[0]}'? Names are matched exactly: rename it"
    return line + " — add it to the input"


def _schema_message(model: ModelSchema | None, problems: list[str]) -> str:
    served = f" of served model '{model.served_model}'" if model and model.served_model else ""
    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"the input does not fit the model signature{served} ({count}):\n{lines}"


def _fit(found: pa.DataType, target: pa.DataType) -> _Fit:
    """How ``found`` fits ``target``; see the module docstring for the rules."""
    if found == target:
        return _Fit.SAME
    if pa.types.is_null(found):
        return _Fit.SAFE
    if pa.types.is_dictionary(found):
        return max(_Fit.SAFE, _fit(found.value_type, target))
    for is_kind, rule in _TARGET_RULES:
        if is_kind(target):
            return rule(found, target)
    return _Fit.NO


def _fit_integer(found: pa.DataType, target: pa.DataType) -> _Fit:
    if not pa.types.is_integer(found):
        return _Fit.NO
    low, high = _int_range(found)
    target_low, target_high = _int_range(target)
    return _Fit.SAFE if target_low <= low and high <= target_high else _Fit.CHECKED


def _int_range(kind: pa.DataType) -> tuple[int, int]:
    bits = kind.bit_width
    if pa.types.is_unsigned_integer(kind):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


#: Integers of fewer bits than the float's significand convert exactly.
_SIGNIFICAND_BITS = {16: 11, 32: 24, 64: 53}


def _fit_float(found: pa.DataType, target: pa.DataType) -> _Fit:
    if pa.types.is_floating(found):
        return _Fit.SAFE if found.bit_width <= target.bit_width else _Fit.LOSSY
    if pa.types.is_integer(found):
        exact = found.bit_width < _SIGNIFICAND_BITS[target.bit_width]
        return _Fit.SAFE if exact else _Fit.LOSSY
    if pa.types.is_decimal(found):
        return _Fit.LOSSY
    return _Fit.NO


def _fit_string(found: pa.DataType, target: pa.DataType) -> _Fit:
    is_text = pa.types.is_string(found) or pa.types.is_large_string(found)
    return _Fit.SAFE if is_text or pa.types.is_string_view(found) else _Fit.NO


def _fit_binary(found: pa.DataType, target: pa.DataType) -> _Fit:
    kinds = (
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_binary_view,
        pa.types.is_fixed_size_binary,
    )
    return _Fit.SAFE if any(is_kind(found) for is_kind in kinds) else _Fit.NO


_TIME_UNITS = ("s", "ms", "us", "ns")


def _fit_timestamp(found: pa.DataType, target: pa.DataType) -> _Fit:
    if pa.types.is_date(found):
        return _Fit.SAFE
    if not pa.types.is_timestamp(found):
        return _Fit.NO
    finer = _TIME_UNITS.index(found.unit) > _TIME_UNITS.index(target.unit)
    return _Fit.LOSSY if finer else _Fit.SAFE  # sub-unit digits are truncated, as JSON would


def _fit_date(found: pa.DataType, target: pa.DataType) -> _Fit:
    return _Fit.CHECKED if pa.types.is_date(found) else _Fit.NO


def _fit_list(found: pa.DataType, target: pa.DataType) -> _Fit:
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if not any(is_kind(found) for is_kind in lists):
        return _Fit.NO
    return max(_Fit.SAFE, _fit(found.value_type, target.value_type))


def _fit_struct(found: pa.DataType, target: pa.DataType) -> _Fit:
    if not pa.types.is_struct(found):
        return _Fit.NO
    fits = [_Fit.SAFE]
    for wanted in target:
        index = found.get_field_index(wanted.name)
        fits.append(_Fit.NO if index < 0 else _fit(found.field(index).type, wanted.type))
    return max(fits)


_TARGET_RULES = (
    (pa.types.is_integer, _fit_integer),
    (pa.types.is_floating, _fit_float),
    (pa.types.is_string, _fit_string),
    (pa.types.is_binary, _fit_binary),
    (pa.types.is_timestamp, _fit_timestamp),
    (pa.types.is_date, _fit_date),
    (pa.types.is_list, _fit_list),
    (pa.types.is_struct, _fit_struct),
)  # any other target (bool, ...) fits only its own type, which _fit() answers as SAME


def _cast_column(batch: pa.RecordBatch, name: str, target: pa.DataType | None) -> pa.Array:
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise SchemaError(f"column '{name}' is missing from this batch (or appears twice)")
    column = batch.column(index)
    if target is None or column.type == target:
        return column
    fit = _fit(column.type, target)
    if fit is _Fit.NO:
        raise SchemaError(
            f"column '{name}': found {column.type}, expected {target} — "
            "cast it upstream or choose another endpoint",
            [f"column '{name}': found {column.type}, expected {target}"],
        )
    try:
        return _cast(column, target, safe=fit is not _Fit.LOSSY)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        problem = f"column '{name}': a value does not fit {target} ({exc})"
        raise SchemaError(problem + " — fix or filter those rows upstream", [problem]) from exc


def _cast(column: pa.Array, target: pa.DataType, *, safe: bool) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), target)
    return pc.cast(column, target, safe=safe)


def _describe_column(name: str, found: pa.DataType | None, target: pa.DataType | None) -> str:
    if target is None:
        return f"{name}: {'as is' if found is None else found}"
    if found is None:
        return f"{name}: -> {target}"
    notes = {_Fit.LOSSY: " (may lose precision)", _Fit.CHECKED: " (checked: values must fit)"}
    return f"{name}: {found} -> {target}{notes.get(_fit(found, target), '')}"
