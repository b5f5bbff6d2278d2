"""MLflow tracking as a Databricks workspace serves it: what a run record needs, in memory.

Routes (workspace token required, as on every workspace API):

* ``GET /api/2.0/mlflow/experiments/get-by-name`` (404 ``RESOURCE_DOES_NOT_EXIST``),
  ``POST .../experiments/create``;
* ``POST .../runs/create`` (``artifact_uri`` is
  ``dbfs:/databricks/mlflow-tracking/<exp>/<run>/artifacts``, as on Databricks),
  ``GET .../runs/get``, ``POST .../runs/log-batch``, ``POST .../runs/update``;
* ``POST /api/2.0/mlflow/artifacts/credentials-for-write`` ``{"run_id", "path": [...]}``:
  one ``credential_infos`` entry per path, made by :attr:`MlflowStore.signer` (a test gives
  it presigned URLs of a real S3-compatible server); without a signer, 501
  ``NOT_IMPLEMENTED``;
* the Files API under ``/WorkspaceInternal/Mlflow/Artifacts/<exp>/Runs/<run>/...``: ``PUT``
  (``overwrite=true`` replaces) and ``GET``, kept in :attr:`MlflowStore.files`. With
  :attr:`MlflowStore.files_api_enabled` off it answers 403 ``PERMISSION_DENIED``, the
  stand-in for a workspace where that path is not open to the caller.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from engine.emulator.apierror import ApiError
from engine.emulator.web import STATE_KEY, json_response

__all__ = ["MlflowRun", "MlflowStore", "Signer", "add_routes"]

_API = "/api/2.0/mlflow"
_FILES = "/api/2.0/fs/files/WorkspaceInternal/Mlflow/Artifacts"
#: ``(experiment_id, run_id, path) -> credential_info`` for credentials-for-write.
Signer = Callable[[str, str, str], Mapping[str, Any]]


@dataclass
class MlflowRun:
    """One run as logged."""

    run_id: str
    experiment_id: str
    run_name: str
    start_time: int
    status: str = "RUNNING"
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def artifact_uri(self) -> str:
        return f"dbfs:/databricks/mlflow-tracking/{self.experiment_id}/{self.run_id}/artifacts"

    def to_json(self) -> dict[str, Any]:
        info = {
            "run_id": self.run_id, "run_uuid": self.run_id, "experiment_id": self.experiment_id,
            "run_name": self.run_name, "status": self.status, "start_time": self.start_time,
            "artifact_uri": self.artifact_uri, "lifecycle_stage": "active",
        }
        if self.end_time is not None:
            info["end_time"] = self.end_time
        data = {
            "params": [{"key": k, "value": v} for k, v in self.params.items()],
            "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
            "metrics": self.metrics,
        }
        return {"info": info, "data": data}


@dataclass
class MlflowStore:
    """The emulator's tracking data; tests read it and set how artifacts may be written.

    Attributes:
        files_api_enabled: whether the Files API accepts MLflow artifact paths.
        signer: makes credentials-for-write's entries; None answers 501.
        files: what the Files API stored, by workspace path.
        credential_requests: the paths credentials-for-write was asked for, in order.
    """

    experiments: dict[str, str] = field(default_factory=dict)  # id -> name
    runs: dict[str, MlflowRun] = field(default_factory=dict)
    files_api_enabled: bool = True
    signer: Signer | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    credential_requests: list[str] = field(default_factory=list)

    def experiment_named(self, name: str) -> str | None:
        return next((i for i, n in self.experiments.items() if n == name), None)

    def run(self, run_id: Any) -> MlflowRun:
        found = self.runs.get(str(run_id))
        if found is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{run_id}' not found.")
        return found


def add_routes(app: web.Application) -> None:
    """Register the tracking routes and the Files API's MLflow artifact paths (before the
    Volumes routes, which would otherwise take them)."""
    app.router.add_get(f"{_API}/experiments/get-by-name", get_experiment_by_name)
    app.router.add_post(f"{_API}/experiments/create", create_experiment)
    app.router.add_post(f"{_API}/runs/create", create_run)
    app.router.add_get(f"{_API}/runs/get", get_run)
    app.router.add_post(f"{_API}/runs/log-batch", log_batch)
    app.router.add_post(f"{_API}/runs/update", update_run)
    app.router.add_post(f"{_API}/artifacts/credentials-for-write", credentials_for_write)
    app.router.add_put(_FILES + "/{path:.*}", put_artifact)
    app.router.add_get(_FILES + "/{path:.*}", get_artifact)


def _store(request: web.Request) -> MlflowStore:
    state = request.app[STATE_KEY]
    state.authenticate_workspace(request.headers.get("Authorization"))
    store: MlflowStore = state.mlflow
    return store


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "The request body is not a JSON object.")
    return body


async def get_experiment_by_name(request: web.Request) -> web.Response:
    store = _store(request)
    name = request.query.get("experiment_name", "")
    found = store.experiment_named(name)
    if found is None:
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Node '{name}' does not exist.")
    return json_response({"experiment": {"experiment_id": found, "name": name}})


async def create_experiment(request: web.Request) -> web.Response:
    store, body = _store(request), await _body(request)
    name = str(body.get("name") or "")
    if not name.startswith("/"):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Got an invalid experiment name {name!r}.")
    if store.experiment_named(name) is not None:
        raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Node named '{name}' already exists")
    experiment_id = str(1_000_000 + len(store.experiments))
    store.experiments[experiment_id] = name
    return json_response({"experiment_id": experiment_id})


async def create_run(request: web.Request) -> web.Response:
    store, body = _store(request), await _body(request)
    experiment_id = str(body.get("experiment_id"))
    if experiment_id not in store.experiments:
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No experiment {experiment_id}.")
    run = MlflowRun(
        secrets.token_hex(16), experiment_id, str(body.get("run_name", "")),
        int(body.get("start_time") or 0),
    )
    run.tags.update({t["key"]: t["value"] for t in body.get("tags") or ()})
    store.runs[run.run_id] = run
    return json_response({"run": run.to_json()})


async def get_run(request: web.Request) -> web.Response:
    run = _store(request).run(request.query.get("run_id"))
    return json_response({"run": run.to_json()})


async def log_batch(request: web.Request) -> web.Response:
    store, body = _store(request), await _body(request)
    run = store.run(body.get("run_id"))
    run.params.update({p["key"]: p["value"] for p in body.get("params") or ()})
    run.tags.update({t["key"]: t["value"] for t in body.get("tags") or ()})
    run.metrics.extend(body.get("metrics") or ())
    return json_response({})


async def update_run(request: web.Request) -> web.Response:
    store, body = _store(request), await _body(request)
    run = store.run(body.get("run_id"))
    run.status = str(body.get("status") or run.status)
    run.end_time = body.get("end_time", run.end_time)
    return json_response({"run_info": run.to_json()["info"]})


async def credentials_for_write(request: web.Request) -> web.Response:
    store, body = _store(request), await _body(request)
    run = store.run(body.get("run_id"))
    paths = [str(p) for p in body.get("path") or ()]
    if store.signer is None:
        raise ApiError(501, "NOT_IMPLEMENTED", "This emulator has no artifact storage to sign.")
    store.credential_requests.extend(paths)
    infos = [
        {"run_id": run.run_id, "path": path, **store.signer(run.experiment_id, run.run_id, path)}
        for path in paths
    ]
    return json_response({"credential_infos": infos})


def _artifact_path(request: web.Request, store: MlflowStore) -> str:
    """The workspace path of an existing run's artifact, or the error the caller gets."""
    rest = request.match_info["path"].strip("/")
    path = f"/WorkspaceInternal/Mlflow/Artifacts/{rest}"
    if not store.files_api_enabled:
        raise ApiError(403, "PERMISSION_DENIED", f"The caller may not access {path}.")
    parts = rest.split("/")
    if len(parts) < 4 or parts[1] != "Runs" or any(p in ("", ".", "..") for p in parts):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{path} is not a run artifact path.")
    run = store.run(parts[2])
    if run.experiment_id != parts[0]:
        raise ApiError(404, "NOT_FOUND", f"Run {run.run_id} is not in experiment {parts[0]}.")
    return path


async def put_artifact(request: web.Request) -> web.Response:
    store = _store(request)
    path = _artifact_path(request, store)
    if path in store.files and request.query.get("overwrite", "false").lower() != "true":
        raise ApiError(409, "ALREADY_EXISTS", f"The file {path} already exists.")
    store.files[path] = await request.read()
    return web.Response(status=204)


async def get_artifact(request: web.Request) -> web.Response:
    store = _store(request)
    path = _artifact_path(request, store)
    if path not in store.files:
        raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist.")
    return web.Response(body=store.files[path], content_type="application/octet-stream")
