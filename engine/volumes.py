"""Unity Catalog Volumes (``/Volumes/<catalog>/<schema>/<volume>/...``) as one more filesystem.

A Volume path (also written ``dbfs:/Volumes/...``) is read and written in one of two ways:

* **Where it is mounted** (a Databricks cluster, where ``/Volumes`` is a local FUSE mount),
  it is a plain local path, and everything local files get applies: the atomic
  rename-into-place of the output, the checkpoint beside it, Delta tables. The mount point
  can be moved with ``ENGINE_VOLUMES_ROOT=DIR`` (``DIR/<catalog>/<schema>/<volume>/...``);
  tests point it at a temporary directory rather than write to a real ``/Volumes``.
* **Elsewhere**, through the workspace's Files API with the run's own credentials (OAuth M2M
  or a PAT, via :mod:`engine.auth`): ``HEAD`` for metadata, ``GET`` with ``Range`` for reads,
  ``GET /api/2.0/fs/directories`` with page tokens for listings, one ``PUT`` per file for
  writes. :class:`VolumesFileSystem` is an fsspec filesystem, wrapped as a pyarrow filesystem,
  so :mod:`engine.source` and :mod:`engine.sink` see just another filesystem.

The Files API has no rename and no multipart upload, so a remote output is finished locally
(in the system's temporary directory) and published with a single ``PUT`` of the whole file:
readers see no file or all of it, and without ``--overwrite`` the ``PUT`` carries
``overwrite=false``, so the server's 409 makes "never replace a file" atomic. One ``PUT``
holds at most 5 GiB (:data:`MAX_UPLOAD_BYTES`): a larger output is refused at the end with
the fix (``--shard``). Delta tables in a Volume are read and written only where the Volume is
mounted: delta-rs has no Files API backend (it needs an atomic put-if-absent for commits).

(Over 400 lines because the Files API client and the fsspec filesystem over it are one
protocol.)
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
import pyarrow.fs as pafs

from engine.aio import run_sync
from engine.auth import connect
from engine.config import Credentials
from engine.errors import EngineError, OutputExistsError, UsageError
from engine.tokens import Token

__all__ = [
    "MAX_UPLOAD_BYTES",
    "ROOT_ENV",
    "FilesApi",
    "VolumePath",
    "VolumesFileSystem",
    "check_writable",
    "filesystem",
    "is_remote",
    "is_volume_filesystem",
    "local_path",
    "parse",
    "publish",
    "refuse_remote_table",
    "use",
    "using",
]

ROOT_ENV = "ENGINE_VOLUMES_ROOT"
"""Where ``/Volumes`` is mounted locally, when not at ``/Volumes`` (tests, other mounts)."""
MOUNT = "/Volumes"
MAX_UPLOAD_BYTES = 5 * 1024**3
"""The largest file one Files API ``PUT`` takes."""
LIST_PAGE_SIZE = 1000
"""Entries per listing page (the API's maximum)."""
READ_BLOCK_BYTES = 4 * 1024 * 1024
"""Bytes per ranged ``GET`` (reads ahead this much; Parquet footers and column chunks)."""
REQUEST_TIMEOUT_S = 300.0
MAX_ATTEMPTS = 5
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_FILES = "/api/2.0/fs/files"
_DIRECTORIES = "/api/2.0/fs/directories"


# --- paths: pure ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolumePath:
    """A path inside a Unity Catalog Volume.

    Attributes:
        catalog, schema, volume: the Volume's three-level name.
        relative: the path inside the Volume, without leading ``/`` (``""`` for its root).
    """

    catalog: str
    schema: str
    volume: str
    relative: str = ""

    @property
    def path(self) -> str:
        """The absolute path, ``/Volumes/<catalog>/<schema>/<volume>/<relative>``."""
        base = f"{MOUNT}/{self.catalog}/{self.schema}/{self.volume}"
        return f"{base}/{self.relative}" if self.relative else base

    @property
    def full_name(self) -> str:
        """``catalog.schema.volume``, as Unity Catalog grants name it."""
        return f"{self.catalog}.{self.schema}.{self.volume}"

    def under(self, root: str) -> str:
        """The same path with ``/Volumes`` replaced by the local mount ``root``."""
        return os.path.join(root, self.catalog, self.schema, self.volume, self.relative)


def parse(text: str) -> VolumePath | None:
    """The Volume path ``text`` names (``/Volumes/c/s/v/...`` or ``dbfs:/Volumes/...``).

    Returns:
        ``None`` when ``text`` is not a Volume path at all.

    Raises:
        UsageError: it starts like one but names no catalog, schema and volume.
    """
    rest = _without_scheme(text)
    if rest is None:
        return None
    parts = [part for part in rest.split("/") if part]
    if len(parts) < 3 or any(part in (".", "..") for part in parts):
        raise UsageError(
            f"{text} is not a Volume path: write /Volumes/<catalog>/<schema>/<volume>/<path> "
            "(or dbfs:/Volumes/...), without '.' or '..' parts"
        )
    return VolumePath(parts[0], parts[1], parts[2], "/".join(parts[3:]))


def _without_scheme(text: str) -> str | None:
    """What follows ``/Volumes/`` in ``text``, or ``None`` when it does not start so."""
    for prefix in ("dbfs:/Volumes/", "dbfs:///Volumes/", f"{MOUNT}/"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    if text in (MOUNT, "dbfs:/Volumes"):
        return ""
    return None


def local_root() -> str | None:
    """Where ``/Volumes`` is mounted here: ``$ENGINE_VOLUMES_ROOT``, else ``/Volumes`` if it
    is a directory (a cluster), else ``None`` (use the Files API).

    Raises:
        UsageError: ``ENGINE_VOLUMES_ROOT`` is set but is not a directory.
    """
    root = os.environ.get(ROOT_ENV)
    if root:
        if not os.path.isdir(root):
            raise UsageError(
                f"{ROOT_ENV}={root} is not a directory: point it at the local mount of "
                "/Volumes, or unset it to use the Files API"
            )
        return root
    return MOUNT if os.path.isdir(MOUNT) else None


def local_path(text: str) -> str:
    """``text`` as a local path when it is a Volume path mounted here; else unchanged."""
    volume = parse(text)
    if volume is None:
        return text
    root = local_root()
    return text if root is None else volume.under(root)


def is_remote(text: str) -> bool:
    """True for a Volume path that is not mounted here (reached through the Files API)."""
    return _without_scheme(text) is not None and local_root() is None


def refuse_remote_table(text: str, role: str) -> None:
    """Refuse a Delta table in a Volume reached through the Files API.

    Raises:
        UsageError: naming the table and the ways round it.
    """
    if is_remote(text):
        raise UsageError(
            f"{role} {text} is a Delta table in a Volume that is not mounted here: delta-rs "
            "cannot read or commit through the Files API. Run on a Databricks cluster (where "
            "/Volumes is mounted), point the table at its cloud storage path (s3://, "
            "abfss://, gs://), or score Parquet/CSV files in the Volume instead"
        )


# --- credentials ----------------------------------------------------------------------

_CREDENTIALS: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar(
    "engine_volumes_credentials", default=None
)


def use(credentials: Credentials) -> None:
    """From here on in this context (an asyncio task, a thread), Volumes reached through the
    Files API use ``credentials`` (the run's)."""
    _CREDENTIALS.set(credentials)


@contextlib.contextmanager
def using(credentials: Credentials) -> Iterator[None]:
    """Within the block, Volumes reached through the Files API use ``credentials`` (the
    run's); outside any such block, :meth:`Credentials.from_env`."""
    reset = _CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CREDENTIALS.reset(reset)


class WorkspaceTokens:
    """A synchronous source of workspace tokens, minted by :mod:`engine.auth`.

    pyarrow calls a filesystem from plain threads, and at times from inside the run's event
    loop, so each fetch runs the async token code on its own short-lived loop in a worker
    thread. A token is reused until it is no longer usable; ``invalidate`` drops it after a
    401 (only if it is still the current one).
    """

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._token: Token | None = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """The workspace URL the Files API is called on."""
        return self.credentials.host

    def get(self) -> Token:
        """A usable workspace token (fetched if there is none)."""
        with self._lock:
            token = self._token
            if token is None or not token.usable(time.monotonic()):
                token = self._token = self._fetch()
            return token

    def invalidate(self, token: Token) -> None:
        """Forget ``token`` if it is still the current one."""
        with self._lock:
            if self._token is token:
                self._token = None

    def _fetch(self) -> Token:
        async def fetch() -> Token:
            from engine.transport import Transport

            async with Transport(max_connections=2) as transport:
                auth = await connect(transport, self.credentials)
                return await auth.workspace_token()

        return run_sync(fetch)


# --- the Files API, synchronously ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A file or directory the Files API reported."""

    path: str
    is_directory: bool
    size: int = 0
    mtime_ms: int | None = None


class FilesApi:
    """The Files API calls the filesystem needs, over one keep-alive connection per thread.

    Failures become the ``OSError`` subclasses pyarrow and fsspec understand, each message
    naming the path and what to do: 404 ``FileNotFoundError``, 403 ``PermissionError``, 409
    ``FileExistsError``. 429 and 5xx are retried with backoff (``MAX_ATTEMPTS`` in all), and a
    401 once with a fresh token.
    """

    def __init__(
        self,
        tokens: WorkspaceTokens,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tokens = tokens
        self.timeout_s = timeout_s
        self._sleep = sleep
        parts = urllib.parse.urlsplit(tokens.host)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"cannot reach the Files API: workspace host {tokens.host!r} is not a URL; "
                "set DATABRICKS_HOST (or `host`) to https://<workspace>.cloud.databricks.com"
            )
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._local = threading.local()

    def stat(self, path: str) -> Entry:
        """The file or directory at ``path`` (``HEAD``: file first, then directory)."""
        try:
            response = self._call("HEAD", _FILES + _quoted(path), path)
            size = int(response.getheader("Content-Length") or 0)
            return Entry(path, False, size)
        except (FileNotFoundError, IsADirectoryError):
            self._call("HEAD", _DIRECTORIES + _quoted(path) + "/", path)
            return Entry(path, True)

    def list(self, path: str) -> list[Entry]:
        """Every entry directly in the directory ``path``, all pages followed."""
        entries: list[Entry] = []
        token: str | None = None
        while True:
            query = {"page_size": str(LIST_PAGE_SIZE)}
            if token:
                query["page_token"] = token
            target = f"{_DIRECTORIES}{_quoted(path)}/?{urllib.parse.urlencode(query)}"
            page = orjson.loads(self._call("GET", target, path).read() or b"{}")
            for item in page.get("contents", []):
                entries.append(
                    Entry(
                        str(item["path"]).rstrip("/"),
                        bool(item.get("is_directory")),
                        int(item.get("file_size") or 0),
                        item.get("last_modified"),
                    )
                )
            token = page.get("next_page_token")
            if not token:
                return entries

    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the file at ``path`` (``Range``)."""
        if end <= start:
            return b""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        return self._call("GET", _FILES + _quoted(path), path, headers=headers).read()

    def upload(self, path: str, body: IO[bytes], size: int, *, overwrite: bool) -> None:
        """One ``PUT`` of ``size`` bytes from ``body`` (parents are created by the server).

        Raises:
            FileExistsError: ``overwrite`` is false and ``path`` exists (409).
            OSError: too large for one request, or the server refused it.
        """
        if size > MAX_UPLOAD_BYTES:
            raise OSError(
                f"cannot upload {path}: {size / 1024**3:.1f} GiB is more than the 5 GiB one "
                "Files API request takes; split the run with `shard='I/N'`"
            )
        flag = "true" if overwrite else "false"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        target = f"{_FILES}{_quoted(path)}?overwrite={flag}"
        self._call("PUT", target, path, headers=headers, body=body)

    def delete(self, path: str) -> None:
        """Delete the file at ``path``."""
        self._call("DELETE", _FILES + _quoted(path), path).read()

    def make_directory(self, path: str) -> None:
        """Create the directory ``path`` and its parents (idempotent)."""
        self._call("PUT", _DIRECTORIES + _quoted(path) + "/", path).read()

    def delete_directory(self, path: str) -> None:
        """Delete the empty directory ``path``."""
        self._call("DELETE", _DIRECTORIES + _quoted(path) + "/", path).read()

    # -- one call ------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        target: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: IO[bytes] | None = None,
    ) -> http.client.HTTPResponse:
        refreshed = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            token = self.tokens.get()
            sent = {**(headers or {}), **token.header}
            if body is not None:
                body.seek(0)
            try:
                response = self._send(method, target, sent, body)
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt == MAX_ATTEMPTS or not _may_resend(method, target):
                    raise OSError(f"Files API {method} {path}: {exc}") from exc
                self._sleep(_backoff_s(attempt))
                continue
            if response.status < 300:
                return response
            error = _error(response, method)
            if response.status == 401 and not refreshed:
                refreshed = True
                self.tokens.invalidate(token)
                continue
            if response.status in _RETRY_STATUSES and attempt < MAX_ATTEMPTS:
                self._sleep(_retry_after_s(response) or _backoff_s(attempt))
                continue
            raise _os_error(response.status, error, method, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, target: str, headers: dict[str, str], body: IO[bytes] | None
    ) -> http.client.HTTPResponse:
        connection = self._connection()
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        if method == "HEAD" or response.status >= 300:
            response.read()  # an error body is short; leaves the connection reusable
        return response

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else (
                http.client.HTTPConnection
            )
            connection = kind(self._netloc, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _quoted(path: str) -> str:
    return urllib.parse.quote(path.rstrip("/") or "/")


def _may_resend(method: str, target: str) -> bool:
    """Not a ``PUT`` that must not replace a file: if the first one landed, a second would
    answer 409 for the run's own file."""
    return not (method == "PUT" and "overwrite=false" in target)


def _backoff_s(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), 8.0))


def _retry_after_s(response: http.client.HTTPResponse) -> float | None:
    value = response.getheader("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


def _error(response: http.client.HTTPResponse, method: str) -> str:
    """``ERROR_CODE: message`` from a Databricks error body (a ``HEAD`` has none)."""
    body = b"" if method == "HEAD" else response.read()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {response.status} {response.reason}"
    if not isinstance(doc, dict):
        return f"HTTP {response.status} {response.reason}"
    code, message = doc.get("error_code", ""), doc.get("message", "")
    return f"{code}: {message}" if code else str(message or response.reason)


def _os_error(status: int, error: str, method: str, path: str) -> OSError:
    if status == 404:
        return FileNotFoundError(f"{path} not found (Files API {method}: {error})")
    if status == 403:
        volume = parse(path)
        grant = "READ VOLUME" if method in ("GET", "HEAD") else "WRITE VOLUME"
        on = f" ON VOLUME {volume.full_name}" if volume else ""
        return PermissionError(
            f"permission denied on {path} (Files API {method}: {error}); the principal "
            f"needs {grant}{on} (and USE CATALOG / USE SCHEMA on its catalog and schema)"
        )
    if status == 409:
        return FileExistsError(f"{path} already exists (Files API {method}: {error})")
    return OSError(f"Files API {method} {path}: HTTP {status}: {error}")


# --- the fsspec filesystem ------------------------------------------------------------------


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            "Volumes outside a cluster are read through the Files API, which needs fsspec: "
            "pip install 'databricks-batch-engine[volumes]'"
        ) from None
    return fsspec


def _filesystem_class() -> type[Any]:
    """:class:`VolumesFileSystem`, built on fsspec once it is known to be installed."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _define(_fsspec())
    return _CLASS


_CLASS: type[Any] | None = None


def _define(fsspec: Any) -> type[Any]:
    from fsspec.spec import AbstractBufferedFile

    class VolumeFile(AbstractBufferedFile):  # type: ignore[misc]
        """Reads in ranged ``GET``s; writes spool to a local file, one ``PUT`` at close."""

        def _fetch_range(self, start: int, end: int) -> bytes:
            data: bytes = self.fs.api.read(self.path, start, min(end, self.size))
            return data

        def _initiate_upload(self) -> None:
            self._spool = tempfile.TemporaryFile(prefix="engine-volume-")  # noqa: SIM115

        def _upload_chunk(self, final: bool = False) -> bool:
            self._spool.write(self.buffer.getbuffer())
            if final:
                try:
                    size = self._spool.tell()
                    self.fs.api.upload(self.path, self._spool, size, overwrite=True)
                finally:
                    self._spool.close()
            return True

    class _VolumesFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
        """Unity Catalog Volumes through the Files API, as an fsspec filesystem."""

        protocol = ("dbfs-volumes",)
        root_marker = "/"
        cachable = False

        def __init__(self, api: FilesApi, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.api = api

        @classmethod
        def _strip_protocol(cls, path: Any) -> str:
            text = str(path)
            volume = _without_scheme(text)
            if volume is not None:
                return f"{MOUNT}/{volume}".rstrip("/")
            return text.rstrip("/") or "/"

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            path = self._strip_protocol(path)
            return _fsspec_info(self.api.stat(path))

        def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
            path = self._strip_protocol(path)
            entries = [_fsspec_info(entry) for entry in self.api.list(path)]
            return entries if detail else [entry["name"] for entry in entries]

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> VolumeFile:
            if mode not in ("rb", "wb"):
                raise NotImplementedError(f"Volumes open files 'rb' or 'wb', not {mode!r}")
            block_size = kwargs.pop("block_size", None) or READ_BLOCK_BYTES
            return VolumeFile(self, path, mode, block_size=block_size, **kwargs)

        def cat_file(
            self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
        ) -> bytes:
            path = self._strip_protocol(path)
            size = self.api.stat(path).size
            first = 0 if start is None else (start if start >= 0 else size + start)
            last = size if end is None else (end if end >= 0 else size + end)
            data: bytes = self.api.read(path, first, min(last, size))
            return data

        def rm_file(self, path: str) -> None:
            self.api.delete(self._strip_protocol(path))

        def _rm(self, path: str) -> None:
            path = self._strip_protocol(path)
            if self.api.stat(path).is_directory:
                self.api.delete_directory(path)
            else:
                self.api.delete(path)

        def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
            self.api.make_directory(self._strip_protocol(path))

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            self.api.make_directory(self._strip_protocol(path))

        def rmdir(self, path: str) -> None:
            self.api.delete_directory(self._strip_protocol(path))

    return _VolumesFileSystem


def _fsspec_info(entry: Entry) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": entry.path,
        "size": entry.size,
        "type": "directory" if entry.is_directory else "file",
    }
    if entry.mtime_ms is not None:
        info["mtime"] = entry.mtime_ms / 1000.0
    return info


def VolumesFileSystem(api: FilesApi) -> Any:
    """The fsspec filesystem for Volumes through ``api`` (needs fsspec installed)."""
    return _filesystem_class()(api)


_FILESYSTEMS: dict[Credentials, pafs.FileSystem] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def filesystem() -> pafs.FileSystem:
    """The pyarrow filesystem for Volumes with the current credentials (see :func:`using`);
    one per credentials, so its token is reused."""
    credentials = _CREDENTIALS.get() or Credentials.from_env()
    with _FILESYSTEMS_LOCK:
        found = _FILESYSTEMS.get(credentials)
        if found is None:
            api = FilesApi(WorkspaceTokens(credentials))
            found = pafs.PyFileSystem(pafs.FSSpecHandler(VolumesFileSystem(api)))
            _FILESYSTEMS[credentials] = found
        return found


def is_volume_filesystem(filesystem: pafs.FileSystem | None) -> bool:
    """True for a filesystem made by :func:`filesystem`."""
    handler = getattr(filesystem, "handler", None)
    return _CLASS is not None and isinstance(getattr(handler, "fs", None), _CLASS)


def check_writable(filesystem: pafs.FileSystem, path: str) -> None:
    """Create the output's directory (``PUT /api/2.0/fs/directories``, idempotent), which
    needs ``WRITE VOLUME``: a principal that may only read fails here, before any row is
    sent, not at the final upload.

    Raises:
        UsageError: naming the path and the missing privilege, or the server's refusal.
    """
    api: FilesApi = filesystem.handler.fs.api
    parent = path.rsplit("/", 1)[0]
    try:
        api.make_directory(parent)
    except OSError as exc:
        raise UsageError(f"cannot write the output {path}: {exc}") from exc


def publish(local: str, filesystem: pafs.FileSystem, path: str, *, overwrite: bool) -> None:
    """Upload the finished local file ``local`` to the Volume ``path`` in one ``PUT``.

    Raises:
        OutputExistsError: ``overwrite`` is false and a file is at ``path`` (the server's 409).
        EngineError: the upload failed (the message names the path and the cause).
    """
    api: FilesApi = filesystem.handler.fs.api
    size = os.path.getsize(local)
    try:
        with open(local, "rb") as body:
            api.upload(path, body, size, overwrite=overwrite)
    except FileExistsError:
        raise OutputExistsError(
            f"output {path} already exists (it appeared while the run was writing, or was "
            "there before) and was left untouched; pass `overwrite=True` to replace it"
        ) from None
    except OSError as exc:
        raise EngineError(f"cannot publish the output {path}: {exc}") from exc
