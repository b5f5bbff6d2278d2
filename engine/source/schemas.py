"""One schema per run: the files' schemas unified by a lossless-in-practice widening
(the rule is in :mod:`engine.source`'s docstring), or an InputError naming file and columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from engine.errors import InputError

__all__ = ["unify_all"]


def _promote(left: pa.DataType, right: pa.DataType) -> pa.DataType | None:
    """The type both can be read as, or ``None``; see the module docstring for the rule."""
    if left.equals(right):
        return left
    if pa.types.is_null(left) or pa.types.is_null(right):
        return right if pa.types.is_null(left) else left
    if pa.types.is_signed_integer(left) and pa.types.is_signed_integer(right):
        return left if left.bit_width >= right.bit_width else right
    numeric = (pa.types.is_signed_integer, pa.types.is_unsigned_integer, pa.types.is_floating)
    if all(any(test(t) for test in numeric) for t in (left, right)) and (
        pa.types.is_floating(left) or pa.types.is_floating(right)
    ):
        return pa.float64()
    strings = {pa.string(), pa.large_string()}
    if left in strings and right in strings:
        return pa.large_string()
    return None


def _unify(schema: pa.Schema, other: pa.Schema, first: str, path: str) -> pa.Schema:
    """``schema`` widened to also hold ``other`` (the schema of ``path``), or InputError."""
    if set(schema.names) != set(other.names) or len(other.names) != len(schema.names):
        missing = [name for name in schema.names if name not in other.names]
        extra = [name for name in other.names if name not in schema.names]
        raise InputError(
            f"{path} has different columns from {first}: "
            f"missing {missing or 'none'}, extra {extra or 'none'}; all files must share a schema"
        )
    fields, conflicts = [], []
    for here in schema:
        there = other.field(here.name)
        promoted = _promote(here.type, there.type)
        if promoted is None:
            conflicts.append(f"{here.name}: {here.type} in {first}, {there.type} in {path}")
            promoted = here.type
        fields.append(pa.field(here.name, promoted, here.nullable or there.nullable, here.metadata))
    if conflicts:
        raise InputError(
            f"{path} does not share the schema of {first}; column types differ: "
            + "; ".join(conflicts)
        )
    return pa.schema(fields)


def unify_all(schemas: Iterable[tuple[str, pa.Schema]]) -> pa.Schema:
    pairs = iter(schemas)
    first, schema = next(pairs)
    schema = pa.schema(list(schema))  # drop file-level metadata (pandas index notes, ...)
    for path, other in pairs:
        schema = _unify(schema, other, first, path)
    return schema
