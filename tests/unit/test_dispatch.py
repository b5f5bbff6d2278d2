"""The per-batch retry loop against a scripted fake transport: no sockets, no real sleeps."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from collections.abc import Callable

import pyarrow as pa
import pytest

from engine.adaptive import MIN_SPACING_SHARE, NOISE_WAIT_S, RateController
from engine.batching import RequestBatch
from engine.codec import encode_dataframe_split
from engine.dispatch import Dispatcher, Pacer, ReadyGate, SendingStopped
from engine.errors import AuthError, BatchFailed, SchemaError, TransportError
from engine.hang import HangBound
from engine.retry import RetryPolicy
from engine.stats import RunStats
from engine.tokens import Token, TokenRefresher
from engine.transport import Response

POISON = -999.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


Handler = Callable[[dict[str, str], dict], Response]


class FakeTransport:
    """Answers each POST with ``handler(headers, parsed body)``; records what was sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[dict] = []
        self.tokens_seen: list[str] = []

    async def request(self, method: str, url: str, *, headers=None, data=None, **_: object) -> Response:
        body = json.loads(data)
        self.sent.append(body)
        self.tokens_seen.append(headers["Authorization"])
        return self.handler(headers, body)


def ok(predictions: list) -> Response:
    return Response(200, json.dumps({"predictions": predictions}).encode(), {})


def error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return Response(status, json.dumps({"error_code": code, "message": message}).encode(), headers or {})


def doubling_model(headers: dict[str, str], body: dict) -> Response:
    rows = body["dataframe_split"]["data"]
    if any(row[0] == POISON for row in rows):
        return error(400, "BAD_REQUEST", "Invalid input. Failed to convert poison value")
    return ok([row[0] * 2 for row in rows])


def make_dispatcher(transport: FakeTransport, clock: FakeClock, **kwargs) -> tuple[Dispatcher, RunStats]:
    counter = iter(range(1, 1000))

    async def fetch() -> Token:
        return Token(access_token=f"tok{next(counter)}", issued_at=clock.now, expires_at=clock.now + 3600)

    stats = RunStats()
    dispatcher = Dispatcher(
        transport=transport,  # type: ignore[arg-type]
        tokens=TokenRefresher(fetch, clock=clock, sleep=clock.sleep),
        endpoint_url="http://127.0.0.1:1/ws/serving-endpoints/e/invocations",
        encode=lambda rows: encode_dataframe_split(rows),
        policy=kwargs.pop("policy", RetryPolicy(max_attempts=4)),
        stats=stats,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(0),
        **kwargs,
    )
    return dispatcher, stats


def batch_of(values: list[float]) -> RequestBatch:
    rows = pa.record_batch({"x": pa.array(values, pa.float64())})
    return RequestBatch(batch_id=0, row_offset=0, rows=rows, body=encode_dataframe_split(rows))


async def test_bisection_isolates_one_bad_row_and_keeps_the_others() -> None:
    values = [float(i) for i in range(64)]
    values[37] = POISON
    clock = FakeClock()
    transport = FakeTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock)
    result = await dispatcher.score(batch_of(values))
    predictions = result.predictions.to_pylist()
    errors = result.errors.to_pylist()
    assert result.rejected_rows == 1
    assert predictions[37] is None and "poison" in errors[37]
    assert all(p == v * 2 for i, (p, v) in enumerate(zip(predictions, values)) if i != 37)
    assert [e for i, e in enumerate(errors) if i != 37] == [None] * 63
    extra_requests = len(transport.sent) - 1
    assert extra_requests <= 2 * math.ceil(math.log2(64))
    assert stats.bisections >= 1


async def test_an_isolated_429_is_resent_after_a_round_trip_and_does_not_slow_the_run() -> None:
    answers = [error(429, "REQUEST_LIMIT_EXCEEDED", "slow down")]
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    transport = FakeTransport(handler)
    dispatcher, stats = make_dispatcher(transport, clock)
    result = await dispatcher.score(batch_of([1.0, 2.0]))
    assert result.predictions.to_pylist() == [2.0, 4.0]
    # resent after a short jittered wait (about a round trip), not the second a limit gets
    assert len(clock.slept) == 1 and 0.0 <= clock.slept[0] <= NOISE_WAIT_S
    # one 429 is noise, not a limit (issue 11): only a round with many of them paces the run
    assert not dispatcher.pacer.controller.paced
    assert dispatcher.pacer.controller.cuts == 0
    assert dispatcher.pacer.controller.throttles == 1
    assert stats.retries["429"] == 1 and stats.throttled_429 == 1


async def test_long_retry_after_pauses_every_request() -> None:
    answers = [error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", {"Retry-After": "30"})]
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    dispatcher, _ = make_dispatcher(FakeTransport(handler), clock)
    await dispatcher.score(batch_of([1.0]))
    assert dispatcher.gate.until >= 30.0


async def test_throttling_does_not_use_up_attempts() -> None:
    answers = [error(429, "REQUEST_LIMIT_EXCEEDED", "slow down")] * 6
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    dispatcher, _ = make_dispatcher(FakeTransport(handler), clock, policy=RetryPolicy(max_attempts=3))
    result = await dispatcher.score(batch_of([2.0]))
    assert result.predictions.to_pylist() == [4.0]


async def test_retry_after_header_is_honoured() -> None:
    answers = [error(503, "TEMPORARILY_UNAVAILABLE", "busy", {"Retry-After": "7"})]
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    dispatcher, _ = make_dispatcher(FakeTransport(handler), clock)
    await dispatcher.score(batch_of([1.0]))
    assert sum(clock.slept) >= 7.0


async def test_rejected_token_forces_one_refresh_and_the_request_is_retried() -> None:
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        if headers["Authorization"] == "Bearer tok1":
            return error(403, "PERMISSION_DENIED", "Token is expiring within 30 seconds")
        return doubling_model(headers, body)

    transport = FakeTransport(handler)
    dispatcher, stats = make_dispatcher(transport, clock)
    result = await dispatcher.score(batch_of([3.0]))
    assert result.predictions.to_pylist() == [6.0]
    assert transport.tokens_seen == ["Bearer tok1", "Bearer tok2"]
    assert stats.retries["token_rejected"] == 1


async def test_gives_up_after_max_attempts_naming_the_last_status() -> None:
    clock = FakeClock()
    transport = FakeTransport(lambda h, b: error(500, "INTERNAL_ERROR", "model server crashed"))
    dispatcher, _ = make_dispatcher(transport, clock, policy=RetryPolicy(max_attempts=3))
    with pytest.raises(BatchFailed) as info:
        await dispatcher.score(batch_of([1.0, 2.0]))
    assert len(transport.sent) == 3
    assert info.value.status == 500 and "model server crashed" in str(info.value)


async def test_connection_errors_are_retried() -> None:
    clock = FakeClock()
    failures = [TransportError("reset", kind="reset"), TransportError("refused", kind="connect")]

    class Flaky(FakeTransport):
        async def request(self, method: str, url: str, **kwargs: object) -> Response:
            if failures:
                raise failures.pop(0)
            return await super().request(method, url, **kwargs)

    dispatcher, stats = make_dispatcher(Flaky(doubling_model), clock)
    result = await dispatcher.score(batch_of([5.0]))
    assert result.predictions.to_pylist() == [10.0]
    assert stats.retries["reset"] == 1 and stats.retries["connect"] == 1


async def test_not_ready_400_pauses_until_ready_then_resends() -> None:
    clock = FakeClock()
    state = {"ready": False, "polls": 0}

    def handler(headers: dict[str, str], body: dict) -> Response:
        if not state["ready"]:
            return error(400, "BAD_REQUEST", "Endpoint demo is not ready: it is stopped")
        return doubling_model(headers, body)

    async def wait_ready() -> None:
        state["polls"] += 1
        state["ready"] = True

    dispatcher, _ = make_dispatcher(FakeTransport(handler), clock, ready=ReadyGate(wait_ready))
    result = await dispatcher.score(batch_of([4.0]))
    assert result.predictions.to_pylist() == [8.0]
    assert state["polls"] == 1


async def test_missing_column_400_stops_the_run_without_bisecting() -> None:
    clock = FakeClock()
    transport = FakeTransport(
        lambda h, b: error(400, "INVALID_PARAMETER_VALUE", "Model is missing inputs ['b'].")
    )
    dispatcher, stats = make_dispatcher(transport, clock)
    with pytest.raises(SchemaError, match="missing inputs"):
        await dispatcher.score(batch_of([1.0, 2.0, 3.0, 4.0]))
    assert len(transport.sent) == 1 and stats.bisections == 0


async def test_oversize_row_is_rejected_without_a_request() -> None:
    clock = FakeClock()
    transport = FakeTransport(doubling_model)
    dispatcher, _ = make_dispatcher(transport, clock)
    rows = pa.record_batch({"x": pa.array([1.0])})
    result = await dispatcher.score(RequestBatch(batch_id=3, row_offset=9, rows=rows, body=b"", oversize=True))
    assert result.rejected_rows == 1 and "max-request-bytes" in result.errors[0].as_py()
    assert transport.sent == []


class HangingOnceTransport(FakeTransport):
    """The first POST is read and never answered (a dead backend behind a live connection)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(handler)
        self.hung = 0

    async def request(self, method: str, url: str, *, headers=None, data=None, **kw: object) -> Response:
        if not self.hung:
            self.hung += 1
            await asyncio.Event().wait()
        return await super().request(method, url, headers=headers, data=data, **kw)


async def test_a_hung_request_is_abandoned_after_the_floor_and_sent_again() -> None:
    clock = FakeClock()
    transport = HangingOnceTransport(doubling_model)
    hang = HangBound(ceiling_s=300.0, floor_s=30.0, hedge=False)  # no second copy first
    for _ in range(100):
        hang.record(0.01)  # the endpoint answers in 10 ms
    dispatcher, stats = make_dispatcher(transport, clock, hang=hang)
    result = await dispatcher.score(batch_of([1.0, 2.0]))
    assert result.predictions.to_pylist() == [2.0, 4.0]
    assert stats.requests_abandoned == 1 and stats.retries["timeout"] == 1
    assert 30.0 <= clock.now < 60.0  # the floor, not the 300 s request timeout


def fast_endpoint_bound(**kwargs: object) -> HangBound:
    hang = HangBound(ceiling_s=300.0, floor_s=30.0, **kwargs)  # type: ignore[arg-type]
    for _ in range(100):
        hang.record(0.01)  # the endpoint answers in 10 ms
    return hang


async def test_a_hung_request_gets_a_second_copy_whose_answer_is_kept() -> None:
    clock = FakeClock()
    transport = HangingOnceTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    result = await dispatcher.score(batch_of([1.0, 2.0]))
    assert result.predictions.to_pylist() == [2.0, 4.0]
    assert stats.requests_hedged == 1 and stats.hedges_won == 1
    assert stats.requests_abandoned == 0 and not stats.retries  # nothing was resent
    # before the 30 s floor (this fake clock jumps whenever anyone sleeps: the timing itself
    # is checked on a virtual clock, in tests/integration/test_hung_requests.py)
    assert 1.0 <= clock.now < 30.0
    assert stats.requests == 2 and stats.requests_ok == 1  # the copy, and the hung one
    assert dispatcher.pacer.in_flight == 0 and dispatcher.pacer.sent == 0
    await dispatcher.aclose()


class HangThenAnswer(FakeTransport):
    """The first POST hangs; later ones are answered with ``then`` (a status)."""

    def __init__(self, handler: Handler, then: int) -> None:
        super().__init__(handler)
        self.then = then
        self.calls = 0

    async def request(self, method: str, url: str, *, headers=None, data=None, **kw: object) -> Response:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        if self.calls == 2 and self.then != 200:
            return error(self.then, "REQUEST_LIMIT_EXCEEDED", "slow down")
        return await super().request(method, url, headers=headers, data=data, **kw)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_refused_copy_leaves_the_hung_request_to_its_bound(status: int) -> None:
    clock = FakeClock()
    transport = HangThenAnswer(doubling_model, then=status)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    result = await dispatcher.score(batch_of([3.0]))
    assert result.predictions.to_pylist() == [6.0]
    assert stats.requests_hedged == 1 and stats.hedges_won == 0
    assert stats.requests_abandoned == 1  # abandoned at the floor, then sent again
    assert 30.0 <= clock.now < 60.0
    assert dispatcher.pacer.in_flight == 0 and dispatcher.pacer.sent == 0
    await dispatcher.aclose()


async def test_with_hedging_off_no_copy_is_sent() -> None:
    clock = FakeClock()
    transport = HangingOnceTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound(hedge=False))
    await dispatcher.score(batch_of([1.0]))
    assert stats.requests_hedged == 0 and stats.requests_abandoned == 1
    await dispatcher.aclose()


class SlowThenHung(FakeTransport):
    """The first POST answers once ``release`` is set; every later one hangs."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(handler)
        self.release = asyncio.Event()
        self.calls = 0
        self.copy_cancelled = False

    async def request(self, method: str, url: str, *, headers=None, data=None, **kw: object) -> Response:
        self.calls += 1
        if self.calls == 1:
            await self.release.wait()
            return await super().request(method, url, headers=headers, data=data, **kw)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.copy_cancelled = True
            raise
        raise AssertionError("unreachable")


async def test_when_the_original_answers_first_the_copy_is_cancelled() -> None:
    clock = FakeClock()
    transport = SlowThenHung(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    task = asyncio.ensure_future(dispatcher.score(batch_of([5.0])))
    for _ in range(50):
        if transport.calls == 2:
            break
        await asyncio.sleep(0)
    assert transport.calls == 2 and not task.done()  # the copy went out
    transport.release.set()
    result = await task
    assert result.predictions.to_pylist() == [10.0]
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.copy_cancelled
    assert stats.requests_hedged == 1 and stats.hedges_won == 0 and stats.requests_ok == 1
    assert dispatcher.pacer.in_flight == 0 and dispatcher.pacer.sent == 0
    await dispatcher.aclose()


class SpinGuardClock(FakeClock):
    """A fake clock that notices a watchdog sleeping 0 s over and over (a busy loop: the
    clock would never move) and moves on by a millisecond so that the test can end."""

    def __init__(self) -> None:
        super().__init__()
        self.zero_in_a_row = 0
        self.spun = False

    async def sleep(self, seconds: float) -> None:
        self.zero_in_a_row = self.zero_in_a_row + 1 if seconds == 0 else 0
        if self.zero_in_a_row > 1000:
            self.spun = True
            seconds = 0.001
        await super().sleep(seconds)


async def test_the_watchdog_never_spins_on_a_deadline_float_rounding_puts_at_now() -> None:
    """3 x 0.4 s is 1.2000000000000002: with the clock at 10.0, ``10.0 + 1.2000000000000002``
    is 11.2 while ``11.2 - 10.0 < 1.2000000000000002``; found by an independent review."""
    clock = SpinGuardClock()
    clock.now = 10.0
    hang = HangBound(ceiling_s=300.0, floor_s=30.0)
    for _ in range(100):
        hang.record(0.4)
    transport = HangingOnceTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=hang)
    result = await dispatcher.score(batch_of([1.0]))
    assert result.predictions.to_pylist() == [2.0]
    assert not clock.spun
    assert stats.hedges_won == 1
    await dispatcher.aclose()


class RecordingHang(HangingOnceTransport):
    """The first POST hangs; records when each POST was sent."""

    def __init__(self, handler: Handler, clock: FakeClock) -> None:
        super().__init__(handler)
        self.clock = clock
        self.sent_at: list[float] = []

    async def request(self, method: str, url: str, *, headers=None, data=None, **kw: object) -> Response:
        self.sent_at.append(self.clock.now)
        return await super().request(method, url, headers=headers, data=data, **kw)


async def sent_and_hung(
    dispatcher: Dispatcher, transport: HangingOnceTransport, values: list[float]
) -> asyncio.Future[object]:
    """Start scoring ``values`` and return once its request hangs at ``transport``."""
    task: asyncio.Future[object] = asyncio.ensure_future(dispatcher.score(batch_of(values)))
    for _ in range(20):
        if transport.hung:
            break
        await asyncio.sleep(0)
    assert transport.hung
    return task


async def test_a_copy_waits_out_a_shared_retry_after_pause_like_any_request() -> None:
    """Found by an independent review: copies went straight to the pacer."""
    clock = FakeClock()
    transport = RecordingHang(doubling_model, clock)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    task = await sent_and_hung(dispatcher, transport, [1.0])
    dispatcher.gate.pause(60.0)  # another batch was told Retry-After: 60; every request waits
    paused_until = dispatcher.gate.until
    result = await task
    assert result.predictions.to_pylist() == [2.0]
    assert stats.hedges_won == 1
    assert transport.sent_at[1:] and all(t >= paused_until for t in transport.sent_at[1:])
    await dispatcher.aclose()


class HangThenBreak(HangingOnceTransport):
    """The first POST hangs, the second raises what no transport should (a bug's error)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(handler)
        self.calls = 0

    async def request(self, method: str, url: str, *, headers=None, data=None, **kw: object) -> Response:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("unexpected")
        return await super().request(method, url, headers=headers, data=data, **kw)


async def test_a_copy_that_breaks_is_said_and_the_original_keeps_its_bound(caplog) -> None:
    """Found by an independent review: such an error vanished without a word."""
    clock = FakeClock()
    transport = HangThenBreak(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    with caplog.at_level("WARNING", logger="engine.dispatch"):
        result = await dispatcher.score(batch_of([4.0]))
    assert result.predictions.to_pylist() == [8.0]
    assert stats.requests_hedged == 1 and stats.hedges_won == 0 and stats.requests_abandoned == 1
    assert "second copy of a slow request failed (RuntimeError: unexpected)" in caplog.text
    assert dispatcher.pacer.in_flight == 0 and stats.active_requests == 0
    await dispatcher.aclose()


async def test_a_copy_carries_the_token_of_the_moment_not_the_original_s() -> None:
    clock = FakeClock()
    transport = RecordingHang(doubling_model, clock)
    dispatcher, stats = make_dispatcher(transport, clock, hang=fast_endpoint_bound())
    task = await sent_and_hung(dispatcher, transport, [1.0])
    first = await dispatcher._tokens.get()
    dispatcher._tokens.invalidate(first)  # another batch's 401 meanwhile
    await task
    assert stats.hedges_won == 1
    # the hung original left with tok1 (a hung request records nothing); its copy with tok2
    assert first.access_token == "tok1" and transport.tokens_seen == ["Bearer tok2"]
    await dispatcher.aclose()


async def test_before_any_latency_is_known_a_request_may_take_the_request_timeout() -> None:
    clock = FakeClock()
    transport = HangingOnceTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=HangBound(ceiling_s=120.0))
    result = await dispatcher.score(batch_of([3.0]))
    assert result.predictions.to_pylist() == [6.0]
    assert stats.requests_abandoned == 1
    assert 120.0 <= clock.now < 180.0


async def test_a_request_cancelled_by_its_caller_is_not_taken_for_hung() -> None:
    """The hang watchdog cancels only requests past the bound; a cancellation from outside
    (the run stopping) stays a cancellation, and the watchdog ends with the last request."""
    clock = FakeClock()
    transport = HangingOnceTransport(doubling_model)
    dispatcher, stats = make_dispatcher(transport, clock, hang=HangBound(ceiling_s=120.0))
    task = asyncio.ensure_future(dispatcher.score(batch_of([1.0])))
    for _ in range(50):
        if transport.hung:
            break
        await asyncio.sleep(0)
    assert transport.hung == 1 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stats.requests_abandoned == 0 and stats.retries["timeout"] == 0
    for _ in range(3):
        await asyncio.sleep(0)
    assert dispatcher._watchdog is not None and dispatcher._watchdog.done()
    await dispatcher.aclose()


async def test_after_stop_no_waiting_request_is_sent() -> None:
    clock = FakeClock()
    transport = FakeTransport(doubling_model)
    controller = RateController(max_rate=1.0)  # paced: requests queue for their turn
    dispatcher, _ = make_dispatcher(transport, clock, controller=controller)
    dispatcher.pacer._sleep = asyncio.sleep  # the ticker waits on the loop, so turns queue up
    tasks = [asyncio.ensure_future(dispatcher.score(batch_of([float(i)]))) for i in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    dispatcher.stop_sending()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    sent = len(transport.sent)
    assert sent <= 1  # at most the one whose turn had come
    assert sum(isinstance(r, SendingStopped) for r in results) == 5 - sent
    await dispatcher.pacer.aclose()


async def test_a_malformed_200_is_retried_like_a_5xx() -> None:
    answers = [Response(200, b"<html><body>502 Bad Gateway</body></html>", {})]
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    dispatcher, stats = make_dispatcher(FakeTransport(handler), clock)
    result = await dispatcher.score(batch_of([1.0, 2.0]))
    assert result.predictions.to_pylist() == [2.0, 4.0]
    assert stats.retries["malformed"] == 1


async def test_a_body_that_stays_malformed_fails_the_batch_quoting_its_start() -> None:
    clock = FakeClock()
    transport = FakeTransport(lambda headers, body: Response(200, b'{"predictions": [1.0', {}))
    dispatcher, _ = make_dispatcher(transport, clock, policy=RetryPolicy(max_attempts=3))
    with pytest.raises(BatchFailed) as caught:
        await dispatcher.score(batch_of([1.0, 2.0]))
    assert len(transport.sent) == 3
    assert '{"predictions": [1.0' in str(caught.value)


async def test_a_fast_refusal_does_not_teach_the_hang_bound() -> None:
    answers = [error(429, "REQUEST_LIMIT_EXCEEDED", "slow down")] * 25
    clock = FakeClock()

    def handler(headers: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(headers, body)

    dispatcher, _ = make_dispatcher(
        FakeTransport(handler), clock, policy=RetryPolicy(max_attempts=3, max_throttled=30)
    )
    await dispatcher.score(batch_of([1.0]))
    assert dispatcher.hang.p99_s is None  # one 2xx: fewer than the 20 answers it needs


async def test_a_fresh_token_refused_too_is_a_permission_error() -> None:
    clock = FakeClock()
    refuse = FakeTransport(lambda h, b: error(403, "PERMISSION_DENIED", "no CAN_QUERY"))
    dispatcher, _ = make_dispatcher(refuse, clock)
    with pytest.raises(AuthError, match="CAN_QUERY"):
        await dispatcher.score(batch_of([1.0]))
    assert len(refuse.sent) == 2  # the stale-token retry, then the refusal is believed


async def test_a_lowercase_retry_after_is_honoured() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict({"retry-after": "7"})
    answers = [Response(429, b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}', headers)]
    clock = FakeClock()

    def handler(h: dict[str, str], body: dict) -> Response:
        return answers.pop(0) if answers else doubling_model(h, body)

    dispatcher, _ = make_dispatcher(FakeTransport(handler), clock)
    await dispatcher.score(batch_of([1.0]))
    assert max(clock.slept) >= 7.0


def record_sends(controller: RateController) -> list[float]:
    """When each request the pacer lets go leaves (the controller's ``on_send``)."""
    sent_at: list[float] = []
    on_send = controller.on_send

    def timed(now: float) -> None:
        sent_at.append(now)
        on_send(now)

    controller.on_send = timed  # type: ignore[method-assign]
    return sent_at


async def test_the_pacer_sends_no_burst_after_an_idle_gap() -> None:
    """Turns are timed where the pacer lets each request go: after a long idle gap nothing is
    owed, so the three requests leave a pacing interval apart (at least MIN_SPACING_SHARE of
    it, the slack turns_due allows), not together."""
    clock = FakeClock()
    controller = RateController(max_rate=2.0)
    sent_at = record_sends(controller)
    dispatcher, _ = make_dispatcher(FakeTransport(doubling_model), clock, controller=controller)
    clock.now = 100.0  # long idle before the first request
    await asyncio.gather(*(dispatcher.score(batch_of([float(i)])) for i in range(3)))
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:])]
    assert len(sent_at) == 3 and sent_at[0] == 100.0
    assert all(gap >= MIN_SPACING_SHARE * 0.5 - 1e-9 for gap in gaps), (gaps, sent_at)
    await dispatcher.aclose()


async def test_the_pacer_spreads_startups_requests_over_the_round_trip() -> None:
    """In startup (no limit met yet) the requests leave spread over the measured round trip
    at the controller's start-up pace, not all at once: a bucket with a burst of one or two
    refuses most of a volley whatever its rate."""
    clock = FakeClock()
    controller = RateController(max_in_flight=8, initial_in_flight=4)
    controller.on_send(0.0)
    controller.on_success(0.03, 0.03)  # one round trip measured: 5 in flight now
    assert controller.capacity is None and math.isfinite(controller.pace)
    interval = 1.0 / controller.pace
    sent_at = record_sends(controller)
    pacer = Pacer(controller, clock=clock, sleep=clock.sleep)

    async def request() -> None:
        await pacer.acquire()

    await asyncio.gather(*(request() for _ in range(5)))
    await pacer.aclose()
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(sent_at) == 5
    assert min(gaps) >= MIN_SPACING_SHARE * interval - 1e-9, (gaps, interval)
    assert sent_at[-1] - sent_at[0] <= 4 * interval + 1e-9  # and no slower than the pace


async def test_a_slow_first_round_trip_does_not_hold_startups_later_turns() -> None:
    """A cold start: the first answer took 2 s, so startup's pace was 5 requests per 2 s.
    Round trips of 30 ms since raise it; the turn waiting for the old pace's interval goes
    within the ticker's next look (STARTUP_RECHECK_S), not 0.4 s later."""
    from engine.dispatch import STARTUP_RECHECK_S

    clock = FakeClock()
    controller = RateController(max_in_flight=8, initial_in_flight=4)
    controller.on_send(0.0)
    clock.now = 2.0
    controller.on_success(2.0, 2.0)
    sent_at = record_sends(controller)
    pacer = Pacer(controller, clock=clock, sleep=clock.sleep)
    await pacer.acquire()  # a turn at the slow pace: the next is due 0.4 s on
    assert sent_at == [2.0]
    controller.on_success(2.03, 0.03)  # the endpoint is warm now
    clock.now = 2.03
    await pacer.acquire()
    await pacer.aclose()
    assert sent_at[1] - sent_at[0] <= 0.03 + STARTUP_RECHECK_S + 1e-9, sent_at


class EpollClock:
    """Time as asyncio's timers see it: a sleep ends at the next whole millisecond of its
    wait (epoll's timeout, rounded up), and every read of the clock finds 20 µs more gone
    (the loop's own work), so yielding to the loop lets time pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 20e-6
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += math.ceil(max(0.0, seconds) * 1000.0 - 1e-9) / 1000.0
        await asyncio.sleep(0)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known defect: a timer a millisecond late is a turn a millisecond late, never made "
    "up at these spacings (198 turns a second at 240/s, 142 at 150/s, 58.7 at 60/s). A pacer "
    "that slept to a millisecond before each turn and yielded to the loop until it kept the "
    "pace exactly, but in the simulation that precision let a running job on a 40/s bucket "
    "hold 36-38 req/s while a newcomer got 2-5 req/s from 6 s to 12 s (seed 3 of "
    "test_a_neighbours_job_shares...): the shared refusals were 31 % of the newcomer's sends "
    "and 4.5 % of the incumbent's, which had learned 2.6 % as noise. Fair sharing first. "
    "A told pace (--qps) is kept: see the test below.",
)
@pytest.mark.parametrize("rate", [240.0, 150.0, 60.0])
async def test_evenly_spaced_turns_keep_their_pace_although_timers_wake_late(rate: float) -> None:
    # Turns this far apart may not be made up after a late wake-up (a bucket with a burst of
    # one refuses the second of two close ones), so each late wake-up costs pace.
    from engine.dispatch import Pacer

    clock = EpollClock()
    controller = RateController(max_rate=rate, max_in_flight=8, initial_in_flight=8)
    await _assert_a_second_keeps_its_pace(
        controller, Pacer(controller, clock=clock, sleep=clock.sleep), rate
    )


async def _assert_a_second_keeps_its_pace(
    controller: RateController, pacer: Pacer, rate: float
) -> None:
    """Four workers take a second's worth of turns: they leave at ``rate`` (within 0.5 %),
    never closer together than MIN_SPACING_SHARE of the interval."""
    sent_at = record_sends(controller)
    turns = int(rate)

    async def worker() -> None:
        while len(sent_at) < turns:
            await pacer.acquire()
            pacer.release()

    await asyncio.gather(*(worker() for _ in range(4)))
    await pacer.aclose()
    span = sent_at[turns - 1] - sent_at[0]
    assert (turns - 1) / span >= 0.995 * rate, f"{(turns - 1) / span:.1f} a second"
    gaps = [b - a for a, b in itertools.pairwise(sent_at[:turns])]
    assert min(gaps) >= MIN_SPACING_SHARE / rate - 1e-9


@pytest.mark.parametrize("rate", [240.0, 150.0, 60.0])
async def test_a_told_pace_is_kept_with_the_precise_sleep_although_loop_timers_wake_late(
    rate: float,
) -> None:
    # The same turns as above, paced as a Dispatcher told --qps paces them: the loop's timer
    # (rounded up to the millisecond) sleeps all but the last 1.5 ms, a thread the rest.
    from engine.aio import PreciseSleep

    clock = EpollClock()

    def fine(seconds: float) -> None:  # nanosleep: on time, to this test's resolution
        clock.now += seconds

    precise = PreciseSleep(clock=clock, coarse=clock.sleep, fine=fine)
    controller = RateController(max_rate=rate, max_in_flight=8, initial_in_flight=8)
    pacer = Pacer(controller, clock=clock, sleep=clock.sleep, precise=precise)
    try:
        await _assert_a_second_keeps_its_pace(controller, pacer, rate)
    finally:
        precise.close()


async def test_queued_turns_wait_under_a_lowered_in_flight_limit() -> None:
    # Eight requests queue for their turns under a limit of 64; then a concurrency cap of 2
    # is learned. At 10,000/s the eight turns fall due in one wake-up (0.1 ms apart, under
    # the timer's resolution). Before: all eight went at once, six past the cap.
    from engine.dispatch import Pacer

    clock = FakeClock()
    controller = RateController(max_rate=10_000.0, max_in_flight=64, initial_in_flight=64)
    pacer = Pacer(controller, clock=clock, sleep=clock.sleep)
    most = 0

    async def one() -> None:
        nonlocal most
        await pacer.acquire()
        most = max(most, pacer.sent)
        await asyncio.sleep(0)  # answered a loop turn later
        pacer.release()

    tasks = [asyncio.create_task(one()) for _ in range(8)]
    await asyncio.sleep(0)
    controller.in_flight_limit = 2.0
    await asyncio.gather(*tasks)
    assert most <= 2
    assert pacer.sent == 0
    await pacer.aclose()


def one_slot_pacer() -> Pacer:
    clock = FakeClock()
    controller = RateController(max_in_flight=1, initial_in_flight=1)
    return Pacer(controller, clock=clock, sleep=clock.sleep)


async def test_a_freed_slot_goes_to_the_oldest_batch_waiting() -> None:
    # One slot, held by batch 5. Batches 9, 7 and 8 wait for it in that order, then batch 3
    # comes back from a Retry-After: the writer waits for batch 3 first, so it goes first.
    pacer = one_slot_pacer()
    await pacer.acquire(5)
    order: list[int] = []

    async def send(batch_id: int) -> None:
        await pacer.acquire(batch_id)
        order.append(batch_id)
        await asyncio.sleep(0)  # answered a loop turn later
        pacer.release()

    tasks = []
    for batch_id in (9, 7, 8, 3):
        tasks.append(asyncio.create_task(send(batch_id)))
        await asyncio.sleep(0)
    assert order == []
    pacer.release()
    await asyncio.gather(*tasks)
    assert order == [3, 7, 8, 9]
    assert pacer.in_flight == 0
    await pacer.aclose()


async def test_a_request_cancelled_while_it_waits_for_a_slot_leaves_the_slot_to_the_next() -> None:
    pacer = one_slot_pacer()
    await pacer.acquire(0)
    waiting = [asyncio.create_task(pacer.acquire(batch_id)) for batch_id in (1, 2, 3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while it waits
    await asyncio.sleep(0)
    pacer.release()  # wakes batch 2 (batch 1 is gone)...
    waiting[1].cancel()  # ...which is cancelled before it runs: the slot passes to batch 3
    for _ in range(3):
        await asyncio.sleep(0)
    assert waiting[0].cancelled() and waiting[1].cancelled()
    assert waiting[2].done() and pacer.in_flight == 1
    pacer.release()
    assert pacer.in_flight == 0
    await pacer.aclose()
