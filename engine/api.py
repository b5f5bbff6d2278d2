"""The Python API: ``score``, ``ascore`` and ``score_table``, over the same pipeline as the CLI.

``ascore`` keeps its keyword signature for people; it builds a :class:`RunOptions` and calls
:func:`arun`, the one run path, which the CLI and Airflow's operator call with the
``RunOptions`` they build from their flags and arguments.

(Over 400 lines because ascore documents every parameter and arun holds a run's life cycle
(lock, checkpoint, output, Delta commit) in one place.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from engine import volumes
from engine.aio import run_sync
from engine.checkpoint import Checkpoint
from engine.config import Credentials, ScoreConfig
from engine.delta_sink import RunTransaction, TableSink, TableWrite, input_snapshot
from engine.errors import EngineError, StorageError, UsageError
from engine.location import is_uri
from engine.options import RunOptions
from engine.pipeline import MemorySink, Scorer, StopSignal, run
from engine.prepare import prepare
from engine.runlock import RunLock, lock_path
from engine.sink import OrderedWriter, OutputSpec, check_output
from engine.source import Source, open_source
from engine.stats import RunStats, Summary
from engine.telemetry import Telemetry
from engine.transport import Transport

if TYPE_CHECKING:
    from engine.runrecord import RunRecorder

__all__ = ["arun", "ascore", "score", "score_table"]

log = logging.getLogger("engine")
Inputs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Any


def _transport(config: ScoreConfig) -> Transport:
    return Transport(
        max_connections=config.workers + 4,
        connect_timeout_s=config.connect_timeout_s,
        request_timeout_s=config.request_timeout_s,
    )


async def ascore(
    inputs: Inputs,
    *,
    output: str | os.PathLike[str],
    endpoint: str | None = None,
    config: ScoreConfig | None = None,
    credentials: Credentials | None = None,
    host: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
    overwrite: bool = False,
    start_if_stopped: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    handle_signals: bool = False,
    stop: StopSignal | None = None,
    shard: tuple[int, int] | str | None = None,
    input_version: int | None = None,
    input_timestamp: str | None = None,
    where: str | None = None,
    output_format: str | None = None,
    mode: str | None = None,
    partition_by: Sequence[str] | str | None = None,
    report: str | os.PathLike[str] | None = None,
    mlflow_experiment: str | None = None,
    mlflow_tracking_uri: str | None = None,
    **options: Any,
) -> Summary:
    """Score Parquet/CSV files, a Delta table or in-memory data into ``output``.

    Args:
        inputs: paths, directories, globs, or a pyarrow/polars/pandas table.
        output: an Arrow IPC file, or Parquet when it ends in ``.parquet``.
        endpoint: the serving endpoint's name (or set ``config``).
        config: a :class:`ScoreConfig`; ``**options`` override its fields.
        credentials: host and service principal; else ``host``/``client_id``/
            ``client_secret``, else DATABRICKS_HOST / _CLIENT_ID / _CLIENT_SECRET, else the
            ``~/.databrickscfg`` ``profile`` (DATABRICKS_CONFIG_PROFILE, ``DEFAULT``);
            ``auth="databricks-sdk"`` lets databricks-sdk authenticate (see
            :class:`~engine.config.Credentials`).
        overwrite: replace an existing output.
        start_if_stopped: start a stopped endpoint and wait for it.
        checkpoint: where finished batches are kept so a rerun resumes; default
            ``.<output name>.checkpoint`` beside the output, removed after a successful run.
        resume: False starts clean, discarding an existing checkpoint.
        handle_signals: stop gracefully on SIGTERM/SIGINT (the CLI sets it); a second
            signal exits at once. Only from the main thread.
        stop: a :class:`~engine.pipeline.StopSignal` the caller keeps, to stop the run
            gracefully itself (e.g. an Airflow task's ``on_kill``).
        shard: ``(i, n)`` or ``"i/n"``: score only shard ``i`` of ``n`` of the input files
            (by row group; CSV by file), so ``n`` tasks cover every row exactly once. ``qps``
            is then the total across the shards: this one takes ``qps / n``. A Delta
            table is split by its files.
        input_version: read this version of a Delta table input (time travel).
        input_timestamp: read the Delta table input as of this RFC 3339 time.
        where: a SQL predicate the Delta table input's rows must match.
        output_format: ``"delta"`` to write ``output`` as a Delta table; ``"auto"`` (the
            default) writes a file by extension, or appends to / overwrites a Delta table
            already at ``output`` as ``mode`` says.
        mode: for a Delta output, ``"error"`` (default), ``"append"`` or ``"overwrite"``;
            the rows are one commit carrying the run's transaction, so a rerun of a run
            that committed writes nothing twice (see :mod:`engine.delta_sink`).
        partition_by: Delta output columns to partition by.
        report: write the run report, one self-contained HTML file, here (also for a
            stopped or failed run; see :mod:`engine.report`).
        mlflow_experiment: log the run (params, metrics, the timeline, the summary and the
            report) to this MLflow experiment, created when missing; a failure to log is a
            warning (see :mod:`engine.tracking`).
        mlflow_tracking_uri: the tracking server: ``databricks`` (the run's workspace, the
            default unless MLFLOW_TRACKING_URI says otherwise) or an ``http(s)://`` server.

    Returns:
        The run's :class:`Summary`; ``summary.exit_code`` is 3 when some rows were rejected.

    Raises:
        EngineError: with a message that names the problem and the fix.
    """
    run_options = RunOptions.build(
        endpoint=endpoint, config=config, options=options,
        credentials=credentials, host=host, client_id=client_id, client_secret=client_secret,
        profile=profile, auth=auth,
        inputs=inputs, output=output, overwrite=overwrite, start_if_stopped=start_if_stopped,
        checkpoint=checkpoint, resume=resume, handle_signals=handle_signals, shard=shard,
        input_version=input_version, input_timestamp=input_timestamp, where=where,
        output_format=output_format, mode=mode, partition_by=partition_by,
        report=report, mlflow_experiment=mlflow_experiment,
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
    return await arun(run_options, stop=stop)


async def arun(options: RunOptions, *, stop: StopSignal | None = None) -> Summary:
    """Run ``options`` (see :class:`~engine.options.RunOptions`): the one path every front
    end takes, :func:`ascore`, the CLI and Airflow's operator alike.

    Args:
        options: the run's settings, from :meth:`RunOptions.build`.
        stop: a :class:`~engine.pipeline.StopSignal` the caller keeps, to stop the run
            gracefully itself (e.g. an Airflow task's ``on_kill``).

    Returns:
        The run's :class:`Summary`; ``summary.exit_code`` is 3 when some rows were rejected.

    Raises:
        EngineError: with a message that names the problem and the fix.
    """
    if options.inputs is None or options.output is None:
        raise UsageError("`inputs` and `output` are required to score into a file or table")
    shard, creds = options.shard, options.credentials
    cfg = _shard_share(options.config, shard)
    output = volumes.local_path(options.output)  # a mounted Volume: a local path
    volumes.use(creds)  # a Volume outside a cluster: this run's credentials (this task)
    source = _open_input(options, cfg)
    spec, table = _checked_output(options, output)
    recorder = None
    if options.report or options.mlflow_experiment is not None:
        # Only then: the run record's modules (report, MLflow tracking and artifacts) are
        # 10-13 ms of every run's start-up otherwise.
        from engine.runrecord import RunRecorder, run_settings

        recorder = RunRecorder.create(
            credentials=creds,
            settings=run_settings(
                options.inputs, spec.path, cfg, shard=shard, table_read=options.table_read,
                delta_output=table is not None, overwrite=options.overwrite,
                resume=options.resume,
            ),
            report=options.report,
            mlflow_experiment=options.mlflow_experiment,
            mlflow_tracking_uri=options.mlflow_tracking_uri,
        )
    default_dir = options.checkpoint is None
    # Shards appending to one Delta table each keep their own checkpoint (and run lock).
    table_shard = shard if table is not None else None
    checkpoint_dir = Path(options.checkpoint or _default_checkpoint(spec.path, table_shard))
    # Before anything is sent: a second run on this output is refused at once.
    with RunLock.acquire(lock_path(checkpoint_dir), output=spec.path):
        run_state = _RunState(cfg.endpoint, checkpoint_dir)
        output_plan = _Output(spec, table, shard)
        telemetry = Telemetry.open(cfg, shard=shard)  # imports nothing unless configured
        try:
            summary = await _score_locked(
                source, output_plan, cfg, creds, run_state,
                start_if_stopped=options.start_if_stopped, resume=options.resume,
                handle_signals=options.handle_signals, stop=stop or StopSignal(),
                recorder=recorder, telemetry=telemetry,
            )
        except EngineError as exc:
            failure = run_state.failed(exc)
            telemetry.finish(failure.summary or run_state.summary(str(failure), 1))
            if recorder is not None and failure.summary is not None:
                await recorder.finish(failure.summary, failure)
            if failure is exc:
                raise
            raise failure from exc
        except BaseException as exc:  # cancelled, or a second Ctrl-C: still flush the metrics
            telemetry.finish(run_state.summary(f"interrupted ({type(exc).__name__})", 130))
            raise
        finally:
            if recorder is not None:
                recorder.stop_sampling()
        telemetry.finish(summary)
        if recorder is not None:
            await recorder.finish(summary)
        if default_dir:
            run_state.remove_checkpoint()
    return summary


def _open_input(options: RunOptions, cfg: ScoreConfig) -> Source:
    """The run's input, once; a shard says how much of it is its share."""
    shard = options.shard
    source = open_source(options.inputs, shard=shard, table=options.table_read)
    if shard is not None:
        rows = "?" if source.num_rows is None else f"{source.num_rows:,}"
        share = f", a qps share of {cfg.qps:g}" if cfg.qps else ""
        log.info("shard %d/%d: %s rows%s", shard[0], shard[1], rows, share)
    return source


def _checked_output(options: RunOptions, output: str) -> tuple[OutputSpec, TableWrite | None]:
    """The output file's spec and the Delta table (None for a file), refused now if it
    cannot be written, before anything is sent."""
    table = TableWrite.chosen(
        output, output_format=options.output_format, mode=options.mode,
        partition_by=options.partition_by, overwrite=options.overwrite,
    )
    if table is not None:
        volumes.refuse_remote_table(table.uri, "output")
    spec = OutputSpec(path=output, overwrite=options.overwrite or options.mode == "overwrite")
    if table is None:
        check_output(spec)
    else:
        table.check()
    return spec, table


@dataclass(frozen=True)
class _Output:
    """Where a run writes: a file (``spec``), or the Delta ``table`` when there is one."""

    spec: OutputSpec
    table: TableWrite | None
    shard: tuple[int, int] | None

    def transaction(self, source: Source, scorer: Scorer) -> RunTransaction | None:
        """The run's Delta transaction, named by everything that decides its rows."""
        snapshot = input_snapshot(source)
        if self.table is None or snapshot is None:
            if self.table is not None:
                log.warning(
                    "in-memory input: the Delta commit carries no run transaction, so a "
                    "rerun after it commits appends the rows again"
                )
            return None
        config = scorer.config
        identity = {
            "input": snapshot,
            "shard": list(self.shard) if self.shard else None,
            "endpoint": config.endpoint,
            "served_model": config.served_model,
            "model_version": scorer.model_version,
            "params": dict(config.params) if config.params else None,
            "kept": list(scorer.kept),
            "output": _table_name(self.table.uri),
        }
        return RunTransaction.for_run(identity)


async def _score_locked(
    source: Source,
    output: _Output,
    cfg: ScoreConfig,
    creds: Credentials,
    state: _RunState,
    *,
    start_if_stopped: bool,
    resume: bool,
    handle_signals: bool,
    stop: StopSignal,
    telemetry: Telemetry,
    recorder: RunRecorder | None = None,
) -> Summary:
    async with _transport(cfg) as transport:
        state.scorer = await prepare(
            source, creds, cfg, transport, start_if_stopped=start_if_stopped
        )
        scorer = state.scorer
        telemetry.start(scorer, shard=output.shard)
        if recorder is not None:
            recorder.attach(scorer)
        state.store = Checkpoint.open(state.checkpoint_dir, fresh=not resume)
        if len(state.store):
            log.info("resuming: %d finished batches in %s", len(state.store), state.checkpoint_dir)
        prediction_type = scorer.model.prediction_type if scorer.model else None
        # Declared up front so an output with no rows (an empty shard) has every column.
        kept_schema = pa.schema(
            [(scorer.input_schema or source.schema).field(name) for name in scorer.kept]
        )
        if output.table is None:
            writer = OrderedWriter(
                output.spec, prediction_type=prediction_type, kept_schema=kept_schema
            )
            with _signals_to(stop, enabled=handle_signals):
                return await run(
                    source, writer, scorer, transport, checkpoint=state.store, stop=stop
                )
        output.table.check_columns(scorer.kept)
        transaction = output.transaction(source, scorer)
        committed = transaction.committed_in(output.table) if transaction else None
        staging = state.checkpoint_dir.with_name(state.checkpoint_dir.name + ".staged.arrow")
        if committed is not None and resume:
            staging.unlink(missing_ok=True)  # left by a crash between the commit and the exit
            return _already_committed(output.table, transaction, committed, scorer)
        sink = TableSink(
            output.table,
            staging,
            transaction,
            prediction_type=prediction_type,
            kept_schema=kept_schema,
        )
        with _signals_to(stop, enabled=handle_signals):
            summary = await run(source, sink, scorer, transport, checkpoint=state.store, stop=stop)
        return replace(summary, output_version=sink.version)


def _already_committed(
    table: TableWrite, transaction: RunTransaction | None, version: int, scorer: Scorer
) -> Summary:
    """The summary of a run whose rows the table already holds: nothing sent or written."""
    assert transaction is not None
    log.warning(
        "Delta table %s already holds this run's rows (committed in %s with application "
        "transaction %s): nothing was sent and nothing appended; pass --no-resume "
        "(resume=False) to score and write them again",
        table.uri, f"version {version}", transaction.app_id,
    )
    summary = scorer.stats.summary(
        endpoint=scorer.config.endpoint,
        output=table.uri,
        token_refreshes=scorer.tokens.fetches,
        exit_code=0,
        model=scorer.model_version,
    )
    return replace(summary, output_version=version)


def _table_name(uri: str) -> str:
    return uri.rstrip("/") if is_uri(uri) else os.path.abspath(uri)


class _RunState:
    """What a run got to, so a failure can say what is kept and carry a summary."""

    def __init__(self, endpoint: str, checkpoint_dir: Path) -> None:
        self.endpoint = endpoint
        self.checkpoint_dir = checkpoint_dir
        self.scorer: Scorer | None = None
        self.store: Checkpoint | None = None

    def failed(self, exc: EngineError) -> EngineError:
        """``exc`` with the summary so far; a storage failure also says how to resume."""
        if isinstance(exc, StorageError) and self.store is not None:
            kept = len(self.store)
            resumed = StorageError(
                f"{exc}. The checkpoint {self.checkpoint_dir} is consistent and keeps the "
                f"{kept:,} batches finished before this: rerun the same command to resume",
                path=exc.path,
                errno=exc.errno,
            )
            exc = resumed
        stats = self.scorer.stats if self.scorer is not None else RunStats()
        if exc.exit_code == 2 and stats.requests:
            exc.exit_code = 1  # exit 2 promises that nothing was sent
        exc.summary = self.summary(str(exc), exc.exit_code)
        return exc

    def summary(self, error: str, exit_code: int) -> Summary:
        """The summary of a run that ended with ``error``: what it counted so far."""
        stats = self.scorer.stats if self.scorer is not None else RunStats()
        return stats.summary(
            endpoint=self.endpoint,
            output=None,
            token_refreshes=self.scorer.tokens.fetches if self.scorer is not None else 0,
            exit_code=exit_code,
            error=error,
            model=self.scorer.model_version if self.scorer is not None else None,
        )

    def remove_checkpoint(self) -> None:
        if self.store is not None:
            self.store.remove()


def _shard_share(config: ScoreConfig, shard: tuple[int, int] | None) -> ScoreConfig:
    """``qps`` is the total across all shards: each of the ``n`` takes an equal share."""
    if shard is None or config.qps is None:
        return config
    return replace(config, qps=config.qps / shard[1])


def _default_checkpoint(output: str, shard: tuple[int, int] | None = None) -> Path:
    """Beside a local output; for an object-store output, a local folder named after it
    (the checkpoint needs fsync and rename, which object stores do not offer). With
    ``shard`` (shards sharing one Delta table), one folder per shard."""
    part = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    if is_uri(output) and not output.startswith("file://"):
        digest = hashlib.sha256(output.encode()).hexdigest()[:16]
        name = output.rstrip("/").rsplit("/", 1)[-1]
        return Path.cwd() / f".{name}{part}.{digest}.checkpoint"
    path = Path(output.removeprefix("file://").rstrip("/"))
    return path.parent / f".{path.name}{part}.checkpoint"


@contextlib.contextmanager
def _signals_to(stop: StopSignal, *, enabled: bool) -> Iterator[None]:
    """SIGTERM/SIGINT ask ``stop`` for a graceful stop; a second one exits at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.requested:
            # The checkpoint is consistent at every instant: parts are renamed into place
            # before the manifest names them, and a torn manifest line is ignored.
            print(f"second {sig.name}: exiting now; rerun the command to resume", file=sys.stderr)
            os._exit(128 + sig.value)
        print(
            f"{sig.name}: finishing requests in flight, then stopping (send again to exit at once)",
            file=sys.stderr,
        )
        stop.request(sig.name)

    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def ascore_table(
    data: Any,
    *,
    endpoint: str | None = None,
    config: ScoreConfig | None = None,
    credentials: Credentials | None = None,
    host: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
    **options: Any,
) -> pa.Table:
    """Async form of :func:`score_table`."""
    run_options = RunOptions.build(
        endpoint=endpoint, config=config, credentials=credentials, host=host,
        client_id=client_id, client_secret=client_secret, profile=profile, auth=auth,
        options={"progress": "off", **options},
    )
    cfg, creds = run_options.config, run_options.credentials
    source = open_source(data)
    sink = MemorySink()
    async with _transport(cfg) as transport:
        scorer = await prepare(source, creds, cfg, transport)
        await run(source, sink, scorer, transport)
    return sink.table()


def score(inputs: Inputs, **kwargs: Any) -> Summary:
    """Blocking form of :func:`ascore` (runs its own event loop)."""
    return run_sync(lambda: ascore(inputs, **kwargs))


def score_table(data: Any, **kwargs: Any) -> pa.Table:
    """Score an in-memory pyarrow Table, polars or pandas DataFrame.

    Returns the kept input columns + ``prediction`` + ``error`` as a pyarrow Table, one row per
    input row, in input order. Takes the same keyword arguments as :func:`ascore` but ``output``.
    """
    return run_sync(lambda: ascore_table(data, **kwargs))

