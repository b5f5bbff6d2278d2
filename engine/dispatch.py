"""One batch: shared pause -> rate limiter -> pacer -> token -> transport -> predictions.

Each request goes through the one call loop (:mod:`engine.calls`), as token and
control-plane calls do; what only the data plane needs sits on top of it here, as the loop's
``send`` and ``judge``: the pacer and capacity feedback, the hung-request bound, a fresh token
after a 401/403, the stopped-endpoint pause, and bisection of bad rows.

A 400 is ambiguous on Databricks: the endpoint may be stopped or updating (wait, then resend)
or the batch's own rows may be bad. Bad rows are isolated by bisection: the batch is split in
halves and each half resent, recursively, until each offending row stands alone; good rows
keep their predictions and each bad row gets a null prediction and the server's message. That
costs about 2·log2(rows) extra requests per bad row.

(Over 400 lines because the data plane's rules on top of the call loop, and the pacer that
applies the capacity finder, share one request's state; each is a short method.)
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa

from engine.adaptive import STRICT_SPACING_MIN_INTERVAL_S, RateController, turns_due
from engine.aio import PreciseSleep, cancel_quietly
from engine.batching import RequestBatch
from engine.calls import Caller, error_outcome, malformed
from engine.clock import Clock, Sleep
from engine.codec import ResponseFormatError, concat_predictions, decode_predictions
from engine.errors import AuthError, BatchFailed, EngineError, SchemaError, TransportError
from engine.hang import HangBound
from engine.logs import emit
from engine.retry import (
    BadRequestKind,
    FailureKind,
    Outcome,
    Reason,
    RetryPolicy,
    Tally,
    classify_bad_request,
    pause_until,
)
from engine.stats import RunStats
from engine.tokens import Token, TokenRefresher
from engine.transport import Response, Transport

if TYPE_CHECKING:  # imported where --qps is set: importlib.metadata makes it 12 ms
    from aiolimiter import AsyncLimiter

__all__ = ["BatchResult", "Dispatcher", "Pacer", "PauseGate", "ReadyGate", "SendingStopped"]

log = logging.getLogger("engine.dispatch")

#: How often the watchdog checks whether a request in flight has become hung (the bound
#: moves as the endpoint's latency is learned).
HANG_CHECK_S = 5.0
#: A wait this long before a retry is said in the log: what it waits for and until when.
LONG_WAIT_S = 10.0
#: A server-given Retry-After at least this long pauses every request, not just the one.
SHARED_PAUSE_MIN_S = 5.0
#: A batch waiting at least this long to be sent again (not for the endpoint's limit) gives
#: its place to the next batch meanwhile; a shorter wait (a noise 429 resent after about a
#: round trip) keeps it, as a request in flight would.
FREE_PLACE_MIN_WAIT_S = 0.2


class SendingStopped(Exception):
    """The run is stopping (SIGTERM/SIGINT): this batch was not sent and will not be."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Predictions for one request batch, aligned with its rows."""

    batch_id: int
    predictions: pa.Array
    errors: pa.Array  # string; null where the row was scored
    rejected_rows: int


class PauseGate:
    """One shared slowdown: after a 429/503 every task waits until the same instant."""

    def __init__(self, *, clock: Clock, sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self.until = 0.0

    def pause(self, delay_s: float) -> None:
        self.until = pause_until(self._clock(), self.until, delay_s)

    async def wait(self) -> None:
        while (remaining := self.until - self._clock()) > 0:
            await self._sleep(remaining)


class ReadyGate:
    """Pauses all sending while the endpoint is not ready; one poller for all tasks."""

    def __init__(self, wait_ready: Callable[[], Awaitable[object]]) -> None:
        self._wait_ready = wait_ready
        self._open = asyncio.Event()
        self._open.set()
        self._poll: asyncio.Future[object] | None = None
        self.pauses = 0

    async def wait(self) -> None:
        await self._open.wait()

    async def hold_until_ready(self) -> None:
        if self._poll is None:
            self.pauses += 1
            self._open.clear()
            self._poll = asyncio.ensure_future(self._wait_ready())
            self._poll.add_done_callback(self._reopen)
        await asyncio.shield(self._poll)

    def _reopen(self, _: object) -> None:
        self._poll = None
        self._open.set()


#: In startup the ticker looks at the pace at least this often (it follows the round trip).
STARTUP_RECHECK_S = 0.05


class Pacer:
    """Applies a :class:`RateController`: an in-flight cap and evenly spaced request starts.

    Requests wait for a free slot oldest batch first (the writer waits for it: a batch back
    from a Retry-After goes before the newer ones that took its slot meanwhile), each freed
    slot waking one. Paced requests then wait in one FIFO; a single ticker lets one go every
    ``1 / rate`` seconds (:func:`~engine.adaptive.turns_due`: evenly spaced, never two back to
    back after a late wake-up), reading the rate *when it fires*, so a cut applies to the very
    next request instead of after a backlog of slots reserved at the old rate.
    """

    def __init__(
        self,
        controller: RateController,
        *,
        clock: Clock,
        sleep: Sleep,
        precise: Sleep | None = None,
    ) -> None:
        self.controller = controller
        self._clock = clock
        self._sleep = sleep
        #: the sleep for turns at the user's own cap (``--qps``): see Dispatcher
        self._precise = precise
        self._next_at = 0.0
        self._last_turn_at = -math.inf
        self.in_flight = 0  # slots taken, waiting for a turn included
        self.sent = 0  # requests let go and not answered yet
        self._freed = asyncio.Event()  # for the ticker: a request was answered
        # (priority, arrival, future) of the requests waiting for a slot; cancelled ones are
        # skipped when they come up. An event woke every waiter on every answer: with a
        # hundred batches waiting beside a full pipe, a hundred task switches a request.
        self._slot_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._woken = 0  # woken for a slot and not yet running
        self._queue: collections.deque[asyncio.Future[int]] = collections.deque()
        self._ticker: asyncio.Task[None] | None = None
        self.stopped = False

    async def acquire(self, priority: int = 0) -> int:
        """Wait for a free slot (lowest ``priority`` first: the batch id) and a turn; raises
        SendingStopped once :meth:`stop` was called.

        Returns:
            The requests in flight as this one goes, itself included: passed back with its
            answer (:meth:`record`), it tells a concurrency limit from a rate limit.
        """
        arrival = next(self._arrivals)
        if self._slot_waiters or self._room() <= 0:  # no overtaking those waiting
            await self._wait_for_slot(priority, arrival)
        while self.in_flight >= int(self.controller.in_flight_limit) and not self.stopped:
            await self._wait_for_slot(priority, arrival)  # the limit fell meanwhile
        if self.stopped:
            raise SendingStopped
        self.in_flight += 1
        if not math.isfinite(self.controller.pace):
            return self._let_go(self._clock())
        turn: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())
        try:
            return await turn
        except (asyncio.CancelledError, SendingStopped):
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.sent -= 1  # its turn had come: it was counted as sent
            self.in_flight -= 1
            raise

    def _room(self) -> int:
        return int(self.controller.in_flight_limit) - self.in_flight - self._woken

    async def _wait_for_slot(self, priority: int, arrival: int) -> None:
        if self.stopped:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._slot_waiters, (priority, arrival, waiter))
        self._wake_slot_waiters()  # a slot may be free already
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():  # woken, then cancelled: pass the slot on
                self._woken -= 1
                self._wake_slot_waiters()
            raise
        self._woken -= 1

    def _wake_slot_waiters(self) -> None:
        """Wake as many waiting requests as there are free slots (the limit may have grown)."""
        room = self._room()
        while room > 0 and self._slot_waiters:
            *_, waiter = heapq.heappop(self._slot_waiters)
            if waiter.done():  # its task was cancelled
                continue
            waiter.set_result(None)
            self._woken += 1
            room -= 1

    def _let_go(self, now: float) -> int:
        self.sent += 1
        self.controller.on_send(now)
        return self.sent

    def stop(self) -> None:
        """No request leaves from now on: every waiting turn is dropped, not sent."""
        self.stopped = True
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_exception(SendingStopped())
        while self._slot_waiters:
            *_, waiter = heapq.heappop(self._slot_waiters)
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
        self._freed.set()

    async def _tick(self) -> None:
        while self._queue:
            now = self._clock()
            startup = self.controller.capacity is None and math.isfinite(self._last_turn_at)
            if startup and math.isfinite(self.controller.pace):
                # Startup's pace follows the round trip as it is measured: a slow first one
                # (a cold start) must not hold the next turn at the pace it set.
                self._next_at = min(
                    self._next_at, self._last_turn_at + self.controller.turn_interval
                )
                if self._next_at > now:
                    await self._sleep_for(min(self._next_at - now, STARTUP_RECHECK_S))
                    continue
            elif self._next_at > now:
                await self._sleep_for(self._next_at - now)
            # Turns wait under the in-flight limit of the moment, not the one they queued
            # under: a limit that fell (a concurrency cap learned) is not overrun at once.
            room = int(self.controller.in_flight_limit) - self.sent
            if room <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            now = self._clock()
            due, next_at = turns_due(now, self._next_at, self.controller.turn_interval)
            due = min(due, room)
            while self._queue and due > 0:
                turn = self._queue.popleft()
                if turn.done():  # its task was cancelled while waiting
                    continue
                turn.set_result(self._let_go(now))
                due -= 1
            self._next_at = next_at
            self._last_turn_at = now

    def _sleep_for(self, wait: float) -> Awaitable[None]:
        """The precise sleep while the pace is the user's cap and its turns are far enough
        apart that a late one is not made up (:func:`~engine.adaptive.turns_due`); closer
        together the catch-up keeps the pace, and a thread round trip a turn would be waste."""
        rate = self.controller.pace
        at_cap = rate >= self.controller.max_rate and 1.0 / rate >= STRICT_SPACING_MIN_INTERVAL_S
        return (self._precise if at_cap and self._precise else self._sleep)(wait)

    def release(self) -> None:
        self.in_flight -= 1
        self.sent -= 1
        self._freed.set()
        self._wake_slot_waiters()

    def record(
        self, status: int | None, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        """An answer, ``latency_s`` after its request left with ``in_flight`` in flight."""
        if status is not None and 200 <= status < 300:
            self.controller.on_success(self._clock(), latency_s, in_flight)
        elif status == 429:
            self.controller.on_throttle(self._clock(), latency_s, in_flight)
        self._wake_slot_waiters()  # an acceptance may have raised the in-flight limit

    async def aclose(self) -> None:
        if self._ticker is not None:
            await cancel_quietly(self._ticker)


@dataclass(slots=True)
class _InFlight:
    """A request the watchdog looks after: when it left, what it sent (for a second copy),
    and that copy once sent."""

    started: float
    batch_id: int
    headers: dict[str, str]
    body: bytes
    hedge: asyncio.Task[None] | None = None


def _headers(token: Token) -> dict[str, str]:
    return {**token.header, "Content-Type": "application/json", "Accept": "application/json"}


class _BadRows(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dispatcher:
    """Sends request batches to the data plane and returns aligned predictions.

    Args:
        transport: the shared pooled client.
        tokens: the data-plane token refresher (shared by every task).
        endpoint_url: the route-optimized invocation URL.
        encode: rows -> request body (used again when a batch is bisected).
        policy: per-request retry policy.
        limiter: the user's hard requests-per-second cap (``--qps``), or None.
        controller: finds and holds the endpoint's capacity (see :mod:`engine.adaptive`).
        ready: pauses all tasks while the endpoint is not ready.
        endpoint_ready: asks the control plane whether the endpoint is READY now
            (used when a 400's body does not say whose fault it is).
        prediction_type: the Arrow type predictions must have, when the schema says.
        hang: when a request unanswered for too long is abandoned and sent again.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        tokens: TokenRefresher,
        endpoint_url: str,
        encode: Callable[[pa.RecordBatch], bytes],
        policy: RetryPolicy,
        stats: RunStats,
        limiter: AsyncLimiter | None = None,
        controller: RateController | None = None,
        ready: ReadyGate | None = None,
        endpoint_ready: Callable[[], Awaitable[bool]] | None = None,
        prediction_type: pa.DataType | None = None,
        hang: HangBound | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self.hang = hang or HangBound()
        self._tokens = tokens
        self.endpoint_url = endpoint_url
        self._encode = encode
        self._policy = policy
        self._stats = stats
        self.limiter = limiter
        self._ready = ready
        self._endpoint_ready = endpoint_ready
        self.prediction_type = prediction_type
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.gate = PauseGate(clock=clock, sleep=sleep)
        # At the user's own cap (--qps) the pacer's turns wake on time (the loop's own timer
        # fires up to 1 ms late: --qps 180 sent 161 requests/s). Below it, finding the
        # capacity, they keep the loop's timer: the controller measures what was delivered
        # and was tuned, in the simulation, against that lateness, and precise turns there
        # were not measured to help. An injected sleep (a test's) is used as it is.
        controller = controller or RateController()
        told = math.isfinite(controller.max_rate) and sleep is asyncio.sleep
        self._precise = PreciseSleep() if told else None
        self.pacer = Pacer(controller, clock=clock, sleep=sleep, precise=self._precise)
        #: requests in flight (the task sending each), for the watchdog
        self._watched: dict[asyncio.Task[object], _InFlight] = {}
        self._abandoned: set[asyncio.Task[object]] = set()
        #: requests a second copy answered first: the copy's answer, for the original's task
        self._hedge_answers: dict[asyncio.Task[object], Response] = {}
        self._watchdog: asyncio.Task[None] | None = None

    def stop_sending(self) -> None:
        """The run is stopping: requests waiting to be sent are dropped (their batches raise
        :class:`SendingStopped`); requests already in flight finish."""
        self.pacer.stop()

    async def score(
        self, batch: RequestBatch, *, on_wait: Callable[[], None] | None = None
    ) -> BatchResult:
        """Score every row of ``batch``; rejected rows carry the server's message.

        ``on_wait`` is called before a long wait (``FREE_PLACE_MIN_WAIT_S``) to send a
        request again that is not for the endpoint's limit (a noise 429's ``Retry-After``, a
        5xx's backoff): the caller may let another batch take this one's place meanwhile.
        """
        if batch.oversize:
            message = (
                "row is larger than `max_request_bytes` (--max-request-bytes) on its own; "
                "it was not sent"
            )
            return self._rejected(batch.batch_id, batch.num_rows, message)
        preds, errors = await self._score_rows(batch.batch_id, batch.rows, batch.body, on_wait)
        return BatchResult(
            batch_id=batch.batch_id,
            predictions=preds,
            errors=errors,
            rejected_rows=len(errors) - errors.null_count,
        )

    def _rejected(self, batch_id: int, rows: int, message: str) -> BatchResult:
        errors = pa.array([message] * rows, pa.string())
        return BatchResult(
            batch_id, pa.nulls(rows, self.prediction_type or pa.null()), errors, rows
        )

    async def _score_rows(
        self,
        batch_id: int,
        rows: pa.RecordBatch,
        body: bytes,
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[pa.Array, pa.Array]:
        try:
            preds = await self._post(batch_id, rows.num_rows, body, on_wait)
        except _BadRows as bad:
            if rows.num_rows == 1:
                return pa.nulls(1, self.prediction_type or pa.null()), pa.array([bad.message])
            self._stats.bisections += 1
            half = rows.num_rows // 2
            left, right = rows.slice(0, half), rows.slice(half)
            lp, le = await self._score_rows(batch_id, left, self._encode(left), on_wait)
            rp, re = await self._score_rows(batch_id, right, self._encode(right), on_wait)
            return concat_predictions([lp, rp]), pa.concat_arrays([le, re])
        return preds, pa.nulls(rows.num_rows, pa.string())

    async def _post(
        self, batch_id: int, rows: int, body: bytes, on_wait: Callable[[], None] | None = None
    ) -> pa.Array:
        """POST through the one call loop until the endpoint's predictions come back.

        Raises _BadRows (the caller bisects), BatchFailed, SendingStopped or a fatal
        EngineError (a schema the endpoint refuses).
        """
        token: Token | None = None
        refused: Token | None = None  # the last token the endpoint refused

        async def send() -> Response:
            nonlocal token
            response, token = await self._send_once(body, batch_id)
            return response

        async def judge(response: Response) -> pa.Array | Outcome:
            nonlocal refused
            if response.ok:
                try:
                    return decode_predictions(
                        response.body, expected_rows=rows, prediction_type=self.prediction_type
                    )
                except ResponseFormatError as exc:
                    return malformed(response, f"the endpoint's answer could not be used: {exc}")
            outcome = error_outcome(response)
            if outcome.status in (401, 403) and token is not None:
                if refused is not None:  # a fresh token refused too: a permission, not staleness
                    raise _refusal(outcome)
                refused = token
                self._tokens.invalidate(token)  # a stale token is ours to fix
                return replace(outcome, reason=Reason.STALE_TOKEN)
            if outcome.status == 400:
                await self._handle_400(outcome)  # raises unless the endpoint was not ready
                return replace(outcome, reason=Reason.NOT_READY)
            return outcome

        async def on_retry(outcome: Outcome, delay_s: float, tally: Tally) -> None:
            self._note_retry(batch_id, outcome, delay_s, tally)
            if (
                on_wait is not None
                and delay_s >= FREE_PLACE_MIN_WAIT_S
                and not self._refused_at_the_limit(outcome)
            ):
                on_wait()

        def give_up(outcome: Outcome, tally: Tally) -> EngineError:
            message = outcome.message if outcome.kind is not FailureKind.STATUS else (
                f"HTTP {outcome.status} {outcome.error_code or ''}: {outcome.message}"
            )
            return BatchFailed(
                f"batch {batch_id} ({rows} rows) failed after {tally.attempts} attempt(s); "
                f"last: {message}",
                batch_id=batch_id,
                rows=rows,
                attempts=tally.attempts,
                status=outcome.status,
                server_message=message,
            )

        caller = Caller(self._policy, self._rng, self._clock, self._sleep)
        return await caller.call(
            send, judge, give_up=give_up, on_retry=on_retry, noise=self.pacer.controller.noise_wait
        )

    def _refused_at_the_limit(self, outcome: Outcome) -> bool:
        """A 429 or 503 the capacity finder reads as the endpoint's limit, not noise: its
        batch keeps its place while it waits (waiting is the back-pressure). Any other wait
        (noise, a 5xx, a dropped connection) is not the endpoint's capacity, so the batch gives
        its place to the next."""
        throttled = self._policy.reason_of(outcome) is Reason.THROTTLED
        return throttled and not self.pacer.controller.refusals_are_noise()

    def _note_retry(self, batch_id: int, outcome: Outcome, delay_s: float, tally: Tally) -> None:
        """Count, log and (for a long Retry-After) share a retry before its wait."""
        cause = _cause(outcome)
        self._stats.retries[cause] += 1
        throttled = self._policy.reason_of(outcome) is Reason.THROTTLED
        # Throttles are counted in the progress lines (there can be thousands); any other
        # retry is rare and worth a line of its own.
        emit(
            "retry",
            f"batch {batch_id}: {outcome.brief}; retry {tally.attempts} in {delay_s:.1f} s",
            level=logging.DEBUG if throttled else logging.INFO,
            batch_id=batch_id,
            cause=cause,
            attempt=tally.attempts,
            delay_s=round(delay_s, 3),
        )
        self._say_long_wait(batch_id, outcome, delay_s)
        if (outcome.retry_after_s or 0.0) >= SHARED_PAUSE_MIN_S:
            self.gate.pause(delay_s)

    def _say_long_wait(self, batch_id: int, retry: Outcome, delay_s: float) -> None:
        """A long idle stretch is never silent: say what it waits for and until when."""
        asked = retry.retry_after_s
        cap = self._policy.max_retry_after_s
        if asked is not None and asked > cap:
            log.warning(
                "the endpoint asked to wait %.0f s (Retry-After); waiting %.0f s, the cap set "
                "by `max_retry_after_s` (--max-retry-after)",
                asked,
                cap,
            )
        if delay_s < LONG_WAIT_S:
            return
        until = datetime.now().astimezone() + timedelta(seconds=delay_s)
        cause = "Retry-After" if asked is not None else f"backoff after {retry.brief}"
        emit(
            "wait",
            f"batch {batch_id}: waiting {delay_s:.0f} s ({cause}), until {until:%H:%M:%S}",
            level=logging.WARNING,
            batch_id=batch_id,
            delay_s=round(delay_s, 1),
            until=until.isoformat(timespec="seconds"),
        )

    async def _send_once(self, body: bytes, batch_id: int) -> tuple[Response, Token]:
        """Wait for every gate, then POST once (slots go to the oldest batch first); feeds
        the capacity finder and the stats.

        Raises TransportError (no answer) or SendingStopped (the run is stopping).
        """
        sent_with = await self._turn(batch_id)
        started = self._clock()
        try:
            token = await self._tokens.get()
            headers = _headers(token)
            started = self._clock()
            self._stats.active_requests += 1
            try:
                response, own = await self._bounded_request(
                    _InFlight(started, batch_id, headers, body)
                )
            finally:
                self._stats.active_requests -= 1
        except TransportError as exc:
            self._stats.record_request(None, self._clock() - started, exc.kind)
            raise
        finally:
            self.pacer.release()
        latency = self._clock() - started
        if not own:  # a second copy's answer: the copy counted itself; this one got none
            self._stats.record_request(None, latency, "hedged")
        else:
            self._answered(response, latency, sent_with)
        return response, token

    def _answered(self, response: Response, latency: float, sent_with: int) -> None:
        """An answer, ``latency`` after its request left with ``sent_with`` in flight: for
        the hang bound (accepted ones: they ran the model), the capacity finder, the stats."""
        if response.ok:
            self.hang.record(latency)
        self.pacer.record(response.status, latency, sent_with)
        self._stats.record_request(response.status, latency)

    async def _turn(self, batch_id: int) -> int:
        """Wait for every gate (the endpoint ready, a shared Retry-After pause, ``--qps``),
        then for a slot and a turn; what :meth:`Pacer.acquire` returns.

        Raises SendingStopped once the run stops.
        """
        if self._ready is not None:
            await self._ready.wait()
        await self.gate.wait()
        if self.limiter is not None:
            await self.limiter.acquire()
        return await self.pacer.acquire(batch_id)

    async def _bounded_request(self, request: _InFlight) -> tuple[Response, bool]:
        """POST; the answer, and whether it is this request's own (else a second copy's).

        A request far slower than the endpoint's usual latency gets a second copy (see
        :class:`~engine.hang.HangBound`), and the first answer of the two is kept; one that
        has taken far longer still is abandoned: a backend that read the request and died
        behind a live connection costs seconds, not the whole run.

        The request runs in the caller's task; one watchdog for all requests in flight
        sends the copies and cancels the requests past the bound (a task, a timer and a wait
        per request made a run in 100-row requests ~3 % slower)."""
        task = asyncio.current_task()
        assert task is not None
        self._watched[task] = request
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch_for_hangs())
        try:
            response = await self._transport.request(
                "POST", self.endpoint_url, headers=request.headers, data=request.body,
                timeout_s=self.hang.ceiling_s,
            )
            return response, True
        except asyncio.CancelledError:
            answer = self._hedge_answers.pop(task, None)
            ours = answer is not None or task in self._abandoned
            if not ours or task.uncancel() > 0:
                raise  # not ours, or the run is stopping too
            if answer is not None:
                self._stats.hedges_won += 1
                return answer, False
            self._stats.requests_abandoned += 1
            waited = self._clock() - request.started
            self.hang.record(waited)  # many of these and the bound rises
            raise TransportError(
                f"no answer after {waited:.0f} s (the endpoint's p99 latency is "
                f"{(self.hang.p99_s or 0.0) * 1000:.0f} ms): abandoned, sent again",
                kind="timeout",
                url=self.endpoint_url,
            ) from None
        finally:
            del self._watched[task]
            self._abandoned.discard(task)
            self._hedge_answers.pop(task, None)
            if request.hedge is not None:
                request.hedge.cancel()  # the first answer came: the other is not wanted

    async def _watch_for_hangs(self) -> None:
        """While requests are in flight: send a second copy of each one past the hedge
        delay, cancel each one past the hang bound (both move as the endpoint's latency is
        learned, so they are read at every check)."""
        while self._watched:
            now = self._clock()
            bound = self.hang.deadline_s()
            hedge_after = self.hang.hedge_after_s()
            # The next check: a request sent meanwhile gets its copy at most a quarter of the
            # delay late (of its floor, while the delay is not known yet).
            check = (hedge_after or self.hang.hedge_floor_s) / 4 if self.hang.hedge else math.inf
            wake = now + min(HANG_CHECK_S, check)
            for task, request in self._watched.items():  # cancel() runs nothing now
                if task in self._abandoned or task in self._hedge_answers:
                    continue
                # Each deadline is one number, tested and slept to alike: ``now - started <
                # after`` can hold while ``started + after == now`` (float rounding), and the
                # watchdog would sleep 0 s over and over.
                abandon_at = request.started + bound
                if now >= abandon_at:
                    self._abandoned.add(task)
                    task.cancel()
                    continue
                wake = min(wake, abandon_at)
                if hedge_after is None or request.hedge is not None:
                    continue
                hedge_at = request.started + hedge_after
                if now < hedge_at:
                    wake = min(wake, hedge_at)
                elif self.hang.take_hedge():
                    request.hedge = asyncio.create_task(self._hedge(task, request))
            await self._sleep(max(0.0, wake - now))
            await asyncio.sleep(0)  # an injected sleep may not yield: let the requests run

    async def _hedge(self, original: asyncio.Task[object], request: _InFlight) -> None:
        """Send ``request`` a second time, under the same pacer as any request: an accepted
        answer goes to ``original``'s task (cancelled out of its wait to take it); any other
        outcome is only counted, and the original keeps waiting, up to the hang bound."""
        try:
            sent_with = await self._turn(request.batch_id)
        except SendingStopped:
            return
        started = self._clock()
        self._stats.requests_hedged += 1
        self._stats.active_requests += 1
        try:
            # the token of the moment: the original's may have been refused since
            headers = _headers(await self._tokens.get())
            started = self._clock()
            response = await self._transport.request(
                "POST", self.endpoint_url, headers=headers, data=request.body,
                timeout_s=self.hang.ceiling_s,
            )
        except TransportError as exc:
            self._stats.record_request(None, self._clock() - started, exc.kind)
            return
        except Exception as exc:  # the original is still waited for: say it, go on
            log.warning(
                "batch %d: the second copy of a slow request failed (%s: %s); the first is "
                "still waited for",
                request.batch_id,
                type(exc).__name__,
                exc,
            )
            return
        finally:
            self._stats.active_requests -= 1
            self.pacer.release()
        self._answered(response, self._clock() - started, sent_with)
        if (
            response.ok
            and original in self._watched
            and original not in self._abandoned
            and not original.done()
        ):
            self._hedge_answers[original] = response
            original.cancel()

    async def aclose(self) -> None:
        """Stop the pacer's ticker, its precise sleep's thread and the hang watchdog; all
        three even when the run itself is being cancelled (a caller's timeout)."""
        try:
            await self.pacer.aclose()
        finally:
            if self._precise is not None:
                self._precise.close()
            if self._watchdog is not None:
                await cancel_quietly(self._watchdog)

    async def _handle_400(self, error: Outcome) -> None:
        """Returns once a not-ready endpoint is ready again; raises for the batch's own rows
        (_BadRows, to bisect) and for a schema the endpoint refuses (SchemaError)."""
        kind = classify_bad_request(400, error.error_code, error.message)
        if kind is BadRequestKind.UNKNOWN and self._endpoint_ready is not None:
            kind = (
                BadRequestKind.BAD_ROWS
                if await self._endpoint_ready()
                else BadRequestKind.NOT_READY
            )
        if kind is BadRequestKind.NOT_READY and self._ready is not None:
            log.warning("endpoint not ready (%s); pausing all requests until it is", error.message)
            await self._ready.hold_until_ready()
            return
        if kind is BadRequestKind.BAD_SCHEMA:
            raise SchemaError(
                f"the endpoint rejected the input's columns: {error.message}; "
                "run `engine validate` and fix the input before scoring"
            )
        raise _BadRows(400, error.message)


def _refusal(outcome: Outcome) -> AuthError:
    return AuthError(
        f"the endpoint refused a freshly issued token (HTTP {outcome.status} "
        f"{outcome.error_code or ''}: {outcome.message}); grant the principal CAN_QUERY on "
        "the endpoint (Serving > endpoint > Permissions)",
        status=outcome.status,
        error=outcome.error_code,
    )


def _cause(outcome: Outcome) -> str:
    """The retry counter an outcome goes to: its status, or how the transport failed."""
    if outcome.kind is FailureKind.STATUS:
        if outcome.reason is Reason.STALE_TOKEN:
            return "token_rejected"
        if outcome.reason is Reason.NOT_READY:
            return "not_ready"
        return str(outcome.status)
    return str(outcome.kind.value)
