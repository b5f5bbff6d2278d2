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


def test_one_cut_never_more_than_halves_the_rate() -> None:
    controller = RateController()
    for i in range(100):
        controller.on_success(i * 0.01)
    controller.on_throttle(1.0)
    before = controller.rate
    controller.on_throttle(5.0)  # nothing accepted for 4 s: a poor measurement
    assert controller.rate >= before * 0.5


def test_user_qps_is_a_ceiling_from_the_start() -> None:
    controller = RateController(max_rate=50.0)
    assert controller.paced and controller.rate == 50.0
    for i in range(1000):
        controller.on_success(i * 0.001)
    assert controller.rate <= 50.0


def simulate(
    *, capacity_qps: float, latency_s: float, seconds: float, workers: int = 64
) -> tuple[list[float], int, int]:
    """A token-bucket endpoint (burst = 1 s worth) driven by the controller's rules.

    Returns the accept times, the number of requests and the number answered 429.
    """
    controller = RateController(max_in_flight=workers)
    tokens, bucket_at = capacity_qps, 0.0
    next_slot = 0.0
    in_flight = 0
    accepts: list[float] = []
    requests = throttled = 0
    events: list[tuple[float, int, str]] = [(0.0, w, "ready") for w in range(workers)]
    heapq.heapify(events)
    waiting: list[int] = []
    while events:
        now, worker, kind = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "done-ok":
            in_flight -= 1
            accepts.append(now)
            controller.on_success(now)
            heapq.heappush(events, (now, worker, "ready"))
        elif kind == "done-429":
            in_flight -= 1
            controller.on_throttle(now)
            heapq.heappush(events, (now + 1.0, worker, "ready"))  # default Retry-After
        if kind.startswith("done"):
            for w in waiting:
                heapq.heappush(events, (now, w, "ready"))
            waiting.clear()
            continue
        if in_flight >= int(controller.in_flight_limit):
            waiting.append(worker)
            continue
        start = now
        if controller.paced:
            start = max(now, next_slot)
            next_slot = start + 1.0 / controller.rate
        tokens = min(capacity_qps, tokens + (start - bucket_at) * capacity_qps)
        bucket_at = start
        in_flight += 1
        requests += 1
        if tokens >= 1.0:
            tokens -= 1.0
            heapq.heappush(events, (start + latency_s, worker, "done-ok"))
        else:
            throttled += 1
            heapq.heappush(events, (start + 0.002, worker, "done-429"))
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
