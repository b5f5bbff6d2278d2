"""The MLflow run record (``--mlflow-experiment PATH``), over MLflow's REST API.

Why REST over the engine's own transport rather than ``mlflow-skinny``: the calls a run
record needs are six small JSON requests; the client library would add a synchronous HTTP
stack, protobuf and (for Databricks) the SDK to an engine that already has an authenticated
aiohttp session, and its pins would have to agree with Airflow's in the same environment.

Where the record goes:

* ``databricks`` (the default when neither ``--mlflow-tracking-uri`` nor MLFLOW_TRACKING_URI
  is set): the workspace's tracking server, ``{host}/api/2.0/mlflow/...``, with the run's own
  workspace credentials;
* an ``http(s)://`` URI: that server (e.g. a local ``mlflow server``), with the workspace
  token if it is the workspace's host, else MLFLOW_TRACKING_TOKEN (bearer) or
  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (basic), else no credentials.

Artifacts (the summary JSON and the report) go where the run's ``artifact_uri`` says:

* ``mlflow-artifacts:`` (what ``mlflow server`` serves by default): through the tracking
  server's artifact proxy;
* ``dbfs:/databricks/mlflow-tracking/<exp>/<run>/...`` (a Databricks workspace): the Files API,
  else the signed cloud URLs of ``credentials-for-write``, as MLflow's client does
  (:mod:`engine.mlflow_artifacts`);
* anything else (e.g. S3 written directly with the client's own cloud credentials): not
  uploaded; a warning says so and the tag ``engine.report_path`` holds the report's local path.

An artifact that cannot be stored is a warning naming it and the cause; the run record still
completes (its params, metrics and end are logged).

Limits respected (MLflow's ``utils/validation.py``): at most 1000 metrics, 100 params + tags
and 1000 entities in one ``log-batch``; param values up to 6000 characters, tag values up to
8000, keys up to 250.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from engine.calls import Caller, error_outcome
from engine.errors import UsageError
from engine.mlflow_artifacts import (
    CLOUD_RETRY,
    ArtifactUploadError,
    DatabricksArtifacts,
    RunArtifactRoot,
)
from engine.retry import Outcome, RetryPolicy, Tally
from engine.transport import Response, Transport

__all__ = ["MlflowTarget", "TrackingError", "log_run"]

log = logging.getLogger("engine.tracking")

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
#: Bound on one tracking request.
TRACKING_TIMEOUT_S = 60.0


class TrackingError(Exception):
    """A tracking call failed (reported as a warning: the run itself is not failed)."""


@dataclass(frozen=True, kw_only=True)
class MlflowTarget:
    """Where the run record goes: an experiment on a tracking server.

    Attributes:
        experiment: the experiment's name; on Databricks a workspace path such as
            ``/Users/me@example.com/nightly-scoring`` (created when missing).
        tracking_uri: ``databricks`` (the run's workspace) or an ``http(s)://`` server.
    """

    experiment: str
    tracking_uri: str = "databricks"

    @classmethod
    def create(
        cls,
        experiment: str,
        tracking_uri: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> MlflowTarget:
        """Check the experiment name and tracking URI up front (before any row is sent).

        Raises:
            UsageError: an empty experiment name, or a tracking URI the engine cannot use.
        """
        environ = os.environ if env is None else env
        uri = (tracking_uri or environ.get("MLFLOW_TRACKING_URI") or "databricks").strip()
        name = experiment.strip()
        if not name:
            raise UsageError(
                "`mlflow_experiment` needs an experiment name, e.g. "
                "/Users/me@example.com/nightly-scoring"
            )
        if len(name) > 500:
            raise UsageError(f"`mlflow_experiment` is {len(name)} characters; MLflow allows 500")
        if uri != "databricks" and urlsplit(uri).scheme not in ("http", "https"):
            raise UsageError(
                f"MLflow tracking URI {uri!r} is not one the engine can log to: it logs over "
                "MLflow's REST API, so give 'databricks' (the run's workspace, the default) or "
                "an http(s):// tracking server (e.g. `mlflow_tracking_uri='http://127.0.0.1:5000'` "
                "for a local `mlflow server`)"
            )
        if uri != "databricks" and not urlsplit(uri).hostname:
            raise UsageError(f"MLflow tracking URI {uri!r} has no host, e.g. http://127.0.0.1:5000")
        return cls(experiment=name, tracking_uri=uri.rstrip("/"))

    def base_url(self, workspace_host: str) -> str:
        if self.tracking_uri == "databricks":
            return workspace_host.rstrip("/")
        return self.tracking_uri

    def uses_workspace(self, workspace_host: str) -> bool:
        """True when the server is the workspace, so the workspace token authenticates."""
        if self.tracking_uri == "databricks":
            return True
        return urlsplit(self.tracking_uri).netloc == urlsplit(workspace_host).netloc


def server_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Credentials for a tracking server that is not the workspace (MLflow's env vars)."""
    environ = os.environ if env is None else env
    token = environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get(
        "MLFLOW_TRACKING_PASSWORD"
    )
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    timestamp_ms: int
    step: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "timestamp": self.timestamp_ms,
                "step": self.step}


def metric_key(name: str) -> str:
    """A metric or param key MLflow accepts: letters, digits, ``_ - . / space``; 250 at most."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:MAX_KEY_CHARS]


def cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def log_batches(
    metrics: Sequence[Metric], params: Mapping[str, str], tags: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """``log-batch`` bodies within MLflow's per-request limits (params and tags first)."""
    entries = [("params", {"key": metric_key(k), "value": cut(v, MAX_PARAM_VALUE_CHARS)})
               for k, v in params.items()]
    entries += [("tags", {"key": k[:MAX_KEY_CHARS], "value": cut(v, MAX_TAG_VALUE_CHARS)})
                for k, v in tags.items()]
    entries += [("metrics", metric.to_json()) for metric in metrics]
    body: dict[str, list[dict[str, Any]]] = {"metrics": [], "params": [], "tags": []}
    for kind, entry in entries:
        full = (
            len(body["metrics"]) + len(body["params"]) + len(body["tags"]) >= MAX_ENTITIES_PER_BATCH
            or (kind == "metrics" and len(body["metrics"]) >= MAX_METRICS_PER_BATCH)
            or (kind != "metrics" and len(body["params"]) + len(body["tags"])
                >= MAX_PARAMS_TAGS_PER_BATCH)
        )
        if full:
            yield body
            body = {"metrics": [], "params": [], "tags": []}
        body[kind].append(entry)
    if any(body.values()):
        yield body


#: Retries of a tracking call: only answers that say the request was not processed (429,
#: 503) are sent again, so a retry never creates a second run or logs a metric twice.
TRACKING_RETRY = RetryPolicy(
    max_attempts=4,
    retry_statuses=frozenset({429, 503}),
    max_throttled=6,
    max_delay_s=10.0,
    max_retry_after_s=30.0,
    max_elapsed_s=120.0,
)


class TrackingClient:
    """The few MLflow REST calls a run record needs."""

    def __init__(
        self,
        transport: Transport,
        base_url: str,
        headers: Mapping[str, str],
        *,
        caller: Caller | None = None,
    ) -> None:
        self._transport = transport
        self.base_url = base_url
        self._headers = dict(headers)
        self._caller = caller or Caller(
            TRACKING_RETRY, random.Random(), time.monotonic, asyncio.sleep
        )
        # storage requests share the client's randomness, clock and sleep, under their policy
        self._databricks = DatabricksArtifacts(
            transport, base_url, self.send, replace(self._caller, policy=CLOUD_RETRY)
        )

    async def send(
        self, method: str, url: str, data: bytes | None, content_type: str
    ) -> Response:
        """One request, retried on throttling; raises TrackingError when it fails."""
        headers = {**self._headers, "Content-Type": content_type}

        async def send() -> Response:
            return await self._transport.request(
                method, url, headers=headers, data=data, timeout_s=TRACKING_TIMEOUT_S
            )

        async def judge(response: Response) -> Response | Outcome:
            return response if response.ok else error_outcome(response)

        def give_up(outcome: Outcome, tally: Tally) -> TrackingError:
            where = f"{method} {url.removeprefix(self.base_url)}"
            return TrackingError(f"{where}: {outcome.brief}: {outcome.message}")

        return await self._caller.call(send, judge, give_up=give_up)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/api/2.0/mlflow/{path}"
        data = None if body is None else orjson.dumps(body)
        response = await self.send(method, url, data, "application/json")
        return orjson.loads(response.body or b"{}")

    async def experiment_id(self, name: str) -> str:
        """The experiment's id, creating the experiment when it does not exist."""
        url = f"experiments/get-by-name?experiment_name={quote(name, safe='')}"
        try:
            found = await self._call("GET", url)
            return str(found["experiment"]["experiment_id"])
        except TrackingError as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        created = await self._call("POST", "experiments/create", {"name": name})
        return str(created["experiment_id"])

    async def create_run(
        self, experiment_id: str, *, run_name: str, start_ms: int
    ) -> tuple[str, str]:
        """A new run; returns ``(run_id, artifact_uri)``."""
        made = await self._call(
            "POST",
            "runs/create",
            {"experiment_id": experiment_id, "start_time": start_ms, "run_name": run_name,
             "tags": [{"key": "mlflow.runName", "value": run_name}]},
        )
        info = made["run"]["info"]
        return str(info["run_id"]), str(info.get("artifact_uri", ""))

    async def log_batch(self, run_id: str, body: Mapping[str, Any]) -> None:
        await self._call("POST", "runs/log-batch", {"run_id": run_id, **body})

    async def end_run(self, run_id: str, *, status: str, end_ms: int) -> None:
        await self._call(
            "POST", "runs/update", {"run_id": run_id, "status": status, "end_time": end_ms}
        )

    async def upload(self, artifact_uri: str, name: str, data: bytes, content_type: str) -> bool:
        """Store one artifact of the run whose store is ``artifact_uri``; False when the
        engine cannot write to that store (nothing sent).

        Raises:
            TrackingError: the artifact proxy refused it.
            ArtifactUploadError: a Databricks store refused it both ways.
        """
        if artifact_uri.startswith("mlflow-artifacts:"):
            await self._upload_proxied(artifact_uri, name, data, content_type)
            return True
        root = RunArtifactRoot.parse(artifact_uri)
        if root is None:
            return False
        how = await self._databricks.upload(root, name, data)
        log.debug("MLflow artifact %s stored through %s", name, how)
        return True

    async def _upload_proxied(
        self, artifact_uri: str, name: str, data: bytes, content_type: str
    ) -> None:
        """PUT one artifact through the tracking server's artifact proxy."""
        rest = artifact_uri.removeprefix("mlflow-artifacts:")
        if rest.startswith("//"):  # mlflow-artifacts://host:port/path
            rest = "/" + rest[2:].split("/", 1)[-1]
        path = f"{rest.strip('/')}/{name}"
        url = f"{self.base_url}/api/2.0/mlflow-artifacts/artifacts/{quote(path)}"
        await self.send("PUT", url, data, content_type)


@dataclass(frozen=True, kw_only=True)
class RunContent:
    """What one run record holds."""

    run_name: str
    start_ms: int
    end_ms: int
    status: str  # FINISHED, FAILED or KILLED
    params: Mapping[str, str]
    tags: Mapping[str, str]
    metrics: Sequence[Metric]
    artifacts: Mapping[str, tuple[bytes, str]]  # name -> (data, content type)


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    artifacts_uploaded: bool


async def log_run(client: TrackingClient, experiment: str, content: RunContent) -> LoggedRun:
    """Create the run, log everything in batches, upload the artifacts, end the run."""
    experiment_id = await client.experiment_id(experiment)
    run_id, artifact_uri = await client.create_run(
        experiment_id, run_name=content.run_name, start_ms=content.start_ms
    )
    for body in log_batches(content.metrics, content.params, content.tags):
        await client.log_batch(run_id, body)
    uploaded = await upload_artifacts(client, run_id, artifact_uri, content.artifacts)
    await client.end_run(run_id, status=content.status, end_ms=content.end_ms)
    return LoggedRun(run_id, experiment_id, uploaded)


async def upload_artifacts(
    client: TrackingClient,
    run_id: str,
    artifact_uri: str,
    artifacts: Mapping[str, tuple[bytes, str]],
) -> bool:
    """Store each artifact; one that fails is a warning naming it, and the others still go.
    True when every one was stored."""
    stored, unsupported = 0, False
    for name, (data, content_type) in artifacts.items():
        try:
            if await client.upload(artifact_uri, name, data, content_type):
                stored += 1
            else:
                unsupported = True
        except (TrackingError, ArtifactUploadError) as exc:
            log.warning("MLflow run %s: artifact %s was not uploaded: %s", run_id, name, exc)
    if unsupported:
        log.warning(
            "MLflow run %s: artifacts not uploaded: the engine writes to the tracking server's "
            "proxy (mlflow-artifacts:) and to Databricks (dbfs:/databricks/mlflow-tracking/), "
            "not to %s; the report's local path is in the run's tag engine.report_path",
            run_id,
            artifact_uri or "(no artifact store given)",
        )
    return stored == len(artifacts)


def now_ms() -> int:
    return int(time.time() * 1000)
