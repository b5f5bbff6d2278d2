"""The run over time: one point a second from :class:`~engine.stats.RunStats`, in bounded memory.

A :class:`Timeline` holds at most ``max_points`` points. When it fills, adjacent points are
merged pairwise and each later point covers twice as many seconds, so a twelve-hour run keeps
the same number of points as a ten-minute one, evenly spaced. Counters are cumulative (a
merged point keeps the later value); gauges (requests in flight, the in-flight limit, the
pacing rate) keep the later reading; the window's latency percentiles are merged weighted by
the requests each point saw (p99 keeps the larger: a merge never hides a slow second).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.clock import Clock, Sleep
from engine.stats import RunStats, latency_percentiles_ms

__all__ = ["Point", "Sampler", "Timeline", "sample_every"]

#: Points kept at most; at one a second, a run over this many seconds is downsampled.
DEFAULT_MAX_POINTS = 600
#: Seconds between samples.
DEFAULT_INTERVAL_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Point:
    """The run at ``t_s`` seconds after it started, covering the ``span_s`` seconds before."""

    t_s: float
    span_s: float
    rows_done: int
    rows_rejected: int
    requests: int
    throttled_429: int
    in_flight: int
    in_flight_limit: float | None
    pacing_rps: float | None
    #: requests answered in this point's span, and their latency percentiles (ms)
    window_requests: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    retries: dict[str, int] = field(default_factory=dict)

    def merged(self, later: Point) -> Point:
        """One point covering ``self`` then ``later``."""
        total = self.window_requests + later.window_requests

        def weighted(a: float | None, b: float | None) -> float | None:
            if a is None or b is None:
                return b if a is None else a
            return (a * self.window_requests + b * later.window_requests) / total

        return replace(
            later,
            span_s=self.span_s + later.span_s,
            window_requests=total,
            p50_ms=weighted(self.p50_ms, later.p50_ms),
            p95_ms=weighted(self.p95_ms, later.p95_ms),
            p99_ms=_larger(self.p99_ms, later.p99_ms),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


class Timeline:
    """Points in time order, at most ``max_points`` of them (see the module docstring)."""

    def __init__(self, *, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2")
        self.max_points = max_points
        self.points: list[Point] = []
        #: raw samples per point; doubles at each downsampling
        self.stride = 1
        self._pending: Point | None = None
        self._pending_count = 0

    def add(self, point: Point) -> None:
        """Add one raw sample (in time order)."""
        self._pending = point if self._pending is None else self._pending.merged(point)
        self._pending_count += 1
        if self._pending_count < self.stride:
            return
        self.points.append(self._pending)
        self._pending, self._pending_count = None, 0
        if len(self.points) >= self.max_points:
            self._halve()

    def _halve(self) -> None:
        points = self.points
        merged = [a.merged(b) for a, b in zip(points[0::2], points[1::2], strict=False)]
        if len(points) % 2:
            merged.append(points[-1])
        self.points = merged
        self.stride *= 2

    def fold_into_last(self, point: Point) -> None:
        """Merge ``point`` into the newest point: a last sample taken moments after the one
        before would otherwise show a rate over a sliver of a second."""
        if self._pending is not None:
            self._pending = self._pending.merged(point)
        elif len(self.points) > 1:  # never into the start, the sample at 0 s
            self.points[-1] = self.points[-1].merged(point)
        else:
            self.add(point)

    def all_points(self) -> list[Point]:
        """Every point, the samples not yet merged into a full point included."""
        return self.points + ([self._pending] if self._pending is not None else [])


class Sampler:
    """Reads :class:`RunStats` into a :class:`Timeline`, tracking the latencies already seen."""

    def __init__(
        self,
        stats: RunStats,
        timeline: Timeline,
        *,
        clock: Clock,
    ) -> None:
        self.stats = stats
        self.timeline = timeline
        self._clock = clock
        self._started = clock()
        self._last_t = 0.0
        self._seen = 0  # latencies already summarised

    def sample(self, *, fold_under_s: float = 0.0) -> Point:
        """Take one sample now and add it to the timeline; one less than ``fold_under_s``
        after the previous is merged into it instead."""
        stats = self.stats
        t_s = self._clock() - self._started
        latencies = stats.latencies_s[self._seen :]
        self._seen += len(latencies)
        p50 = p95 = p99 = None
        if latencies:
            at = latency_percentiles_ms(latencies)
            p50, p95, p99 = at["p50"], at["p95"], at["p99"]
        limits = stats.limits()
        point = Point(
            t_s=round(t_s, 3),
            span_s=round(t_s - self._last_t, 3),
            rows_done=stats.rows_scored + stats.rows_rejected,
            rows_rejected=stats.rows_rejected,
            requests=stats.requests,
            throttled_429=stats.throttled_429,
            in_flight=stats.active_requests,
            in_flight_limit=limits["in_flight_limit"],
            pacing_rps=limits["pacing_rps"],
            window_requests=len(latencies),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            retries=dict(stats.retries),
        )
        self._last_t = t_s
        if point.span_s < fold_under_s:
            self.timeline.fold_into_last(point)
        else:
            self.timeline.add(point)
        return point


async def sample_every(sampler: Sampler, *, interval_s: float, sleep: Sleep) -> None:
    """Sample every ``interval_s`` until cancelled."""
    while True:
        await sleep(interval_s)
        sampler.sample()
