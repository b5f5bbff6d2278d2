"""The capacity finder as a value: its rules, then a simulated endpoint (no sockets, no clock)."""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable

import pytest

from engine.adaptive import (
    CAP_PROBE_ACCEPTS,
    MIN_SPACING_SHARE,
    NOISE_REFUSALS_IN_A_ROW,
    PROBE_INTERVAL_S,
    STARTUP_FULL_PACE_GAIN,
    STARTUP_PACE_GAIN,
    RateController,
    _Round,
    turns_due,
)
from tests.unit.simulation import Client, Endpoint, FixedPace, Result, simulate, simulate_shared

SEEDS = (1, 2, 3)


def test_slow_start_adds_one_in_flight_per_success_up_to_the_workers() -> None:
    controller = RateController(max_in_flight=10, initial_in_flight=4)
    for i in range(20):
        controller.on_success(i * 0.01)
    assert controller.in_flight_limit == 10
    assert not controller.paced


def test_user_qps_is_a_ceiling_from_the_start() -> None:
    controller = RateController(max_rate=50.0)
    assert controller.paced and controller.rate == 50.0
    for i in range(1000):
        controller.on_send(i * 0.001)
        controller.on_success(i * 0.001)
    assert controller.rate <= 50.0


def test_time_without_sending_never_lowers_the_capacity() -> None:
    result = simulate(Endpoint(rate=((0, 100),), burst=10), seconds=5)
    controller = result.controller
    assert controller is not None and controller.capacity is not None
    before = controller.capacity
    now = 5.0
    for _ in range(40):  # a long pause (Retry-After, a stopped endpoint): few sends
        now += 0.5
        controller.on_send(now)
        controller.on_success(now + 0.03, 0.03)
    assert controller.capacity >= 0.95 * before


def fraction_of_capacity(endpoint: Endpoint, result: Result, start: float, end: float) -> float:
    return result.accepted_between(start, end) / (endpoint.capacity(start) * (end - start))


@pytest.mark.parametrize(
    ("endpoint", "floor", "refused"),
    [
        (Endpoint(rate=((0, 40),), burst=4, latency_s=0.03), 0.95, 0.07),
        (Endpoint(rate=((0, 40),), burst=4, latency_s=0.03, retry_after_s=1.0), 0.95, 0.07),
        (Endpoint(rate=((0, 200),), burst=20, latency_s=0.05), 0.95, 0.05),
        (Endpoint(rate=((0, 2000),), burst=200, latency_s=0.01), 0.95, 0.05),
        # a burst of one punishes any timer jitter: issue 11's <= 5 % is not met here yet
        (Endpoint(rate=((0, 40),), burst=1, latency_s=0.03), 0.75, 0.10),
        (Endpoint(concurrency=((0, 8),), latency_s=0.05), 0.85, 0.05),
        (Endpoint(concurrency=((0, 8),), concurrency_mode="queue", latency_s=0.05), 0.95, 0.0),
    ],
    ids=["bucket-40-b4", "bucket-40-retry-after", "bucket-200", "bucket-2000", "bucket-40-b1",
         "concurrency-429", "concurrency-queue"],
)
def test_an_unknown_limit_is_found_within_ten_seconds_start_up_included(
    endpoint: Endpoint, floor: float, refused: float
) -> None:
    for seed in (1, 2, 3):
        result = simulate(endpoint, seconds=40, seed=seed)
        assert fraction_of_capacity(endpoint, result, 0.0, 10.0) >= floor
        # after start-up, few requests are refused (probing above the limit costs some)
        assert result.throttle_share(1.0, 40.0) <= refused


def test_a_limit_that_triples_is_followed_within_six_seconds() -> None:
    endpoint = Endpoint(rate=((0, 20), (8, 60)), burst=2)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=20, seed=seed)
        reached = [
            k * 0.25
            for k in range(48)
            if result.accepted_between(8 + k * 0.25, 8.5 + k * 0.25) / 0.5 >= 0.9 * 60
        ]
        assert reached and reached[0] + 0.5 <= 6.0


def test_after_a_limit_falls_refusals_are_back_under_five_percent_within_three_seconds() -> None:
    endpoint = Endpoint(rate=((0, 60), (8, 20)), burst=6)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=20, seed=seed)
        assert result.throttle_share(8.0, 8.5) > 0.3  # the fall was felt
        assert result.throttle_share(11.0, 13.0) < 0.05


def test_after_a_limit_falls_the_429_share_from_three_seconds_on_is_under_five_percent() -> None:
    """Issue 11's step-down target as a share: over the rest of the run once 3 s have passed
    since the fall, under 5 % of requests are answered 429 (2.2-4.7 % on seeds 1-3: the
    probes that must keep looking for a limit that rises again cost one or two each)."""
    endpoint = Endpoint(rate=((0, 60), (8, 20)), burst=6)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=20, seed=seed)
        assert result.throttle_share(11.0, 20.0) < 0.05


@pytest.mark.xfail(
    strict=True,
    reason="issue 11's target not met: at 20 requests/s each probe after the fall (every "
    "2-4 s) costs one or two 429s, 5-10 % of a trailing second (windows ending 11.0-18.75 s, "
    "seeds 1-3), although the share over seconds 3-5 after the fall is under 5 %",
)
def test_after_a_limit_falls_refusals_stay_under_five_percent_from_three_seconds_on() -> None:
    endpoint = Endpoint(rate=((0, 60), (8, 20)), burst=6)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=20, seed=seed)
        assert all(
            result.throttle_share(t - 1.0, t) < 0.05 for t in (11.0 + k * 0.25 for k in range(37))
        )


NOISY = Endpoint(latency_s=0.05, throttle_noise=0.05, error_503_noise=0.03)


def test_random_refusals_do_not_ratchet_the_rate_down() -> None:
    for seed in SEEDS:
        noisy = simulate(NOISY, seconds=10, workers=32, seed=seed)
        controller = noisy.controller
        assert controller is not None
        assert controller.capacity is None and not controller.paced and controller.cuts == 0
        assert controller.in_flight_limit == 32


def test_random_refusals_cost_little_against_the_same_controller_without_them() -> None:
    for seed in SEEDS:
        clean = simulate(Endpoint(latency_s=0.05), seconds=10, workers=32, seed=seed)
        noisy = simulate(NOISY, seconds=10, workers=32, seed=seed)
        assert noisy.accepted_between(2, 10) >= 0.85 * clean.accepted_between(2, 10)


def test_paced_sends_are_never_closer_than_almost_the_interval() -> None:
    interval = 0.025
    next_at, sent = 0.0, []
    for k in range(200):  # the timer fires 0-1 ms late
        now = max(next_at, sent[-1] if sent else 0.0) + (k * 7919 % 1000) / 1e6
        due, next_at = turns_due(now, next_at, interval)
        assert due == 1
        sent.append(now)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= MIN_SPACING_SHARE * interval - 1e-9
    assert (sent[-1] - sent[0]) / (len(sent) - 1) <= 1.03 * interval  # and the pace holds


def test_no_turn_is_owed_after_an_idle_gap() -> None:
    assert turns_due(100.0, 1.0, 0.025) == (1, 100.0 + MIN_SPACING_SHARE * 0.025)
    assert turns_due(100.0, 1.0, 0.0005)[0] <= 5  # fast paces make up at most 2 ms


def test_startup_spreads_its_requests_over_the_round_trip_once_one_is_measured() -> None:
    # Sent at once, a volley meets a bucket with a burst of a request or two, which refuses
    # most of it whatever its rate: startup then ended far under the limit (83 req/s against
    # 200 with a burst of 2). Spread over the round trip, the same requests go through.
    controller = RateController(max_in_flight=6, initial_in_flight=4)
    assert controller.pace == float("inf")  # no round trip measured: nothing to spread over
    controller.on_send(0.0)
    controller.on_success(0.03, 0.03)
    assert not controller.paced and controller.capacity is None  # still startup
    assert controller.in_flight_limit == 5
    assert controller.pace == pytest.approx(STARTUP_PACE_GAIN * 5 / 0.03)
    controller.on_send(0.03)
    controller.on_success(0.06, 0.03)  # 6 in flight: the workers' ceiling, growth is over
    assert not controller.slow_start
    # never refused: spread with room for a late timer's millisecond
    assert controller.pace == pytest.approx(STARTUP_FULL_PACE_GAIN * 6 / 0.03)


def test_startup_grown_full_after_a_refusal_paces_at_the_in_flight_limits_rate() -> None:
    controller = RateController(max_in_flight=64, initial_in_flight=4)
    controller.on_send(0.0)
    controller.on_success(0.03, 0.03)
    controller.on_send(0.03)
    controller.on_throttle(0.035, 0.005)  # one refusal: its slot taken away, growth goes on
    for i in range(70):
        controller.on_send(0.04 + i * 0.001)
        controller.on_success(0.07 + i * 0.001, 0.03)
    assert not controller.slow_start and controller.capacity is None
    assert controller.pace == pytest.approx(64 / 0.03)


def test_startup_under_a_told_qps_is_spread_too_and_never_above_it() -> None:
    controller = RateController(max_in_flight=64, max_rate=2000.0)
    assert controller.pace == 2000.0  # no round trip yet: the user's cap
    controller.on_send(0.0)
    controller.on_success(0.1, 0.1)
    assert controller.pace == pytest.approx(STARTUP_PACE_GAIN * 5 / 0.1)
    controller.on_success(0.101, 0.001)  # a fast round trip: the spread pace is over the cap
    assert controller.pace == 2000.0


def test_once_paced_the_pace_is_the_rate() -> None:
    controller = RateController(max_rate=50.0)
    controller.on_send(0.0)
    controller.on_success(0.03, 0.03)
    controller._end_startup(40.0, 0.05)
    assert controller.pace == controller.rate == pytest.approx(0.85 * 40.0)


def test_no_pace_releases_every_waiting_turn() -> None:
    assert turns_due(1.0, 0.5, 0.0) == (1 << 30, 1.0)


@pytest.mark.parametrize("latency_s", [0.01, 0.03, 0.1])
def test_startup_against_a_burst_of_two_ends_near_the_limit(latency_s: float) -> None:
    # Before startup was spread: 83, 83 and 25 req/s on seed 1 against this 200 req/s bucket;
    # after, 123-129 at 30 ms (the least of the three latencies), 184-205 at 10 and 100 ms.
    endpoint = Endpoint(rate=((0, 200),), burst=2, latency_s=latency_s)
    for seed in SEEDS:
        ended = _startup_ends(endpoint, seed, seconds=2)
        assert ended and ended[0] >= 0.6 * 200, (seed, ended)


def _startup_ends(endpoint: Endpoint, seed: int, *, seconds: float) -> list[float]:
    """The capacity each time startup ended, over ``seconds`` of a simulated run."""
    ended: list[float] = []

    class Watched(RateController):
        def _end_startup(self, estimate: float, now: float) -> None:
            super()._end_startup(estimate, now)
            ended.append(self.capacity or 0.0)

    simulate(endpoint, seconds=seconds, seed=seed, controller_type=Watched)
    return ended


@pytest.mark.parametrize("noise", [0.0, 0.07])
def test_a_storm_judged_just_after_a_round_began_is_measured_over_both_rounds(
    noise: float,
) -> None:
    # A 500 req/s bucket with a burst of 50 refuses from ~0.12 s on; the storm is often judged
    # a few milliseconds into startup's second round. Measured over those milliseconds, the
    # pace was 36-182 req/s on three seeds of ten (and 125 on one without noise); over both
    # rounds, 318 or more.
    endpoint = Endpoint(rate=((0, 500),), burst=50, latency_s=0.03, throttle_noise=noise)
    for seed in range(1, 11):
        ended = _startup_ends(endpoint, seed, seconds=1)
        assert ended and ended[0] >= 0.6 * 500, (seed, ended)


def _drain_round_after_a_guess(*, measured: bool) -> RateController:
    """Startup guessed 52 req/s; the drain round after it, at 44 req/s against a limit of
    40, had one request of nine refused, and is judged. ``measured``: as if a loss had
    measured the capacity instead."""
    controller = RateController(max_in_flight=64)
    controller.on_send(0.0)
    controller.on_success(0.03, 0.03)
    controller._end_startup(52.0, 0.05)
    controller._confirmed = measured
    assert controller.rate == pytest.approx(0.85 * 52.0)  # the drain round's pace
    for i in range(9):
        t = 0.05 + i * 0.0226
        controller.on_send(t)
        if i == 4:
            controller.on_throttle(t + 0.002, 0.002)
        else:
            controller.on_success(t + 0.03, 0.03)
    controller.on_send(0.3)  # the next round begins; the drain round is judged
    controller.on_success(1.0, 0.03)
    return controller


def test_refusals_under_startups_guess_are_not_learned_as_noise() -> None:
    # Startup's estimate is a guess: the drain round after it, at 0.85 of it, can still be
    # over the limit. What that round has refused is the limit's doing, not noise; learned as
    # noise, it hid a capacity 16 % over a 40 req/s bucket for seconds (8 % of requests 429).
    assert _drain_round_after_a_guess(measured=False).accept_ratio == 1.0


def test_refusals_under_a_measured_capacity_are_learned_as_noise() -> None:
    # The same round under a capacity a loss measured: its one refusal is noise.
    assert _drain_round_after_a_guess(measured=True).accept_ratio < 1.0


def test_startup_ends_at_once_on_a_run_of_refusals() -> None:
    controller = RateController(max_in_flight=64)
    for _ in range(4):
        controller.on_send(0.0)
    controller.on_success(0.03, 0.03)
    for i in range(5):
        controller.on_send(0.03)
        controller.on_throttle(0.032 + i * 0.0001, 0.002)
    assert controller.paced and controller.capacity is not None


def _volley_of_64(controller: RateController, now: float) -> None:
    """Slow start up to 64 in flight, then a volley of 64 sent at once at ``now``."""
    for i in range(64):
        controller.on_send(now - 0.1 + i * 0.001)
        controller.on_success(now - 0.05 + i * 0.001, 0.03)
    assert controller.in_flight_limit == 64 and not controller.paced
    for _ in range(64):
        controller.on_send(now)


def test_the_random_429s_of_a_volley_that_come_back_first_do_not_end_startup() -> None:
    # 64 requests leave together; 5 % noise refuses about three of them, and one volley in
    # five brings five or more, all back at once, before the volley's acceptances (30 ms
    # later). Five in a row used to end start-up there: a 3M-row run with random 429s was
    # paced at half what the endpoint took.
    controller = RateController(max_in_flight=64)
    _volley_of_64(controller, 1.0)
    for i in range(8):
        controller.on_throttle(1.002 + i * 0.0001, 0.002)
    for i in range(56):
        controller.on_success(1.03 + i * 0.0001, 0.03)
    assert not controller.paced and controller.capacity is None


def test_a_volley_refused_far_beyond_noise_still_ends_startup() -> None:
    controller = RateController(max_in_flight=64)
    _volley_of_64(controller, 1.0)
    for i in range(13):
        controller.on_throttle(1.002 + i * 0.0001, 0.002)
    assert controller.paced and controller.capacity is not None


@pytest.mark.parametrize("seed", range(60))
def test_a_clock_that_ticks_once_for_many_events_never_breaks_the_finder(seed: int) -> None:
    # A coarse clock (Windows' monotonic clock ticks every 15.6 ms; a virtual one jumps) gives
    # many sends and answers one timestamp. A change of pace at the instant a round began
    # closed that round with no length, and a lossy one divided by zero (seeds 0 and 38).
    rng = random.Random(seed)
    controller = RateController(max_in_flight=16)
    now = 0.0
    pending: list[float] = []
    for _ in range(3000):
        if rng.random() < 0.3:
            now += 0.01
        if rng.random() < 0.5 and len(pending) < 16:
            controller.on_send(now)
            pending.append(now)
        elif pending:
            sent = pending.pop(0)
            if rng.random() < 0.3:
                controller.on_throttle(now, now - sent, len(pending) + 1)
            else:
                controller.on_success(now, now - sent, len(pending) + 1)
    assert all(r.ended_at > r.started_at for r in controller._rounds)
    assert controller.capacity is None or controller.capacity >= controller.min_rate


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


def _capped_at_8() -> tuple[RateController, float]:
    """A controller that learned a cap of 8, and the time its last answer came."""
    controller = RateController(max_in_flight=64, initial_in_flight=64)
    now = 0.0
    for _ in range(12):  # 8 slots, 50 ms: up to 8 in flight accepted, the 9th on refused
        for level in range(1, 13):
            now += 0.001
            controller.on_send(now)
            if level <= 8:
                controller.on_success(now + 0.05, 0.05, in_flight=level)
            else:
                controller.on_throttle(now + 0.002, 0.002, in_flight=level)
    assert controller.concurrency_cap == 8
    return controller, now + 0.05


def test_refusals_only_above_a_level_of_requests_in_flight_cap_requests_in_flight_there() -> None:
    controller, _ = _capped_at_8()
    assert controller.in_flight_limit <= 8
    # the cap, not a slower pace, keeps the 429s away: 8 in flight at 50 ms is 160/s
    assert not controller.paced or controller.rate >= 0.95 * 8 / 0.05


def test_a_cap_is_found_although_a_few_requests_at_it_were_refused() -> None:
    # The client counts a request in flight until its answer arrives; the endpoint frees the
    # slot when it answers. So a few requests sent with 8 in flight meet a 9th at the
    # endpoint (refused), and a few sent with 9 or 10 are accepted: seen in the simulation
    # (seed 2: 4 refused of 969 at level 8), where the cap was then never learned.
    controller = RateController(max_in_flight=64, initial_in_flight=64)
    now = 0.0
    for round_ in range(80):
        for level in range(5, 12):
            now += 0.001
            controller.on_send(now)
            slipped = level == 8 and round_ % 20 == 19  # 4 of 80 at the cap refused
            lucky = level == 9 and round_ % 4 == 0  # a quarter at 9 accepted
            if (level <= 8 and not slipped) or lucky:
                controller.on_success(now + 0.05, 0.05, in_flight=level)
            else:
                controller.on_throttle(now + 0.002, 0.002, in_flight=level)
    assert controller.concurrency_cap == 8


def test_a_cap_is_tried_one_higher_and_rises_when_that_level_is_accepted() -> None:
    controller, now = _capped_at_8()
    controller.on_success(now, 0.05, in_flight=8)
    assert controller.in_flight_limit <= 8  # not before the probe interval
    now += PROBE_INTERVAL_S
    controller.on_success(now, 0.05, in_flight=8)
    assert int(controller.in_flight_limit) == 9  # one more may go
    assert controller.rate >= 9 / 0.05 * 0.99  # and the pace lets it
    for _ in range(CAP_PROBE_ACCEPTS):
        now += 0.01
        controller.on_send(now - 0.05)
        controller.on_success(now, 0.05, in_flight=9)
    assert controller.concurrency_cap == 9
    assert int(controller.in_flight_limit) == 10  # and on to the next level at once
    now += 0.01
    controller.on_throttle(now, 0.002, in_flight=10)  # the endpoint serves 9 at once
    assert controller.concurrency_cap == 9
    assert int(controller.in_flight_limit) == 9
    assert controller.capacity is not None and controller.capacity >= 0.99 * 9 / 0.05


def test_a_cap_tried_higher_and_refused_there_stays() -> None:
    controller, now = _capped_at_8()
    now += PROBE_INTERVAL_S
    controller.on_success(now, 0.05, in_flight=8)
    assert int(controller.in_flight_limit) == 9
    controller.on_success(now + 0.001, 0.05, in_flight=9)  # chance: a slot freed meanwhile
    controller.on_throttle(now + 0.002, 0.002, in_flight=9)
    assert controller.concurrency_cap == 8 and int(controller.in_flight_limit) == 8
    controller.on_success(now + PROBE_INTERVAL_S / 2, 0.05, in_flight=8)
    assert int(controller.in_flight_limit) == 8  # the next try waits its interval


def test_a_cap_raised_by_a_lucky_try_goes_back_down_when_its_level_is_refused() -> None:
    # Against the emulator (8 slots, 50 ms) a busy client heard answers late, so requests
    # it sent with 9 in flight by its count were accepted 95 times of 166: a try at 9 passed,
    # the cap stayed at 9 and its refusals were read as the pace's (0.77 of the capacity).
    controller, now = _capped_at_8()
    controller.capacity = capacity = 0.96 * 8 / 0.05  # the pace near what 8 slots serve
    now += PROBE_INTERVAL_S
    controller.on_success(now, 0.05, in_flight=8)
    for _ in range(CAP_PROBE_ACCEPTS):  # the try at 9 is lucky
        now += 0.01
        controller.on_send(now - 0.05)
        controller.on_success(now, 0.05, in_flight=9)
    assert controller.concurrency_cap == 9
    for i in range(12):  # then 9 in flight is refused about half the time
        now += 0.01
        controller.on_send(now - 0.05)
        if i % 2:
            controller.on_success(now, 0.05, in_flight=9)
        else:
            controller.on_throttle(now, 0.002, in_flight=9)
    assert controller.concurrency_cap == 8
    assert controller.in_flight_limit <= 8
    # paced for 8 again, not for the 9 the try raised it to (more would crowd a neighbour)
    assert controller.capacity is not None and controller.capacity <= 8 / 0.05
    for _ in range(40):  # and the rounds those refusals were sent in are judged
        now += 0.05
        controller.on_send(now - 0.05)
        controller.on_success(now, 0.05, in_flight=8)
    # they were the raised cap's refusals, not the pace's: no cut
    assert controller.capacity is not None and controller.capacity >= capacity


def test_a_cap_is_not_lowered_by_a_few_slips_at_its_level() -> None:
    controller, now = _capped_at_8()
    for i in range(100):  # 3 of the first 31 refused at the cap: slips, not a cap too high
        now += 0.01
        controller.on_send(now - 0.05)
        if i in (10, 20, 30):
            controller.on_throttle(now, 0.002, in_flight=8)
        else:
            controller.on_success(now, 0.05, in_flight=8)
    assert controller.concurrency_cap == 8


def test_a_cap_is_not_tried_higher_while_the_pace_holds_the_run_under_it() -> None:
    controller, now = _capped_at_8()
    controller.capacity = 40.0  # a rate limit met later: 2 in flight at 50 ms, not 8
    now += PROBE_INTERVAL_S
    controller.on_success(now, 0.05, in_flight=2)
    assert controller.in_flight_limit <= 8


def test_provisioned_concurrency_scaled_up_is_used_within_six_seconds() -> None:
    """Issue 11's step-up target for a concurrency limit that answers 429: 4 slots, then 8
    from 8 s on (autoscaling, or a neighbour's job ending). A cap learned once used to stay:
    0.48 of the new capacity for the rest of the run."""
    endpoint = Endpoint(concurrency=((0, 4), (8, 8)), latency_s=0.05)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=20, seed=seed)
        assert result.controller is not None and result.controller.concurrency_cap == 8
        # some trailing second ending 1 to 6 s after the step carries 0.9 of the new limit
        ends = (8.0 + 0.25 * k for k in range(4, 25))
        assert any(
            result.accepted_between(t - 1.0, t) >= 0.9 * endpoint.capacity(t) for t in ends
        )
        assert fraction_of_capacity(endpoint, result, 14.0, 20.0) >= 0.9
        assert result.throttle_share(8.0, 20.0) <= 0.05


def test_two_jobs_starting_together_on_one_concurrency_limit_both_get_through() -> None:
    """Two engines on one endpoint of 8 slots (429 past them), started at once. A round of
    the second job that the first one's start-up storm left with nothing accepted used to
    cut its pace to the 0.5 req/s floor: 0 % of the 20 s run's answers on seed 1, for good."""
    endpoint = Endpoint(concurrency=((0, 8),), latency_s=0.05)
    for seed in SEEDS:
        first, second = simulate_shared(endpoint, [Client(), Client()], seconds=20, seed=seed)
        accepted = [len(first.accepted), len(second.accepted)]
        assert sum(accepted) >= 0.85 * endpoint.capacity(0) * 20
        assert min(accepted) >= 0.05 * sum(accepted)
        sent = len(first.sent) + len(second.sent)
        assert (len(first.throttled) + len(second.throttled)) / sent <= 0.05


NEIGHBOUR_ENDPOINTS = {
    "bucket-40-b4": Endpoint(rate=((0, 40),), burst=4, latency_s=0.03),
    "bucket-200": Endpoint(rate=((0, 200),), burst=20, latency_s=0.05),
    "bucket-2000": Endpoint(rate=((0, 2000),), burst=200, latency_s=0.01),
    "concurrency-429": Endpoint(concurrency=((0, 8),), latency_s=0.05),
    "concurrency-queue": Endpoint(concurrency=((0, 8),), concurrency_mode="queue", latency_s=0.05),
}
NEIGHBOUR_SEEDS = range(1, 21)
#: Seeds of those 20 on which issue 11's "a neighbour's job" misses, as a floor. At 48f2141
#: (when the test looked at seeds 1-3 only, all of which passed): 4, 6, 2, 10, 0. Sharing is
#: chaotic: a change anywhere in start-up moves which seeds miss, so the floor is the count.
#: Lowered to the counts of 2026-12-07's halfway search after a reverted raise (the 2,000/s
#: bucket stopped missing; the 40/s one misses on seed 18, where the newcomer gets 4 of 161),
#: then when startup's storm was measured over both rounds (the 200/s bucket: 3 -> 0) and
#: when noise was counted and allowed for (concurrency in 429 mode: 8 -> 5 -> 4).
NEIGHBOUR_MISSES = {
    "bucket-40-b4": 1, "bucket-200": 0, "bucket-2000": 0, "concurrency-429": 4,
    "concurrency-queue": 0,
}


def _neighbour_missed(endpoint: Endpoint, seed: int) -> bool:
    """A second engine sends from 5 s to 12 s: while both run they fill the limit together
    (0.85 of it) and the newcomer gets at least 5 % of it; once it is done the first is back
    at 0.9 of the limit within 3 s (its capacity went back up as after a step up)."""
    mine, theirs = simulate_shared(
        endpoint, [Client(), Client(start_s=5.0, stop_s=12.0)], seconds=20, seed=seed
    )
    both = mine.accepted_between(8.0, 12.0) + theirs.accepted_between(8.0, 12.0)
    return not (
        both >= 0.85 * endpoint.capacity(8.0) * 4.0
        and theirs.accepted_between(8.0, 12.0) >= 0.05 * both
        and fraction_of_capacity(endpoint, mine, 15.0, 20.0) >= 0.9
    )


@functools.cache
def _neighbour_misses(name: str) -> list[int]:
    endpoint = NEIGHBOUR_ENDPOINTS[name]
    return [seed for seed in NEIGHBOUR_SEEDS if _neighbour_missed(endpoint, seed)]


@pytest.mark.parametrize("name", list(NEIGHBOUR_ENDPOINTS))
def test_a_neighbours_job_shares_the_limit_and_its_end_gives_it_back(name: str) -> None:
    """Issue 11's "a neighbour's job", over 20 seeds: no more of them miss than before."""
    misses = _neighbour_misses(name)
    assert len(misses) <= NEIGHBOUR_MISSES[name], misses


def _unfair(name: str, reason: str) -> object:
    """A neighbour endpoint on which sharing is known to miss: a strict xfail."""
    known = pytest.mark.xfail(strict=True, raises=AssertionError, reason="known defect: " + reason)
    return pytest.param(name, marks=known)


@pytest.mark.parametrize(
    "name",
    [
        "bucket-2000",
        "concurrency-queue",
        # bucket-200: 3 of 20 seeds missed (a newcomer left start-up with a small estimate
        # next to a job keeping the limit nearly full) until startup's storm was measured
        # over both rounds when judged just after one began.
        "bucket-200",
        _unfair(
            "bucket-40-b4",
            "sharing is not fair. 1 of 20 seeds misses (18: the newcomer gets 4 of the 161 "
            "requests accepted from 8 s to 12 s). 06b58b0 met all 20, but only through a "
            "defect: a stale search target made the first job probe above a pace just refused, "
            "and be refused, more often.",
        ),
        _unfair(
            "concurrency-429",
            "a job holding every slot of a refusing provisioned concurrency hears almost none "
            "of the newcomer's 429s, so it never gives a slot up; the newcomer, never accepted "
            "often enough at any level to learn the cap, reads its 429s as a rate limit and "
            "slows to the floor: 4 of 20 seeds miss (8 before startup's storm was measured over "
            "both rounds, 5 before noise was counted).",
        ),
    ],
)
def test_a_neighbours_job_gets_its_share_on_every_seed(name: str) -> None:
    assert _neighbour_misses(name) == []


def test_a_rate_limit_refusing_at_every_level_is_no_concurrency_cap() -> None:
    controller = RateController(max_in_flight=64)
    now = 0.0
    for k in range(600):  # refusals at low and high levels alike
        now += 0.005
        level = 1 + k % 4
        controller.on_send(now)
        if k % 3 == 0:
            controller.on_throttle(now + 0.002, 0.002, in_flight=level)
        else:
            controller.on_success(now + 0.03, 0.03, in_flight=level)
    assert controller.concurrency_cap is None


def test_a_probe_step_judged_late_does_not_end_the_step_after_it() -> None:
    # Doubling from a low start, the excess is capped at its maximum: two steps in a row
    # share it. A round of the earlier step judged after the later one began (cut short by
    # the change of pace, so it looks app-limited) once ended the probe and then undid the
    # capacity the earlier step had raised: a second cut on an endpoint that never moved.
    endpoint = Endpoint(rate=((0, 200),), burst=1, latency_s=0.01)
    for seed in (1, 2, 3, 4, 5, 6):
        controller = simulate(endpoint, seconds=10, seed=seed).controller
        assert controller is not None
        assert controller.cuts == 1  # leaving startup, and never again


def test_a_probe_ends_at_its_first_refusal() -> None:
    result = simulate(Endpoint(rate=((0, 40),), burst=4, latency_s=0.03), seconds=10, seed=1)
    controller = result.controller
    assert controller is not None and controller.probes >= 1
    # each probe past the limit costs about one refusal, not a round of them
    steady = [t for t in result.throttled if t >= 2.0]
    assert len(steady) <= 2 * controller.probes + 2


class _ProbeWatch(RateController):
    """Records each refusal of a request sent while probing that lowered the capacity."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sends: list[tuple[float, bool]] = []  # (sent at, probing then)
        self.undone: list[tuple[float, float, float]] = []  # (when, capacity before, after)

    def on_send(self, now: float) -> None:
        self.sends.append((now, self.probing))
        super().on_send(now)

    def on_throttle(
        self, now: float, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        sent_at = now - (latency_s or 0.0)
        index = bisect.bisect_right(self.sends, (sent_at, True)) - 1
        from_probe = index >= 0 and self.sends[index][1]
        before = self.capacity
        super().on_throttle(now, latency_s, in_flight)
        after = self.capacity
        if from_probe and before is not None and after is not None and after < before:
            self.undone.append((now, before, after))


@pytest.mark.parametrize("rate", [500.0, 2000.0])
def test_the_refusals_of_a_probe_that_overshot_do_not_undo_what_its_steps_found(
    rate: float,
) -> None:
    # A probe past the limit is refused once for each request it already sent there, and
    # the first refusal ends it. The later ones once read as "refused at the pace a probe
    # just raised" (a burst's doing) and sent the capacity back under the probe's last
    # accepted step, and cleared the binary search: at 500 requests/s with a burst of
    # three the run then cruised at half the limit for seconds (0.57 of capacity, seed 1).
    endpoint = Endpoint(rate=((0, rate),), burst=3, latency_s=0.01)
    for seed in (1, 2, 3, 4, 5, 6):
        result = simulate(endpoint, seconds=10, seed=seed, controller_type=_ProbeWatch)
        watch = result.controller
        assert isinstance(watch, _ProbeWatch) and watch.probes >= 1
        assert watch.undone == [], f"seed {seed}"


def _missed(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"issue 11's target not met: {reason}")


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param(Endpoint(rate=((0, 40),), burst=4, latency_s=0.03), id="bucket-40-b4"),
        pytest.param(
            Endpoint(rate=((0, 40),), burst=4, latency_s=0.03, retry_after_s=1.0),
            id="bucket-40-b4-retry-after",
        ),
        pytest.param(Endpoint(rate=((0, 200),), burst=20, latency_s=0.05), id="bucket-200-b20"),
        pytest.param(Endpoint(rate=((0, 2000),), burst=200, latency_s=0.01), id="bucket-2000"),
        pytest.param(
            Endpoint(concurrency=((0, 8),), concurrency_mode="queue", latency_s=0.05),
            id="concurrency-queue",
        ),
        pytest.param(
            Endpoint(rate=((0, 5),), burst=1, latency_s=0.01), id="bucket-5-b1",
            marks=_missed("0.80 of capacity with 22 % refused (seeds 1-3): the first requests "
                          "go four at once, a burst of one refuses three, and at 5/s each "
                          "round of the search needs a second or more"),
        ),
        pytest.param(
            Endpoint(rate=((0, 40),), burst=1, latency_s=0.03), id="bucket-40-b1",
            marks=_missed("0.83 of capacity (2.9 % refused, seeds 1-3): a probe a few "
                          "percent past the refill rate is refused every other request, so "
                          "the capacity settles under it"),
        ),
        pytest.param(
            Endpoint(rate=((0, 200),), burst=1, latency_s=0.01), id="bucket-200-b1",
            marks=_missed("0.66 of capacity (under 1 % refused, seeds 1-3): at 5 ms intervals a "
                          "timer up to 1 ms late leaves the pace short of the one asked; a "
                          "client told the limit gets at most 0.89 here "
                          "(see test_a_client_told_the_limit_misses...)"),
        ),
        pytest.param(
            Endpoint(rate=((0, 2000),), burst=1, latency_s=0.01), id="bucket-2000-b1",
            marks=_missed("0.19-0.24 of capacity: 0.5 ms intervals are under the timer's "
                          "resolution, so requests go in pairs and the second is refused; a "
                          "client told the limit gets under 0.45 with 5 % or fewer refused"),
        ),
        pytest.param(Endpoint(concurrency=((0, 8),), latency_s=0.05), id="concurrency-429"),
    ],
)
def test_issue_11_target_at_least_090_of_capacity_and_at_most_5_percent_refused_in_10_s(
    endpoint: Endpoint,
) -> None:
    for seed in SEEDS:
        result = simulate(endpoint, seconds=10, seed=seed)
        assert fraction_of_capacity(endpoint, result, 0.0, 10.0) >= 0.90
        assert result.throttle_share(0.0, 10.0) <= 0.05


@pytest.mark.parametrize(
    ("endpoint", "best"),
    [
        pytest.param(Endpoint(rate=((0, 200),), burst=1, latency_s=0.01), 0.90, id="200-b1"),
        pytest.param(Endpoint(rate=((0, 2000),), burst=1, latency_s=0.01), 0.45, id="2000-b1"),
    ],
)
def test_a_client_told_the_limit_misses_the_target_on_fast_buckets_with_a_burst_of_one(
    endpoint: Endpoint, best: float
) -> None:
    """Why two of the xfails above are out of any finder's reach in this model: paced at a
    fixed share of the limit (told it, never changing), the pacer and its timer get no more
    than ``best`` of the capacity with at most 5 % refused, at any pace."""
    capacity = endpoint.capacity(0)
    for share in (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.85, 0.8, 0.6, 0.45, 0.3):
        for seed in SEEDS:
            result = simulate(endpoint, seconds=10, seed=seed, controller_type=FixedPace,
                              max_rate=share * capacity)
            assert result.controller is not None
            assert result.controller.rate == share * capacity  # told, never changed
            if result.throttle_share(0.0, 10.0) <= 0.05:
                assert fraction_of_capacity(endpoint, result, 0.0, 10.0) < best


def test_a_client_told_the_limit_of_a_slow_bucket_with_a_burst_of_one_meets_the_target() -> None:
    """...while on slow ones it meets it: there the shortfall is the finder's."""
    for endpoint in (Endpoint(rate=((0, 5),), burst=1, latency_s=0.01),
                     Endpoint(rate=((0, 40),), burst=1, latency_s=0.03)):
        for seed in SEEDS:
            result = simulate(endpoint, seconds=10, seed=seed, controller_type=FixedPace,
                              max_rate=0.96 * endpoint.capacity(0))
            assert fraction_of_capacity(endpoint, result, 0.0, 10.0) >= 0.90
            assert result.throttle_share(0.0, 10.0) <= 0.05


def test_refusals_are_noise_until_they_come_in_a_run() -> None:
    controller = RateController(max_in_flight=64, initial_in_flight=64)
    for i in range(20):
        controller.on_send(i * 0.001)
        controller.on_success(i * 0.001 + 0.03, 0.03)
    controller.on_send(0.05)
    controller.on_throttle(0.051, 0.001)
    wait = controller.noise_wait()
    assert wait is not None and 0.03 <= wait <= 0.05 + 1e-9  # about one round trip
    for k in range(NOISE_REFUSALS_IN_A_ROW - 1):
        controller.on_send(0.06)
        controller.on_throttle(0.061 + k * 0.0001, 0.001)
    assert controller.noise_wait() is None  # a run of refusals is a limit: back off
    controller.on_send(0.07)
    controller.on_success(0.1, 0.03)
    assert controller.noise_wait() is not None


def test_a_bucket_without_random_refusals_teaches_next_to_no_noise() -> None:
    # Slow buckets with small bursts refuse only for the pace, never at random. A drain round
    # cut short by a cut (one request, refused by the burst the run had just spent) used to
    # count as much as a full one: 30 % of the way to "all refused", to the 0.92 floor, so
    # the run then took up to 8 % of refusals for noise. Before: 38 of these 108 runs ended
    # with more than 5 % learned as noise; after: 1.
    noisy = []
    for rate, burst, latency_s, seed in itertools.product(
        (5, 10, 20, 40), (2, 3, 5), (0.01, 0.03, 0.1), SEEDS
    ):
        endpoint = Endpoint(rate=((0, rate),), burst=burst, latency_s=latency_s)
        controller = simulate(endpoint, seconds=10, seed=seed).controller
        assert controller is not None
        if controller.accept_ratio < 0.95:
            noisy.append((rate, burst, latency_s, seed, round(controller.accept_ratio, 3)))
    assert len(noisy) <= 2, noisy


@pytest.mark.parametrize(
    ("raised", "searched"), [(132.0, False), (200.0, True)], ids=["close", "far"]
)
def test_a_reverted_raise_searches_halfway_only_when_the_levels_are_far_apart(
    raised: float, searched: bool
) -> None:
    # A probe stepped 100 -> 110 -> 132, its next step overshot at 184.8 (a search target),
    # and then a cruise at the raised capacity is refused: back to 110. Close levels are
    # bracketed closely enough; the old target, above the pace just refused, must not be
    # probed at once (at 06b58b0 it was: 85 of 632 reverts on the grid's buckets). Far apart,
    # the limit lies between them: search halfway at once.
    controller = RateController(max_in_flight=64)
    controller.capacity = raised
    controller._below = 110.0
    controller._tentative_until = 10.0
    controller._bisect_to = 184.8
    controller._set_rate()
    controller.on_send(1.0)
    controller.on_throttle(1.01, 0.01)
    assert controller.capacity == 110.0
    step = controller._halfway()
    if searched:
        assert step is not None and 110.0 * (1.0 + step) < raised
    else:
        assert step is None


def test_a_lossy_round_is_a_capacity_signal_not_noise() -> None:
    result = simulate(Endpoint(rate=((0, 40),), burst=4, latency_s=0.03), seconds=3, seed=1)
    controller = result.controller
    assert controller is not None and controller.capacity is not None
    assert controller.noise_wait() is not None
    cuts = controller.cuts
    # then every other request is refused (never two in a row, so no refusal run says it):
    # only the round's judgement can call it a limit
    for i in range(80):
        t = 3.0 + i * 0.01
        controller.on_send(t)
        if i % 2:
            controller.on_throttle(t + 0.005, 0.005)
        else:
            controller.on_success(t + 0.005, 0.005)
        if controller.cuts > cuts:  # the round was judged lossy, and the pace cut
            break
    assert controller.cuts > cuts
    assert not controller.refusals_are_noise() and controller.noise_wait() is None


def test_refusals_above_the_startup_share_round_after_round_end_startup() -> None:
    # a fifth of requests refused, spread out: no run of refusals, no storm, but two lossy
    # rounds in a row, which a limit gives and noise almost never does
    for seed in (1, 2, 3):
        result = simulate(Endpoint(latency_s=0.05, throttle_noise=0.2), seconds=10, workers=32,
                          seed=seed)
        assert result.controller is not None and result.controller.capacity is not None


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(40, 2), (100, 2), (200, 2), (200, 3)],
    ids=["40-b2", "100-b2", "200-b2", "200-b3"],
)
def test_a_startup_ended_by_lossy_rounds_searches_upward_at_once(rate: float, burst: float) -> None:
    """At 100 ms round trips the storm check rarely fires: startup ends on two lossy rounds.
    That is the limit met, not a limit that fell: the search starts at once, with no
    step-down hold, and the trailing second reaches 0.9 of the limit within 6.25 s (2-6 s
    on seeds 1-3; 6.75-9 s when this ending was taken for a fall)."""
    endpoint = Endpoint(rate=((0, rate),), burst=burst, latency_s=0.1)
    for seed in SEEDS:
        result = simulate(endpoint, seconds=10, seed=seed)
        assert result.controller is not None and result.controller.capacity is not None
        reached = [
            k * 0.25
            for k in range(37)
            if result.accepted_between(k * 0.25, k * 0.25 + 1.0) >= 0.9 * rate
        ]
        assert reached and reached[0] <= 6.25


#: Endpoints of ``benchmarks/simulated_capacity.py --grid`` (nobody tuned the finder to them)
#: where issue 11's target holds on seeds 1-3: 33 of its 135 (2026-12-06 at 1466d79; the
#: same 33 at a1a8012). Traded on 2026-12-07: 500 req/s with a burst of 50 at 100 ms (0.873
#: on seed 2) for 200 req/s with a burst of 20 at 30 ms (0.96 with 8.0 % 429s before, 1.00
#: with 3.5 % after), when a refusal told to wait long stopped holding its worker. Two more
#: since a probe's raise that a refusal reverts is searched halfway at once (35 of 135):
#: 100 req/s with a burst of 5 at 10 ms and 200 req/s with a burst of 5 at 30 ms. 54 of 135
#: since startup spreads its requests over the round trip and a guess's refusals are not
#: learned as noise (none lost): 19 more. 56 since noise is counted and allowed for, a lossy
#: round at a borne-out capacity waits for a second, and a probe's whole rounds count though
#: a later one ended it (none lost): 200 req/s with a burst of 3 at 30 ms and at 100 ms.
#: (rate, burst, latency) of a bucket, or (slots, mode, latency) of provisioned concurrency.
GRID_MET_BUCKETS = [
    (40, 2, 0.01), (40, 2, 0.1), (40, 3, 0.03), (40, 4, 0.01), (40, 4, 0.03), (40, 5, 0.03),
    (100, 2, 0.01), (100, 2, 0.03), (100, 2, 0.1), (100, 3, 0.01), (100, 3, 0.03),
    (100, 3, 0.1), (100, 5, 0.01), (100, 5, 0.03), (100, 5, 0.1), (100, 10, 0.01),
    (100, 10, 0.03), (100, 10, 0.1), (200, 2, 0.1), (200, 3, 0.01), (200, 3, 0.03),
    (200, 3, 0.1), (200, 5, 0.01),
    (200, 5, 0.03), (200, 5, 0.1), (200, 20, 0.01), (200, 20, 0.03), (200, 20, 0.1),
    (500, 5, 0.1), (500, 50, 0.01), (500, 50, 0.03), (500, 50, 0.1), (2000, 5, 0.03),
    (2000, 200, 0.01), (2000, 200, 0.03),
]
GRID_MET_CONCURRENCY = [
    *((slots, "429", latency) for slots in (4, 8, 16, 32) for latency in (0.05, 0.1)),
    (4, "429", 0.01),
    *((slots, "queue", latency) for slots in (4, 8, 16, 32) for latency in (0.01, 0.05, 0.1)),
]


@pytest.mark.parametrize(
    "endpoint",
    [
        *(
            pytest.param(Endpoint(rate=((0, r),), burst=b, latency_s=lat), id=f"b{r}-{b}-{lat}")
            for r, b, lat in GRID_MET_BUCKETS
        ),
        *(
            pytest.param(
                Endpoint(concurrency=((0, n),), concurrency_mode=mode, latency_s=lat),
                id=f"c{n}-{mode}-{lat}",
            )
            for n, mode, lat in GRID_MET_CONCURRENCY
        ),
    ],
)
def test_the_grid_endpoints_that_meet_issue_11s_target_keep_meeting_it(endpoint: Endpoint) -> None:
    """A floor for changes to the finder: one that trades these for others says so here."""
    for seed in SEEDS:
        result = simulate(endpoint, seconds=10, seed=seed)
        assert fraction_of_capacity(endpoint, result, 0.0, 10.0) >= 0.90
        assert result.throttle_share(0.0, 10.0) <= 0.05


class _Paced:
    """Drives a controller on a fake clock: sends at its pace, answers each send
    ``latency_s`` later (a refusal a millisecond after, as a 429 comes back at once). Answers
    still due when a call ends are delivered by the next call, so time never steps back."""

    def __init__(self, controller: RateController, latency_s: float = 0.03) -> None:
        self.controller = controller
        self.latency_s = latency_s
        self.now = 0.0
        self._answers: list[tuple[float, int, bool, float]] = []
        self._sends = 0

    def __call__(
        self, start: float, end: float, refused: Callable[[int], bool] = lambda i: False
    ) -> None:
        """Send from ``start`` (or now, if later) until ``end`` (the ``i``-th send of this
        call refused when ``refused(i)``), delivering every answer due before ``end``."""
        controller, answers = self.controller, self._answers
        next_send, i = max(start, self.now), 0
        while next_send < end or (answers and answers[0][0] < end):
            if next_send < end and (not answers or next_send <= answers[0][0]):
                controller.on_send(next_send)
                refusal = refused(i)
                due = next_send + (0.001 if refusal else self.latency_s)
                heapq.heappush(answers, (due, self._sends, refusal, next_send))
                i += 1
                self._sends += 1
                self.now = next_send
                next_send += controller.turn_interval or 0.005  # unpaced: every 5 ms
                continue
            at, _, refusal, sent = heapq.heappop(answers)
            self.now = at
            if refusal:
                controller.on_throttle(at, at - sent)
            else:
                controller.on_success(at, at - sent)


def _cruising_at(capacity: float, *, noise: float = 0.0) -> _Paced:
    """A controller past startup, its capacity borne out, ``noise`` learned over 400 answers."""
    controller = RateController(max_in_flight=64)
    paced = _Paced(controller)
    paced(0.0, 0.05)  # latency samples
    controller._end_startup(capacity, 0.1)
    controller._confirmed = True
    controller._draining = False
    controller._searching = False
    controller._probe_ended_at = math.inf  # no probe unless a test starts one
    if noise:
        learned = round(400 * noise)
        controller._learn_noise(
            _Round(
                started_at=0.0, rate=capacity, excess=0.0, accepted=400 - learned, throttled=learned
            )
        )
    controller._set_rate()
    return paced


def test_one_lossy_round_at_a_borne_out_capacity_waits_for_a_second() -> None:
    # 4 of 19 refused at 96 req/s is lossy, but 7 % of random 429s does that one round in
    # twenty: at 200-500 req/s with 3-7 % noise, each such round cut the pace to what it
    # had accepted after its first refusal (noise sweep 500 req/s, 7 %: 0.61 of capacity).
    paced = _cruising_at(100.0)
    controller = paced.controller
    paced(0.1, 0.3, refused=lambda i: i % 5 == 2)
    paced(0.3, 0.5)
    assert controller.capacity == 100.0
    paced(0.5, 0.7, refused=lambda i: i % 5 == 2)
    paced(0.7, 0.9, refused=lambda i: i % 5 == 2)
    paced(0.9, 1.2)  # the round is judged
    assert controller.capacity is not None and controller.capacity < 100.0


def test_a_round_held_back_between_two_lossy_ones_does_not_clear_the_first() -> None:
    # After a lossy round the workers back off, so the next round can send less than the
    # pace allows (app-limited) and be refused less. It says nothing of the limit: the
    # lossy round after it is the second in a row, and cuts.
    paced = _cruising_at(100.0)
    controller = paced.controller
    paced(0.1, 0.3, refused=lambda i: i % 5 == 2)
    paced(0.3, 0.33)  # three sends in a round of 0.2 s
    paced(0.52, 0.72, refused=lambda i: i % 5 == 2)
    paced(0.72, 1.3)
    assert controller.capacity is not None and controller.capacity < 100.0


def test_a_round_refused_beyond_any_noise_cuts_at_once() -> None:
    paced = _cruising_at(100.0)
    controller = paced.controller
    paced(0.1, 0.3, refused=lambda i: i % 2 == 1)
    paced(0.3, 0.35)
    assert controller.capacity is not None and controller.capacity < 90.0


def test_startups_guess_cut_by_a_loss_does_not_hold_probing_back() -> None:
    # Startup guessed 150 req/s for a limit of ~100: its drain round is refused a third, so
    # the guess is cut. The limit did not fall, so probing is not held 2 s longer as after
    # a fall: with a noise refusal that then undid the tentative step, a 200 req/s bucket
    # was paced at 174 req/s for 4 s.
    controller = RateController(max_in_flight=64)
    paced = _Paced(controller)
    paced(0.0, 0.05)
    controller._end_startup(150.0, 0.1)
    paced(0.1, 0.35, refused=lambda i: i % 3 == 0)
    assert controller.capacity is not None and controller.capacity < 130.0
    paced(0.35, 0.9, refused=lambda i: i == 40)  # a refusal undoes the step
    probes = controller.probes
    paced(0.9, 3.5)  # held as after a fall, the next probe would come at 4.3 s
    assert controller.probes > probes


def test_a_probe_is_not_ended_by_one_refusal_where_noise_is_known() -> None:
    # 3 % of 429s learned over 400 answers: one refusal among a probe's first requests is
    # what that noise brings. At 500 req/s, ending every probe on it kept a run at 0.68 of
    # the limit.
    paced = _cruising_at(300.0, noise=0.03)
    controller = paced.controller
    controller._start_probe()
    paced(1.0, 1.06, refused=lambda i: i == 5)
    assert controller.probing


def test_a_probe_is_ended_by_one_refusal_where_there_is_no_noise() -> None:
    paced = _cruising_at(300.0)
    controller = paced.controller
    controller._start_probe()
    paced(1.0, 1.06, refused=lambda i: i == 5)
    assert not controller.probing


def test_a_probe_round_taken_whole_counts_though_a_later_one_ended_the_probe() -> None:
    # The probe's first round (0.2 s at 330 req/s) is accepted whole; the first request of
    # its second round is refused, and that 429 comes back before the first round's last
    # acceptances: the probe ends. What the first round took still raises the capacity (at
    # 3 % noise, 74 of 74 taken were dropped for 1 of 6 refused).
    paced = _cruising_at(300.0)
    controller = paced.controller
    controller._start_probe()
    first = controller.probes
    paced(1.0, 1.25, refused=lambda i: i == 68)  # sent at 1.206 s
    assert controller.probes == first and not controller.probing
    assert controller.capacity is not None and controller.capacity > 1.05 * 300.0


@pytest.mark.parametrize(
    ("rate", "noise", "least"),
    [(500, 0.03, 0.8), (500, 0.07, 0.8), (1000, 0.07, 0.9)],
)
def test_random_429s_on_a_fast_bucket_do_not_ratchet_the_pace_down(
    rate: float, noise: float, least: float
) -> None:
    # Issue 11: "a few percent of them must not ratchet the rate down". A bucket with a tenth
    # of a second of burst, 30 ms, random 429s on top; the mean over seeds 1-3 of what was
    # accepted in 10 s, as a share of the capacity net of the noise. At 0d1a6b4: 0.68, 0.57
    # and 0.88 (500 req/s at 7 %: 0.38 on seed 1); now 0.84, 0.84 and 0.95.
    endpoint = Endpoint(
        rate=((0, rate),), burst=rate / 10, latency_s=0.03, throttle_noise=noise
    )
    fractions = [
        simulate(endpoint, seconds=10, seed=seed).accepted_between(0, 10)
        / (endpoint.capacity(0) * 10)
        for seed in SEEDS
    ]
    assert sum(fractions) / len(fractions) >= least, fractions
