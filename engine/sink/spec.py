"""Where results go (:class:`OutputSpec`), checked before anything is sent, and read back
after: the format by extension, local and remote paths, never replacing a file unasked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from engine import volumes
from engine.errors import InputError, OutputExistsError, UsageError
from engine.location import Location, is_uri, locate

__all__ = [
    "IPC_SUFFIXES",
    "PARQUET_SUFFIXES",
    "OutputSpec",
    "check_output",
    "is_remote_output",
    "read_output",
]

PARQUET_SUFFIXES = (".parquet", ".pq")


IPC_SUFFIXES = (".arrow", ".ipc", ".feather")
"""Arrow IPC file extensions (Feather v2 is the IPC file format); any other is refused."""


_STORES_WITH_BUCKETS = ("s3", "gcs", "abfs")


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """Where results go.

    Attributes:
        path: a local file path or a URI (``s3://bucket/key.parquet``); Parquet when it ends
            with ``.parquet``/``.pq``, else an Arrow IPC file (``.arrow``/``.ipc``/``.feather``
            or no extension); :func:`check_output` refuses any other extension.
        overwrite: replace an existing file at ``path`` (never a directory).
    """

    path: str
    overwrite: bool = False

    @property
    def is_parquet(self) -> bool:
        """True when the output is written as Parquet."""
        return self.path.lower().endswith(PARQUET_SUFFIXES)


def check_output(spec: OutputSpec) -> None:
    """Refuse an output path that cannot be written, before any request is sent.

    Args:
        spec: the output to check; nothing is created.

    Raises:
        OutputExistsError: the file exists and ``spec.overwrite`` is false.
        UsageError: the path is a directory, or its parent cannot be created or written.
    """
    path = spec.path
    _check_format(path)
    if is_remote_output(path):
        location = locate(path)
        _check_remote_output(location, overwrite=spec.overwrite)
        if volumes.is_volume_filesystem(location.filesystem):
            volumes.check_writable(location.filesystem, location.path)
        return
    if os.path.isdir(path):
        example = os.path.join(path, "predictions.parquet")
        raise UsageError(f"output {path} is a directory; give a file path such as {example}")
    if os.path.lexists(path) and not spec.overwrite:
        raise OutputExistsError(
            f"output {path} already exists; pass `overwrite=True` to replace it"
        )
    _check_parent(os.path.dirname(os.path.abspath(path)))


def _check_format(path: str) -> None:
    """Refuse an extension the engine does not write (``out.csv`` would hold Arrow IPC)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if not (dot and stem) or name.lower().endswith(PARQUET_SUFFIXES + IPC_SUFFIXES):
        return  # no extension: Arrow IPC, as documented
    raise UsageError(
        f"output {path}: the engine does not write '.{suffix}' files; it writes Parquet "
        f"(.parquet, .pq) or Arrow IPC (.arrow, .ipc, .feather): name the output e.g. "
        f"{stem}.parquet"
    )


def is_remote_output(path: str) -> bool:
    return is_uri(path) and not path.lower().startswith("file://")


def _check_remote_output(location: Location, *, overwrite: bool) -> None:
    filesystem, name = location.filesystem, location.name
    assert filesystem is not None
    bucket, _, key = location.path.strip("/").partition("/")
    if filesystem.type_name in _STORES_WITH_BUCKETS:
        if not key:
            raise UsageError(f"output {name} names no object; give one such as {name}/out.parquet")
        if _info(filesystem, bucket, name).type != pafs.FileType.Directory:
            raise UsageError(f"cannot write {name}: bucket or container {bucket!r} not found")
    kind = _info(filesystem, location.path, name).type
    if kind == pafs.FileType.Directory:
        raise UsageError(
            f"output {name} is a directory (a prefix with objects under it); "
            f"give an object such as {name.rstrip('/')}/predictions.parquet"
        )
    if kind != pafs.FileType.NotFound and not overwrite:
        raise OutputExistsError(
            f"output {name} already exists; pass `overwrite=True` to replace it"
        )


def _info(filesystem: pafs.FileSystem, path: str, name: str) -> pafs.FileInfo:
    try:
        return filesystem.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"cannot check output {name}: {exc}") from exc


def _check_parent(directory: str) -> None:
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"cannot create output directory {directory}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {existing}: permission denied")


def read_output(path: str | os.PathLike[str]) -> pa.Table:
    """Read a finished output (Parquet or Arrow IPC, by extension) into a table.

    Args:
        path: the output file.

    Returns:
        The whole output as one table.

    Raises:
        InputError: the file is missing or not a readable output.
    """
    text = os.fspath(path)
    if is_remote_output(text):
        return _read_remote_output(locate(text))
    if not os.path.isfile(text):
        raise InputError(f"no output file at {text}")
    try:
        if OutputSpec(text).is_parquet:
            return pq.read_table(text)
        with pa.memory_map(text) as source:
            return ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read output {text}: {exc}") from exc


def _read_remote_output(location: Location) -> pa.Table:
    filesystem = location.filesystem
    assert filesystem is not None
    if location.info().type != pafs.FileType.File:
        raise InputError(f"no output file at {location.name}")
    try:
        with filesystem.open_input_file(location.path) as source:
            if OutputSpec(location.name).is_parquet:
                return pq.read_table(source)
            return ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read output {location.name}: {exc}") from exc
