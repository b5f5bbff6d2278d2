"""Pure: how long one request may go unanswered before it is taken for hung.

A dead backend behind a live connection never answers, and the request timeout (Databricks'
297 s execution limit) is far too long to wait behind one batch; so the bound follows the
endpoint's observed latency (many times its p99, with a floor), and the dispatcher abandons
and resends a request that passes it.

Long before that bound, a request far slower than the endpoint's usual latency gets a second
copy, a *hedge* (as in Dean and Barroso's "The Tail at Scale"), and the first answer of the
two is kept: a hung request then costs its batch about a second, not the 30 s abandonment
floor, and the reorder window does not hold the whole run behind it for that long. The
original is not abandoned (a slow model may still answer it), and hedges are budgeted to a
small share of requests, so an endpoint that became slow as a whole gets no extra load.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["HANG_FLOOR_S", "HEDGE_FLOOR_S", "HangBound"]

#: A request unanswered this many times the endpoint's p99 latency is taken for hung...
HANG_P99_FACTOR = 10.0
#: ...but never sooner than this (a model may be slow now and then), in seconds.
HANG_FLOOR_S = 30.0
#: Answers seen before the p99 is trusted (until then a request may take the whole timeout).
HANG_MIN_SAMPLES = 20
#: Latencies kept for the p99, and how often it is recomputed.
HANG_SAMPLES = 512
HANG_RECOMPUTE_EVERY = 64
#: A request unanswered this many times the endpoint's p99 latency is sent a second time...
HEDGE_P99_FACTOR = 3.0
#: ...but never sooner than this, in seconds (a hedge is for a request that is stuck, not for
#: the tail of a healthy endpoint: 1 s is a hundred times a 10 ms model's usual latency).
HEDGE_FLOOR_S = 1.0
#: Hedges are budgeted: each answer earns this share of one, up to ``HEDGE_BURST`` saved, so
#: at most ~2 % more requests are sent because of them (an endpoint slow as a whole, before
#: its p99 has caught up, is not sent a copy of everything in flight).
HEDGE_SHARE = 0.02
HEDGE_BURST = 4.0


@dataclass(kw_only=True)
class HangBound:
    """How long to wait for one answer before abandoning the request and sending it again.

    A dead backend behind a live connection never answers; waiting for the request timeout
    (Databricks' 297 s) would stall the run behind one batch. So a request gets
    ``factor`` × the p99 of recent latencies, at least ``floor_s``, at most ``ceiling_s``.

    A request unanswered for ``hedge_factor`` × the p99 (at least ``hedge_floor_s``) gets a
    second copy first, while the budget (:meth:`take_hedge`) allows.

    Attributes:
        ceiling_s: the request timeout (``--request-timeout``): never wait longer.
        hedge: whether slow requests get a second copy (``--no-hedge``: never).
    """

    ceiling_s: float = 300.0
    floor_s: float = HANG_FLOOR_S
    factor: float = HANG_P99_FACTOR
    hedge: bool = True
    hedge_floor_s: float = HEDGE_FLOOR_S
    hedge_factor: float = HEDGE_P99_FACTOR
    p99_s: float | None = field(default=None, init=False)
    #: hedges the budget allows now (one to start with: the first hang is the one to catch)
    hedge_budget: float = field(default=1.0, init=False)
    _recent: deque[float] = field(
        default_factory=lambda: deque(maxlen=HANG_SAMPLES), init=False, repr=False
    )
    _since: int = field(default=0, init=False, repr=False)

    def record(self, latency_s: float) -> None:
        """An accepted answer came after ``latency_s`` (only answers that ran the model say
        how long the model takes: a 429 comes back at once), or a request was abandoned
        after waiting ``latency_s`` (so an endpoint that became slow raises the bound
        instead of having every request abandoned)."""
        self._recent.append(latency_s)
        self.hedge_budget = min(HEDGE_BURST, self.hedge_budget + HEDGE_SHARE)
        self._since += 1
        if len(self._recent) >= HANG_MIN_SAMPLES and (
            self.p99_s is None or self._since >= HANG_RECOMPUTE_EVERY
        ):
            self._since = 0
            ordered = sorted(self._recent)
            self.p99_s = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def deadline_s(self) -> float:
        """Seconds a request may take before it is abandoned: the request timeout until
        ``HANG_MIN_SAMPLES`` answers are known."""
        if self.p99_s is None:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, self.factor * self.p99_s))

    def hedge_after_s(self) -> float | None:
        """Seconds after which a request unanswered gets a second copy; None when it gets
        none: hedging is off, the p99 is not known yet, or the copy would come no sooner
        than the request is abandoned anyway."""
        if not self.hedge or self.p99_s is None:
            return None
        after = max(self.hedge_floor_s, self.hedge_factor * self.p99_s)
        return after if after < self.deadline_s() else None

    def take_hedge(self) -> bool:
        """Spend one hedge of the budget; False when none is left."""
        if self.hedge_budget < 1.0:
            return False
        self.hedge_budget -= 1.0
        return True
