"""The Files API for Unity Catalog Volumes, served from a local directory.

``EmulatorConfig.volumes_root`` (``--volumes-root DIR``) is served as ``/Volumes``: the
Volume ``/Volumes/c/s/v`` is the directory ``DIR/c/s/v``, which must exist (a Volume is
created in Unity Catalog, not by the Files API). The routes and answers follow the real API
(databricks-sdk's ``FilesAPI``):

* ``GET /api/2.0/fs/files{path}``: the bytes; ``Range: bytes=a-b`` answers 206 with
  ``Content-Range`` (416 when unsatisfiable). ``HEAD``: ``Content-Length``,
  ``Last-Modified``, no body.
* ``PUT /api/2.0/fs/files{path}?overwrite=true|false``: the body becomes the file, parents
  created; it appears whole (written beside it, then renamed), and without
  ``overwrite=true`` an existing file is 409 ``ALREADY_EXISTS`` (checked atomically).
* ``DELETE /api/2.0/fs/files{path}``.
* ``GET /api/2.0/fs/directories{path}``: ``{"contents": [{path, is_directory, file_size,
  last_modified, name}], "next_page_token"}``, sorted by name, ``page_size`` entries a
  page (at most 1000); ``HEAD`` checks the directory; ``PUT`` creates it with parents;
  ``DELETE`` removes it when empty.
* Errors: 404 ``NOT_FOUND``, 403 ``PERMISSION_DENIED`` for a principal without
  ``READ VOLUME`` (reads) or ``WRITE VOLUME`` (writes) in its ``volume_privileges``,
  400 ``INVALID_PARAMETER_VALUE`` for a path outside ``/Volumes/<c>/<s>/<v>``, 401/403
  for tokens as on every workspace API. A ``HEAD`` error has no body.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from typing import Any, BinaryIO

from aiohttp import web

from engine.emulator.apierror import ApiError
from engine.emulator.web import STATE_KEY, json_response

__all__ = ["MAX_PAGE_SIZE", "add_routes"]

MAX_PAGE_SIZE = 1000
_FILES = "/api/2.0/fs/files"
_DIRECTORIES = "/api/2.0/fs/directories"
_CHUNK_BYTES = 1 << 20


def add_routes(app: web.Application) -> None:
    """Register the Files API's file and directory routes."""
    app.router.add_get(_FILES + "/{path:.*}", get_file)  # add_get also answers HEAD
    app.router.add_put(_FILES + "/{path:.*}", put_file)
    app.router.add_delete(_FILES + "/{path:.*}", delete_file)
    app.router.add_get(_DIRECTORIES + "/{path:.*}", list_directory)
    app.router.add_put(_DIRECTORIES + "/{path:.*}", make_directory)
    app.router.add_delete(_DIRECTORIES + "/{path:.*}", delete_directory)


def _resolved(request: web.Request, privilege: str) -> tuple[str, str]:
    """The caller may use ``privilege`` on the Volume in the path: its ``(path, local path)``.

    Raises:
        ApiError: 401/403 for the token or the privilege, 400 for a path outside a Volume,
            404 when Volumes are not served or the Volume does not exist.
    """
    state = request.app[STATE_KEY]
    principal = state.authenticate_workspace(request.headers.get("Authorization"))
    path = "/" + request.match_info["path"].strip("/")
    parts = [part for part in path.split("/") if part]
    if len(parts) < 4 or parts[0] != "Volumes" or any(p in (".", "..") for p in parts):
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"Path {path} is not in a Volume: paths look like "
            "/Volumes/<catalog>/<schema>/<volume>/<path>.",
        )
    root = state.config.volumes_root
    volume = ".".join(parts[1:4])
    if privilege not in principal.volume_privileges:
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"User {principal.client_id} does not have {privilege} on Volume '{volume}'.",
        )
    if root is None or not os.path.isdir(os.path.join(root, *parts[1:4])):
        raise ApiError(404, "NOT_FOUND", f"Volume '{volume}' does not exist.")
    return path, os.path.join(root, *parts[1:])


def _not_found(path: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"The file or directory {path} does not exist.")


async def get_file(request: web.Request) -> web.StreamResponse:
    """``GET``/``HEAD`` a file; ``Range`` reads answer 206 (aiohttp's FileResponse)."""
    path, local = _resolved(request, "READ VOLUME")
    _require_file(path, local)
    return web.FileResponse(local, headers={"Content-Type": "application/octet-stream"})


async def put_file(request: web.Request) -> web.Response:
    """Upload: the body, whole, becomes the file (409 if it exists without overwrite)."""
    path, local = _resolved(request, "WRITE VOLUME")
    overwrite = request.query.get("overwrite", "false").lower() == "true"
    out, tmp = _start_upload(path, local, overwrite=overwrite)
    try:
        with out:
            while chunk := await request.content.read(_CHUNK_BYTES):
                out.write(chunk)
        _publish(tmp, local, path, overwrite=overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return web.Response(status=204)


def _start_upload(path: str, local: str, *, overwrite: bool) -> tuple[BinaryIO, str]:
    """Checks before the body is read, and the hidden file it is written to."""
    if os.path.isdir(local):
        raise ApiError(409, "ALREADY_EXISTS", f"{path} is a directory.")
    if os.path.exists(local) and not overwrite:
        raise _exists(path)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = os.path.join(os.path.dirname(local), f".upload-{secrets.token_hex(8)}")
    return open(tmp, "wb"), tmp


def _require_file(path: str, local: str) -> None:
    if not os.path.isfile(local):
        raise _not_found(path)


def _require_directory(path: str, local: str) -> None:
    if not os.path.isdir(local):
        raise _not_found(path)


def _publish(tmp: str, local: str, path: str, *, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, local)
        return
    try:
        os.link(tmp, local)  # fails atomically when a file is already there
    except FileExistsError:
        raise _exists(path) from None


def _exists(path: str) -> ApiError:
    return ApiError(
        409, "ALREADY_EXISTS", f"The file {path} already exists; pass overwrite=true to replace it."
    )


async def delete_file(request: web.Request) -> web.Response:
    """Delete a file."""
    path, local = _resolved(request, "WRITE VOLUME")
    _require_file(path, local)
    os.unlink(local)
    return web.Response(status=204)


async def list_directory(request: web.Request) -> web.Response:
    """``GET``: one page of the directory's entries; ``HEAD``: does it exist."""
    path, local = _resolved(request, "READ VOLUME")
    _require_directory(path, local)
    if request.method == "HEAD":
        return web.Response(status=200)
    return json_response(_page(path, local, request))


def _page(path: str, local: str, request: web.Request) -> dict[str, Any]:
    page_size = _page_size(request.query.get("page_size"))
    names = sorted(os.listdir(local))
    after = _after(request.query.get("page_token"))
    if after is not None:
        names = [name for name in names if name > after]
    page, more = names[:page_size], len(names) > page_size
    body: dict[str, Any] = {"contents": [_entry(path, local, name) for name in page]}
    if more:
        body["next_page_token"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
    return body


def _page_size(text: str | None) -> int:
    if text is None:
        return MAX_PAGE_SIZE
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"page_size must be positive: {text}")
    return min(size, MAX_PAGE_SIZE)


def _after(token: str | None) -> str | None:
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "page_token is not valid.") from None


def _entry(path: str, local: str, name: str) -> dict[str, Any]:
    stat = os.stat(os.path.join(local, name))
    is_directory = os.path.isdir(os.path.join(local, name))
    entry: dict[str, Any] = {
        "path": f"{path}/{name}" + ("/" if is_directory else ""),
        "is_directory": is_directory,
        "last_modified": int(stat.st_mtime * 1000),
        "name": name,
    }
    if not is_directory:
        entry["file_size"] = stat.st_size
    return entry


async def make_directory(request: web.Request) -> web.Response:
    """Create a directory and its parents (idempotent)."""
    path, local = _resolved(request, "WRITE VOLUME")
    _make_directory(path, local)
    return web.Response(status=204)


def _make_directory(path: str, local: str) -> None:
    if os.path.isfile(local):
        raise ApiError(409, "ALREADY_EXISTS", f"{path} is a file.")
    os.makedirs(local, exist_ok=True)


async def delete_directory(request: web.Request) -> web.Response:
    """Delete an empty directory."""
    path, local = _resolved(request, "WRITE VOLUME")
    _require_directory(path, local)
    if os.listdir(local):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Directory {path} is not empty.")
    os.rmdir(local)
    return web.Response(status=204)
