"""Where files are: local paths, URIs, pyarrow and fsspec filesystems, and globs.

:func:`locate` turns a local path or a URI (``s3://``, ``gs://``, ``abfss://``, ``file://``,
any fsspec scheme, a Unity Catalog Volume path not mounted here) into a :class:`Location`;
:func:`find_files` expands paths, directories and globs into the input files, in read order.
:mod:`engine.source` reads what this finds; :mod:`engine.sink` writes to what it locates. The
rules (hidden names, URI globs, credentials never printed) are in :mod:`engine.source`'s
docstring, where a user of the input looks for them.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from engine import volumes
from engine.errors import InputError, first_line

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "Location",
    "find_files",
    "format_of",
    "is_uri",
    "locate",
    "suffix_list",
]

FORMATS = ("parquet", "csv")
SUFFIXES: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
}
"""Input file extensions and the format each one means."""


def _short(exc: BaseException) -> str:
    return first_line(exc, limit=300)


@dataclass(frozen=True, slots=True, eq=False)
class Location:
    """A file or directory, local or on another filesystem.

    Attributes:
        name: what people see and what orders files: a local absolute path, or the URI
            without credentials or query options.
        path: the path to open, within ``filesystem`` when there is one.
        filesystem: the pyarrow filesystem holding ``path``; ``None`` for a local path,
            which is opened by name as it always was.
    """

    name: str
    path: str
    filesystem: pafs.FileSystem | None = None

    @property
    def is_local(self) -> bool:
        """True for a plain local path."""
        return self.filesystem is None

    def below(self, path: str) -> Location:
        """The entry at ``path`` (a path of the same filesystem, under this one)."""
        relative = path[len(self.path) :].lstrip("/") if path.startswith(self.path) else path
        return Location(f"{self.name.rstrip('/')}/{relative}", path, self.filesystem)

    def info(self) -> pafs.FileInfo:
        """The entry's type and size, asked of its filesystem."""
        if self.filesystem is None:
            return pafs.LocalFileSystem().get_file_info(self.path)
        return _asked(self, self.filesystem.get_file_info, self.path)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")
_CONTAINER_IN_USERINFO = ("abfs", "abfss")


def is_uri(text: str) -> bool:
    """True when ``text`` is a URI (``scheme://...``) rather than a local path; so is a
    Unity Catalog Volume path not mounted here (:mod:`engine.volumes`)."""
    return _SCHEME.match(text) is not None or volumes.is_remote(text)


def locate(text: str) -> Location:
    """Resolve a local path or a URI (``s3://``, ``gs://``, ``abfss://``, fsspec schemes).

    Opens the filesystem object (credentials are looked up the store's usual way) but reads
    nothing. ``file://`` URIs become plain local paths.

    Raises:
        InputError: the URI cannot be parsed, or no filesystem handles its scheme.
    """
    if volumes.is_remote(text):
        volume = volumes.parse(text)
        assert volume is not None
        return Location(text.rstrip("/"), volume.path, volumes.filesystem())
    if not is_uri(text):
        path = os.path.abspath(volumes.local_path(text))
        return Location(path, path)
    name = _display(text)
    if text.lower().startswith("file://"):
        path = urlsplit(text).path
        return Location(path, path)
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise InputError(f"cannot open {name}: {_scrubbed(exc, text, name)}") from None
        filesystem, path = _fsspec_filesystem(text, name)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot open {name}: {_scrubbed(exc, text, name)}") from None
    return Location(name.rstrip("/"), path.rstrip("/") or path, filesystem)


def _fsspec_filesystem(text: str, name: str) -> tuple[pafs.FileSystem, str]:
    scheme = text.partition("://")[0]
    try:
        import fsspec
    except ImportError:
        raise InputError(
            f"cannot open {name}: pyarrow has no filesystem for {scheme}:// and fsspec is not "
            f"installed (pip install fsspec and the package for {scheme}://, e.g. adlfs for az://)"
        ) from None
    try:
        filesystem, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {name}: {_scrubbed(exc, text, name)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), str(path)


def _display(uri: str) -> str:
    """``uri`` without query options or credentials: safe to print, stable to sort."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{host}" if user and parts.scheme in _CONTAINER_IN_USERINFO else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def _scrubbed(exc: BaseException, text: str, name: str) -> str:
    return _short(exc).replace(text, name)


def _asked(where: Location, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` on ``where``'s filesystem, its failures an InputError naming it."""
    try:
        return call(*args)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read {where.name}: {_short(exc)}") from exc


# --- finding files -------------------------------------------------------------------------


def find_files(items: Sequence[str | os.PathLike[str]], format: str | None) -> list[Location]:
    if not items:
        raise InputError("no input given; pass at least one file, directory or glob")
    found: dict[str, Location] = {}
    for item in items:
        for file in _expand(os.fspath(item), format):
            found.setdefault(file.name, file)
    return [found[name] for name in sorted(found)]


def _expand(item: str, format: str | None) -> list[Location]:
    if is_uri(item) and not item.lower().startswith("file://"):
        return _expand_uri(item, format)
    local = locate(item).path if is_uri(item) else volumes.local_path(item)
    return [Location(path, path) for path in _expand_local(local, format)]


def _expand_local(item: str, format: str | None) -> list[str]:
    if os.path.isdir(item):
        found = _scan_directory(item, format)
        if not found:
            raise InputError(
                f"directory {item} holds no {suffix_list(format)} files "
                "(names starting with '.' or '_' are skipped)"
            )
        return found
    if os.path.isfile(item):
        return [os.path.abspath(item)]
    if _has_magic(item):
        return _expand_glob(item, format)
    raise InputError(f"input not found: {item}")


def _expand_glob(pattern: str, format: str | None) -> list[str]:
    root = _glob_root(pattern)
    found: list[str] = []
    for match in glob.glob(pattern, recursive=True):
        if _is_hidden(os.path.relpath(match, root)):
            continue
        if os.path.isdir(match):
            found.extend(_scan_directory(match, format))
        else:
            found.append(os.path.abspath(match))
    if not found:
        raise InputError(f"no files match {pattern!r}")
    return found


def _scan_directory(directory: str, format: str | None) -> list[str]:
    found: list[str] = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if not _is_hidden(name)]
        for name in files:
            kind = format_of(name)
            if not _is_hidden(name) and kind is not None and format in (None, kind):
                found.append(os.path.abspath(os.path.join(parent, name)))
    return found


def _expand_uri(item: str, format: str | None) -> list[Location]:
    """A URI: an object, a prefix ("directory") or a glob, found like their local kin."""
    address, mark, query = item.partition("?")
    parts = address.split("/")  # ["s3:", "", "bucket", "key", ...]
    magic_at = next((i for i, part in enumerate(parts) if i > 2 and _has_uri_magic(part)), None)
    if magic_at is None:
        location = locate(item)
        kind = location.info().type
        if kind == pafs.FileType.File:
            return [location]
        if kind != pafs.FileType.Directory:
            raise InputError(f"input not found: {location.name}")
        found = [file for file, relative in _listing(location) if _wanted(relative, format)]
        if not found:
            raise InputError(
                f"{location.name} holds no {suffix_list(format)} files "
                "(names starting with '.' or '_' are skipped)"
            )
        return found
    root = locate("/".join(parts[:magic_at]) + mark + query)
    found = _glob_uri(root, parts[magic_at:], format)
    if not found:
        raise InputError(f"no files match {_display(address)!r}")
    return found


def _glob_uri(root: Location, pattern: list[str], format: str | None) -> list[Location]:
    """Files under ``root`` matching ``pattern``, or under a "directory" matching it."""
    if root.info().type != pafs.FileType.Directory:
        return []
    found: list[Location] = []
    for file, relative in _listing(root):
        if _is_hidden("/".join(relative)):
            continue
        if _glob_match(relative, pattern) or (
            _wanted(relative, format)
            and any(_glob_match(relative[:end], pattern) for end in range(1, len(relative)))
        ):
            found.append(file)
    return found


def _listing(root: Location) -> list[tuple[Location, list[str]]]:
    """Every file below ``root`` (recursively), with its path relative to ``root`` in parts."""
    assert root.filesystem is not None
    selector = pafs.FileSelector(root.path, recursive=True)
    infos = _asked(root, root.filesystem.get_file_info, selector)
    files = [root.below(info.path) for info in infos if info.type == pafs.FileType.File]
    return [(file, file.name[len(root.name) :].strip("/").split("/")) for file in files]


def _glob_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """``glob``'s rules on path parts: ``**`` spans any number of parts, others one each."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(parts[start:], rest) for start in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _glob_match(parts[1:], rest)


def _wanted(relative: Sequence[str], format: str | None) -> bool:
    kind = format_of(relative[-1])
    return not _is_hidden("/".join(relative)) and kind is not None and format in (None, kind)


def _has_uri_magic(text: str) -> bool:
    return any(char in text for char in "*[")  # in a URI, "?" starts the query options


def _glob_root(pattern: str) -> str:
    """The directory above the first wildcard; components below it are checked for hiding."""
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if _has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.curdir


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _is_hidden(relative: str) -> bool:
    return any(
        part.startswith((".", "_"))
        for part in relative.replace(os.sep, "/").split("/")
        if part not in ("", ".", "..")
    )


def format_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    return next((kind for suffix, kind in SUFFIXES.items() if name.endswith(suffix)), None)


def suffix_list(format: str | None = None) -> str:
    return "/".join(suffix for suffix, kind in SUFFIXES.items() if format in (None, kind))
