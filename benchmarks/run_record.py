"""What the run record costs: one timeline sample, a 12-hour timeline, rendering its report.

    PYTHONPATH=. python benchmarks/run_record.py

No network and no emulator: it times the code the run record adds to a run. A sample is taken
once a second on the event loop, so its cost divided by one second is the share of the loop it
takes (the README quotes these figures).
"""

from __future__ import annotations

import random
import time
import timeit

from engine.report import RunRecord, render_html
from engine.stats import RunStats
from engine.timeline import Point, Sampler, Timeline

TWELVE_HOURS_S = 12 * 3600
REQUESTS_PER_SECOND = 100


def fold_twelve_hours() -> tuple[Timeline, float]:
    timeline = Timeline()
    started = time.perf_counter()
    for second in range(1, TWELVE_HOURS_S + 1):
        timeline.add(Point(
            t_s=float(second), span_s=1.0, rows_done=second * 3_000, rows_rejected=0,
            requests=second * 30, throttled_429=second, in_flight=40, in_flight_limit=50.0,
            pacing_rps=30.0, window_requests=30, p50_ms=44.0, p95_ms=60.0, p99_ms=300.0,
            retries={"429": second},
        ))
    return timeline, time.perf_counter() - started


def sample_cost_s(samples: int = 2_000) -> float:
    """One sample with REQUESTS_PER_SECOND new latencies, the recording itself excluded."""
    stats = RunStats()
    now = [0.0]
    sampler = Sampler(stats, Timeline(), clock=lambda: now[0])
    rng = random.Random(1)

    def record() -> None:
        for _ in range(REQUESTS_PER_SECOND):
            stats.record_request(200, rng.random() * 0.1)

    def record_and_sample() -> None:
        record()
        now[0] += 1.0
        sampler.sample()

    both = timeit.timeit(record_and_sample, number=samples)
    alone = timeit.timeit(record, number=samples)
    return (both - alone) / samples


def main() -> None:
    timeline, fold_s = fold_twelve_hours()
    points = timeline.all_points()
    print(f"12 h at one sample a second: {len(points)} points kept, folded in {fold_s:.2f} s")
    cost = sample_cost_s()
    print(
        f"one sample with {REQUESTS_PER_SECOND} requests in its second: {cost * 1e3:.2f} ms "
        f"({cost:.2%} of the event loop at one a second)"
    )
    summary = RunStats().summary(endpoint="e", output="o", token_refreshes=1, exit_code=0)
    record = RunRecord(summary=summary, settings={"endpoint": "e"}, points=points)
    started = time.perf_counter()
    html = render_html(record)
    print(
        f"report of the 12 h run: rendered in {(time.perf_counter() - started) * 1e3:.0f} ms, "
        f"{len(html.encode()) / 1024:.0f} KB"
    )


if __name__ == "__main__":
    main()
