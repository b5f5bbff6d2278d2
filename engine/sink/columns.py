"""The output's columns: the kept input columns, then ``prediction``, then ``error``; a
result fitted to them, cast only where the cast loses nothing.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from engine.errors import EngineError

__all__ = [
    "RESULT_COLUMNS",
    "cast",
    "fit_result",
    "fits",
    "is_text",
]

RESULT_COLUMNS = ("prediction", "error")


def fit_result(
    batch_id: int, table: pa.Table, kept: pa.Schema | None
) -> tuple[pa.Table, pa.Schema]:
    """``table`` with its kept columns fitted to ``kept`` and ``error`` as string, and the kept
    schema (``kept``, or the table's own columns when ``kept`` is ``None``: the first result).

    Raises:
        EngineError: a result column is missing, or the kept columns or types do not fit.
    """
    if kept is not None and fits(table.schema, kept):
        return table, kept  # the pipeline's results always do: one C++ comparison per batch
    missing = [name for name in RESULT_COLUMNS if name not in table.column_names]
    if missing:
        raise EngineError(f"batch {batch_id}'s result has no {' or '.join(missing)} column")
    kept_names = [name for name in table.column_names if name not in RESULT_COLUMNS]
    if kept is None:
        kept = pa.schema([table.schema.field(name) for name in kept_names])
    if set(kept_names) != set(kept.names) or len(kept_names) != len(kept):
        raise EngineError(
            f"batch {batch_id}'s kept columns are {kept_names}, but the output's are {kept.names}"
        )
    columns = [
        cast(table.column(f.name), f.type, f"batch {batch_id} column {f.name!r}") for f in kept
    ]
    error = cast(table.column("error"), pa.string(), f"batch {batch_id} column 'error'")
    names = [*kept.names, *RESULT_COLUMNS]
    fitted = pa.Table.from_arrays([*columns, table.column("prediction"), error], names=names)
    return fitted, kept


def fits(schema: pa.Schema, kept: pa.Schema) -> bool:
    """``schema`` is exactly the kept columns, then ``prediction``, then a string ``error``."""
    n = len(kept)
    return (
        len(schema) == n + 2
        and schema.names[n:] == list(RESULT_COLUMNS)
        and schema.field(n + 1).type == pa.string()
        and pa.schema(list(schema)[:n]).equals(kept)
    )


def cast(column: Any, target: pa.DataType, where: str, hint: str = "") -> Any:
    """Cast ``column`` losslessly, or raise EngineError saying ``where``, why, and ``hint``."""
    if column.type.equals(target):
        return column
    dropped = _dropped_fields(column.type, target)
    if dropped:
        raise EngineError(f"{where}: {target} has no field(s) {', '.join(dropped)}{hint}")
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        message = f"{where}: cannot cast {column.type} to {target}: {exc}{hint}"
        raise EngineError(message) from exc


def _dropped_fields(source: pa.DataType, target: pa.DataType, prefix: str = "") -> list[str]:
    """Struct fields a cast would silently drop (pyarrow drops them without an error)."""
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        targets = {target.field(i).name: target.field(i).type for i in range(target.num_fields)}
        dropped: list[str] = []
        for i in range(source.num_fields):
            child = source.field(i)
            if child.name not in targets:
                dropped.append(prefix + child.name)
            else:
                dropped += _dropped_fields(child.type, targets[child.name], f"{child.name}.")
        return dropped
    listlike = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(test(source) for test in listlike) and any(test(target) for test in listlike):
        return _dropped_fields(source.value_type, target.value_type, prefix)
    return []


def is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))
