"""Pure: Arrow batch <-> request/response bytes.

Requests are ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``, built by
orjson from column lists that pyarrow materialises in C++ (``to_pylist``), zipped into rows in
C: no per-cell Python bytecode. Runs of 8 or more adjacent double (or int64) columns skip the
Python values: orjson writes them from one 2-D numpy array, and each row gets its part as one
``orjson.Fragment`` (the same bytes; a property test compares). Exactness rules:

* int64 stays integral at any magnitude; floats are written in their shortest round-trip
  form, float32 in *its* shortest form (``0.1``, not ``0.10000000149011612``);
* null -> ``null``; NaN / Infinity / -Infinity as the bare tokens MLflow's scoring server
  (Python ``json``) accepts;
* timestamps and dates -> ISO 8601 strings (with the offset when the column has a zone);
* decimals -> JSON strings with their exact digits; binary -> base64 strings;
* lists -> arrays, structs -> objects, booleans and strings as themselves.

Responses are parsed with orjson and, only when that fails, Python ``json`` (a real MLflow
server may emit bare ``NaN``), then built straight into an Arrow array.

(Over 400 lines because both directions and their numpy fast paths must agree byte for byte;
they are kept side by side.)
"""

from __future__ import annotations

import base64
import contextlib
import decimal
import gc
import itertools
import json
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from engine.lazy import pc

__all__ = [
    "ResponseFormatError",
    "SplitRows",
    "concat_predictions",
    "decode_predictions",
    "encode_dataframe_split",
    "slices_encode_alike",
]

# Non-finite floats are written as a marker string, then the marker is swapped for the bare
# token. The marker is random per process, so no user string can collide with it.
_MARK = "\x00" + secrets.token_hex(8)
_NON_FINITE = {
    float("inf"): (_MARK + "Infinity", b"Infinity"),
    float("-inf"): (_MARK + "-Infinity", b"-Infinity"),
}
_NAN_MARK = _MARK + "NaN"


class ResponseFormatError(ValueError):
    """The endpoint's answer is not a usable predictions document."""


def _default(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _numpy_view(column: pa.Array) -> np.ndarray[Any, Any]:
    """A null-free float64/int64 array's values as numpy, without a copy.

    Not ``to_numpy()``: its first call imports pandas when pandas is installed (0.2 s).
    """
    dtype = np.float64 if pa.types.is_float64(column.type) else np.int64
    data = column.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(column), offset=column.offset * 8)


def _has_non_finite(column: pa.Array) -> bool:
    if not pa.types.is_floating(column.type) or column.null_count == len(column):
        return False
    if column.null_count == 0 and pa.types.is_float64(column.type):
        return not bool(np.isfinite(_numpy_view(column)).all())  # one pass, no copy
    finite = pc.is_finite(column)
    return not pc.all(pc.or_kleene(finite, pc.is_null(column))).as_py()


def _column_values(column: pa.Array) -> tuple[list[Any], bool]:
    """Python values of one column, and whether markers were used for non-finite floats."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if _is_list(kind) and _leaf_dtype(kind.value_type) is not None:
        return _list_values(column)
    if pa.types.is_float16(kind) or pa.types.is_float32(kind):
        values: list[Any] = _float32_values(column)
    elif column.null_count == 0 and (pa.types.is_float64(kind) or pa.types.is_int64(kind)):
        values = _numpy_view(column).tolist()  # numpy's tolist is faster than Arrow's
    else:
        values = column.to_pylist()
    if not _has_non_finite(column):
        return values, False
    return [_mark(v) for v in values], True


def _float32_values(column: pa.Array) -> list[Any]:
    # Arrow formats float32 in its own shortest form; float() of that text is exact
    # enough that the server parses it back to the very same float32.
    text = pc.cast(column, pa.string()).to_pylist()
    return [None if t is None else float(t) for t in text]


# --- lists of numbers: one numpy view per row, which orjson writes without Python floats ---

#: Arrow leaf types of a list column that orjson writes from numpy (float32 in its shortest
#: float32 form, so it parses back to the same float32; float16 is widened to float32 first).
_LEAF_DTYPES: dict[pa.DataType, Any] = {
    pa.float16(): np.float32,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
}


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _leaf_dtype(kind: pa.DataType) -> Any:
    return _LEAF_DTYPES.get(kind)


def _list_values(column: pa.Array) -> tuple[list[Any], bool]:
    """A list-of-numbers column as one value per row: a numpy view (or, when its numbers hold
    nulls or non-finite floats, a Python list with markers), None for a null list."""
    leaf, bounds = _leaf_and_bounds(column)
    dtype = _leaf_dtype(leaf.type)
    if pa.types.is_float16(leaf.type):
        leaf = pc.cast(leaf, pa.float32())  # exact: every float16 is a float32
    values = _leaf_view(leaf, dtype)
    if leaf.null_count or (values.dtype.kind == "f" and not np.isfinite(values).all()):
        return _marked_lists(column, leaf, bounds)
    if pa.types.is_fixed_size_list(column.type) and column.type.list_size:
        rows: list[Any] = list(values.reshape(len(column), column.type.list_size))
    else:
        rows = [values[a:b] for a, b in itertools.pairwise(bounds.tolist())]
    return _null_rows(column, rows), False


def _leaf_and_bounds(column: pa.Array) -> tuple[pa.Array, np.ndarray[Any, Any]]:
    """The numbers under this slice of ``column``, and each row's [start, stop) into them."""
    n = len(column)
    if pa.types.is_fixed_size_list(column.type):
        size = column.type.list_size
        leaf = column.values.slice(column.offset * size, n * size)
        return leaf, np.arange(0, (n + 1) * size, size, dtype=np.int64)
    width = np.int64 if pa.types.is_large_list(column.type) else np.int32
    offsets = np.frombuffer(
        column.buffers()[1],
        dtype=width,
        count=n + 1,
        offset=column.offset * np.dtype(width).itemsize,
    )
    start = int(offsets[0])
    leaf = column.values.slice(start, int(offsets[-1]) - start)
    return leaf, offsets.astype(np.int64) - start


def _leaf_view(leaf: pa.Array, dtype: Any) -> np.ndarray[Any, Any]:
    """A numeric array's values as numpy, without a copy (null slots hold anything)."""
    width = np.dtype(dtype).itemsize
    data = leaf.buffers()[1]
    if data is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(leaf), offset=leaf.offset * width)


def _marked_lists(
    column: pa.Array, leaf: pa.Array, bounds: np.ndarray[Any, Any]
) -> tuple[list[Any], bool]:
    if pa.types.is_floating(leaf.type):
        flat: list[Any] = (
            _float32_values(leaf) if pa.types.is_float32(leaf.type) else leaf.to_pylist()
        )
        flat = [_mark(v) for v in flat]
    else:
        flat = leaf.to_pylist()
    rows = [flat[a:b] for a, b in itertools.pairwise(bounds.tolist())]
    return _null_rows(column, rows), pa.types.is_floating(leaf.type)


def _null_rows(column: pa.Array, rows: list[Any]) -> list[Any]:
    if column.null_count:
        for index in np.flatnonzero(_null_mask(column)).tolist():
            rows[index] = None
    return rows


def _null_mask(column: pa.Array) -> np.ndarray[Any, Any]:
    """True where ``column`` is null, read from its validity bitmap (not ``to_numpy()``,
    which imports pandas)."""
    bits = np.unpackbits(np.frombuffer(column.buffers()[0], dtype=np.uint8), bitorder="little")
    return ~bits[column.offset : column.offset + len(column)].astype(bool)


def _mark(value: Any) -> Any:
    if value is None or (value == value and value not in _NON_FINITE):
        return value
    if value != value:
        return _NAN_MARK
    return _NON_FINITE[value][0]


def _unmark(payload: bytes) -> bytes:
    prefix = orjson.dumps(_MARK)[:-1]  # '"\u0000<hex>' as orjson escapes it
    payload = payload.replace(prefix + b'NaN"', b"NaN")
    payload = payload.replace(prefix + b'-Infinity"', b"-Infinity")
    return payload.replace(prefix + b'Infinity"', b"Infinity")


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Cyclic GC off while a body's values and row tuples are alive.

    A 1000-row request makes 1000 row tuples (GC-tracked) and a value per cell; every 700 new
    tracked objects start a collection that walks them all, although none can be in a cycle
    and all are freed, by reference count, when the body is done. On the wide table (50
    columns) that was 22% of encoding's CPU. The collector is only paused, never tuned: it
    runs again as soon as the body is built.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def encode_dataframe_split(
    batch: pa.RecordBatch | pa.Table, *, params: Mapping[str, Any] | None = None
) -> bytes:
    """``batch`` as a ``dataframe_split`` request body (plus ``params`` when given)."""
    with _no_gc_pauses():
        return _encode_dataframe_split(batch, params)


def _encode_dataframe_split(
    batch: pa.RecordBatch | pa.Table, params: Mapping[str, Any] | None
) -> bytes:
    columns, marked = _row_parts(_arrays(batch))
    rows = list(zip(*columns, strict=True)) if columns else []
    return _dump(list(batch.schema.names), rows, params, marked)


def _arrays(batch: pa.RecordBatch | pa.Table) -> list[pa.Array]:
    return [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in batch.columns]


def _dump(
    names: list[str], rows: list[Any], params: Mapping[str, Any] | None, marked: bool
) -> bytes:
    document: dict[str, Any] = {"dataframe_split": {"columns": names, "data": rows}}
    if params:
        document["params"] = dict(params)
    payload = orjson.dumps(document, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)
    return _unmark(payload) if marked else payload


def slices_encode_alike(schema: pa.Schema) -> bool:
    """Whether :class:`SplitRows` gives, for batches of ``schema``, the very bytes that
    :func:`encode_dataframe_split` gives each slice. Not with a list of float32 or float16
    numbers: whether they are written from numpy (their float32 form, ``1e-6``) or as Python
    floats (``0.000001``) is decided over the whole array, and one null or non-finite number
    anywhere in a batch switches every row. The same values either way, but another body is
    another checkpoint key."""
    for kind in schema.types:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if _is_list(kind) and kind.value_type in (pa.float16(), pa.float32()):
            return False
    return True


class SplitRows:
    """The rows of a batch made ready for ``dataframe_split`` bodies once, for many small
    requests cut from it: each body is then a slice of them, the same bytes as
    :func:`encode_dataframe_split` of that slice where :func:`slices_encode_alike` says so
    (the caller's to check).

    Each column costs a few numpy and Arrow calls (a view, a finiteness check, its values)
    whatever its length: for a 100-row request of four columns they cost more than the
    values themselves (1.1-1.25 -> 0.34-0.44 us/row in-process on the 4-column table made
    once for a 16k-row read; 50 columns, 100-row requests: 5.6-6.5 -> 3.3-3.9).
    """

    def __init__(
        self, batch: pa.RecordBatch | pa.Table, *, params: Mapping[str, Any] | None = None
    ) -> None:
        with _no_gc_pauses():
            self._parts, self._marked = _row_parts(_arrays(batch))
        self._names = list(batch.schema.names)
        self._params = params

    def body(self, start: int, stop: int) -> bytes:
        """The request body of rows ``start`` to ``stop`` (exclusive)."""
        with _no_gc_pauses():
            parts = [part[start:stop] for part in self._parts]
            rows = list(zip(*parts, strict=True)) if parts else []
            return _dump(self._names, rows, self._params, self._marked)


# --- runs of numeric columns: one 2-D numpy array, one pre-written fragment per row ---

#: Column types whose runs orjson writes from one 2-D numpy array (the same number formatting
#: as for Python floats and ints, so the same bytes).
_RUN_DTYPES: dict[pa.DataType, Any] = {pa.float64(): np.float64, pa.int64(): np.int64}

#: Fewest adjacent columns worth a run. Measured on the wide table (30 double + 10 int64 +
#: 10 short strings, 1000-row requests): 3.5 -> 2.2 ms per request with runs of 8 or more.
_MIN_RUN = 8

_RIGHT = ord("]")


def _row_parts(arrays: list[pa.Array]) -> tuple[list[list[Any]], bool]:
    """What each row holds, part by part: one list per column (its values), except that a run
    of ``_MIN_RUN`` or more null-free, finite numeric columns of one type is one list of
    ``orjson.Fragment`` (each row's numbers of the run, already written); whether markers
    were used for non-finite floats."""
    parts: list[list[Any]] = []
    marked = False
    index = 0
    while index < len(arrays):
        stop = _run_end(arrays, index)
        fragments = _run_fragments(arrays[index:stop]) if stop - index >= _MIN_RUN else None
        if fragments is not None:
            parts.append(fragments)
            index = stop
            continue
        for array in arrays[index : max(stop, index + 1)]:
            values, used = _column_values(array)
            parts.append(values)
            marked = marked or used
        index = max(stop, index + 1)
    return parts, marked


def _run_end(arrays: list[pa.Array], start: int) -> int:
    """Where the run of same-typed, null-free run-type columns from ``start`` ends."""
    kind = arrays[start].type
    if kind not in _RUN_DTYPES:
        return start
    stop = start
    while stop < len(arrays) and arrays[stop].type == kind and arrays[stop].null_count == 0:
        stop += 1
    return stop


def _run_fragments(run: list[pa.Array]) -> list[Any] | None:
    """Each row's values of ``run`` as one fragment, ``1.5,-2,3e-07``; None when a float
    is NaN or infinite (those are written as bare tokens, column by column)."""
    dtype = _RUN_DTYPES[run[0].type]
    matrix = np.column_stack([_leaf_view(array, dtype) for array in run])  # C order: rows
    if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
        return None
    text = orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY)  # [[1.5,-2.0],[...]]
    # Numbers hold no brackets: row i ends at the i-th "]", and the next starts three bytes
    # on, after "],[" (one scan, not one for each bracket: 0.22 -> 0.12 ms per 1000 rows of
    # 30 doubles).
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == _RIGHT)[:-1]
    starts = np.concatenate(([2], ends[:-1] + 3)) if len(ends) else ends
    fragment = orjson.Fragment
    return [fragment(text[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # accepts the bare NaN / Infinity a real MLflow server sends
    except (ValueError, UnicodeDecodeError) as exc:
        start = body[:120].decode("utf-8", "replace")
        raise ResponseFormatError(f"the response is not JSON: {start!r}") from exc


#: numpy dtypes whose buffers become Arrow arrays as they are (no copy, no Python objects).
_NUMPY_TO_ARROW = {"f": pa.float64(), "i": pa.int64()}


def _numbers(values: list[Any]) -> pa.Array | None:
    """A list of plain floats or ints (the common answer) as an Arrow array, through numpy.

    ``pa.array`` would do too, but its first call imports pandas when pandas is installed
    (0.2 s and tens of MB, mid-run); numpy builds the buffer and Arrow wraps it.
    None when the list holds anything else (nulls, text, lists, objects, huge ints, bools).
    """
    first = values[0] if values else None
    if type(first) not in (float, int):
        return None
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = _NUMPY_TO_ARROW.get(array.dtype.kind)
    if kind is None or array.ndim != 1 or array.dtype.itemsize != 8:
        return None
    return pa.Array.from_buffers(kind, len(array), [None, pa.py_buffer(array)])


def _to_arrow(values: list[Any], target: pa.DataType | None) -> pa.Array:
    """Arrow's inference is ~6x faster than a typed conversion (13 vs 84 µs per 1000
    doubles), so infer first and cast numbers to numbers; anything else converts typed."""
    inferred = _numbers(values)
    if inferred is None:
        inferred = pa.array(values, from_pandas=False)
    if target is None or inferred.type == target:
        return inferred
    if _numeric(inferred.type) and _numeric(target):
        return inferred.cast(target)  # safe cast: refuses overflow and lossy float -> int
    return pa.array(values, type=target, from_pandas=False)


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind))


def decode_predictions(
    body: bytes, *, expected_rows: int, prediction_type: pa.DataType | None = None
) -> pa.Array:
    """The predictions in ``body`` as an Arrow array of ``expected_rows`` values.

    Accepts ``{"predictions": [...]}``, ``{"outputs": [...]}`` and a bare list. Scalars become
    double/int64/string/bool, lists become list arrays, objects become structs; with
    ``prediction_type`` the array has exactly that type.

    Raises:
        ResponseFormatError: not JSON, no predictions, a different number of them than
            ``expected_rows``, or values that do not fit ``prediction_type``.
    """
    document = _parse(body)
    if isinstance(document, dict):
        predictions = document.get("predictions", document.get("outputs"))
    else:
        predictions = document
    if not isinstance(predictions, list):
        raise ResponseFormatError(f"the response has no 'predictions' list ({_found(document)})")
    if len(predictions) != expected_rows:
        raise ResponseFormatError(
            f"the response has {len(predictions)} predictions for {expected_rows} rows"
        )
    try:
        return _to_arrow(predictions, prediction_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        want = f" as {prediction_type}" if prediction_type is not None else ""
        raise ResponseFormatError(f"the predictions cannot be read{want}: {exc}") from exc


def _found(document: Any) -> str:
    """What the answer held instead of a predictions list, e.g. ``'predictions' is null``."""
    if not isinstance(document, dict):
        return f"found: {type(document).__name__}"
    for key in ("predictions", "outputs"):
        if key in document:
            return f"'{key}' is {_json_kind(document[key])}"
    return f"found: {', '.join(sorted(document)) or 'an empty object'}"


def _json_kind(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", dict: "an object"}
    return names.get(type(value), "a number")


def concat_predictions(chunks: list[pa.Array]) -> pa.Array:
    """Join prediction pieces; all-null pieces (rejected rows) take the others' type."""
    typed = [c.type for c in chunks if not pa.types.is_null(c.type)]
    if not typed:
        return pa.concat_arrays(chunks)
    return pa.concat_arrays([c if c.type == typed[0] else c.cast(typed[0]) for c in chunks])
