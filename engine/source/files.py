"""Files, directories and globs as one :class:`~engine.source.base.Source`: found by
:mod:`engine.location`, one format per run, schemas unified, units dealt for a shard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from engine.errors import InputError
from engine.location import SUFFIXES, find_files, format_of
from engine.source.base import FileReader, Source
from engine.source.csv import csv_units
from engine.source.parquet import parquet_units
from engine.source.shards import dealt, merged

__all__ = ["file_source"]


def file_source(
    items: Sequence[str | os.PathLike[str]], format: str | None, shard: tuple[int, int] | None
) -> Source:
    files = find_files(items, format)
    fmt = format or _single_format([file.name for file in files])
    split = shard is not None
    schema, units = parquet_units(files, split) if fmt == "parquet" else csv_units(files, split)
    if shard is not None:
        units = merged(dealt(units, shard))
    num_rows = sum(unit.rows or 0 for unit in units) if fmt == "parquet" else None
    paths = tuple(dict.fromkeys(unit.file.name for unit in units))
    reader = FileReader(tuple(units), fmt, schema)
    return Source(schema=schema, paths=paths, num_rows=num_rows, _batches=reader)


def _single_format(paths: Sequence[str]) -> str:
    by_format: dict[str, str] = {}
    for path in paths:
        kind = format_of(path)
        if kind is None:
            suffix = os.path.splitext(path)[1] or "(no extension)"
            raise InputError(
                f"unsupported file extension {suffix!r}: {path}; supported: "
                f"{', '.join(SUFFIXES)} (or pass format='parquet' or format='csv')"
            )
        by_format.setdefault(kind, path)
    if len(by_format) > 1:
        examples = " and ".join(f"{path} ({kind})" for kind, path in sorted(by_format.items()))
        raise InputError(
            f"the input mixes formats, e.g. {examples}; read one format per run "
            "(narrow the glob, e.g. data/*.parquet, or pass format=)"
        )
    return next(iter(by_format))
