"""Pure arithmetic over the emulator's polled accounting, for benchmarks/run.py.

A *sample* is what the poller read at one moment: local monotonic seconds and cumulative
server-side counts (requests answered 200, answered 429, and all requests). Rates and shares
are over a trailing window, so they describe what the server saw, the same for every client.
A *limit schedule* is ``[(at_s, requests/s), ...]`` from the schedule's start (the first
data-plane request, as the emulator counts it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = [
    "Sample",
    "capacity_requests",
    "limit_at",
    "rate_series",
    "seconds_to_reach",
    "seconds_to_settle",
    "share_between",
    "share_series",
]

WINDOW_S = 1.0


@dataclass(frozen=True)
class Sample:
    """Cumulative server-side counts at local monotonic time ``t``."""

    t: float
    ok: int
    throttled: int
    total: int


def _windows(samples: list[Sample], window_s: float) -> list[tuple[Sample, Sample]]:
    """(start, end) pairs: each sample with the latest one at least ``window_s`` before it."""
    pairs = []
    back = 0
    for end in samples:
        while back + 1 < len(samples) and end.t - samples[back + 1].t >= window_s:
            back += 1
        if end.t - samples[back].t >= window_s:
            pairs.append((samples[back], end))
    return pairs


def rate_series(samples: list[Sample], window_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """(t, requests answered 200 per second over the trailing window)."""
    pairs = _windows(samples, window_s)
    return [(end.t, (end.ok - start.ok) / (end.t - start.t)) for start, end in pairs]


def share_series(samples: list[Sample], window_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """(t, share of requests answered 429 over the trailing window); idle windows left out."""
    series = []
    for start, end in _windows(samples, window_s):
        sent = end.total - start.total
        if sent > 0:
            series.append((end.t, (end.throttled - start.throttled) / sent))
    return series


def share_between(samples: list[Sample], start: float, end: float) -> float | None:
    """The share of requests answered 429 from the first sample at or after ``start`` to the
    last one at or before ``end`` (None: no request in between)."""
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2 or inside[-1].total == inside[0].total:
        return None
    first, last = inside[0], inside[-1]
    return (last.throttled - first.throttled) / (last.total - first.total)


def limit_at(schedule: list[tuple[float, float]], elapsed_s: float) -> float:
    """The limit ``elapsed_s`` into ``schedule`` (before its first step: the first step's)."""
    limit = schedule[0][1]
    for at_s, qps in schedule:
        if at_s <= elapsed_s:
            limit = qps
    return limit


def capacity_requests(
    schedule: list[tuple[float, float]], origin: float | None, t0: float, t1: float
) -> float:
    """Requests the limit allowed from ``t0`` to ``t1`` (local seconds), the schedule having
    started at local ``origin`` (None: it never started, so its first limit held throughout).
    """
    if origin is None:
        return schedule[0][1] * max(0.0, t1 - t0)
    edges = sorted({t0, t1, *(origin + at for at, _ in schedule if t0 < origin + at < t1)})
    return sum(limit_at(schedule, a - origin) * (b - a) for a, b in itertools.pairwise(edges))


def seconds_to_reach(series: list[tuple[float, float]], after: float, level: float) -> float | None:
    """Seconds from ``after`` until the series first reaches ``level`` (None: never)."""
    return next((t - after for t, value in series if t >= after and value >= level), None)


def seconds_to_settle(
    series: list[tuple[float, float]], after: float, below: float
) -> float | None:
    """Seconds from ``after`` until the series is under ``below`` for good (None: never)."""
    tail = [(t, value) for t, value in series if t >= after]
    settled = None
    for t, value in tail:
        if value >= below:
            settled = None
        elif settled is None:
            settled = t
    return None if settled is None else settled - after
