"""Pure: find the endpoint's capacity from what it accepts, and hold the run just under it.

The endpoint's limit is usually unknown to the user: a token bucket of R requests/s (429
above it) or provisioned concurrency (429, or queueing, above it). The controller has two
phases, like TCP:

* **slow start**: requests in flight start at ``initial_in_flight`` and grow by one per
  accepted request (doubling every round trip) up to the worker count; nothing is paced, so a
  fast endpoint is reached within a few round trips and the client is the only bound;
* **after the first throttle** (429) the run is *paced*: the rate drops to ``backoff`` ×
  the rate the endpoint actually accepted over the last ``window_s`` (its measured capacity),
  at most once per ``cut_interval_s`` so one burst of 429s is one cut (and, while less than a
  window has been seen, never by more than ``max_cut`` at once), then grows by
  ``growth_per_s`` per second to probe for more, never beyond ``headroom`` × what is accepted.

The result is a sawtooth between ``backoff``·C and C: about 0.97 of capacity, with only the
probing overshoot throttled. A user's ``--qps`` is a hard ceiling on top (``max_rate``).
503s are not taken as a capacity signal: Databricks answers them for passing faults too, and a
steady few percent of them would otherwise grind the rate down; they are retried with
backoff. Plain values and arithmetic: the async pacer that applies it lives in dispatch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateController"]

#: Acceptances a capacity measurement wants before it is trusted, and how far back it looks.
MIN_SAMPLES = 24
HISTORY_S = 10.0
#: Shortest span a capacity is measured over: a run's first instants say little (a token
#: bucket lets its whole burst through at once).
MIN_SPAN_S = 0.25


@dataclass(kw_only=True)
class RateController:
    """In-flight limit and pacing rate from successes and throttles (times in seconds).

    Attributes:
        max_in_flight: the worker count: never more requests in flight.
        max_rate: a hard requests/s ceiling (``--qps``), or infinity.
        rate: the pacing rate once paced; infinity during slow start.
    """

    max_in_flight: int = 64
    initial_in_flight: int = 4
    max_rate: float = math.inf
    min_rate: float = 0.5
    growth_per_s: float = 0.04
    backoff: float = 0.94
    window_s: float = 1.0
    cut_interval_s: float = 0.5
    headroom: float = 1.5
    in_flight_limit: float = field(default=0.0, init=False)
    rate: float = field(default=math.inf, init=False)
    slow_start: bool = field(default=True, init=False)
    throttles: int = field(default=0, init=False)
    cuts: int = field(default=0, init=False)
    max_cut: float = 0.5
    _accepted: deque[float] = field(default_factory=deque, init=False, repr=False)
    _recent: deque[float] = field(
        default_factory=lambda: deque(maxlen=MIN_SAMPLES), init=False, repr=False
    )
    _updated_at: float | None = field(default=None, init=False, repr=False)
    _cut_at: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        self.in_flight_limit = float(min(self.initial_in_flight, self.max_in_flight))
        self.rate = self.max_rate

    @property
    def paced(self) -> bool:
        return math.isfinite(self.rate)

    def accepted_rate(self, now: float) -> float:
        """Successes per second over the last window."""
        return self._window_count(now) / self.window_s

    def measured_capacity(self, now: float) -> tuple[float, bool] | None:
        """Accepted requests per second, and whether the measurement is trustworthy.

        Over the last ``window_s``, or over the last ``MIN_SAMPLES`` acceptances when the
        window holds fewer (a slow endpoint needs a longer look); None before any.
        """
        in_window = self._window_count(now)
        if in_window >= MIN_SAMPLES:
            return in_window / self.window_s, True
        recent = [t for t in self._recent if t > now - HISTORY_S]
        if not recent:
            return None
        return len(recent) / max(now - recent[0], MIN_SPAN_S), len(recent) >= MIN_SAMPLES

    def _window_count(self, now: float) -> int:
        while self._accepted and self._accepted[0] <= now - self.window_s:
            self._accepted.popleft()
        return len(self._accepted)

    def on_success(self, now: float) -> None:
        """A request was accepted: remember it; grow the in-flight limit or the rate."""
        self._accepted.append(now)
        self._recent.append(now)
        elapsed = 0.0 if self._updated_at is None else max(0.0, now - self._updated_at)
        self._updated_at = now
        if self.slow_start:
            self.in_flight_limit = min(float(self.max_in_flight), self.in_flight_limit + 1.0)
            return
        grown = self.rate * (1.0 + self.growth_per_s) ** elapsed
        ceiling = max(self.headroom * self.accepted_rate(now), self.min_rate * 2)
        self.rate = min(self.max_rate, max(self.rate, min(grown, ceiling)))

    def on_throttle(self, now: float) -> None:
        """The endpoint refused a request for capacity: pace at what it really accepts."""
        self.throttles += 1
        if self.slow_start:
            self.slow_start = False
            self.in_flight_limit = float(self.max_in_flight)
        self._updated_at = now
        if now - self._cut_at < self.cut_interval_s:
            return
        measured = self.measured_capacity(now)
        if measured is None:  # nothing accepted lately: halve (or start slow)
            cut = self.rate * self.max_cut if self.paced else 2.0 * self.min_rate
        else:
            capacity, trusted = measured
            cut = min(self.rate, capacity) * self.backoff
            if self.paced and not trusted:  # a thin measurement never cuts by more than max_cut
                cut = max(cut, self.rate * self.max_cut)
        self.rate = min(self.max_rate, max(self.min_rate, cut))
        self._cut_at = now
        self.cuts += 1
