"""The only module that knows every stage: source -> batches -> dispatch -> ordered sink.

::

    reader thread ──► work queue (bounded) ──► N dispatch tasks ──► ordered sink
         ▲                                                              │
         └──────────── window semaphore: released as batches are written ┘

The window bounds memory: the reader never runs more than ``config.window`` batches ahead of
the writer, whatever the input size or the order in which responses come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from aiolimiter import AsyncLimiter

from engine.adaptive import RateController
from engine.auth import Clock, Sleep, TokenRefresher, cancel_quietly, connect
from engine.batching import Batcher, RequestBatch
from engine.checkpoint import Checkpoint, batch_key
from engine.codec import encode_dataframe_split
from engine.config import Credentials, ScoreConfig
from engine.dispatch import BatchResult, Dispatcher, ReadyGate
from engine.encoders import EncoderPool, EncodeSpec, default_encoders
from engine.errors import EndpointError, EngineError, Interrupted, RunAborted, UsageError
from engine.progress import Progress, make_progress, report_every
from engine.schema import CastPlan, ModelSchema, parse_openapi, plan_cast
from engine.source import Source
from engine.stats import RunStats, Summary
from engine.transport import Transport
from engine.workspace import EndpointInfo, Workspace

__all__ = ["MemorySink", "ResultSink", "Scorer", "StopSignal", "prepare", "run"]

log = logging.getLogger("engine.pipeline")

#: Rows the reader hands over at a time (the batcher re-slices them into requests).
READ_BATCH_ROWS = 16_384
#: Requests in flight at the start of an adaptive run (doubles every round trip).
INITIAL_IN_FLIGHT = 4
#: How long a mid-run pause for a not-ready endpoint may last before the run fails.
DEFAULT_PAUSE_TIMEOUT_S = 900.0


class ResultSink(Protocol):
    """Where ordered results go: a file writer or an in-memory collector."""

    def add(self, batch_id: int, table: pa.Table) -> int: ...
    def finish(self) -> str: ...
    def abort(self) -> None: ...


class MemorySink:
    """Collects result tables in batch order (for ``score_table``)."""

    def __init__(self) -> None:
        self._pending: dict[int, pa.Table] = {}
        self._done: list[pa.Table] = []
        self.next_batch_id = 0

    def add(self, batch_id: int, table: pa.Table) -> int:
        self._pending[batch_id] = table
        written = 0
        while self.next_batch_id in self._pending:
            self._done.append(self._pending.pop(self.next_batch_id))
            self.next_batch_id += 1
            written += 1
        return written

    def finish(self) -> str:
        return "<memory>"

    def abort(self) -> None:
        self._pending.clear()

    def table(self) -> pa.Table:
        tables = self._done
        if not tables:
            raise EngineError("no rows were scored")
        return pa.concat_tables(tables, promote_options="permissive")


@dataclass
class Scorer:
    """Everything decided before the first row is sent."""

    config: ScoreConfig
    endpoint: EndpointInfo
    model: ModelSchema | None
    cast: CastPlan
    kept: tuple[str, ...]
    read_columns: tuple[str, ...]
    tokens: TokenRefresher
    workspace: Workspace
    stats: RunStats = field(default_factory=RunStats)
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep

    def key(self, batch: RequestBatch) -> str:
        """The checkpoint key: request content + endpoint + served model version."""
        return batch_key(
            batch.body, endpoint=self.config.endpoint, model_version=self.endpoint.model_version_key
        )

    def encode(self, rows: pa.RecordBatch) -> bytes:
        return encode_dataframe_split(self.cast.apply(rows), params=self.config.params)

    def output_table(self, batch: RequestBatch, result: BatchResult) -> pa.Table:
        rows = batch.rows
        columns = [rows.column(rows.schema.get_field_index(name)) for name in self.kept]
        names = [*self.kept, "prediction", "error"]
        return pa.Table.from_arrays([*columns, result.predictions, result.errors], names=names)


async def prepare(
    source: Source,
    credentials: Credentials,
    config: ScoreConfig,
    transport: Transport,
    *,
    start_if_stopped: bool = False,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Scorer:
    """Discover the endpoint, check the schema, fetch the first token: no row is sent yet.

    ``clock`` and ``sleep`` drive every timing decision (token expiry, backoff, pacing); tests
    inject a faster clock to live through token lifetimes in seconds.
    """
    credentials.require_oauth()  # a PAT alone cannot query a route-optimized endpoint
    auth = await connect(
        transport, credentials, timeout_s=config.token_timeout_s, clock=clock, sleep=sleep
    )
    workspace = Workspace(transport, auth, clock=clock, sleep=sleep)
    endpoint = await _ready_endpoint(workspace, config, start_if_stopped)
    doc = await workspace.get_openapi(config.endpoint)
    model = parse_openapi(doc) if doc else None
    if model is None:
        log.warning(
            "endpoint '%s' publishes no input schema (no model signature?): "
            "sending the input columns as they are",
            config.endpoint,
        )
    cast = plan_cast(source.schema, model)
    kept = _kept_columns(source.schema, config.keep)
    wanted = set(cast.columns) | set(kept)
    read_columns = tuple(name for name in source.schema.names if name in wanted)
    authorization = endpoint.data_plane_authorization_details()
    tokens = TokenRefresher(
        lambda: auth.data_plane_token(authorization, config.endpoint),
        clock=clock,
        sleep=sleep,
        name="data-plane token",
    )
    await tokens.get()  # refuse bad credentials or a missing CAN_QUERY before any row is read
    return Scorer(
        config,
        endpoint,
        model,
        cast,
        kept,
        read_columns,
        tokens,
        workspace,
        clock=clock,
        sleep=sleep,
    )


async def _ready_endpoint(
    workspace: Workspace, config: ScoreConfig, start_if_stopped: bool
) -> EndpointInfo:
    info = await workspace.get_endpoint(config.endpoint)
    if not info.endpoint_url:
        raise EndpointError(
            f"endpoint '{config.endpoint}' is not route-optimized (it has no endpoint_url); "
            "this engine queries route-optimized endpoints only: create the endpoint with "
            "route_optimized=true"
        )
    if info.is_ready:
        return info
    if start_if_stopped and info.config_update != "IN_PROGRESS":
        log.info("endpoint '%s' is stopped; starting it", config.endpoint)
        await workspace.start_endpoint(config.endpoint)
    if config.wait_ready_s > 0 or start_if_stopped:
        return await workspace.wait_ready(config.endpoint, timeout_s=max(config.wait_ready_s, 1.0))
    raise EndpointError(
        f"endpoint '{config.endpoint}' is not ready ({info.state_text}); start it "
        "(or pass --start-if-stopped), or wait for it with --wait-ready SECONDS"
    )


def _kept_columns(schema: pa.Schema, keep: Sequence[str] | None) -> tuple[str, ...]:
    if keep is None:
        return tuple(schema.names)
    missing = [name for name in keep if name not in schema.names]
    if missing:
        raise UsageError(
            f"--keep names column(s) not in the input: {', '.join(missing)}; "
            f"available: {', '.join(schema.names)}"
        )
    reserved = [name for name in keep if name in ("prediction", "error")]
    if reserved:
        raise UsageError(f"--keep cannot include {reserved}: the output adds those columns")
    return tuple(keep)


class StopSignal:
    """Asks a running pipeline to stop gracefully (SIGTERM/SIGINT handlers set it)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal_name = "SIGINT"

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


async def run(
    source: Source,
    sink: ResultSink,
    scorer: Scorer,
    transport: Transport,
    *,
    progress: Progress | None = None,
    checkpoint: Checkpoint | None = None,
    stop: StopSignal | None = None,
) -> Summary:
    """Score every row of ``source`` into ``sink``; the sink is finished only on success.

    Finished batches go to ``checkpoint`` (when given) as they complete, so a rerun after a
    crash or a stop skips them. ``stop`` ends the run gracefully: no new batch is sent, those
    in flight get ``config.grace_s`` to finish, the checkpoint is flushed, and
    :class:`Interrupted` is raised.
    """
    config = scorer.config
    stats = scorer.stats
    stats.rows_total = source.num_rows or 0
    progress = progress or make_progress(config.progress)
    progress.start(source.num_rows)
    dispatcher = _dispatcher(scorer, transport)
    await _prime(dispatcher.limiter)
    stages = _Stages(source, sink, scorer, dispatcher, progress, checkpoint)
    try:
        await stages.run_all(stop or StopSignal())
        path = sink.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        await dispatcher.pacer.aclose()
        progress.update(stats)
        progress.stop()
    return stats.summary(
        endpoint=config.endpoint,
        output=None if path == "<memory>" else path,
        token_refreshes=scorer.tokens.fetches,
        exit_code=3 if stats.rows_rejected else 0,
        model=scorer.endpoint.model_version_key,
    )


def _dispatcher(scorer: Scorer, transport: Transport) -> Dispatcher:
    config = scorer.config
    pause_timeout = max(config.wait_ready_s, DEFAULT_PAUSE_TIMEOUT_S)
    ready = ReadyGate(lambda: scorer.workspace.wait_ready(config.endpoint, timeout_s=pause_timeout))

    async def endpoint_ready() -> bool:
        return (await scorer.workspace.get_endpoint(config.endpoint)).is_ready

    controller = RateController(
        max_in_flight=config.workers,
        initial_in_flight=config.concurrency or INITIAL_IN_FLIGHT,
        max_rate=config.qps or math.inf,
    )
    scorer.stats.controller = controller
    return Dispatcher(
        transport=transport,
        tokens=scorer.tokens,
        endpoint_url=str(scorer.endpoint.endpoint_url),
        encode=scorer.encode,
        policy=config.retry,
        stats=scorer.stats,
        limiter=_hard_cap(config.qps),
        controller=controller,
        ready=ready,
        endpoint_ready=endpoint_ready,
        prediction_type=scorer.model.prediction_type if scorer.model else None,
        clock=scorer.clock,
        sleep=scorer.sleep,
        rng=random.Random(),
    )


def _hard_cap(qps: float | None) -> AsyncLimiter | None:
    """``--qps`` as a leaky bucket holding 50 ms of requests (at least 2), so a late timer
    wake-up is made up instead of lost (a bucket of one holds the rate to ~90% of ``qps``).
    :func:`_prime` fills it first: no start-up burst."""
    if not qps:
        return None
    burst = max(2.0, qps * 0.05)
    return AsyncLimiter(burst, burst / qps)


async def _prime(limiter: AsyncLimiter | None) -> None:
    """Take all but one of an empty bucket's slots, so the first requests are spaced too."""
    if limiter is None:
        return
    for _ in range(math.ceil(limiter.max_rate) - 1):
        await limiter.acquire()


class _Stages:
    """The running stages of one pipeline, wired by bounded queues."""

    def __init__(
        self,
        source: Source,
        sink: ResultSink,
        scorer: Scorer,
        dispatcher: Dispatcher,
        progress: Progress,
        checkpoint: Checkpoint | None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.scorer = scorer
        self.dispatcher = dispatcher
        self.progress = progress
        self.checkpoint = checkpoint
        config = scorer.config
        self.queue: asyncio.Queue[tuple[RequestBatch, str] | None] = asyncio.Queue(
            maxsize=config.workers
        )
        self.window = asyncio.Semaphore(config.window)
        self.flush_lock = asyncio.Lock()
        self.stopping = False

    async def run_all(self, stop: StopSignal) -> None:
        config = self.scorer.config
        background = [
            asyncio.create_task(
                report_every(
                    self.progress,
                    self.scorer.stats,
                    getattr(self.progress, "interval_s", config.progress_interval_s),
                )
            ),
            asyncio.create_task(self.scorer.tokens.run_background()),
        ]
        producer = asyncio.create_task(self.produce())
        group = asyncio.create_task(self._work_group(producer))
        stopped = asyncio.create_task(stop.event.wait())
        try:
            await asyncio.wait({group, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not group.done():
                await self._stop_gracefully(producer, group, config.grace_s)
                raise Interrupted(
                    f"stopped by {stop.signal_name}; finished batches are checkpointed: "
                    "run the same command again to resume",
                    signal_name=stop.signal_name,
                )
            group.result()
        finally:
            for task in (*background, stopped, producer, group):
                await cancel_quietly(task)
            await self.flush_checkpoint(force=True)

    async def _work_group(self, producer: asyncio.Task[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.scorer.config.workers):
                    group.create_task(self.work())
                group.create_task(_propagate(producer))
        except BaseExceptionGroup as group_error:
            raise _first_engine_error(group_error) from None

    async def _stop_gracefully(
        self, producer: asyncio.Task[None], group: asyncio.Task[None], grace_s: float
    ) -> None:
        log.warning("stopping: no new requests; waiting up to %.0f s for those in flight", grace_s)
        self.stopping = True
        await cancel_quietly(producer)
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in range(self.scorer.config.workers):
            self.queue.put_nowait(None)
        with contextlib.suppress(TimeoutError, EngineError):
            await asyncio.wait_for(asyncio.shield(group), timeout=grace_s)

    def _read(self) -> Iterator[pa.RecordBatch]:
        reader = self.source.reader(list(self.scorer.read_columns), batch_rows=READ_BATCH_ROWS)
        return iter(reader)

    async def produce(self) -> None:
        # Reading runs on a thread: Parquet/CSV decoding and file or object-store I/O release
        # the GIL. Encoding and hashing hold it, so they run in encoder processes (or inline
        # here when there are none); the loop only cuts chunks and numbers the results.
        config = self.scorer.config
        batcher = Batcher(
            rows_per_batch=config.batch_rows,
            max_request_bytes=config.max_request_bytes,
            encode=self.scorer.encode,
        )
        pool = EncoderPool(self.encode_spec(), workers=self.encoders())
        try:
            async for chunks, pieces in pool.map(self._chunks(batcher)):
                for chunk, cut in zip(chunks, pieces, strict=True):
                    keys = [key for *_, key in cut]
                    numbered = batcher.number(chunk, [piece[:4] for piece in cut])
                    for batch, key in zip(numbered, keys, strict=True):
                        await self.window.acquire()
                        await self.queue.put((batch, key))
        finally:
            pool.close()
        for _ in range(config.workers):
            await self.queue.put(None)

    async def _chunks(self, batcher: Batcher) -> AsyncIterator[list[pa.RecordBatch]]:
        reader = await asyncio.to_thread(self._read)
        while (raw := await asyncio.to_thread(next, reader, None)) is not None:
            chunks = list(batcher.split(raw))
            if chunks:
                yield chunks
        rest = list(batcher.rest())
        if rest:
            yield rest

    def encode_spec(self) -> EncodeSpec:
        scorer = self.scorer
        return EncodeSpec(
            cast=scorer.cast,
            params=scorer.config.params,
            max_request_bytes=scorer.config.max_request_bytes,
            endpoint=scorer.config.endpoint,
            model_version=scorer.endpoint.model_version_key,
            keyed=self.checkpoint is not None,
        )

    def encoders(self) -> int:
        pinned = self.scorer.config.encoders
        return default_encoders() if pinned is None else pinned

    async def work(self) -> None:
        while not self.stopping and (item := await self.queue.get()) is not None:
            batch, key = item
            result, reused = self.from_checkpoint(batch, key)
            if result is None:
                result = await self.dispatcher.score(batch)
            await self.deliver(batch, key, result, reused=reused)

    def from_checkpoint(self, batch: RequestBatch, key: str) -> tuple[BatchResult | None, bool]:
        if self.checkpoint is None or not key:
            return None, False
        stored = self.checkpoint.get(key)
        if stored is None:
            return None, False
        predictions, errors = stored
        rejected = len(errors) - errors.null_count
        return BatchResult(batch.batch_id, predictions, errors, rejected), True

    async def deliver(
        self, batch: RequestBatch, key: str, result: BatchResult, *, reused: bool
    ) -> None:
        stats = self.scorer.stats
        if reused:
            stats.rows_skipped += batch.num_rows
        else:
            stats.rows_rejected += result.rejected_rows
            stats.rows_scored += batch.num_rows - result.rejected_rows
            if self.checkpoint is not None and key:
                self.checkpoint.add(key, result.predictions, result.errors)
                await self.flush_checkpoint()
        written = self.sink.add(batch.batch_id, self.scorer.output_table(batch, result))
        for _ in range(written):
            self.window.release()
        limit = self.scorer.config.max_error_rows
        if limit is not None and stats.rows_rejected > limit:
            raise RunAborted(
                f"{stats.rows_rejected} rows were rejected, more than --max-error-rows {limit}; "
                "their messages are in the checkpoint; rerun without the limit to see them"
            )

    async def flush_checkpoint(self, *, force: bool = False) -> None:
        checkpoint = self.checkpoint
        if checkpoint is None or not (checkpoint.flush_due() or (force and checkpoint.has_pending)):
            return
        async with self.flush_lock:
            pending = checkpoint.take_pending()
            await asyncio.to_thread(checkpoint.write, pending)


async def _propagate(task: asyncio.Task[None]) -> None:
    """Let the TaskGroup see the producer's failure (but not its cancellation on stop)."""
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _first_engine_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to show: the first EngineError (or cancellation/interrupt) in the group."""
    flat: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            flat.append(exc)

    walk(group)
    for exc in flat:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
    for exc in flat:
        if isinstance(exc, EngineError):
            return exc
    return flat[0] if flat else group
