"""A run's record: the timeline sampled while it runs, then the HTML report and the MLflow run.

:class:`RunRecorder` is created before anything is sent (so a report path that cannot be
written, or a tracking URI the engine cannot use, is refused up front), samples the run's
:class:`~engine.stats.RunStats` once a second from when the endpoint is known, and at the end
(finished, stopped or failed) writes the report and logs the MLflow run. Neither can fail
the run: a problem writing either is a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from engine.aio import cancel_quietly
from engine.auth import connect
from engine.config import Credentials, ScoreConfig
from engine.durable import check_writable_file
from engine.errors import EngineError, Interrupted
from engine.report import RunRecord, jsonable, render_html, write_report
from engine.source.delta import TableRead
from engine.stats import RunStats, Summary
from engine.timeline import DEFAULT_INTERVAL_S, Sampler, Timeline, sample_every
from engine.tracking import (
    Metric,
    MlflowTarget,
    RunContent,
    TrackingClient,
    log_run,
    now_ms,
    server_headers,
)
from engine.transport import Transport

if TYPE_CHECKING:
    from engine.pipeline import Scorer

__all__ = ["RunRecorder", "check_report_path", "run_settings"]

log = logging.getLogger("engine.record")

#: MLflow run status for each way a run ends.
MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Refuse a report path that could not be written, before anything is sent."""
    return check_writable_file(path, "`report`", "run.html")


class RunRecorder:
    """Samples one run and writes its report and MLflow record at the end."""

    def __init__(
        self,
        *,
        credentials: Credentials,
        settings: Mapping[str, Any],
        report_path: Path | None = None,
        mlflow: MlflowTarget | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeline: Timeline | None = None,
    ) -> None:
        self.credentials = credentials
        self.settings: dict[str, Any] = dict(settings)
        self.report_path = report_path
        self.mlflow = mlflow
        self.interval_s = interval_s
        self.timeline = timeline or Timeline()
        self.started_at = datetime.now(UTC)
        #: wall-clock time of the timeline's 0 s (the endpoint known, the first row not sent)
        self.sampling_from = self.started_at
        self._sampler: Sampler | None = None
        self._task: asyncio.Task[None] | None = None
        self.record: RunRecord | None = None

    @classmethod
    def create(
        cls,
        *,
        credentials: Credentials,
        settings: Mapping[str, Any],
        report: str | os.PathLike[str] | None = None,
        mlflow_experiment: str | None = None,
        mlflow_tracking_uri: str | None = None,
    ) -> RunRecorder | None:
        """A recorder when a report or an MLflow record is asked for, else None.

        Raises:
            UsageError: the report path cannot be written, or the tracking URI is unusable.
        """
        report_path = check_report_path(report) if report else None
        target = MlflowTarget.create(mlflow_experiment, mlflow_tracking_uri) if (
            mlflow_experiment is not None
        ) else None
        if report_path is None and target is None:
            return None
        return cls(
            credentials=credentials, settings=settings, report_path=report_path, mlflow=target
        )

    def attach(self, scorer: Scorer) -> None:
        """Start sampling the run (on the running event loop, at the scorer's clock)."""
        self.settings["model_version"] = scorer.model_version
        self.settings["invocation_url"] = scorer.invocation_url
        self._sampler = Sampler(scorer.stats, self.timeline, clock=scorer.clock)
        self.sampling_from = datetime.now(UTC)
        self._sampler.sample()  # the start, at 0 s: every chart has a line, however short the run
        self._task = asyncio.create_task(
            sample_every(self._sampler, interval_s=self.interval_s, sleep=scorer.sleep)
        )

    def stop_sampling(self) -> None:
        """Cancel the sampler (a run ending by cancellation never reaches :meth:`finish`)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def finish(self, summary: Summary, error: EngineError | None = None) -> RunRecord:
        """Stop sampling, take the last sample, then write the report and log to MLflow."""
        if self._task is not None:
            await cancel_quietly(self._task)
        stats: RunStats | None = self._sampler.stats if self._sampler else None
        if self._sampler is not None:
            self._sampler.sample(fold_under_s=self.interval_s / 2)
        status = "finished" if error is None else (
            "stopped" if isinstance(error, Interrupted) else "failed"
        )
        record = self.record = RunRecord(
            summary=summary,
            settings=self.settings,
            points=self.timeline.all_points(),
            rejects=stats.rejects.groups() if stats is not None else (),
            status=status,
            started_at=self.started_at.isoformat(timespec="seconds"),
        )
        if self.report_path is not None:
            try:
                write_report(record, self.report_path)
                log.info("run report: %s", self.report_path.resolve().as_uri())
            except Exception as exc:  # a report never fails the run it describes
                log.warning("the run report was not written: %s", exc)
        if self.mlflow is not None:
            await self._log_mlflow(record)
        return record

    async def _log_mlflow(self, record: RunRecord) -> None:
        target = self.mlflow
        assert target is not None
        try:
            async with Transport(max_connections=2) as transport:
                client = await self._client(transport, target)
                logged = await log_run(client, target.experiment, self._content(record))
            where = "" if target.tracking_uri == "databricks" else (
                f" ({client.base_url}/#/experiments/{logged.experiment_id}/runs/{logged.run_id})"
            )
            log.info("MLflow run %s in experiment %s%s", logged.run_id, target.experiment, where)
        except Exception as exc:  # a run record never fails the run it records
            log.warning(
                "the run was not logged to MLflow experiment %s at %s: %s",
                target.experiment,
                target.tracking_uri,
                exc,
            )

    async def _client(self, transport: Transport, target: MlflowTarget) -> TrackingClient:
        host = self.credentials.host
        if not target.uses_workspace(host):
            return TrackingClient(transport, target.base_url(host), server_headers())
        auth = await connect(transport, self.credentials)
        token = await auth.workspace_token()
        return TrackingClient(transport, target.base_url(auth.host), token.header)

    def _content(self, record: RunRecord) -> RunContent:
        summary = record.summary
        start_ms = int(self.started_at.timestamp() * 1000)
        artifacts = {
            "summary.json": (
                orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2),
                "application/json",
            ),
            "run_report.html": (render_html(record).encode(), "text/html"),
        }
        tags = {
            "engine.status": record.status,
            "engine.exit_code": str(summary.exit_code),
            "mlflow.source.name": "engine score",
        }
        if summary.error:
            tags["engine.error"] = summary.error
        if self.report_path is not None:
            tags["engine.report_path"] = str(self.report_path.resolve())
        return RunContent(
            run_name=f"score {summary.endpoint}",
            start_ms=start_ms,
            end_ms=now_ms(),
            status=MLFLOW_STATUS[record.status],
            params=params_of(record.settings),
            tags=tags,
            metrics=summary_metrics(summary, now_ms())
            + timeline_metrics(record, int(self.sampling_from.timestamp() * 1000)),
            artifacts=artifacts,
        )


def run_settings(
    inputs: Any,
    output: str,
    config: ScoreConfig,
    *,
    shard: tuple[int, int] | None,
    table_read: TableRead,
    delta_output: bool,
    overwrite: bool,
    resume: bool,
) -> dict[str, Any]:
    """How the run is set up, for its report and MLflow params (never credentials)."""
    flags = {
        name: value
        for name, value in _flat(asdict(config)).items()
        if name != "endpoint" and value is not None
    }
    return {
        "endpoint": config.endpoint,
        "input": _describe_inputs(inputs),
        "output": output,
        "output_format": "delta" if delta_output else "file",
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "input_version": table_read.version,
        "input_timestamp": table_read.timestamp,
        "where": table_read.where,
        "overwrite": overwrite,
        "resume": resume,
        **flags,
    }


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (the retry policy) as ``retry.max_attempts``; model params stay whole."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict) and name != "params":
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _describe_inputs(inputs: Any) -> str | list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return os.fspath(inputs)
    if isinstance(inputs, Sequence) and all(isinstance(i, (str, os.PathLike)) for i in inputs):
        return [os.fspath(i) for i in inputs]
    rows = getattr(inputs, "num_rows", None) or getattr(inputs, "height", None)
    kind = f"{type(inputs).__module__}.{type(inputs).__qualname__}"
    return f"in-memory {kind}" + (f" ({rows:,} rows)" if isinstance(rows, int) else "")


def params_of(settings: Mapping[str, Any]) -> dict[str, str]:
    """Settings as MLflow params: text values, nested ones as JSON."""
    return {
        name: value if isinstance(value, str) else orjson.dumps(value, default=jsonable).decode()
        for name, value in settings.items()
        if value is not None
    }


def summary_metrics(summary: Summary, timestamp_ms: int) -> list[Metric]:
    """The run's figures, one value each (step 0)."""
    values: dict[str, float | None] = {
        "rows_per_s": summary.rows_per_s,
        "rows_scored": summary.rows_scored,
        "rows_rejected": summary.rows_rejected,
        "rows_skipped": summary.rows_skipped,
        "requests": summary.requests,
        "requests_per_s": summary.requests_per_s,
        "throttled_429": summary.throttled_429,
        "throttled_share": summary.throttled_share,
        "elapsed_s": summary.elapsed_s,
        "pacing_rps": summary.pacing_rps,
        "capacity_rps": summary.capacity_rps,
        **{f"latency_{name}_ms": value for name, value in summary.latency_ms.items()},
        **{f"retries.{cause}": count for cause, count in summary.retries.items()},
    }
    return [
        Metric(name, float(value), timestamp_ms)
        for name, value in values.items()
        if value is not None
    ]


def timeline_metrics(record: RunRecord, start_ms: int) -> list[Metric]:
    """The timeline as step metrics (step = seconds since the start)."""
    metrics: list[Metric] = []
    previous_t, previous_rows, previous_429 = 0.0, 0, 0
    for point in record.points:
        span = point.t_s - previous_t
        stamp, step = start_ms + int(point.t_s * 1000), round(point.t_s)
        values = {
            "timeline.rows_per_s": (point.rows_done - previous_rows) / span if span > 0 else None,
            "timeline.throttled_429_per_s": (
                (point.throttled_429 - previous_429) / span if span > 0 else None
            ),
            "timeline.in_flight": point.in_flight,
            "timeline.pacing_rps": point.pacing_rps,
            "timeline.latency_p50_ms": point.p50_ms,
            "timeline.latency_p99_ms": point.p99_ms,
        }
        metrics += [
            Metric(name, float(value), stamp, step)
            for name, value in values.items()
            if value is not None
        ]
        previous_t, previous_rows, previous_429 = point.t_s, point.rows_done, point.throttled_429
    return metrics
