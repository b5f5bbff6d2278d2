"""Pure: find the endpoint's capacity from what it delivers, and hold the run just under it.

The endpoint's limit is unknown to the user and can change mid-run: a token bucket of R
requests/s with a burst as small as one request (429 above it), provisioned concurrency (429,
or queueing, above it), autoscaling or a neighbour's job moving either. Isolated 429s and 503s
also come for reasons unrelated to load. The controller follows TCP BBR's idea: the capacity
is the rate the endpoint *delivers* (accepted answers per second), measured, not guessed from
loss; loss only says the pace is above it.

Time is cut into **rounds** of at least ``ROUND_MIN_S`` (and two round trips, and
``ROUND_MIN_SENDS`` requests), each at one pace (a change of pace starts a new round). At the
end of each round the controller compares what was delivered with what was sent:

* **startup**: no capacity is known; requests in flight start at ``initial_in_flight`` and
  grow by one per accepted request (doubling every round trip) up to the worker count; a
  refused request's slot is taken away rather than handed on, so the workers do not each draw
  a 429 before the pace is set. Once a round trip is measured the requests leave spread over
  it (:attr:`RateController.pace`: ``STARTUP_PACE_GAIN`` × the in-flight limit per round
  trip while it grows, the limit's own rate once it is full), not in volleys a bucket with
  a small burst refuses whatever its rate. It ends on a run of
  ``STARTUP_REFUSALS_IN_A_ROW`` refusals, on more than ``STARTUP_STORM_SHARE`` refused of
  the requests old enough to be answered, or on two rounds in a row with more than
  ``STARTUP_LOSS_SHARE`` refused (one such round can be noise's bad luck). The capacity ``C``
  is then the most of: half the rate that overran the endpoint, what it accepted (over the
  whole storm, or since its first refusal if more: a bucket's burst spent, it accepts its
  refill rate), what the last whole second delivered (after two lossy rounds: what the last
  accepted once refused). Either way the limit was met, not lowered: the search upward starts
  at once. C is a guess until a loss measures the limit, a probe is taken or a whole cruise
  round is accepted: until then what the slow round after it refused is the guess's excess,
  not noise.
* **paced**: requests leave evenly spaced (:func:`turns_due`) at ``cruise_gain`` × C. Every
  ``PROBE_INTERVAL_S`` (right after startup: at once) one round probes at (1 + excess) × C.
  If the endpoint took the extra, C rises to what it delivered and the next round probes
  twice as far (exponential search: a limit that tripled is found in a few rounds). A probe
  ends at its first refusal beyond noise (its rounds before, taken whole, still raise C);
  one that overshot by ``BISECT_MIN_EXCESS`` or more is followed at once by probes halfway
  (in ratio) to where it overshot, a binary search. A capacity a probe raised is tentative
  for ``TENTATIVE_S``: a refusal at the new pace sends it back (a bucket's burst can make a
  probe look taken), and when the two levels are ``BISECT_MIN_EXCESS`` or more apart the
  next probes search halfway between them at once. A round refused well above the usual
  share says the limit fell below the pace (once C is borne out: two such rounds in a row,
  unless one is beyond any noise or accepted nothing): C becomes what that round accepted
  once refused; a refusal in the next ``TENTATIVE_S`` takes it ``STEP_DOWN_MARGIN`` further
  down, and probing waits ``STEP_DOWN_PROBE_HOLD_S`` longer (not after a guess was cut: no
  fall). A round that accepted nothing measured no rate (a neighbour's job took the limit
  for a moment): it halves C, as TCP, instead. Cruise rounds that together were refused more
  than noise explains lower C by the excess share.
* **concurrency**: each answer says how many requests were in flight when it was sent.
  Refusals only above a level at which requests are otherwise accepted are the endpoint's
  provisioned concurrency, not its pace: requests in flight are capped there
  (:attr:`RateController.concurrency_cap`) and the pace is raised to what the cap allows.
  While the cap is what holds the run, every ``PROBE_INTERVAL_S`` one more request may go
  in flight: ``CAP_PROBE_ACCEPTS`` accepted there raise the cap a level (and try the next at
  once), a refusal there ends the try. Provisioned concurrency that scales up, or a
  neighbour's job that ends, is found in seconds, at one 429 a try when it has not. A busy
  client hears answers late, so its count of requests in flight runs ahead of the
  endpoint's and a level above the cap is now and then accepted: a cap whose own level is
  then refused well beyond noise goes back down a level, to the pace it had; refusals at a
  level a try raised the cap to in the last ``TENTATIVE_S`` are the cap's, not the pace's.

Noise is not capacity: a few percent of random 429s stay within the usual share (counted in
startup's rounds refused less than a loss and in the slow round after each probe and cut,
and a round needs ``MIN_LOSSES`` beyond it; once the slow rounds gave ``NOISE_KNOWN_ANSWERS``,
probes allow for its chance too), so they do not ratchet the rate down; 503s are not a
capacity signal at all (retried with backoff). Rounds in which fewer requests were sent than
the pace allowed (a pause for Retry-After or a stopped endpoint, a slow reader) are
*app-limited*: they can raise C, never lower it, so time spent paused never reads as a low
capacity.

**Rising latency** bounds requests in flight, in every phase (a gradient limiter, as in
Netflix's concurrency-limits): an endpoint at its provisioned concurrency queues requests
instead of refusing them, so throughput stops growing while latency does. The controller
keeps the shortest recent latency (``base``: the endpoint's service time, the minimum over
``LATENCY_WINDOW_S``) and a smoothed current one; about once a round trip it sets
``limit ← limit × clamp(tolerance × base / current, 0.5, 1) + √limit`` (smoothed), so
requests in flight settle where latency is at most ``latency_tolerance`` × the service time.
A queueing delay under ``min_queue_delay_s`` is ignored.

A user's ``--qps`` (``max_rate``) and ``--concurrency`` (``max_in_flight``) are hard bounds on
top. :attr:`RateController.bound` says what holds the run back, for progress lines and the
summary. Plain values and arithmetic: the async pacer that applies it lives in dispatch.

(Over 400 lines because the controller is one state machine: its phases, rules and their
named constants read together; every rule is a few lines with a unit test and a simulated
scenario in ``tests/unit/test_adaptive.py``.)
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateController", "turns_due"]

#: A round (a window of sends) lasts at least this long and two round trips, and at low rates
#: long enough for this many requests.
ROUND_MIN_S = 0.2
ROUND_MIN_SENDS = 8
ROUND_MAX_S = 3.0
#: A round is judged once every request sent in it is answered, or this long after it closed
#: (in round trips, with a floor in seconds), whichever comes first.
SETTLE_ROUND_TRIPS = 4.0
SETTLE_MIN_S = 0.5
#: A round whose throttled share is this far above the usual (noise) share: the endpoint's
#: limit is below the pace.
LOSS_MARGIN = 0.10
#: Over the cruise rounds since the last change, together, a smaller margin suffices.
CRUISE_LOSS_MARGIN = 0.02
#: ...and at least this many throttles, and this many standard deviations above the usual
#: count (a few 429s in a small round are noise).
MIN_LOSSES = 3
LOSS_SIGMAS = 2.5
#: Startup (unpaced) ends on a round with more than this share refused: noise stays below.
STARTUP_LOSS_SHARE = 0.15
#: ...or at once on this share refused of the requests old enough to be answered...
STARTUP_STORM_SHARE = 0.3
#: The least refused share the storm check takes for noise when sizing chance: it looks on
#: every refusal, often over a dozen settled sends, where 4 random 429s of 13 at 5 % noise
#: happen every few runs (a 2 % floor called that a storm once noise refusals were resent
#: at once instead of after a second).
STORM_NOISE_FLOOR = 0.05
#: ...judged over the latest this many in-flight limits' worth of sends (at least this many)...
STORM_WINDOW = 2.0
STORM_MIN_SENDS = 16
#: ...or on this many refusals in a row (noise of a few percent almost never strings them).
STARTUP_REFUSALS_IN_A_ROW = 5
#: This many refusals in a row (no success between) are a limit, not noise: normal backoff.
NOISE_REFUSALS_IN_A_ROW = 3
#: The least wait before resending a noise refusal: a refusal answered at once must not
#: come back at once, in a burst of its own.
NOISE_WAIT_S = 0.05
#: In startup each refusal takes a slot away, down to this many (a request that waits for
#: its answer while another is refused keeps the storm measuring the refill rate).
STORM_MIN_IN_FLIGHT = 2.0
#: Startup's overrun is measured over at least this span.
STARTUP_MIN_SPAN_S = 0.1
#: In startup, once a round trip is measured, requests leave spread out at this many times
#: the in-flight limit per round trip (TCP BBR paces its startup at 2/ln 2 of its estimate),
#: not in volleys: a bucket with a burst of a request or two refuses most of a volley sent at
#: once whatever its rate, and startup would end far below the limit.
STARTUP_PACE_GAIN = 2.0
#: Grown to the workers without a refusal, startup's pace is this many times the in-flight
#: limit per round trip: room for a late timer's millisecond (at 1.0 an endpoint with no
#: limit lost 2-8 % of its throughput to it), yet no volleys (unpaced, a newcomer's volley
#: next to a running job on a 2,000 req/s bucket left it 0.3 % of the endpoint).
STARTUP_FULL_PACE_GAIN = 1.25
#: The usual share of answers accepted (1 - noise) is never taken as lower than this.
MIN_ACCEPT_RATIO = 0.92
#: Noise is learned over about this many answers, beside this many of none refused.
NOISE_MEMORY = 400.0
NOISE_PRIOR = 20.0
#: ...and taken as known (its chance allowed for) once drain rounds gave this many.
NOISE_KNOWN_ANSWERS = 100.0
#: How often the paced phase probes above the measured capacity, and its first excess.
PROBE_INTERVAL_S = 2.0
PROBE_EVERY_ROUNDS = 3
FIRST_PROBE_EXCESS = 0.10
MAX_PROBE_EXCESS = 1.0
#: A probe this far past the capacity that overshoots is followed at once by one halfway.
BISECT_MIN_EXCESS = 0.3
#: A probe ends at once on this many refusals (beyond the usual noise).
PROBE_ABORT_LOSSES = 1
#: After a probe raised the capacity, a refusal at the new pace this soon undoes it; after a
#: cut, one lowers it this much further.
TENTATIVE_S = 3.0
STEP_DOWN_MARGIN = 0.05
#: After the limit fell, probing waits this much longer than usual.
STEP_DOWN_PROBE_HOLD_S = 2.0
#: After each probe, one round this far under the capacity: its refusals are noise.
DRAIN_GAIN = 0.85
#: A round that sent less than this share of what the pace allowed is app-limited.
APP_LIMITED_SHARE = 0.8
#: How far back the shortest latency (the endpoint's service time) is looked for.
LATENCY_WINDOW_S = 30.0
#: Latency samples before the latency rule acts.
MIN_LATENCY_SAMPLES = 16
#: A concurrency cap is believed once this many requests were accepted at it...
CONCURRENCY_MIN_ACCEPTED = 10
#: ...and at least this share refused of those sent with more in flight...
CONCURRENCY_REFUSED_SHARE = 0.5
#: ...and it is at least this (Databricks' smallest workload size serves 4 at once; below
#: it, a rate limit paced at one or two in flight can look like a cap).
MIN_CONCURRENCY_CAP = 4
#: The share of requests at or under a concurrency cap that may still be refused by chance:
#: the client counts a request in flight until its answer arrives, the endpoint frees its
#: slot when it answers, so counts near the cap can be one off either way.
CAP_SLIP_SHARE = 0.01
#: A known cap is tried one higher every ``PROBE_INTERVAL_S`` (provisioned concurrency scales
#: up, a neighbour's job ends): it rose once this many requests were accepted there.
CAP_PROBE_ACCEPTS = 3
#: ...while the pace lets the requests in flight reach this share of the cap (else the pace,
#: not the cap, is what holds the run).
CAP_BINDS_SHARE = 0.9
#: A round that accepted nothing measured no rate: a cut after it takes the capacity to this
#: share of what it was (TCP's halving), not to next to nothing.
HALVING = 0.5
#: Rounds kept for late answers.
KEPT_ROUNDS = 64
#: Two paced sends are never closer than this share of the pacing interval...
MIN_SPACING_SHARE = 0.97
#: ...unless the interval is this short: a timer fires up to ~1 ms late, so strict spacing
#: would lose a large share of the pace; then the turns that fell due while it slept go
#: together, up to ``CATCH_UP_S`` late.
STRICT_SPACING_MIN_INTERVAL_S = 0.004
CATCH_UP_S = 0.002


def _chance(answers: float, share: float) -> float:
    """How far above ``share`` × ``answers`` refusals may come by chance: ``LOSS_SIGMAS``
    standard deviations of that many draws."""
    return LOSS_SIGMAS * math.sqrt(answers * share * (1.0 - share))


def turns_due(now: float, next_at: float, interval_s: float) -> tuple[int, float]:
    """How many paced requests may leave at ``now``, and when the next one may.

    A timer fires up to a millisecond late. Making the lost time up by releasing two requests
    back to back is what a token bucket with a burst of one refuses, so at intervals of
    ``STRICT_SPACING_MIN_INTERVAL_S`` and more one request goes per wake-up, and the
    schedule keeps its pace (``next_at + interval``) only while the gap to the previous send
    stays at least ``MIN_SPACING_SHARE`` of the interval. After an idle gap nothing is owed:
    no burst.
    """
    if next_at > now:
        return 0, next_at
    if interval_s <= 0.0:  # nothing paces: every request waiting may go
        return 1 << 30, now
    if interval_s >= STRICT_SPACING_MIN_INTERVAL_S:
        return 1, max(next_at + interval_s, now + MIN_SPACING_SHARE * interval_s)
    due = max(now - CATCH_UP_S, next_at)
    count = 0
    while due <= now:
        count += 1
        due += interval_s
    return count, due


@dataclass(slots=True)
class _Round:
    """The requests sent in one window of time, and how they were answered.

    Answers are credited to the round their request was *sent* in, so a round says what the
    endpoint did with the pace of that round, whatever the latency.
    """

    started_at: float
    rate: float
    excess: float
    #: the capacity its pace came from (None: startup's)
    capacity: float | None = None
    drain: bool = False
    ended_at: float = math.inf
    sent: int = 0
    accepted: int = 0
    throttled: int = 0
    first_loss_sent_at: float = math.inf
    accepted_after_loss: int = 0
    #: while unpaced (startup): when each request and each throttled one was sent
    send_times: list[float] = field(default_factory=list)
    throttle_times: list[float] = field(default_factory=list)

    @property
    def answers(self) -> int:
        return self.accepted + self.throttled

    def covers(self, sent_at: float) -> bool:
        return self.started_at <= sent_at < self.ended_at

    def throttled_share(self) -> float:
        return self.throttled / self.answers if self.answers else 0.0

    def accept_ratio(self) -> float:
        return self.accepted / self.answers if self.answers else 1.0

    def limit_estimate(self) -> float:
        """Accepted requests/s once the endpoint started refusing: its limit (a token bucket
        with its burst spent accepts exactly its refill rate), else over the whole round."""
        span = self.ended_at - self.started_at
        after = self.ended_at - self.first_loss_sent_at
        if after >= 0.3 * span and self.accepted_after_loss >= 4:
            return self.accepted_after_loss / after
        return self.accepted / span


@dataclass(kw_only=True)
class RateController:
    """In-flight limit and pacing rate from what the endpoint delivers (times in seconds).

    Attributes:
        max_in_flight: the worker count (``--concurrency``): never more requests in flight.
        max_rate: a hard requests/s ceiling (``--qps``), or infinity.
        rate: the pacing rate; infinity while nothing is paced.
        capacity: the endpoint's measured capacity in requests/s (None until a limit is met).
    """

    max_in_flight: int = 64
    initial_in_flight: int = 4
    max_rate: float = math.inf
    min_rate: float = 0.5
    cruise_gain: float = 0.96
    latency_tolerance: float = 1.5
    min_queue_delay_s: float = 0.1
    in_flight_limit: float = field(default=0.0, init=False)
    rate: float = field(default=math.inf, init=False)
    capacity: float | None = field(default=None, init=False)
    slow_start: bool = field(default=True, init=False)
    throttles: int = field(default=0, init=False)
    cuts: int = field(default=0, init=False)
    probes: int = field(default=0, init=False)
    latency_cuts: int = field(default=0, init=False)
    #: the usual share of answers accepted when the pace is under the limit (1 - noise)
    accept_ratio: float = field(default=1.0, init=False)
    #: the endpoint's concurrency as measured: requests in flight above it are refused
    concurrency_cap: int | None = field(default=None, init=False)
    #: answers by the requests in flight when they were sent (index: that count)
    _level_accepted: list[float] = field(default_factory=list, init=False, repr=False)
    _level_refused: list[float] = field(default_factory=list, init=False, repr=False)
    _rounds: deque[_Round] = field(default_factory=deque, init=False, repr=False)
    _excess: float = field(default=0.0, init=False, repr=False)
    _draining: bool = field(default=False, init=False, repr=False)
    #: answers and throttles of the cruise rounds since the last drain
    _cruise_answers: int = field(default=0, init=False, repr=False)
    _cruise_throttled: int = field(default=0, init=False, repr=False)
    _probe_ended_at: float = field(default=-math.inf, init=False, repr=False)
    #: from startup's end until a probe first overshoots: the limit is not bracketed yet
    _searching: bool = field(default=False, init=False, repr=False)
    #: the pace a large probe overshot at, or a raise a refusal reverted from far above: the
    #: next probe goes halfway to it, at once
    _bisect_to: float | None = field(default=None, init=False, repr=False)
    #: after a probe raised the capacity: the level below, and until when a refusal at the
    #: new pace sends it back there (a bucket's burst can make a probe look taken)
    _below: float | None = field(default=None, init=False, repr=False)
    _tentative_until: float = field(default=-math.inf, init=False, repr=False)
    _rounds_since_probe: int = field(default=0, init=False, repr=False)
    #: the probe round a refusal ended the probe in (its earlier rounds still count)
    _aborted_probe: _Round | None = field(default=None, init=False, repr=False)
    #: (second, shortest latency seen in it), for the windowed minimum
    _minima: deque[tuple[int, float]] = field(default_factory=deque, init=False, repr=False)
    _latency: float = field(default=0.0, init=False, repr=False)
    _latency_samples: int = field(default=0, init=False, repr=False)
    _since_gradient: int = field(default=0, init=False, repr=False)
    _refusals_in_a_row: int = field(default=0, init=False, repr=False)
    #: (whole second, requests accepted in it), the last few seconds
    _accepted_by_second: deque[list[int]] = field(default_factory=deque, init=False, repr=False)
    _lossy_startup_rounds: int = field(default=0, init=False, repr=False)
    #: False from startup's end until the capacity is borne out (a loss measured the limit,
    #: a probe or a cruise round was taken whole): below a guess, refusals are not noise
    _confirmed: bool = field(default=True, init=False, repr=False)
    _last_round_lossy: bool = field(default=False, init=False, repr=False)
    #: lossy rounds in a row at the usual pace (:meth:`_surely_the_limit`)
    _lossy_usual_rounds: int = field(default=0, init=False, repr=False)
    #: answers and refusals of the rounds noise is learned from (:meth:`_learn_noise`)
    _noise_answers: float = field(default=0.0, init=False, repr=False)
    _noise_refused: float = field(default=0.0, init=False, repr=False)
    #: answers drain rounds gave (startup's do not make noise known)
    _drain_answers: float = field(default=0.0, init=False, repr=False)
    _last_refusal_concurrency: bool = field(default=False, init=False, repr=False)
    #: trying one request in flight above the concurrency cap: since when (None: not), the
    #: requests accepted there, and when the next try may start
    _cap_probe_since: float | None = field(default=None, init=False, repr=False)
    _cap_probe_accepted: int = field(default=0, init=False, repr=False)
    _cap_probe_at: float = field(default=math.inf, init=False, repr=False)
    #: until when a cap a probe raised is tentative (:meth:`_cap_tentative`), the refusals
    #: under it then, and the capacity before the raise
    _cap_tentative_until: float = field(default=-math.inf, init=False, repr=False)
    _refused_below_raised_cap: float = field(default=0.0, init=False, repr=False)
    _capacity_before_raise: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.in_flight_limit = float(min(self.initial_in_flight, self.max_in_flight))
        self._level_accepted = [0.0] * (self.max_in_flight + 2)
        self._level_refused = [0.0] * (self.max_in_flight + 2)
        self.rate = self.max_rate

    @property
    def paced(self) -> bool:
        return math.isfinite(self.rate)

    @property
    def pace(self) -> float:
        """Requests/s the pacer lets go: :attr:`rate` once a limit was met. In startup, once a
        round trip is known, at most ``STARTUP_PACE_GAIN`` × the in-flight limit per shortest
        round trip while the limit grows, the limit's own rate once it stopped growing after
        a refusal, ``STARTUP_FULL_PACE_GAIN`` × it once grown to the workers without one:
        requests spread out, not in volleys."""
        if self.capacity is not None:
            return self.rate
        base = self.base_latency()
        if not base:
            return self.rate
        if self.slow_start:
            gain = STARTUP_PACE_GAIN
        elif self.throttles:
            gain = 1.0
        else:
            gain = STARTUP_FULL_PACE_GAIN
        return min(self.rate, gain * self.in_flight_limit / base)

    @property
    def turn_interval(self) -> float:
        """Seconds between paced turns (:func:`turns_due`): ``1 / pace``, none when nothing
        paces (every waiting turn is due)."""
        pace = self.pace
        return 1.0 / pace if math.isfinite(pace) else 0.0

    @property
    def probing(self) -> bool:
        return self._excess > 0.0

    @property
    def bound(self) -> str:
        """What holds the run back now: ``qps``, ``endpoint`` (its measured capacity),
        ``latency`` (requests in flight cut for queueing) or ``concurrency`` (none yet)."""
        if self.paced and self.rate >= self.max_rate:
            return "qps"
        if self.capacity is not None:
            return "endpoint"
        if self.latency_cuts and self.in_flight_limit < self.max_in_flight:
            return "latency"
        return "concurrency"

    def refusals_are_noise(self) -> bool:
        """Whether the refusals just seen look like noise (a few random 429s/503s) rather
        than the endpoint's limit: no refusal run of ``NOISE_REFUSALS_IN_A_ROW``, the last
        judged round not lossy, the last 429 not a concurrency cap's. The pacer and the
        in-flight limit hold the rate, so a noise refusal is resent soon
        (:meth:`~engine.retry.RetryPolicy.decide`) instead of idling a worker for a second."""
        return (
            self._refusals_in_a_row < NOISE_REFUSALS_IN_A_ROW
            and not self._last_round_lossy
            and not self._last_refusal_concurrency
        )

    def noise_wait(self) -> float | None:
        """How long to wait before resending a refusal that is noise (about one round trip:
        the shortest latency seen, at least ``NOISE_WAIT_S``), or None when refusals are not
        noise (:meth:`refusals_are_noise`) and the retry policy's backoff applies."""
        if not self.refusals_are_noise():
            return None
        return max(self.base_latency() or 0.0, NOISE_WAIT_S)

    def base_latency(self) -> float | None:
        """The shortest latency over the last ``LATENCY_WINDOW_S`` (None before any)."""
        return min((m for _, m in self._minima), default=None)

    # -- events --------------------------------------------------------------------------

    def on_send(self, now: float) -> None:
        """A request left (after the pacer let it go)."""
        current = self._open_round(now)
        current.sent += 1
        if self.capacity is None:
            current.send_times.append(now)

    def on_success(
        self, now: float, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        """A request was accepted ``latency_s`` after it was sent, with ``in_flight``
        requests (itself included) in flight when it was."""
        self._refusals_in_a_row = 0
        self._count_level(in_flight, refused=False)
        self._cap_probe_answer(now, in_flight, refused=False)
        self._count_second(now)
        sent_round = self._round_of(now - (latency_s or 0.0))
        if sent_round is not None:
            sent_round.accepted += 1
            if sent_round.first_loss_sent_at <= now - (latency_s or 0.0):
                sent_round.accepted_after_loss += 1
        queueing = latency_s is not None and self._on_latency(now, latency_s)
        if not queueing:
            self._grow_in_flight()
        self._advance(now)

    def on_throttle(
        self, now: float, latency_s: float | None = None, in_flight: int | None = None
    ) -> None:
        """The endpoint refused a request for capacity (429) ``latency_s`` after it was sent,
        with ``in_flight`` requests (itself included) in flight when it was."""
        self.throttles += 1
        self._count_level(in_flight, refused=True)
        self._cap_probe_answer(now, in_flight, refused=True)
        self._last_refusal_concurrency = self._concurrency_refusal(in_flight, now)
        if self._last_refusal_concurrency:
            self._advance(now)
            return
        self._refusals_in_a_row += 1
        if self.slow_start:  # a refused request's slot is not handed on: no storm
            self.in_flight_limit = max(STORM_MIN_IN_FLIGHT, self.in_flight_limit - 1.0)
        sent_at = now - (latency_s or 0.0)
        sent_round = self._round_of(sent_at)
        if sent_round is not None:
            sent_round.throttled += 1
            sent_round.first_loss_sent_at = min(sent_round.first_loss_sent_at, sent_at)
            if self.capacity is None:
                sent_round.throttle_times.append(sent_at)
            if self.capacity is None and self._startup_overrun(sent_round, now):
                self._leave_startup(sent_round, now)
            elif sent_round.excess > 0.0 and sent_round.excess == self._excess:
                self._abort_probe_if_refused(sent_round, now)
            elif (
                sent_round.excess == 0.0
                and now < self._tentative_until
                and sent_round.capacity == self.capacity
            ):
                # Not a probe's round: a probe refused beyond noise has ended, and the
                # rest of its requests, already sent past the limit, say nothing more.
                self._revert_if_refused(sent_round, now)
        self._advance(now)

    def _refused_beyond_noise(self, sent_round: _Round) -> bool:
        """A probe's round (or a cruise at a pace a probe just raised) refused more than the
        usual share explains: the pace is past the limit. Once noise is known from
        ``NOISE_KNOWN_ANSWERS`` answers, by the chance of that noise too (at 500 req/s with
        3 % of random 429s, every probe ended on its first refusal, and the run stayed at
        0.68 of the limit); before that, one refusal beyond it says so, as on a slow bucket
        where a refusal is the only sign and each one counts."""
        usual = 1.0 - self.accept_ratio
        chance = _chance(sent_round.sent, usual) if self._noise_known() else 0.0
        return sent_round.throttled >= PROBE_ABORT_LOSSES and sent_round.throttled > (
            usual * sent_round.sent + max(0.5, chance)
        )

    def _noise_known(self) -> bool:
        return self._drain_answers >= NOISE_KNOWN_ANSWERS

    def _revert_if_refused(self, cruise: _Round, now: float) -> None:
        """Refused at the pace a probe just raised: the probe was the burst's doing, back to
        the level below it (at once: each request sent meanwhile would be refused). The limit
        is between the two: when they are far apart, the next probes search halfway at once
        (a probe that doubled its step through a bucket's burst, from 1,613 to 2,258 req/s on
        a 2,000 req/s bucket, used to leave the run at 0.8 of it until the next probe, 2 s on).
        """
        if self._below is not None and self._refused_beyond_noise(cruise):
            self._tentative_until = -math.inf
            self._searching = False  # the limit is bracketed now: between the two levels
            raised = self.capacity
            self._cut(self._below, now)
            far = raised is not None and self.capacity is not None and (
                raised >= (1.0 + BISECT_MIN_EXCESS) * self.capacity
            )
            # Close together: bracketed closely enough. A target an earlier overshoot left
            # would now lie above the very pace just refused.
            self._bisect_to = raised if far else None

    def _abort_probe_if_refused(self, probe: _Round, now: float) -> None:
        """A probe refused more than noise explains ends at once, not when its round is
        judged: each request it sends past the limit is refused."""
        if self._refused_beyond_noise(probe):
            self._aborted_probe = probe
            self._note_overshoot(probe)
            self._end_probe(now)
            self._set_rate()

    def _count_second(self, now: float) -> None:
        second = int(now)
        seconds = self._accepted_by_second
        if seconds and seconds[-1][0] == second:
            seconds[-1][1] += 1
            return
        seconds.append([second, 1])
        while len(seconds) > 3:
            seconds.popleft()

    def _delivered_last_second(self, now: float) -> float:
        """Requests accepted in the last whole second (0 if it saw none)."""
        return float(next((n for s, n in self._accepted_by_second if s == int(now) - 1), 0))

    # -- concurrency -------------------------------------------------------------------

    def _count_level(self, in_flight: int | None, *, refused: bool) -> None:
        if in_flight is None or in_flight < 1:
            return
        level = min(in_flight, self.max_in_flight + 1)
        counts = self._level_refused if refused else self._level_accepted
        counts[level] += 1.0

    def _concurrency_refusal(self, in_flight: int | None, now: float) -> bool:
        """Refused because more were in flight than the endpoint serves at once (its
        provisioned concurrency), not for the pace: cap requests in flight there instead
        of slowing down. The cap is the most in flight at which requests are accepted (seen
        often) and never refused beyond noise, every level above refused mostly."""
        if in_flight is None:
            return False
        if self.concurrency_cap is not None and in_flight > self.concurrency_cap:
            return True
        if in_flight == self.concurrency_cap and in_flight > MIN_CONCURRENCY_CAP:
            self._lower_cap_refused_at_its_level(now)
            # Lowered, or just raised while the levels under it stayed clean: the cap's own
            # (three lucky answers may have raised it). Else the pace's too: a neighbour's
            # job may hold the slot (counted as the cap's alone, a running job left a
            # newcomer nothing on 19 of 20 seeds).
            return in_flight > self.concurrency_cap or self._cap_tentative(now)
        cap = self._find_concurrency_cap()
        if cap is None or cap < MIN_CONCURRENCY_CAP or in_flight <= cap:
            return False
        self.concurrency_cap = cap
        self._cap_tentative_until = -math.inf
        self.in_flight_limit = min(self.in_flight_limit, float(cap))
        self.slow_start = False
        self._cap_probe_at = now + PROBE_INTERVAL_S
        base = self.base_latency()
        if self.capacity is not None and base:
            # The refusals that set the pace were the cap's: pace no slower than it allows.
            self.capacity = max(self.capacity, cap / base)
            self._set_rate()
        return True

    def _try_cap(self, now: float) -> None:
        """Every ``PROBE_INTERVAL_S``, let one more request in flight than the cap: a limit
        that rose (provisioned concurrency scaled up, a neighbour's job ended) is found, one
        level per ``CAP_PROBE_ACCEPTS`` acceptances, at the cost of one 429 when it has not."""
        cap = self.concurrency_cap
        if cap is None or self._cap_probe_since is not None or now < self._cap_probe_at:
            return
        base = self.base_latency()
        if cap >= self.max_in_flight or self.capacity is None or not base:
            return
        if self.capacity * base < CAP_BINDS_SHARE * cap:
            return  # the pace holds the run under the cap: more in flight would not be used
        self._cap_probe_since = now
        self._cap_probe_accepted = 0
        self.in_flight_limit = float(cap + 1)
        self._set_rate()

    def _cap_probe_answer(self, now: float, in_flight: int | None, *, refused: bool) -> None:
        """An answer to a request sent with one more in flight than the cap, while trying it."""
        cap = self.concurrency_cap
        if self._cap_probe_since is None or cap is None or in_flight is None:
            return
        if in_flight <= cap:
            if now - self._cap_probe_since > PROBE_INTERVAL_S:  # the level was never reached
                self._end_cap_probe(now)
            return
        if refused:
            self._end_cap_probe(now)
            return
        self._cap_probe_accepted += 1
        if self._cap_probe_accepted < CAP_PROBE_ACCEPTS:
            return
        # The endpoint serves one more at once: what was refused above the old cap is stale.
        cap += 1
        self.concurrency_cap = cap
        self._cap_tentative_until = now + TENTATIVE_S
        self._refused_below_raised_cap = sum(self._level_refused[1:cap])
        self._capacity_before_raise = self.capacity
        for level in range(cap, len(self._level_refused)):
            self._level_refused[level] = 0.0
        base = self.base_latency()
        if self.capacity is not None and base:
            self.capacity = max(self.capacity, cap / base)
        self._cap_probe_since = None
        self._cap_probe_at = now  # and on to the next level
        self.in_flight_limit = float(cap)
        self._try_cap(now)

    def _lower_cap_refused_at_its_level(self, now: float) -> None:
        """A refusal with as many in flight as the cap. The client counts a request in flight
        until it hears the answer, the endpoint frees the slot when it sends it, and a busy
        client hears late: against the emulator's 8 slots, 95 of 166 requests sent with 9 in
        flight by the client's count were accepted, so a try at 9 could pass and the cap
        then stayed a level too high, its refusals read as the pace's (cut after cut, 0.77
        of the capacity). Once its level is refused ``LOSS_MARGIN`` more than noise explains
        (a slip is rarer: 4 of 969 in simulation), the cap goes down a level."""
        cap = self.concurrency_cap
        if cap is None:
            return
        accepted, refused = self._level_accepted[cap], self._level_refused[cap]
        answers = accepted + refused
        share = 1.0 - self.accept_ratio + LOSS_MARGIN  # well past slips and noise
        if refused < MIN_LOSSES or refused <= share * answers + _chance(answers, share):
            return
        self.concurrency_cap = cap - 1
        self._cap_tentative_until = -math.inf
        base = self.base_latency()
        if self.capacity is not None and base:
            # Back to the pace before the raise, or what the lower cap allows if more: the
            # raised level's pace (8 slots: 0.96 x 9/8, 1.08x what they serve) would leave a
            # neighbour nothing.
            before = self._capacity_before_raise or 0.0
            self.capacity = min(self.capacity, max(before, (cap - 1) / base))
        self._end_cap_probe(now)  # a try open at the raised level ends with it

    def _cap_tentative(self, now: float) -> bool:
        """A cap probe raised the cap in the last ``TENTATIVE_S``, and no request under it
        was refused since: a bucket mistaken for a cap refuses at every level."""
        cap = self.concurrency_cap
        if cap is None or now >= self._cap_tentative_until:
            return False
        return sum(self._level_refused[1:cap]) <= self._refused_below_raised_cap

    def _end_cap_probe(self, now: float) -> None:
        self._cap_probe_since = None
        self._cap_probe_at = now + PROBE_INTERVAL_S
        if self.concurrency_cap is not None:
            self.in_flight_limit = min(self.in_flight_limit, float(self.concurrency_cap))
        self._set_rate()

    def _find_concurrency_cap(self) -> int | None:
        accepted, refused = self._level_accepted, self._level_refused
        usual = 1.0 - self.accept_ratio
        below_accepted = below_refused = 0.0
        found = None
        above_refused = sum(refused)
        above_accepted = sum(accepted)
        # A few refusals at or under the cap are chance: an answer's slot freed at the
        # endpoint before the client heard, so "in flight when sent" was one too many.
        slip = max(usual, CAP_SLIP_SHARE)
        for level in range(1, len(accepted)):
            below_accepted += accepted[level]
            below_refused += refused[level]
            above_accepted -= accepted[level]
            above_refused -= refused[level]
            answers_below = below_accepted + below_refused
            slips = max(1.0, _chance(answers_below, slip))
            clean_below = below_refused <= usual * answers_below + slips
            if not clean_below:
                break
            answers_above = above_accepted + above_refused
            # Seen often, or (past a level seen often) never refused yet.
            seen = accepted[level] >= CONCURRENCY_MIN_ACCEPTED or (
                found is not None and accepted[level] >= 1 and refused[level] == 0
            )
            if (
                seen
                and above_refused >= 2 * MIN_LOSSES
                and above_refused >= CONCURRENCY_REFUSED_SHARE * answers_above
            ):
                found = level
        return found

    # -- rounds --------------------------------------------------------------------------

    def _open_round(self, now: float) -> _Round:
        current = self._rounds[-1] if self._rounds else None
        if current is not None and current.ended_at == math.inf:
            length = self._round_length()
            full = now - current.started_at >= length
            if not full and current.rate == self.rate:
                return current
            if now <= current.started_at:
                # A new pace the instant the round began (a coarse clock ticks once for many
                # events): the round is the new pace's. Closed here it would span no time, and
                # a rate over it divide by zero.
                current.rate, current.excess = self.rate, self._excess
                current.drain, current.capacity = self._draining, self.capacity
                return current
            # A round spans its length, not the idle time until the next send, and one pace:
            # a probe's next step or a cut starts a round of its own.
            current.ended_at = min(now, current.started_at + length)
            if current.drain and full:  # the drain ran its whole round at the drain pace
                self._draining = False
                self._set_rate()
        fresh = _Round(
            started_at=now,
            rate=self.rate,
            excess=self._excess,
            drain=self._draining,
            capacity=self.capacity,
        )
        self._rounds.append(fresh)
        while len(self._rounds) > KEPT_ROUNDS:
            self._rounds.popleft()
        return fresh

    def _round_length(self) -> float:
        base = self.base_latency() or 0.0
        length = max(ROUND_MIN_S, 2.0 * base)
        if self.paced:
            length = max(length, ROUND_MIN_SENDS / self.rate)
        return min(length, ROUND_MAX_S)

    def _round_of(self, sent_at: float) -> _Round | None:
        for candidate in reversed(self._rounds):
            if candidate.covers(sent_at):
                return candidate
            if candidate.started_at <= sent_at:
                return None
        return None

    def _advance(self, now: float) -> None:
        """Judge every closed round whose answers are in (oldest first)."""
        self._try_cap(now)
        self._open_round(now)  # closes the current round when its time is up
        settle = max(SETTLE_MIN_S, SETTLE_ROUND_TRIPS * (self.base_latency() or 0.0))
        while self._rounds and self._rounds[0].ended_at < math.inf:
            oldest = self._rounds[0]
            if oldest.answers < oldest.sent and now < oldest.ended_at + settle:
                return
            self._rounds.popleft()
            self._judge(oldest, now)

    def _startup_overrun(self, current: _Round, now: float) -> bool:
        """Unpaced and refused far more than noise: stop the storm before the round ends.

        Judged over the latest requests sent at least one and a half round trips ago, whose
        answers are all in: a 429 comes back faster than an acceptance, so over the newest
        requests refusals outnumber acceptances even when they are rare noise. Over the
        latest only (``STORM_WINDOW`` in-flight limits' worth): a storm that begins
        mid-round, once a bucket's burst is spent, is not diluted by the acceptances before
        it. A run of refusals says it at once, unless the noise a volley of requests in
        flight can bring explains it (:meth:`_noise_run`).
        """
        usual = 1.0 - self.accept_ratio
        if self._refusals_in_a_row >= max(STARTUP_REFUSALS_IN_A_ROW, self._noise_run(usual)):
            return True
        cutoff = now - 1.5 * (self.base_latency() or 0.0)
        settled = bisect.bisect_right(current.send_times, cutoff)
        first = max(0, settled - max(STORM_MIN_SENDS, int(STORM_WINDOW * self.in_flight_limit)))
        since = current.send_times[first] if settled > first else cutoff
        refused = sum(1 for sent_at in current.throttle_times if since <= sent_at <= cutoff)
        settled -= first
        # Looked at on every refusal: a storm is far above noise, not just above it.
        chance = 2.0 * LOSS_SIGMAS * math.sqrt(settled * max(usual, STORM_NOISE_FLOOR))
        return refused >= MIN_LOSSES and refused > max(
            STARTUP_STORM_SHARE * settled, usual * settled + chance
        )

    def _noise_run(self, usual: float) -> float:
        """How many refusals in a row noise alone strings together while unpaced: a random
        429 comes back at once and an acceptance a round trip later, so the noise among
        requests that left together (up to the in-flight limit) arrives before any of their
        acceptances. With 64 in flight at 5 % noise (the least the storm check assumes), one
        volley in five brings five refusals, and a 3M-row run with random 429s left start-up
        on them, paced at half what the endpoint took. Far above noise, as the storm's
        share (it is looked at on every refusal): twelve in a row there, five at 16 in
        flight or fewer."""
        usual = max(usual, STORM_NOISE_FLOOR)
        in_flight = self.in_flight_limit
        return usual * in_flight + 2.0 * _chance(in_flight, usual)

    def _leave_startup(self, current: _Round, now: float) -> None:
        """Pace at half the rate that overran the endpoint (TCP's halving): the next rounds
        measure the limit itself (a loss cuts to what was accepted once refused), and probing
        finds it from below. The span is floored so a first burst of fast 429s cannot read
        as a huge rate. Or at what the endpoint accepted since its first refusal, if more:
        its burst spent, a bucket accepts its refill rate (200 req/s with a burst of two,
        at 10 ms: 171 req/s measured where the halving said 83)."""
        base = self.base_latency() or 0.0
        current = self._storm_round(current, now)
        span = max(now - current.started_at, base, STARTUP_MIN_SPAN_S)
        answered_span = max(now - base - current.started_at, STARTUP_MIN_SPAN_S)
        accepted_rate = current.accepted / answered_span
        after = now - base - current.first_loss_sent_at
        if current.accepted_after_loss >= 4 and after > 0:
            accepted_rate = max(accepted_rate, current.accepted_after_loss / after)
        self._end_startup(max(0.5 * current.sent / span / self.cruise_gain, accepted_rate), now)
        for pending in self._rounds:  # the storm's rounds were at another pace
            pending.rate = math.inf

    def _storm_round(self, current: _Round, now: float) -> _Round:
        """The storm measured over the current round and the one before it when the current
        one just began: rounds are cut by time, not by the storm, and a storm judged a few
        milliseconds into a round measured the bucket over those milliseconds (a 500 req/s
        bucket with a burst of 50, refused from 0.12 s on, was paced at 182 req/s: what the
        last 10 ms said)."""
        if now - current.started_at >= ROUND_MIN_S:
            return current
        rounds = list(self._rounds)
        index = next((i for i, r in enumerate(rounds) if r is current), 0)
        before = rounds[index - 1] if index else None
        if before is None or before.capacity is not None:
            return current
        lost_before = math.isfinite(before.first_loss_sent_at)
        return _Round(
            started_at=before.started_at,
            rate=current.rate,
            excess=0.0,
            sent=before.sent + current.sent,
            accepted=before.accepted + current.accepted,
            throttled=before.throttled + current.throttled,
            first_loss_sent_at=min(before.first_loss_sent_at, current.first_loss_sent_at),
            accepted_after_loss=before.accepted_after_loss
            + (current.accepted if lost_before else current.accepted_after_loss),
        )

    def _end_startup(self, estimate: float, now: float) -> None:
        """Startup met the limit (it did not see it fall): pace at ``estimate``, or at what the
        last whole second delivered if more (a startup that ran for seconds, overrunning the
        limit only now and then, measured the limit itself), and search upward at once."""
        self._cut(max(estimate, self._delivered_last_second(now)), now)
        self._searching = True
        self._confirmed = False

    def _judge(self, done: _Round, now: float) -> None:
        if done.answers == 0:
            return
        if self.capacity is None:  # startup: unpaced until the endpoint shows its limit
            # Two lossy rounds in a row: one can be noise's bad luck (a few percent of 429s,
            # some fifty rounds a run); a limit refuses round after round.
            lossy = done.throttled >= MIN_LOSSES and done.throttled_share() > STARTUP_LOSS_SHARE
            self._lossy_startup_rounds = self._lossy_startup_rounds + 1 if lossy else 0
            self._last_round_lossy = lossy
            if self._lossy_startup_rounds >= 2:  # as after a storm: no step-down hold
                self._end_startup(done.limit_estimate() / self.accept_ratio, now)
            elif not lossy and done.answers >= ROUND_MIN_SENDS:  # refused when bearable: noise
                self._learn_noise(done, drain=False)
            return
        self._last_round_lossy = self._lossy(done)
        if self._last_round_lossy:
            self._on_loss(done, now)
            return
        span = done.ended_at - done.started_at
        app_limited = done.sent < APP_LIMITED_SHARE * done.rate * span
        if done.excess == 0.0 and not app_limited:  # a lossy round's backoff sends less
            self._lossy_usual_rounds = 0
        if done.excess > 0.0:
            self._end_probe_round(done, app_limited, now)
        elif done.drain:
            self._end_drain_round(done, app_limited)
        else:
            if not app_limited:
                # A whole round at the guess's pace refused less than a loss's margin (none,
                # or random ones: noise is learned only once the guess holds): it holds.
                self._confirmed = self._confirmed or (
                    done.answers >= ROUND_MIN_SENDS and done.throttled_share() < LOSS_MARGIN
                )
                self._cruise_answers += done.answers
                self._cruise_throttled += done.throttled
                if self._overestimated(now):
                    return
            self._rounds_since_probe += 1
            if not self.probing and (
                self._searching
                or self._bisect_to is not None
                or (
                    now - self._probe_ended_at >= PROBE_INTERVAL_S
                    and self._rounds_since_probe >= PROBE_EVERY_ROUNDS
                )
            ):
                self._start_probe()
        self._set_rate()

    def _overestimated(self, now: float) -> bool:
        """The cruise rounds since the last change, together, were refused more than noise
        explains (each round alone too small to say so, at low rates): the capacity is over
        the limit by about the excess share (a probe the bucket's burst made look good).
        Lower it by that share now, not at the next drain."""
        answers, throttled = self._cruise_answers, self._cruise_throttled
        if self.capacity is None or not self._beyond_noise(answers, throttled, CRUISE_LOSS_MARGIN):
            return False
        over = throttled / answers - (1.0 - self.accept_ratio)
        self._cut(self.capacity * (1.0 - over), now)
        return True

    def _end_drain_round(self, done: _Round, app_limited: bool) -> None:
        """Cruise rounds refused more than the usual (noise) share since the last drain: the
        capacity was overestimated (a bucket's burst made a probe look good): lower it by the
        excess share. Otherwise, under the limit by a margin, what the drain round had refused
        is noise: learn its share."""
        answers, throttled = self._cruise_answers, self._cruise_throttled
        self._cruise_answers = self._cruise_throttled = 0
        if self.capacity is not None and self._beyond_noise(answers, throttled, 0.0):
            over = throttled / answers - (1.0 - self.accept_ratio)
            self.capacity = max(self.min_rate, self.capacity * (1.0 - over))
            self.cuts += 1
            return  # the drain ran under an overestimate: it says nothing about noise
        if not app_limited and self._confirmed:
            self._learn_noise(done)

    def _learn_noise(self, done: _Round, *, drain: bool = True) -> None:
        """What a round under the limit refused is noise: the usual share is what such rounds
        refused together (past ``NOISE_MEMORY`` answers, the older in proportion), beside
        ``NOISE_PRIOR`` answers of none refused (one refusal in a round of eight is not 12 %
        noise); a round of fewer than ``ROUND_MIN_SENDS`` answers in proportion. Counted,
        not smoothed round by round: at 500 req/s a drain round's 55 answers say more than
        a 40 req/s one's 8 (a smoothed ratio had learned 1-2 % of 3 % noise after 8 s, and
        the cruise rounds' 3 % read as an overestimate, cut after cut)."""
        weight = min(1.0, done.answers / ROUND_MIN_SENDS)
        if drain:  # a startup round's tail may have met the limit: it does not make noise known
            self._drain_answers += weight * done.answers
        answers = self._noise_answers + weight * done.answers
        keep = min(1.0, NOISE_MEMORY / answers) if answers else 1.0
        self._noise_answers = answers * keep
        self._noise_refused = (self._noise_refused + weight * done.throttled) * keep
        share = self._noise_refused / (self._noise_answers + NOISE_PRIOR)
        self.accept_ratio = max(MIN_ACCEPT_RATIO, 1.0 - share)

    def _start_probe(self) -> None:
        if self.rate < self.max_rate:
            self._excess = self._halfway() or FIRST_PROBE_EXCESS
            self._lossy_usual_rounds = 0
            self._aborted_probe = None
            self.probes += 1
            self._set_rate()

    def _lossy(self, done: _Round) -> bool:
        """More throttles than the usual (noise) share explains, by a margin and by chance."""
        return self._beyond_noise(done.answers, done.throttled, LOSS_MARGIN)

    def _beyond_noise(
        self, answers: int, throttled: int, margin: float, usual: float | None = None
    ) -> bool:
        """More throttles than the usual (noise) share (the learned one unless given)
        explains: at least ``MIN_LOSSES``, and above it by ``margin`` × answers and by
        ``LOSS_SIGMAS`` of chance."""
        usual = 1.0 - self.accept_ratio if usual is None else usual
        return throttled >= MIN_LOSSES and throttled > answers * usual + max(
            margin * answers, _chance(answers, max(usual, 0.02))
        )

    def _on_loss(self, done: _Round, now: float) -> None:
        estimate = done.limit_estimate() / self.accept_ratio
        if done.capacity is None and self.capacity is not None:
            # a startup round (its storm), judged after startup ended
            if done.accepted_after_loss >= 4:
                # The limit measured, if under startup's estimate (over a storm's few round
                # trips, a rate above it says nothing).
                self._confirmed = self._confirmed or estimate < self.capacity
                self._cut(min(self.capacity, estimate), now)
            return
        if self.capacity is not None and done.capacity is not None and (
            self.capacity < done.capacity * 0.999
        ):
            return  # judged late: the capacity was lowered since
        if done.excess > 0.0:
            self._searching = False
            self._note_overshoot(done)
        if done.excess > 0.0 and self.capacity is not None:
            # A probe overshot. What it accepted once refused is the limit for a bucket with
            # room to spare, but far less for one with a burst of one (overdriven, it accepts
            # every other request): never below the pace that was accepted before the probe.
            # (The capacity its pace came from, not a raise an earlier round of the same
            # probe made since: that raise is this pace, which this round just overran.)
            floor = done.capacity if done.capacity is not None else self.capacity
            self._cut(max(floor, min(estimate, done.rate)), now)
            return
        self._lossy_usual_rounds += 1
        if self._lossy_usual_rounds < 2 and not self._surely_the_limit(done):
            return
        self._lossy_usual_rounds = 0
        guessed = not self._confirmed
        self._confirmed = True  # refused at the usual pace: the limit measured
        # At the usual pace: the limit moved down (a neighbour's job, a scale-down). What was
        # accepted once refused may include a token or two left over: a refusal at the new
        # pace soon after takes it a step further down at once.
        if done.accepted == 0 and self.capacity is not None:
            # No rate measured (a neighbour's burst took the limit for a moment): halve.
            estimate = max(estimate, HALVING * self.capacity)
        self._cut(estimate, now)
        self._below = estimate * (1.0 - STEP_DOWN_MARGIN)
        self._tentative_until = now + TENTATIVE_S
        if not guessed:  # a guess over the limit is no fall: no hold on probing
            self._probe_ended_at = now + STEP_DOWN_PROBE_HOLD_S  # a fallen limit rarely bounces

    def _surely_the_limit(self, done: _Round) -> bool:
        """Whether one lossy round at the usual pace is enough to cut: under a guess (refusals
        there are the guess's excess), when nothing was accepted, or refused beyond what even
        the most noise ever taken for noise (1 - ``MIN_ACCEPT_RATIO``) brings by chance. Else
        it takes a second in a row: 4 of 19 refused is what 7 % of random 429s does one round
        in twenty, and each such round cut the pace to what it had accepted (500 req/s with
        7 % noise: 0.61 of the limit), while a limit refuses round after round."""
        most_noise = 1.0 - MIN_ACCEPT_RATIO
        return (
            not self._confirmed
            or done.accepted == 0
            or self._beyond_noise(done.answers, done.throttled, 0.0, usual=most_noise)
        )

    def _cut(self, capacity: float, now: float) -> None:
        """The pace is above the endpoint's limit: the capacity is what it accepted."""
        self.cuts += 1
        if self.slow_start:
            self.slow_start = False
            self.in_flight_limit = float(self.concurrency_cap or self.max_in_flight)
        self.capacity = max(self.min_rate, capacity)
        self._lossy_usual_rounds = 0  # a new pace: rounds in a row count from here
        self._excess = 0.0
        self._draining = True  # the next round measures noise below the new pace
        self._cruise_answers = self._cruise_throttled = 0
        self._probe_ended_at = max(now, self._probe_ended_at)  # a hold after a fall stays
        self._rounds_since_probe = 0
        self._set_rate()

    def _end_probe_round(self, done: _Round, app_limited: bool, now: float) -> None:
        extra = done.excess / (1.0 + done.excess)  # the share of the pace that was extra
        taken = done.accept_ratio() >= self.accept_ratio * (1.0 - extra / 2.0)
        aborted = self._aborted_probe
        if (
            aborted is not None
            and done.capacity == self.capacity == aborted.capacity
            and done.excess == aborted.excess
            and done.ended_at <= aborted.started_at
        ):
            # A whole round of this probe, judged after a later one ended it on a refusal
            # (a 429 comes back before the acceptances of the round before): what it took
            # still counts (at 3 % noise, 74 of 74 taken were dropped for 1 of 6 refused).
            if taken and not app_limited:
                self._raise(done, now)
            return
        if done.excess != self._excess or done.capacity != self.capacity:
            # A step of this probe already judged. Its excess alone does not say so: capped
            # at MAX_PROBE_EXCESS, the step after a raise keeps it.
            return
        if taken and not app_limited:
            self._raise(done, now)
            self._excess = self._halfway() or min(MAX_PROBE_EXCESS, self._excess * 2.0)
            return
        self._note_overshoot(done)
        self._end_probe(now)

    def _raise(self, done: _Round, now: float) -> None:
        """The endpoint took a probe round's extra at its usual ratio: the capacity is what it
        took, not the pace asked for (a round held back by the in-flight limit sends less),
        tentatively (:meth:`_revert_if_refused`)."""
        self._confirmed = True
        span = done.ended_at - done.started_at
        delivered = done.accepted / span / self.accept_ratio if span > 0 else done.rate
        raised = min(done.rate, delivered)
        if self.capacity is not None and raised > self.capacity:
            self._below = self.capacity
            self._tentative_until = now + TENTATIVE_S
            self.capacity = raised

    def _note_overshoot(self, probe: _Round) -> None:
        """A large step past the capacity overshot: the limit is somewhere in between, and
        the next probes look halfway (a binary search) instead of small steps from below."""
        if probe.excess >= BISECT_MIN_EXCESS:
            self._bisect_to = min(self._bisect_to or math.inf, probe.rate)
        else:  # bracketed closely enough
            self._bisect_to = None

    def _halfway(self) -> float | None:
        """The excess halfway (in ratio) to the pace a large probe overshot at, while the
        capacity is still well under it."""
        if self._bisect_to is None or not self.capacity:
            return None
        halfway = math.sqrt(self._bisect_to / self.capacity) - 1.0
        if halfway < FIRST_PROBE_EXCESS / 2:
            self._bisect_to = None
            return None
        return min(MAX_PROBE_EXCESS, max(FIRST_PROBE_EXCESS, halfway))

    def _end_probe(self, now: float) -> None:
        self._excess = 0.0
        self._searching = False
        self._draining = True
        self._probe_ended_at = now
        self._rounds_since_probe = 0

    def _set_rate(self) -> None:
        if self.capacity is None:
            return
        gain = 1.0 + self._excess if self.probing else self.cruise_gain
        if self._draining:
            gain = DRAIN_GAIN
        rate = gain * self.capacity
        base = self.base_latency()
        if self._cap_probe_since is not None and self.concurrency_cap is not None and base:
            rate = max(rate, (self.concurrency_cap + 1) / base)  # pace for the level tried
        self.rate = min(self.max_rate, max(self.min_rate, rate))

    def _grow_in_flight(self) -> None:
        limit = self.in_flight_limit
        ceiling = float(self.max_in_flight)
        if self.concurrency_cap is not None:
            trying = self._cap_probe_since is not None
            ceiling = min(ceiling, float(self.concurrency_cap + trying))
        if self.slow_start:
            self.in_flight_limit = min(ceiling, limit + 1.0)
            self.slow_start = self.in_flight_limit < ceiling
        else:  # one a round trip, as TCP's congestion avoidance
            self.in_flight_limit = min(ceiling, limit + 1.0 / max(limit, 1.0))

    # -- latency -------------------------------------------------------------------------

    def _on_latency(self, now: float, latency_s: float) -> bool:
        """Track latency. True while requests queue at the endpoint (then nothing grows);
        about once a round trip it then also applies the gradient."""
        second = int(now)
        if self._minima and self._minima[-1][0] == second:
            if latency_s < self._minima[-1][1]:
                self._minima[-1] = (second, latency_s)
        else:
            self._minima.append((second, latency_s))
        while self._minima[0][0] <= now - LATENCY_WINDOW_S:
            self._minima.popleft()
        self._latency_samples += 1
        weight = 0.2 if self._latency_samples > 1 else 1.0
        self._latency += weight * (latency_s - self._latency)
        self._since_gradient += 1
        base = self.base_latency() or latency_s
        current = self._latency
        queueing = (
            not self.slow_start  # the ramp's own burst says little; judge once it is over
            and self._latency_samples >= MIN_LATENCY_SAMPLES
            and current - base >= self.min_queue_delay_s
            and current > self.latency_tolerance * base
        )
        if not queueing:
            return False
        if self._since_gradient >= max(1.0, self.in_flight_limit / 2):
            # Shrink toward where latency is tolerable; √limit keeps a small queue so the
            # endpoint never waits for the next request.
            self._since_gradient = 0
            gradient = max(0.5, min(1.0, self.latency_tolerance * base / current))
            target = self.in_flight_limit * gradient + math.sqrt(self.in_flight_limit)
            limit = 0.5 * self.in_flight_limit + 0.5 * target
            floor = float(min(self.initial_in_flight, self.max_in_flight))
            self.in_flight_limit = max(floor, min(self.in_flight_limit, limit))
            self.slow_start = False
            self.latency_cuts += 1
        return True
