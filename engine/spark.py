"""Spark: score a DataFrame on many executors with ``mapInArrow``, one engine per worker.

::

    from engine.spark import score

    scored = score(spark.read.parquet("s3://exports/2026-11-21/"), endpoint="churn-model",
                   qps=200)
    scored.write.parquet("s3://scored/2026-11-21/")

Needs ``pip install 'databricks-batch-engine[spark]'`` on the driver and the executors
(``import engine`` never imports this module, so the engine works without pyspark).

How a job maps onto the engine:

* On the driver, :func:`score` reads the endpoint and its OpenAPI schema once, checks the
  DataFrame's columns against it (every problem listed before a task starts), and derives the
  output schema: the input columns, ``prediction`` (its Spark type from the schema's Arrow
  type) and ``error`` (string, null when the row was scored). Nothing is sent yet.
* Each task streams its partition's Arrow record batches through the same pipeline as
  ``engine score``: batching, encoding, adaptive rate, retries, bisection of bad rows (their
  ``error`` holds the server's message). Rows come back in partition order; none is dropped.
* One engine per Python worker process: an event loop on a background thread, one connection
  pool, and one token refresher per token kind, prepared on the worker's first task and reused
  by every later task it runs (Spark reuses Python workers, ``spark.python.worker.reuse``).
* ``qps`` and ``concurrency``/``max_concurrency`` are totals for the job: each task takes
  ``total / n``, where ``n = min(partitions, spark.sparkContext.defaultParallelism)`` is how
  many tasks run at once. With more partitions than task slots, the later ones start as
  earlier ones finish, so the endpoint never sees more than the total.
* Credentials travel inside the task's pickled closure, in an object whose ``repr`` hides the
  secret: they are not in any column, literal, Spark conf or query plan, so they appear
  neither in ``explain()`` nor in the Spark UI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from engine.aio import LoopThread, run_sync
from engine.auth import connect
from engine.config import Credentials, ScoreConfig
from engine.errors import EngineError, Interrupted, UsageError
from engine.options import RunOptions
from engine.ordering import InOrder
from engine.pipeline import Scorer, StopSignal, run
from engine.prepare import check_served_model, plan_input, prepare
from engine.source import open_source
from engine.stats import RunStats
from engine.transport import Transport
from engine.workspace import Workspace

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["score", "task_share"]

log = logging.getLogger("engine.spark")


def _pyspark() -> Any:
    try:
        import pyspark.sql.pandas.types as spark_arrow
    except ImportError:
        raise UsageError(
            "engine.spark needs pyspark: pip install 'databricks-batch-engine[spark]'"
        ) from None
    return spark_arrow


def task_share(config: ScoreConfig, concurrent_tasks: int) -> ScoreConfig:
    """``config`` with its job-wide ``qps`` and concurrency split across the tasks at once
    (each task keeps at least one request in flight)."""
    n = max(1, concurrent_tasks)
    share: dict[str, Any] = {"progress": "off"}
    if config.qps is not None:
        share["qps"] = config.qps / n
    if config.concurrency is not None:
        share["concurrency"] = max(1, config.concurrency // n)
    share["max_concurrency"] = max(1, math.ceil(config.max_concurrency / n))
    return dataclasses.replace(config, **share)


def score(
    df: DataFrame,
    *,
    endpoint: str | None = None,
    config: ScoreConfig | None = None,
    credentials: Credentials | None = None,
    host: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
    prediction_type: pa.DataType | None = None,
    tasks: int | None = None,
    **options: Any,
) -> DataFrame:
    """Score every row of ``df`` with a serving endpoint; returns a lazy DataFrame.

    Args:
        df: the rows to score; its columns are checked against the endpoint's schema.
        endpoint: the serving endpoint's name (or set ``config``).
        config: a :class:`ScoreConfig`; ``**options`` override its fields. ``qps`` and
            ``concurrency`` are totals for the whole job (see the module docstring).
        credentials: as :func:`engine.score` (else ``host``/``client_id``/``client_secret``,
            the DATABRICKS_* variables, the ``profile``, or ``auth="databricks-sdk"``),
            resolved on the driver.
        prediction_type: the ``prediction`` column's Arrow type, when the endpoint's schema
            does not declare one.
        tasks: how many tasks run at once, which ``qps`` and ``concurrency`` are split by;
            default ``min(partitions, defaultParallelism)``. Spark Connect (Databricks
            serverless and shared clusters) exposes neither: pass it there with a limit.

    Returns:
        ``df``'s columns + ``prediction`` + ``error``, one row per input row.

    Raises:
        EngineError: a missing endpoint or ``served_model``, bad credentials, or a schema
            that does not fit (every problem listed); nothing has been sent.
    """
    spark_arrow = _pyspark()
    run_options = RunOptions.build(
        endpoint=endpoint, config=config, credentials=credentials, host=host,
        client_id=client_id, client_secret=client_secret, profile=profile, auth=auth,
        options=options,
    )
    config, creds = run_options.config, run_options.credentials
    creds.require_oauth()
    arrow_schema = spark_arrow.to_arrow_schema(df.schema)
    declared = run_sync(lambda: _prediction_type(arrow_schema, config, creds))
    kind = prediction_type or declared
    if kind is None:
        raise UsageError(
            f"endpoint '{config.endpoint}' declares no prediction type; pass "
            "prediction_type= (e.g. pyarrow.float64()) so the output schema is known up front"
        )
    names = set(df.columns)
    if {"prediction", "error"} & names:
        raise UsageError("the DataFrame already has a 'prediction' or 'error' column; rename it")
    out_schema = pa.schema([*arrow_schema, ("prediction", kind), ("error", pa.string())])
    at_once = tasks or _tasks_at_once(df)
    if at_once is None:
        if config.qps is not None or config.concurrency is not None:
            raise UsageError(
                "this Spark session does not say how many tasks run at once (Spark Connect), "
                "so qps/concurrency cannot be split across them: pass tasks=N as well"
            )
        at_once = 1  # each task finds its share of the endpoint's capacity on its own
    job = _Job(_Secret(creds), task_share(config, at_once), out_schema)
    log.info(
        "scoring with %d tasks at once, each with %s", at_once,
        f"qps {job.config.qps:g}" if job.config.qps else "an adaptive rate",
    )
    return df.mapInArrow(job, spark_arrow.from_arrow_schema(out_schema))


def _tasks_at_once(df: DataFrame) -> int | None:
    """``min(partitions, defaultParallelism)``, or None where Spark does not expose them."""
    try:
        partitions = int(df.rdd.getNumPartitions())
        return min(partitions, int(df.sparkSession.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect: no RDDs, no SparkContext (errors vary by version)
        return None


async def _prediction_type(
    schema: pa.Schema, config: ScoreConfig, credentials: Credentials
) -> pa.DataType | None:
    """Read the endpoint's schema on the driver and check ``schema`` against it."""
    async with Transport() as transport:
        workspace = Workspace(transport, await connect(transport, credentials))
        endpoint = await workspace.get_endpoint(config.endpoint)
        check_served_model(endpoint, config.served_model)  # on the driver, not in each task
        plan = await plan_input(workspace, config.endpoint, schema)  # SchemaError: every problem
    return plan.model.prediction_type if plan.model else None


class _Secret:
    """Credentials that do not show themselves in a repr, a log line or a plan."""

    __slots__ = ("value",)

    def __init__(self, value: Credentials) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<credentials>"


@dataclasses.dataclass(frozen=True)
class _Job:
    """The function each task runs (pickled with its closure to the executors)."""

    secret: _Secret
    config: ScoreConfig
    schema: pa.Schema

    #: What Spark shows for this function in plans and the UI.
    __name__ = "engine_score"

    def __repr__(self) -> str:
        return f"engine.spark(endpoint={self.config.endpoint!r})"

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from _Worker.get().score_partition(self, batches)


class _Worker:
    """One per Python worker process: a loop thread, a connection pool, prepared scorers."""

    _lock = threading.Lock()
    _instance: _Worker | None = None

    def __init__(self) -> None:
        self._loop = LoopThread("engine-spark")
        self._transport = Transport()
        self._scorers: dict[tuple[str, ...], Scorer] = {}

    @classmethod
    def get(cls) -> _Worker:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _scorer(self, job: _Job, input_schema: pa.Schema) -> Scorer:
        creds = job.secret.value
        # One prepared scorer per workspace, principal, settings and input columns: a worker
        # may run tasks of several jobs.
        key = (
            creds.host, creds.client_id, creds.kind, repr(job.config), input_schema.to_string()
        )
        scorer = self._scorers.get(key)
        if scorer is None:
            empty = open_source(input_schema.empty_table())
            scorer = self._loop.submit(prepare(empty, creds, job.config, self._transport)).result()
            self._scorers[key] = scorer
        # Tokens and the endpoint are shared; counters are per task.
        return dataclasses.replace(scorer, stats=RunStats())

    def score_partition(
        self, job: _Job, batches: Iterator[pa.RecordBatch]
    ) -> Iterator[pa.RecordBatch]:
        first = next(batches, None)
        if first is None:
            return
        scorer = self._scorer(job, first.schema)
        reader = pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))
        sink = _QueueSink(job.schema)
        stop = StopSignal()
        done = self._loop.submit(run(open_source(reader), sink, scorer, self._transport, stop=stop))
        try:
            while (table := sink.results.get()) is not None:
                yield from table.to_batches()
        except GeneratorExit:  # Spark stopped reading (a limit, a cancelled task): stop too
            sink.closed.set()
            self._loop.call_soon(stop.request, "task end")
            with contextlib.suppress(Interrupted):
                done.result()
            raise
        summary = done.result()  # raises the run's error, if any
        log.info(
            "partition: %d rows scored, %d rejected, %d requests", summary.rows_scored,
            summary.rows_rejected, summary.requests,
        )


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


#: Result tables a task's thread may hold unread (each one request batch's rows).
RESULT_QUEUE_TABLES = 8
#: How often a blocked hand-over checks whether the task stopped reading, in seconds.
PUT_POLL_S = 0.05


class _QueueSink:
    """Hands results to the task's thread in batch order, cast to the declared schema."""

    def __init__(self, schema: pa.Schema, *, max_tables: int = RESULT_QUEUE_TABLES) -> None:
        self._schema = schema
        self._order: InOrder[pa.Table] = InOrder()
        self.results: queue.Queue[pa.Table | None] = queue.Queue(maxsize=max_tables)
        #: set by the task's thread when Spark stops reading: nothing more is handed over
        self.closed = threading.Event()

    def _put(self, item: pa.Table | None) -> None:
        """Hand over one result, waiting while Spark is slower than the endpoint: the engine
        (its reader and its requests) waits with it, so memory stays flat; gives up once the
        task stopped reading."""
        while not self.closed.is_set():
            try:
                self.results.put(item, timeout=PUT_POLL_S)
                return
            except queue.Full:
                continue

    def add(self, batch_id: int, table: pa.Table) -> int:
        ready = self._order.add(batch_id, table)
        for ready_id, ready_table in ready:
            try:
                self._put(ready_table.cast(self._schema))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise EngineError(
                    f"batch {ready_id}'s results do not fit the declared output schema: {exc}"
                ) from exc
        return len(ready)

    def finish(self) -> str:
        self._put(None)
        return "<spark>"

    def abort(self) -> None:
        self._put(None)
