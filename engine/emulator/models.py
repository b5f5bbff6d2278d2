"""Models the emulator serves: deterministic, vectorised, each with a signature.

A :class:`Model` wraps a callable that takes the request's rows (a pyarrow ``Table``, or a
polars ``DataFrame`` when ``input_format="polars"``) and returns one prediction per row.
``Model.predict`` is exactly what the data plane runs, so tests compute the expected
predictions from the same input. Poison values (:data:`POISON_VALUE`, :data:`POISON_TEXT`)
make the *server* refuse the whole batch like a crashing model (see :func:`find_poison`);
``predict`` itself never checks them.

Built-in models (``BUILTIN_MODELS``):

* ``demo-regressor``: ``x0..x7`` double, ``count`` long, optional ``segment`` string ->
  one double per row, ``3.0 + sum(w_i * x_i) + 0.01 * count + offset[segment]``.
* ``demo-classifier``: ``f0..f3`` double, optional ``flag`` boolean -> one object per row,
  ``{"label": "low"|"mid"|"high", "probabilities": [p_low, p_mid, p_high]}``.
* ``demo-text``: ``text`` string, optional ``boost`` long, param ``scale`` (double, 1.0) ->
  one double per row, ``scale * (characters + 2 * count of "e") + boost``.

Only IEEE-exact arithmetic (+, -, *, /) is used, elementwise, so a row's prediction is the
same whatever batch it arrives in.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.emulator.signature import ColumnSpec, ParamSpec, Signature

__all__ = [
    "BUILTIN_MODELS",
    "POISON_TEXT",
    "POISON_VALUE",
    "InputFormat",
    "Model",
    "builtin_model",
    "find_poison",
    "load_callable",
]

#: A numeric value that makes the model refuse the whole batch.
POISON_VALUE = -999999
#: A string value that makes the model refuse the whole batch.
POISON_TEXT = "__poison__"

InputFormat = Literal["arrow", "polars"]

_DOUBLE = {"type": "number", "format": "double"}
_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa")


@dataclass(frozen=True)
class Model:
    """A served model.

    Attributes:
        name: the registered model's name (``entity_name`` on the endpoint).
        signature: inputs, params and prediction type.
        fn: ``fn(rows)`` or ``fn(rows, params)`` -> one prediction per row.
        input_format: what ``fn`` receives: ``"arrow"`` (pyarrow Table) or ``"polars"``.
        version: the registered model version (``entity_version``).
    """

    name: str
    signature: Signature
    fn: Callable[..., Any]
    input_format: InputFormat = "arrow"
    version: str = "1"
    _takes_params: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_takes_params", _positional_count(self.fn) >= 2)

    def predict(self, table: pa.Table, params: Mapping[str, Any] | None = None) -> Any:
        """Predictions for ``table`` (signature columns): a list or numpy array, one per row.

        Raises:
            ValueError: the callable returned a different number of predictions than rows.
        """
        rows = table.select(list(self.signature.names))
        if self.input_format == "polars":
            import polars as pl

            rows = pl.from_arrow(rows)
        merged = {**self.signature.param_defaults(), **(params or {})}
        out = self.fn(rows, merged) if self._takes_params else self.fn(rows)
        predictions = _as_predictions(out)
        if len(predictions) != table.num_rows:
            raise ValueError(
                f"model returned {len(predictions)} predictions for {table.num_rows} rows"
            )
        return predictions

    def sample(self, rows: int, *, seed: int = 0) -> pa.Table:
        """``rows`` random rows fitting the signature (no nulls, no poison), same for a seed."""
        rng = np.random.default_rng(seed)
        arrays = [_sample_column(c, rows, rng) for c in self.signature.columns]
        return pa.Table.from_arrays(arrays, schema=self.signature.arrow_schema())

    @classmethod
    def from_callable(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        signature: Signature | Mapping[str, str] | None = None,
        sample: str | Path | pa.Table | None = None,
        input_format: InputFormat | None = None,
        output: Mapping[str, Any] | None = None,
    ) -> Model:
        """Wrap a user callable; its signature comes from ``signature``, ``fn.signature``, or
        is inferred from ``sample`` (a Parquet/CSV path or a table) or ``fn.sample``.

        ``fn.input_format`` ("arrow"/"polars") and ``fn.output`` (OpenAPI schema of one
        prediction, default double) are read the same way.

        Raises:
            ValueError: no signature could be found.
        """
        declared = signature if signature is not None else getattr(fn, "signature", None)
        sig = _resolve_signature(
            declared, sample if sample is not None else getattr(fn, "sample", None)
        )
        out = output or getattr(fn, "output", None) or sig.output or _DOUBLE
        fmt = input_format or getattr(fn, "input_format", "arrow")
        if fmt not in ("arrow", "polars"):
            raise ValueError(f"input_format must be 'arrow' or 'polars', got {fmt!r}")
        label = str(name or getattr(fn, "__name__", "model"))
        return cls(label, Signature(sig.columns, sig.params, out), fn, fmt)


def _positional_count(fn: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds)


def _as_predictions(out: Any) -> Any:
    if isinstance(out, np.ndarray | list):
        return out
    if isinstance(out, pa.ChunkedArray | pa.Array):
        return (
            out.to_numpy(zero_copy_only=False)
            if pa.types.is_primitive(out.type)
            else out.to_pylist()
        )
    to_numpy = getattr(out, "to_numpy", None)  # polars / pandas Series
    if callable(to_numpy):
        return to_numpy()
    return list(out)


def _resolve_signature(declared: Any, sample: str | Path | pa.Table | None) -> Signature:
    if isinstance(declared, Signature):
        return declared
    if isinstance(declared, Mapping | list | tuple):
        return Signature.of(declared)
    if sample is not None:
        table = sample if isinstance(sample, pa.Table) else _read_sample(Path(sample))
        return Signature.infer(table.schema)
    raise ValueError(
        "the model has no signature: give signature=..., set fn.signature = {'col': 'double'}, "
        "or a sample Parquet/CSV file to infer it from"
    )


def _read_sample(path: Path) -> pa.Table:
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    import pyarrow.parquet as pq

    return pq.read_table(path)


def load_callable(spec: str) -> Callable[..., Any]:
    """``"package.module:attr"`` -> the object.

    Raises:
        ValueError: the spec is malformed, the module cannot be imported or lacks ``attr``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model {spec!r} must look like module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for model {spec!r}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"{spec!r} is not a callable")
    return target  # type: ignore[no-any-return]


def _sample_column(spec: ColumnSpec, rows: int, rng: np.random.Generator) -> pa.Array:
    kind = spec.type
    if kind in ("double", "float"):
        return pa.array(np.round(rng.normal(0.0, 10.0, rows), 6), type=spec.arrow_type())
    if kind in ("long", "integer"):
        return pa.array(rng.integers(0, 1000, rows), type=spec.arrow_type())
    if kind == "boolean":
        return pa.array(rng.random(rows) < 0.5)
    if kind == "string":
        picks = rng.integers(0, len(_WORDS), (rows, 3)).tolist()
        sizes = rng.integers(1, 4, rows).tolist()  # 1-3 words: single words hit segment offsets
        return pa.array(
            [" ".join(_WORDS[i] for i in row[:k]) for row, k in zip(picks, sizes, strict=True)]
        )
    return pa.nulls(rows, spec.arrow_type())


def find_poison(table: pa.Table) -> str | None:
    """Describe the first poison value in ``table``, or ``None`` when there is none."""
    for name in table.column_names:
        column = table.column(name)
        marker: Any
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            marker = POISON_VALUE
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            marker = POISON_TEXT
        else:
            continue
        row = pc.index(column, pa.scalar(marker, type=column.type)).as_py()
        if row >= 0:
            return f"column '{name}' holds the poison value {marker!r} at row {row}"
    return None


# ---- built-in demo models -------------------------------------------------------------

_REGRESSOR_WEIGHTS = (0.5, -1.25, 2.0, 0.75, -0.5, 1.5, -2.25, 0.125)
_REGRESSOR_INTERCEPT = 3.0
_REGRESSOR_COUNT_WEIGHT = 0.01
_SEGMENT_OFFSETS = {"alpha": 1.0, "beta": -1.0, "gamma": 2.5, "delta": -0.5}


def _numpy(table: pa.Table, name: str, fill: float = 0.0) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        column = pc.fill_null(column, fill)
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _regress(table: pa.Table) -> np.ndarray:
    total = np.full(table.num_rows, _REGRESSOR_INTERCEPT)
    for i, weight in enumerate(_REGRESSOR_WEIGHTS):
        total = total + weight * _numpy(table, f"x{i}")
    total = total + _REGRESSOR_COUNT_WEIGHT * _numpy(table, "count")
    segment = table.column("segment")
    for value, offset in _SEGMENT_OFFSETS.items():
        hit = pc.fill_null(pc.equal(segment, value), False).to_numpy(zero_copy_only=False)
        total = total + offset * hit.astype(np.float64)
    return total


_CLASS_LABELS = ("low", "mid", "high")
_CLASS_WEIGHTS = ((1.0, -0.5, 0.25, 0.0), (-0.25, 1.0, 0.5, -0.75), (0.5, 0.25, -1.0, 1.0))
_CLASS_FLAG_BONUS = (0.0, 0.5, -0.5)


def _classify(table: pa.Table) -> list[dict[str, Any]]:
    features = [_numpy(table, f"f{i}") for i in range(4)]
    flag = _numpy(table, "flag")
    scores = []
    for weights, bonus in zip(_CLASS_WEIGHTS, _CLASS_FLAG_BONUS, strict=True):
        score = bonus * flag
        for weight, feature in zip(weights, features, strict=True):
            score = score + weight * feature
        scores.append(score)
    best = np.maximum(np.maximum(scores[0], scores[1]), scores[2])
    closeness = [1.0 / (1.0 + (best - s)) for s in scores]  # softmax-like, exact arithmetic
    total = closeness[0] + closeness[1] + closeness[2]
    probabilities = np.stack([c / total for c in closeness], axis=1)
    labels = np.argmax(np.stack(scores, axis=1), axis=1)
    return [
        {"label": _CLASS_LABELS[k], "probabilities": p}
        for k, p in zip(labels.tolist(), probabilities.tolist(), strict=True)
    ]


def _text_score(table: pa.Table, params: Mapping[str, Any]) -> np.ndarray:
    text = table.column("text")
    length = np.asarray(pc.utf8_length(text).to_numpy(), dtype=np.float64)
    es = np.asarray(pc.count_substring(text, "e").to_numpy(), dtype=np.float64)
    scored: np.ndarray = float(params["scale"]) * (length + 2.0 * es) + _numpy(table, "boost")
    return scored


_CLASSIFIER_OUTPUT = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "probabilities": {"type": "array", "items": dict(_DOUBLE)},
    },
}


def _builtin_models() -> dict[str, Model]:
    regressor = Signature(
        (
            *(ColumnSpec(f"x{i}", "double") for i in range(8)),
            ColumnSpec("count", "long"),
            ColumnSpec("segment", "string", required=False),
        ),
        output=_DOUBLE,
    )
    classifier = Signature(
        (*(ColumnSpec(f"f{i}", "double") for i in range(4)), ColumnSpec("flag", "boolean", False)),
        output=_CLASSIFIER_OUTPUT,
    )
    text = Signature(
        (ColumnSpec("text", "string"), ColumnSpec("boost", "long", required=False)),
        params=(ParamSpec("scale", "double", 1.0),),
        output=_DOUBLE,
    )
    return {
        "demo-regressor": Model("demo_regressor", regressor, _regress),
        "demo-classifier": Model("demo_classifier", classifier, _classify),
        "demo-text": Model("demo_text", text, _text_score),
    }


#: The built-in models by endpoint name.
BUILTIN_MODELS: Mapping[str, Model] = _builtin_models()


def builtin_model(name: str) -> Model:
    """The built-in model served on endpoint ``name``.

    Raises:
        ValueError: no built-in model has that name.
    """
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(
            f"no built-in model {name!r}; choose from {sorted(BUILTIN_MODELS)}"
        ) from None
