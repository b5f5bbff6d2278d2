"""What a Delta table is and how delta-rs reaches it: shared by reading and writing.

A directory or URI holding ``_delta_log/`` is a Delta table (:func:`is_table`). delta-rs opens a
local absolute path or the URI as given (:func:`table_uri`), with the storage options an
S3-compatible server over plain http needs (:func:`storage_options`); messages show the table as
:func:`display_name` says. ``deltalake`` is imported only when a table is used
(:func:`deltalake_module`). :mod:`engine.source.delta` reads tables, :mod:`engine.delta_sink`
writes them; neither imports the other.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from engine.errors import InputError, UsageError
from engine.location import is_uri, locate

__all__ = [
    "DELTA_LOG",
    "INSTALL",
    "deltalake_module",
    "display_name",
    "is_table",
    "storage_options",
    "table_uri",
]

DELTA_LOG = "_delta_log"
INSTALL = "pip install 'databricks-batch-engine[delta]'"


def deltalake_module() -> Any:
    """The ``deltalake`` module, or a UsageError saying how to install it."""
    try:
        import deltalake
    except ImportError:
        raise UsageError(
            f"Delta tables need the deltalake package: {INSTALL} (pip install deltalake)"
        ) from None
    return deltalake


def is_table(text: str) -> bool:
    """True when ``text`` (a local path or URI) is a directory holding ``_delta_log/``."""
    if not is_uri(text) or text.lower().startswith("file://"):
        path = locate(text).path
        return os.path.isdir(os.path.join(path, DELTA_LOG))
    try:
        import pyarrow.fs as pafs

        root = locate(text)
        log_dir = root.below(f"{root.path.rstrip('/')}/{DELTA_LOG}")
        return bool(log_dir.info().type == pafs.FileType.Directory)
    except (InputError, pa.ArrowException, OSError):
        return False


def table_uri(root: str) -> str:
    """What delta-rs opens: a local absolute path, or the URI as given."""
    if is_uri(root) and not root.lower().startswith("file://"):
        return root
    return locate(root).path


def display_name(root: str) -> str:
    """The table as messages show it: an absolute path, or the URI without credentials."""
    return locate(root).name if is_uri(root) else os.path.abspath(root)


def storage_options(root: str) -> dict[str, str] | None:
    """delta-rs reads the store's usual environment variables itself; an S3-compatible
    server over plain http (MinIO, tests) also needs it allowed."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if root.startswith(("s3://", "s3a://")) and endpoint.startswith("http://"):
        return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}
    return None
