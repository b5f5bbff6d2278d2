"""The capacity finder as a value: its rules, then a simulated endpoint (no sockets, no clock)."""

from __future__ import annotations

import heapq
import math

import pytest

from engine.adaptive import RateController


def test_slow_start_adds_one_in_flight_per_success_up_to_the_workers() -> None:
    controller = RateController(max_in_flight=10, initial_in_flight=4)
    for i in range(20):
        controller.on_success(i * 0.01)
    assert controller.in_flight_limit == 10
    assert not controller.paced


def test_first_throttle_paces_at_what_the_endpoint_accepted() -> None:
    controller = RateController(max_in_flight=64, backoff=0.9)
    for i in range(100):  # 100 accepted over one second
        controller.on_success(i * 0.01)
    controller.on_throttle(1.0)
    assert controller.paced
    assert controller.rate == pytest.approx(90.0, rel=0.05)


def test_a_burst_of_throttles_is_one_cut() -> None:
    controller = RateController()
    for i in range(100):
        controller.on_success(i * 0.01)
    for j in range(20):
        controller.on_throttle(1.0 + j * 0.001)
    assert controller.cuts == 1 and controller.throttles == 20


def test_a_thin_measurement_never_more_than_halves_the_rate() -> None:
    controller = RateController(max_rate=100.0)  # paced from the start
    for i in range(3):  # three acceptances say little about capacity
        controller.on_success(i * 0.5)
    controller.on_throttle(2.0)
    assert controller.rate >= 50.0


def test_a_trusted_measurement_cuts_to_just_under_it() -> None:
    controller = RateController(max_rate=100.0, backoff=0.9)
    for i in range(40):  # 40 acceptances over 4 s: 10/s
        controller.on_success(i * 0.1)
    controller.on_throttle(4.0)
    assert controller.rate == pytest.approx(9.0, rel=0.1)


def test_user_qps_is_a_ceiling_from_the_start() -> None:
    controller = RateController(max_rate=50.0)
    assert controller.paced and controller.rate == 50.0
    for i in range(1000):
        controller.on_success(i * 0.001)
    assert controller.rate <= 50.0


def simulate(
    *, capacity_qps: float, latency_s: float, seconds: float, workers: int = 64
) -> tuple[list[float], int, int]:
    """A token-bucket endpoint (burst = 1 s worth) driven by the controller's rules, with the
    pacer's semantics: an in-flight cap, then one FIFO released every 1/rate seconds at the
    rate current when each request is let go. 429s are retried after 1 s.

    Returns the accept times, the number of requests and the number answered 429.
    """
    controller = RateController(max_in_flight=workers)
    tokens, bucket_at = capacity_qps, 0.0
    next_at, tick_pending = 0.0, False
    in_flight = 0
    accepts: list[float] = []
    requests = throttled = 0
    events: list[tuple[float, int, str]] = [(0.0, w, "ready") for w in range(workers)]
    heapq.heapify(events)
    blocked: list[int] = []
    paced: list[int] = []

    def send(now: float, worker: int) -> None:
        nonlocal tokens, bucket_at, requests, throttled
        tokens = min(capacity_qps, tokens + (now - bucket_at) * capacity_qps)
        bucket_at = now
        requests += 1
        if tokens >= 1.0:
            tokens -= 1.0
            heapq.heappush(events, (now + latency_s, worker, "done-ok"))
        else:
            throttled += 1
            heapq.heappush(events, (now + 0.002, worker, "done-429"))

    while events:
        now, worker, kind = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "tick":
            tick_pending = False
            send(now, paced.pop(0))
            next_at = max(now, next_at) + 1.0 / controller.rate
            if paced:
                heapq.heappush(events, (next_at, -1, "tick"))
                tick_pending = True
            continue
        if kind.startswith("done"):
            in_flight -= 1
            if kind == "done-ok":
                accepts.append(now)
                controller.on_success(now)
                heapq.heappush(events, (now, worker, "ready"))
            else:
                controller.on_throttle(now)
                heapq.heappush(events, (now + 1.0, worker, "ready"))  # default Retry-After
            for w in blocked:
                heapq.heappush(events, (now, w, "ready"))
            blocked.clear()
            continue
        if in_flight >= int(controller.in_flight_limit):
            blocked.append(worker)
            continue
        in_flight += 1
        if not controller.paced:
            send(now, worker)
            continue
        paced.append(worker)
        if not tick_pending:
            heapq.heappush(events, (max(now, next_at), -1, "tick"))
            tick_pending = True
    return accepts, requests, throttled


def test_unknown_rate_limit_is_found_within_ten_seconds_with_few_throttles() -> None:
    capacity = 200.0
    accepts, requests, throttled = simulate(capacity_qps=capacity, latency_s=0.05, seconds=40)
    after_ten = [t for t in accepts if t >= 10.0]
    achieved = len(after_ten) / 30.0
    assert achieved >= 0.9 * capacity
    assert throttled / requests <= 0.05


def test_fast_endpoint_is_not_held_back() -> None:
    accepts, _, throttled = simulate(capacity_qps=math.inf, latency_s=0.005, seconds=2, workers=32)
    # 32 in flight at 5 ms each is 6400 requests/s; slow start gets there in a few round trips
    assert len([t for t in accepts if t >= 1.0]) >= 0.9 * 6400
    assert throttled == 0
