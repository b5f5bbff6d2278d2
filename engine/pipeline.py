"""The only module that knows every stage: source -> batches -> dispatch -> ordered sink.

::

    reader thread ──► work queue (bounded) ──► a task per batch ──► ordered sink
         ▲                  (2 x workers being sent; a long wait gives the place up)  │
         └──── window semaphore + byte budget: released as batches are written ───────┘

The window and the budget bound memory: the reader never runs more than ``config.window``
batches, nor ``config.max_buffer_mib`` of input rows and request bodies, ahead of the writer,
whatever the input size, the width of its rows or the order in which responses come back.

(Over 400 lines because the stages and their shutdown are one TaskGroup, read as one.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from engine.adaptive import RateController
from engine.aio import ByteBudget, cancel_quietly
from engine.batching import Batcher, RequestBatch
from engine.checkpoint import FLUSH_BATCHES, FLUSH_INTERVAL_S, Checkpoint
from engine.clock import Clock, Sleep
from engine.codec import encode_dataframe_split
from engine.config import ScoreConfig
from engine.dispatch import BatchResult, Dispatcher, ReadyGate, SendingStopped
from engine.encoders import EncoderPool, EncodeSpec, default_encoders, row_bytes
from engine.errors import (
    EngineError,
    Interrupted,
    RunAborted,
    StorageError,
)
from engine.hang import HangBound
from engine.lazy import pc
from engine.ordering import InOrder
from engine.progress import Progress, make_progress, report_every
from engine.schema import CastPlan, ModelSchema
from engine.source import Source, read_errors
from engine.stats import RunStats, Summary
from engine.tokens import TokenRefresher
from engine.transport import Transport
from engine.workspace import EndpointInfo, Workspace

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["MemorySink", "ResultSink", "Scorer", "StopSignal", "run"]

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
        self._order: InOrder[pa.Table] = InOrder()
        self._done: list[pa.Table] = []

    def add(self, batch_id: int, table: pa.Table) -> int:
        ready = self._order.add(batch_id, table)
        self._done.extend(table for _, table in ready)
        return len(ready)

    def finish(self) -> str:
        return "<memory>"

    def abort(self) -> None:
        self._order.clear()

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
    #: CSV columns read straight as the endpoint's types (rows that do not parse rejected)
    read_types: Mapping[str, pa.DataType] = field(default_factory=dict)
    #: the input's schema as read (CSV columns typed by ``read_types``)
    input_schema: pa.Schema | None = None

    @property
    def invocation_url(self) -> str:
        """Where requests go: route-optimized or workspace URL, one served model or all."""
        return self.endpoint.invocation_url(self.workspace.host, self.config.served_model)

    @property
    def model_version(self) -> str:
        """What serves the predictions (part of every checkpoint key)."""
        return self.endpoint.model_version_for(self.config.served_model)

    def encode(self, rows: pa.RecordBatch) -> bytes:
        return encode_dataframe_split(self.cast.apply(rows), params=self.config.params)

    def output_table(self, batch: RequestBatch, result: BatchResult) -> pa.Table:
        rows = batch.rows
        columns = [rows.column(rows.schema.get_field_index(name)) for name in self.kept]
        names = [*self.kept, "prediction", "error"]
        return pa.Table.from_arrays([*columns, result.predictions, result.errors], names=names)


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
        await dispatcher.aclose()
        progress.update(stats)
        progress.stop()
    return stats.summary(
        endpoint=config.endpoint,
        output=None if path == "<memory>" else path,
        token_refreshes=scorer.tokens.fetches,
        exit_code=3 if stats.rows_rejected else 0,
        model=scorer.model_version,
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
    dispatcher = Dispatcher(
        transport=transport,
        tokens=scorer.tokens,
        endpoint_url=scorer.invocation_url,
        encode=scorer.encode,
        policy=config.retry,
        stats=scorer.stats,
        limiter=_hard_cap(config.qps),
        controller=controller,
        ready=ready,
        endpoint_ready=endpoint_ready,
        prediction_type=scorer.model.prediction_type if scorer.model else None,
        hang=HangBound(
            ceiling_s=config.request_timeout_s, floor_s=config.hang_floor_s, hedge=config.hedge
        ),
        clock=scorer.clock,
        sleep=scorer.sleep,
        rng=random.Random(),
    )
    return dispatcher


def _hard_cap(qps: float | None) -> AsyncLimiter | None:
    """``--qps`` as a leaky bucket holding 50 ms of requests (at least 2), so a late timer
    wake-up is made up instead of lost (a bucket of one holds the rate to ~90% of ``qps``).
    :func:`_prime` fills it first: no start-up burst."""
    if not qps:
        return None
    from aiolimiter import AsyncLimiter  # 12 ms of imports (importlib.metadata): --qps only

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
        # Batches being sent (waiting for a slot, in flight, answered): a batch that waits
        # out a Retry-After or a backoff gives its place to the next, so the slots stay full.
        self.sending = asyncio.Semaphore(config.sending_batches)
        self.window = asyncio.Semaphore(config.window)
        # Batches are counted by the window and weighed by the budget from the moment they
        # are queued until the writer has them (in batch order: ``held`` is that order).
        self.budget = ByteBudget(config.buffer_bytes)
        self.held: collections.deque[int] = collections.deque()
        self.flush_lock = asyncio.Lock()
        self.flush_wanted = asyncio.Event()
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
        committer = asyncio.create_task(self.commit_checkpoint())
        stopped = asyncio.create_task(stop.event.wait())
        failed = True
        try:
            await asyncio.wait({group, stopped, committer}, return_when=asyncio.FIRST_COMPLETED)
            if committer.done():
                committer.result()  # it only ends by failing: the checkpoint cannot be written
            if not group.done():
                await self._stop_gracefully(producer, group, config.grace_s)
                raise Interrupted(
                    f"stopped by {stop.signal_name}; finished batches are checkpointed: "
                    "run the same command again to resume",
                    signal_name=stop.signal_name,
                )
            group.result()
            failed = False
        finally:
            tasks = (*background, stopped, producer, group, committer)
            for task in tasks:
                task.cancel()
            try:
                for task in tasks:
                    await cancel_quietly(task)
            finally:  # even when this run is itself being cancelled
                await self._final_flush(failed=failed)

    async def _final_flush(self, *, failed: bool) -> None:
        """Persist what finished; if the run is already failing, a flush failure is logged
        rather than hiding the first error."""
        try:
            await self.flush_checkpoint()
        except StorageError as exc:
            if not failed:
                raise
            log.error("%s (the checkpoint keeps every batch persisted before this)", exc)

    async def _work_group(self, producer: asyncio.Task[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.work(group))
                group.create_task(_propagate(producer))
        except BaseExceptionGroup as group_error:
            raise _first_engine_error(group_error) from None

    async def _stop_gracefully(
        self, producer: asyncio.Task[None], group: asyncio.Task[None], grace_s: float
    ) -> None:
        log.warning("stopping: no new requests; waiting up to %.0f s for those in flight", grace_s)
        self.stopping = True
        self.dispatcher.stop_sending()  # nothing waiting in the pacer is sent
        await cancel_quietly(producer)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)
        self.sending.release()  # ends work() should it wait for a place
        with contextlib.suppress(TimeoutError, EngineError):
            await asyncio.wait_for(asyncio.shield(group), timeout=grace_s)

    def _read(self) -> Iterator[pa.RecordBatch]:
        reader = self.source.reader(
            list(self.scorer.read_columns),
            batch_rows=READ_BATCH_ROWS,
            csv_types=self.scorer.read_types or None,
        )
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
                per_row = row_bytes(chunks)
                for chunk, cut in zip(chunks, pieces, strict=True):
                    keys = [key for *_, key in cut]
                    numbered = batcher.number(chunk, [piece[:4] for piece in cut])
                    for batch, key in zip(numbered, keys, strict=True):
                        await self.window.acquire()
                        # what the batch holds until it is written: rows and body
                        weight = int(batch.num_rows * per_row) + len(batch.body)
                        await self.budget.acquire(weight)
                        self.held.append(weight)
                        self._buffered()
                        await self.queue.put((batch, key))
        finally:
            pool.close()
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
            model_version=scorer.model_version,
            keyed=self.checkpoint is not None,
        )

    def encoders(self) -> int:
        pinned = self.scorer.config.encoders
        return default_encoders() if pinned is None else pinned

    async def work(self, group: asyncio.TaskGroup) -> None:
        """A task for each batch, up to ``config.sending_batches`` being sent at once.

        A batch waiting to be sent again gives its place up (``on_wait``): with a task per
        worker, each batch that waited out a Retry-After of a second held its worker, and at
        5 % random 429s a run kept a third of its fault-free rate. The item is dropped
        before the next wait: nothing here holds a batch once its task has it.
        """
        while not self.stopping:
            await self.sending.acquire()
            if self.stopping or (item := await self.queue.get()) is None:
                return
            group.create_task(self.handle(*item))
            del item

    async def handle(self, batch: RequestBatch, key: str) -> None:
        """Score one batch (or take it from the checkpoint) and hand it to the writer. When
        the run is stopping and the batch was never sent, it is left for a rerun."""
        place = _Place(self.sending)
        try:
            result, reused = self.from_checkpoint(batch, key)
            if result is None:
                try:
                    result = await self.score_readable(batch, on_wait=place.give_up)
                except SendingStopped:
                    return
            await self.deliver(batch, key, result, reused=reused)
        finally:
            place.give_up()

    async def score_readable(
        self, batch: RequestBatch, *, on_wait: Callable[[], None] | None = None
    ) -> BatchResult:
        """Score the rows that could be read; rows with a read error are rejected with it,
        unsent, in their places."""
        unreadable = None if batch.oversize else read_errors(batch.rows)
        if unreadable is None:
            return await self.dispatcher.score(batch, on_wait=on_wait)
        readable = pc.is_null(unreadable)
        rows = batch.rows.filter(readable)
        if rows.num_rows:
            sent = RequestBatch(batch.batch_id, batch.row_offset, rows, self.scorer.encode(rows))
            scored = await self.dispatcher.score(sent, on_wait=on_wait)
            predictions, errors, rejected = scored.predictions, scored.errors, scored.rejected_rows
        else:
            model = self.scorer.model
            predictions = pa.nulls(
                0, model.prediction_type if model and model.prediction_type else pa.null()
            )
            errors, rejected = pa.nulls(0, pa.string()), 0
        mask = readable.to_numpy(zero_copy_only=False)
        # position of each readable row among the scored ones; unreadable rows take the null
        places = pa.array(np.where(mask, np.cumsum(mask) - 1, len(predictions)))
        predictions = pa.concat_arrays([predictions, pa.nulls(1, predictions.type)]).take(places)
        errors = pa.concat_arrays([errors.cast(pa.string()), pa.nulls(1, pa.string())])
        errors = pc.coalesce(unreadable, errors.take(places))
        bad = len(unreadable) - unreadable.null_count
        return BatchResult(batch.batch_id, predictions, errors, rejected + bad)

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
            if result.rejected_rows:
                stats.rejects.add(result.errors, row_offset=batch.row_offset)
            stats.rows_scored += batch.num_rows - result.rejected_rows
            if self.checkpoint is not None and key:
                self.checkpoint.add(key, result.predictions, result.errors)
                self.flush_wanted.set()
        written = self.sink.add(batch.batch_id, self.scorer.output_table(batch, result))
        for _ in range(written):
            self.window.release()
            self.budget.release(self.held.popleft())
        if written:
            self._buffered()
        limit = self.scorer.config.max_error_rows
        if limit is not None and stats.rows_rejected > limit:
            raise RunAborted(
                f"{stats.rows_rejected} rows were rejected, more than `max_error_rows={limit}`; "
                "their messages are in the checkpoint; rerun without the limit to see them"
            )

    def _buffered(self) -> None:
        stats = self.scorer.stats
        stats.buffer_bytes, stats.buffer_peak_bytes = self.budget.held, self.budget.peak

    async def commit_checkpoint(self) -> None:
        """Group commit: a finished batch is written within ``FLUSH_INTERVAL_S`` (at once
        when ``FLUSH_BATCHES`` wait) together with every batch that finished meanwhile, so a
        kill -9 rescores little more than what was in flight. Runs until cancelled; ends
        only by raising :class:`StorageError`."""
        checkpoint = self.checkpoint
        if checkpoint is None:
            await asyncio.Event().wait()  # nothing to commit: wait to be cancelled
            return
        while True:
            await self.flush_wanted.wait()
            self.flush_wanted.clear()
            for _ in range(4):  # let batches finishing meanwhile join this write
                if checkpoint.pending_batches >= FLUSH_BATCHES:
                    break
                await self.scorer.sleep(FLUSH_INTERVAL_S / 4)
            await self.flush_checkpoint()

    async def flush_checkpoint(self) -> None:
        """Write every finished batch not yet persisted (one writer at a time)."""
        checkpoint = self.checkpoint
        if checkpoint is None or not checkpoint.has_pending:
            return
        async with self.flush_lock:
            pending = checkpoint.take_pending()
            write = asyncio.ensure_future(asyncio.to_thread(checkpoint.write, pending))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # The thread goes on writing: hold the lock until it is done, so the final
                # flush never appends to the manifest at the same time.
                await asyncio.wait({write})
                raise


class _Place:
    """A batch's place among those being sent, given up once: when it first waits to be
    sent again, or when it is done."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places: asyncio.Semaphore | None = places

    def give_up(self) -> None:
        if self._places is not None:
            self._places.release()
            self._places = None


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
