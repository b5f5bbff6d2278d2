"""Airflow: score a dataset in a task, with credentials from a Databricks connection.

::

    from engine.airflow import ServingBatchOperator

    ServingBatchOperator(
        task_id="score",
        input="/data/exports/{{ ds }}/*.parquet",
        output="/data/scored/{{ ds }}.parquet",
        endpoint="churn-model",
    )

Needs Airflow 2.9+ or 3.x (``pip install 'databricks-batch-engine[airflow]'``); ``import engine``
never imports this module, so the engine works without Airflow installed.

How a task maps onto a run:

* progress goes to the task log as a line every few seconds (the ``engine`` logger);
* the return value, pushed to XCom, is the run's summary (``Summary.to_dict()``); the same
  document is pushed as XCom ``summary`` on every exit, failures included (with the exit code
  and the error message), so a downstream ``all_done`` task can read what happened;
* exit codes 1 and 2 fail the task with the engine's message (Airflow retries it as configured);
  exit 3 (some rows rejected, see the output's ``error`` column) succeeds unless
  ``fail_on_rejected_rows=True``, which fails it without retries: the same rows would be
  rejected again;
* a killed or timed-out task stops the engine gracefully (``on_kill``): no new request is sent,
  those in flight get ``grace_s`` to finish, and finished batches are in the checkpoint. The
  checkpoint sits beside the output (``.<output name>.checkpoint``), and the output path comes
  from templates that are the same on every try, so the next try resumes where this one
  stopped. It must be on storage the next try can see.
* ``report="/reports/{{ ds }}/score.html"`` writes the run report (templated), also for a
  stopped or failed try, and logs its path as a ``file://`` link in the task log; XCom
  ``report`` holds the path. ``mlflow_experiment`` logs the run to MLflow (see
  :mod:`engine.tracking`).

(Over 400 lines because the operator mirrors engine.score's parameters, each templated and
documented.)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.aio import LoopThread
from engine.api import arun
from engine.config import DEFAULT_PUSHGATEWAY_JOB, Credentials, MetricsConfig, ScoreConfig
from engine.errors import EngineError, Interrupted, UsageError
from engine.options import RunOptions
from engine.pipeline import StopSignal
from engine.stats import RunStats, Summary

if TYPE_CHECKING:
    from airflow.sdk import BaseHook, BaseOperator, Context
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
else:
    try:  # Airflow 3
        from airflow.sdk import BaseHook, BaseOperator
        from airflow.sdk.exceptions import AirflowException, AirflowFailException
    except ImportError:  # Airflow 2.9 - 2.11
        from airflow.exceptions import AirflowException, AirflowFailException
        from airflow.hooks.base import BaseHook
        from airflow.models.baseoperator import BaseOperator

__all__ = ["ServingBatchOperator", "credentials_from_connection"]

log = logging.getLogger("engine.airflow")

#: Seconds between progress lines in the task log (the CLI's default, 10 s, suits a terminal).
DEFAULT_PROGRESS_INTERVAL_S = 5.0
#: How much longer than the engine's grace period ``on_kill`` waits for the stop to finish.
STOP_MARGIN_S = 10.0


def credentials_from_connection(connection: Any) -> Credentials:
    """Read an Airflow Databricks connection the way the Databricks provider does.

    Host: the extra's ``host`` if set, else the connection's host (``https://`` unless it names
    a scheme; the connection's port is kept). Client id: ``login``, else the extra's
    ``client_id``. Client secret: ``password``, else the extra's ``client_secret``. This is the
    provider's service-principal OAuth setup (``"service_principal_oauth": true``).

    Raises:
        AirflowException: when the host, client id or client secret is missing.
    """
    extra: Mapping[str, Any] = connection.extra_dejson or {}
    host = str(extra.get("host") or connection.host or "")
    if host and connection.port and not _has_port(host):
        host = f"{host}:{connection.port}"
    values = {
        "host": host,
        "client_id": str(connection.login or extra.get("client_id") or ""),
        "client_secret": str(connection.password or extra.get("client_secret") or ""),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise AirflowException(
            f"Databricks connection '{connection.conn_id}' has no {', '.join(missing)}: set the "
            "workspace URL as Host, a service principal's client id as Login and its OAuth "
            "secret as Password (the principal needs CAN_QUERY on the endpoint)"
        )
    return Credentials(**values)


def _has_port(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return urllib.parse.urlsplit(host if "://" in host else "//" + host).port is not None
    return False


class ServingBatchOperator(BaseOperator):  # type: ignore[misc, unused-ignore]
    """Score Parquet/CSV files or a Delta table with a Databricks serving endpoint into one
    output file or Delta table.

    Args:
        input: paths, directories or globs of Parquet/CSV files, or a Delta table's
            directory or URI (templated).
        output: the output file: Arrow IPC, or Parquet when it ends in ``.parquet``
            (templated; held as ``output_path``, as ``output`` is Airflow's XCom reference).
            Mapped tasks need one each: put ``{{ ti.map_index }}`` in it.
        endpoint: the serving endpoint's name (templated).
        databricks_conn_id: the Airflow connection with the workspace and service principal;
            see :func:`credentials_from_connection`.
        shard: ``"I/N"`` to score only shard I of N of the input (templated), e.g. mapped
            with ``.expand(shard=[f"{i}/4" for i in range(4)])``; ``qps`` in
            ``score_options`` is then the total across the shards. See ``--shard``.
        checkpoint: where finished batches are kept for the next try (templated); default
            ``.<output name>.checkpoint`` beside the output, removed after a successful run.
        overwrite: replace an existing output (a rerun of a task that succeeded).
        resume: False starts clean, discarding an existing checkpoint.
        fail_on_rejected_rows: fail the task (without retries) when the endpoint rejected
            some rows, instead of succeeding with their errors in the output.
        score_options: :class:`~engine.ScoreConfig` fields, e.g. ``{"batch_rows": 500,
            "qps": 20}``; ``progress_interval_s`` defaults to 5 s here.
        input_version: read this version of a Delta table input (templated, e.g.
            ``"{{ params.version }}"``; an int or its text, empty for the latest).
        input_timestamp: read the Delta table input as of this RFC 3339 time (templated).
        where: a SQL predicate the Delta table input's rows must match (templated, e.g.
            ``"day = '{{ ds }}'"``).
        output_format: ``"delta"`` to write ``output`` as a Delta table.
        mode: for a Delta output: ``"error"`` (default), ``"append"`` or ``"overwrite"``.
            The commit carries the run's transaction, so a retry of a task whose run had
            committed appends nothing twice. XCom ``delta_version`` (and the summary's
            ``output_version``) is the table version holding the rows.
        partition_by: Delta output columns to partition by.
        report: write the run's HTML report here (templated); also for a stopped or failed
            try. Its path is logged as a link and pushed as XCom ``report``.
        mlflow_experiment: log the run to this MLflow experiment (templated), on the
            workspace's tracking server unless ``mlflow_tracking_uri`` names another.
        mlflow_tracking_uri: ``databricks`` or an ``http(s)://`` tracking server.
        pushgateway: a Prometheus Pushgateway URL to push the run's figures to every
            progress interval and at the end (templated, e.g. ``"{{ var.value.pushgateway }}"``).
            See ``--pushgateway``.
        pushgateway_job: the pushed group's ``job`` label (templated; default
            ``databricks_batch_engine``).
        pushgateway_labels: more grouping labels, e.g. ``{"instance": "{{ dag.dag_id }}"}``
            (templated); a mapped, sharded task adds its ``shard``.
        otel: OpenTelemetry metrics and a run span: None (default) when the worker's
            environment sets ``OTEL_EXPORTER_OTLP_ENDPOINT``; True or False to force.
        **kwargs: :class:`BaseOperator` arguments (``task_id``, ``retries``, ...).
    """

    template_fields: Sequence[str] = (
        "input", "output_path", "endpoint", "shard", "checkpoint", "input_version",
        "input_timestamp", "where", "report", "mlflow_experiment", "pushgateway",
        "pushgateway_job", "pushgateway_labels",
    )
    ui_color = "#fde8e4"

    def __init__(
        self,
        *,
        input: str | Sequence[str],
        output: str,
        endpoint: str,
        databricks_conn_id: str = "databricks_default",
        shard: str | None = None,
        checkpoint: str | None = None,
        overwrite: bool = False,
        resume: bool = True,
        fail_on_rejected_rows: bool = False,
        score_options: Mapping[str, Any] | None = None,
        input_version: int | str | None = None,
        input_timestamp: str | None = None,
        where: str | None = None,
        output_format: str | None = None,
        mode: str | None = None,
        partition_by: Sequence[str] | str | None = None,
        report: str | None = None,
        mlflow_experiment: str | None = None,
        mlflow_tracking_uri: str | None = None,
        pushgateway: str | None = None,
        pushgateway_job: str = DEFAULT_PUSHGATEWAY_JOB,
        pushgateway_labels: Mapping[str, str] | None = None,
        otel: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.report = report
        self.mlflow_experiment = mlflow_experiment
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.pushgateway = pushgateway
        self.pushgateway_job = pushgateway_job
        self.pushgateway_labels = dict(pushgateway_labels or {})
        self.otel = otel
        self.input_version = input_version
        self.input_timestamp = input_timestamp
        self.where = where
        self.output_format = output_format
        self.mode = mode
        self.partition_by = partition_by
        self.input = input
        self.output_path = output
        self.endpoint = endpoint
        self.databricks_conn_id = databricks_conn_id
        self.shard = shard
        self.checkpoint = checkpoint
        self.overwrite = overwrite
        self.resume = resume
        self.fail_on_rejected_rows = fail_on_rejected_rows
        self.score_options = dict(score_options or {})
        # A wrong option fails when the DAG is parsed, not at run time (the metrics settings
        # are templated: checked once rendered).
        self._score_config(MetricsConfig())
        self._engine_run: _EngineRun | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Score the input; return the run's summary (pushed to XCom)."""
        connection = BaseHook.get_connection(self.databricks_conn_id)
        try:
            config = self._score_config()
            run_options = self._run_options(config, credentials_from_connection(connection))
        except UsageError as exc:  # a rendered template that is not a setting: no retry helps
            _push_summary(context, _failure_summary(self.endpoint, exc))
            raise AirflowFailException(str(exc)) from None
        job = functools.partial(_score, run_options)
        self.log.info(
            "scoring %s%s into %s with endpoint '%s'",
            self.input,
            f" (shard {self.shard})" if self.shard else "",
            self.output_path,
            self.endpoint,
        )
        try:
            summary = self._run(job, context)
        finally:
            self._link_report(context)
        for line in summary.lines():
            self.log.info(line)
        _push_summary(context, summary)
        if summary.exit_code == 3 and self.fail_on_rejected_rows:
            raise AirflowFailException(
                f"the endpoint rejected {summary.rows_rejected:,} of {summary.rows_total:,} rows "
                f"(fail_on_rejected_rows=True); their messages are in the error column of "
                f"{summary.output}"
            )
        return summary.to_dict()

    def _run_options(self, config: ScoreConfig, credentials: Credentials) -> RunOptions:
        """The run's settings from the operator's (rendered) arguments."""
        return RunOptions.build(
            config=config,
            credentials=credentials,
            inputs=self.input,
            output=self.output_path,
            overwrite=self.overwrite,
            checkpoint=self.checkpoint,
            resume=self.resume,
            shard=self.shard or None,
            input_version=_version(self.input_version),
            input_timestamp=self.input_timestamp or None,
            where=self.where or None,
            output_format=self.output_format,
            mode=self.mode,
            partition_by=self.partition_by,
            report=self.report or None,
            mlflow_experiment=self.mlflow_experiment or None,
            mlflow_tracking_uri=self.mlflow_tracking_uri or None,
        )

    def _link_report(self, context: Context) -> None:
        """Say where the run report is (a link in the task log; XCom ``report``)."""
        if not self.report or not os.path.exists(self.report):
            return
        path = os.path.abspath(self.report)
        self.log.info("run report: %s", Path(path).as_uri())
        context["ti"].xcom_push(key="report", value=path)

    def on_kill(self) -> None:
        """Stop the run gracefully and wait for it, so the next try resumes from the checkpoint.

        Airflow calls this on SIGTERM (the task was killed) and on ``execution_timeout``.
        """
        engine_run = self._engine_run
        if engine_run is None or engine_run.done:
            return
        self.log.warning("task killed: stopping the engine; finished batches stay checkpointed")
        self._stop(engine_run)

    def _run(
        self, job: Callable[[StopSignal], Coroutine[Any, Any, Summary]], context: Context
    ) -> Summary:
        engine_run = self._engine_run = _EngineRun(job)
        engine_run.start()
        try:
            return engine_run.result()
        except EngineError as exc:
            _push_summary(context, exc.summary or _failure_summary(self.endpoint, exc))
            raise self._task_failure(exc) from exc
        except BaseException:
            # Airflow raised into this thread (a task timeout, or SIGTERM on Airflow 2):
            # let the engine flush its checkpoint before the task ends.
            self._stop(engine_run)
            raise

    @staticmethod
    def _task_failure(exc: EngineError) -> AirflowException:
        if isinstance(exc, Interrupted):
            return AirflowException(
                f"stopped by {exc.signal_name}; finished batches are checkpointed: the next "
                "try (or clearing the task) resumes from them"
            )
        return AirflowException(str(exc))

    def _stop(self, engine_run: _EngineRun) -> None:
        wait_s = self._score_config().grace_s + STOP_MARGIN_S
        if not engine_run.stop("SIGTERM", timeout_s=wait_s):
            self.log.warning(
                "the engine did not stop within %.0f s; the next try resumes from "
                "its last checkpoint flush",
                wait_s,
            )

    def _score_config(self, metrics: MetricsConfig | None = None) -> ScoreConfig:
        self._check_score_options()
        options: dict[str, Any] = {
            "progress": "log",
            "progress_interval_s": DEFAULT_PROGRESS_INTERVAL_S,
            "metrics": metrics or self._metrics_config(),
            **self.score_options,
        }
        return ScoreConfig(endpoint=self.endpoint, **options)

    def _check_score_options(self) -> None:
        """Refuse a ``score_options`` key that would silently win over an operator argument."""
        metrics_arguments = {
            "pushgateway": self.pushgateway,
            "pushgateway_job": self.pushgateway_job != DEFAULT_PUSHGATEWAY_JOB,
            "pushgateway_labels": self.pushgateway_labels,
            "otel": self.otel is not None,
        }
        clashes = [f"`{name}`" for name, given in metrics_arguments.items() if given]
        if "metrics" in self.score_options and clashes:
            raise UsageError(
                f"`score_options['metrics']` and {', '.join(clashes)} both set the metrics "
                "export: pass the operator's arguments, or a MetricsConfig alone"
            )
        if "endpoint" in self.score_options:
            raise UsageError(
                "`score_options['endpoint']` and `endpoint` both name the endpoint: pass "
                "`endpoint` alone"
            )

    def _metrics_config(self) -> MetricsConfig:
        return MetricsConfig(
            otel=self.otel,
            pushgateway_url=self.pushgateway or None,  # a template that rendered empty: off
            pushgateway_job=self.pushgateway_job or DEFAULT_PUSHGATEWAY_JOB,
            pushgateway_grouping={str(k): str(v) for k, v in self.pushgateway_labels.items()},
        )


class _EngineRun:
    """One engine run on its own thread and event loop, stoppable from any thread.

    Airflow's signal handlers run on the main thread (and on Airflow 2 raise right after
    ``on_kill``); with the engine on a thread of its own they never land inside its event loop,
    and ``on_kill`` can wait there for the graceful stop to finish.
    """

    def __init__(self, job: Callable[[StopSignal], Coroutine[Any, Any, Summary]]) -> None:
        self._job = job
        self._stop = StopSignal()
        self._loop: LoopThread | None = None
        self._result: concurrent.futures.Future[Summary] = concurrent.futures.Future()

    @property
    def done(self) -> bool:
        return self._result.done()

    def start(self) -> None:
        self._loop = LoopThread("engine-score")
        self._result = self._loop.submit(self._job(self._stop))
        self._result.add_done_callback(lambda _: self._loop.close() if self._loop else None)

    def result(self) -> Summary:
        """Wait for the run's summary; signals are still handled meanwhile."""
        return self._result.result()

    def stop(self, reason: str, *, timeout_s: float) -> bool:
        """Ask for a graceful stop, then wait up to ``timeout_s``; True once the run ended."""
        if self._loop is None:
            raise RuntimeError("the engine run was not started")
        self._loop.call_soon(self._stop.request, reason)
        return self._loop.join(timeout_s)


def _push_summary(context: Context, summary: Summary) -> None:
    """XCom ``summary``, on every exit: the same document as ``engine score --summary``;
    and ``delta_version``, the Delta table version holding the rows, for a Delta output."""
    context["ti"].xcom_push(key="summary", value=summary.to_dict())
    if summary.output_version is not None:
        context["ti"].xcom_push(key="delta_version", value=summary.output_version)


def _version(value: int | str | None) -> int | None:
    """A templated ``input_version``: rendered templates are text; empty means the latest."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    if text in ("", "None"):
        return None
    if not text.isdigit():
        raise AirflowFailException(
            f"input_version {value!r} is not a table version (a whole number 0 or more)"
        )
    return int(text)


def _failure_summary(endpoint: str, exc: EngineError) -> Summary:
    """The summary of a run that failed before it had counted anything."""
    return RunStats().summary(
        endpoint=endpoint, output=None, token_refreshes=0, exit_code=exc.exit_code, error=str(exc)
    )


async def _score(options: RunOptions, stop: StopSignal) -> Summary:
    """:func:`engine.api.arun`, with a stop signal the operator can reach from another thread."""
    return await arun(options, stop=stop)
