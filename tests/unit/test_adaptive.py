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
                controller.on_success(now, latency_s)
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


def simulate_queueing(
    *, servers: int, service_s: float, seconds: float, workers: int = 64, **settings: float
) -> tuple[int, list[float], RateController]:
    """An endpoint with ``servers`` provisioned slots that queues what it cannot serve yet
    (no 429s, only latency), driven by the controller through an in-flight cap.

    Returns the requests completed, every request's latency, and the controller.
    """
    controller = RateController(max_in_flight=workers, **settings)
    free_at = [0.0] * servers  # when each slot is next free
    events: list[tuple[float, int, str, float]] = [(0.0, w, "ready", 0.0) for w in range(workers)]
    heapq.heapify(events)
    in_flight = done = 0
    latencies: list[float] = []
    blocked: list[int] = []
    while events:
        now, worker, kind, sent = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "done":
            in_flight -= 1
            done += 1
            latencies.append(now - sent)
            controller.on_success(now, now - sent)
            for w in [worker, *blocked]:
                heapq.heappush(events, (now, w, "ready", 0.0))
            blocked.clear()
            continue
        if in_flight >= int(controller.in_flight_limit):
            blocked.append(worker)
            continue
        in_flight += 1
        slot = min(range(servers), key=free_at.__getitem__)
        start = max(now, free_at[slot])
        free_at[slot] = start + service_s
        heapq.heappush(events, (start + service_s, worker, "done", now))
    return done, latencies, controller


def test_an_endpoint_that_queues_is_kept_busy_without_a_needless_queue() -> None:
    servers, service_s = 8, 0.05  # capacity 160 requests/s
    # The gradient itself, with a 20 ms floor on the queueing delay it reacts to.
    done, latencies, controller = simulate_queueing(
        servers=servers, service_s=service_s, seconds=30, min_queue_delay_s=0.02
    )
    assert done / 30 >= 0.95 * servers / service_s  # capacity still fully used
    steady = sorted(latencies[len(latencies) // 3 :])
    # Without the latency rule, 64 in flight would wait 64/8 x 50 ms = 400 ms each.
    assert steady[len(steady) // 2] <= 2.5 * service_s
    assert controller.latency_cuts > 0 and controller.in_flight_limit < 32


def test_by_default_queueing_under_100_ms_is_tolerated_but_no_more() -> None:
    servers, service_s = 8, 0.05
    done, latencies, _ = simulate_queueing(servers=servers, service_s=service_s, seconds=30)
    assert done / 30 >= 0.95 * servers / service_s
    steady = sorted(latencies[len(latencies) // 3 :])
    assert steady[len(steady) // 2] <= service_s + 0.1 + service_s  # floor + one round


def test_latency_that_does_not_rise_with_load_never_cuts() -> None:
    controller = RateController(max_in_flight=64)
    for i in range(2_000):  # a fast endpoint: 2-4 ms whatever the load
        controller.on_success(i * 0.001, 0.002 + 0.002 * (i % 3) / 2)
    assert controller.latency_cuts == 0 and controller.in_flight_limit == 64


def test_small_queueing_delays_are_ignored() -> None:
    controller = RateController(max_in_flight=64, min_queue_delay_s=0.02)
    for i in range(2_000):  # 1 ms service, 10 ms when loaded: 3x, but only 9 ms of queueing
        controller.on_success(i * 0.001, 0.001 if i < 20 else 0.010)
    assert controller.latency_cuts == 0
