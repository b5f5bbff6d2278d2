"""The run timeline: sampled on an injected clock, bounded in memory; rejects grouped."""

from __future__ import annotations

import asyncio
import contextlib

import pyarrow as pa

from engine.stats import RunStats
from engine.rejects import OTHER_MESSAGES, RejectGroups
from engine.timeline import Point, Sampler, Timeline, sample_every


def point(t: float, *, rows: int, requests: int = 0, p99: float | None = None,
          window: int = 0) -> Point:
    return Point(
        t_s=t, span_s=1.0, rows_done=rows, rows_rejected=0, requests=requests,
        throttled_429=0, in_flight=1, in_flight_limit=4.0, pacing_rps=None,
        window_requests=window, p50_ms=p99, p95_ms=p99, p99_ms=p99,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_run_keeps_at_most_max_points_evenly_spaced_and_its_final_counts() -> None:
    timeline = Timeline(max_points=10)
    for second in range(1, 12 * 3600 + 1):  # twelve hours at one sample a second
        timeline.add(point(float(second), rows=second * 7))
    points = timeline.all_points()
    assert len(points) <= 10
    assert points[-1].t_s == 12 * 3600 and points[-1].rows_done == 12 * 3600 * 7
    full = timeline.points
    spans = {p.span_s for p in full}
    assert spans == {float(timeline.stride)}, "every full point covers the same seconds"
    assert sum(p.span_s for p in points) == 12 * 3600


def test_merging_keeps_the_later_counters_weights_p50_and_keeps_the_worse_p99() -> None:
    early = point(1.0, rows=10, requests=3, p99=100.0, window=3)
    late = point(2.0, rows=25, requests=4, p99=400.0, window=1)
    merged = early.merged(late)
    assert (merged.t_s, merged.span_s, merged.rows_done, merged.window_requests) == (
        2.0, 2.0, 25, 4
    )
    assert merged.p50_ms == (100.0 * 3 + 400.0 * 1) / 4
    assert merged.p99_ms == 400.0
    quiet = point(3.0, rows=25, window=0)  # no request answered in that second
    assert merged.merged(quiet).p99_ms == 400.0


def test_the_sampler_reads_counters_limits_and_only_the_new_latencies() -> None:
    stats = RunStats()
    stats.active_requests = 7
    clock = FakeClock()
    sampler = Sampler(stats, Timeline(), clock=clock)
    for latency in (0.010, 0.020, 0.030):
        stats.record_request(200, latency)
    stats.record_request(429, 0.005)
    stats.rows_scored, stats.rows_rejected = 900, 2
    stats.retries["429"] += 1
    clock.now += 1.0
    first = sampler.sample()
    assert (first.t_s, first.rows_done, first.rows_rejected, first.requests) == (1.0, 902, 2, 4)
    assert first.throttled_429 == 1 and first.in_flight == 7 and first.retries == {"429": 1}
    assert first.window_requests == 4 and first.p50_ms is not None
    assert round(first.p50_ms, 3) == 15.0
    clock.now += 1.0
    second = sampler.sample()
    assert second.window_requests == 0 and second.p99_ms is None  # nothing new answered


def test_sample_every_samples_once_per_interval_of_the_injected_sleep() -> None:
    stats = RunStats()
    clock = FakeClock()
    timeline = Timeline()

    async def fake_sleep(seconds: float) -> None:
        clock.now += seconds
        stats.rows_scored += 100
        if clock.now >= 105.0:
            raise asyncio.CancelledError

    async def main() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await sample_every(Sampler(stats, timeline, clock=clock), interval_s=1.0,
                               sleep=fake_sleep)

    asyncio.run(main())
    assert [p.t_s for p in timeline.all_points()] == [1.0, 2.0, 3.0, 4.0]
    assert [p.rows_done for p in timeline.all_points()] == [100, 200, 300, 400]


def test_rejects_are_counted_by_message_with_a_few_example_rows() -> None:
    groups = RejectGroups(examples=2)
    groups.add(pa.array([None, "bad x0", None, "bad x0", "too long"]), row_offset=100)
    groups.add(pa.array(["bad x0", None]), row_offset=200)
    assert groups.groups() == [
        {"message": "bad x0", "rows": 3, "examples": [101, 103]},
        {"message": "too long", "rows": 1, "examples": [104]},
    ]
    assert groups.total == 4


def test_messages_beyond_the_limit_are_counted_together() -> None:
    groups = RejectGroups(max_groups=3, examples=1)
    for row in range(10):
        groups.add_one(f"row {row} is bad", row)
    counted = {g["message"]: g["rows"] for g in groups.groups()}
    assert len(counted) == 4 and counted[OTHER_MESSAGES] == 7
    assert groups.total == 10


def test_a_last_sample_moments_after_the_one_before_is_folded_into_it() -> None:
    stats = RunStats()
    clock = FakeClock()
    timeline = Timeline()
    sampler = Sampler(stats, timeline, clock=clock)
    sampler.sample()  # the start
    for _ in range(3):
        clock.now += 1.0
        stats.rows_scored += 1_000
        sampler.sample(fold_under_s=0.5)
    clock.now += 0.01  # the run ended just after a sample
    stats.rows_scored += 10
    sampler.sample(fold_under_s=0.5)
    points = timeline.all_points()
    assert [p.t_s for p in points] == [0.0, 1.0, 2.0, 3.01]
    assert points[-1].rows_done == 3_010 and points[-1].span_s == 1.01
