"""Pure retry decisions: what failed, whether to try again, and how long to wait first.

Nothing here sleeps, opens a socket or reads the clock: callers pass the attempt number, what
happened (an :class:`Outcome`), a ``random.Random`` and, where time matters, ``now``. The
policy is a value (like urllib3's ``Retry`` without its ``time.sleep``), so tests drive every
branch with a seeded ``Random`` and no waiting.

Failures are classified by whether the server may have run the model:

* ``CONNECT``: the request never reached the server; always safe to send again.
* ``RESET`` / ``TIMEOUT``: the request went out and the model may have run. Scoring is
  idempotent (a prediction has no side effect), so these are retried too.
* ``STATUS``: the server answered with an error status; retried only for the statuses in
  :attr:`RetryPolicy.retry_statuses` (overload and gateway errors).
* ``MALFORMED``: a 200 whose body could not be used (an HTML page from a proxy, truncated
  JSON); retried like a 5xx.

Why a call is retried is a :class:`Reason`, and every reason has its own bound in the policy
(:meth:`RetryPolicy.decide`): ``--max-attempts`` bounds failures, ``max_throttled`` bounds 429s
and 503s (the endpoint's pace, not the batch failing), ``max_token_refreshes`` the 401/403s a
fresh token should cure, ``max_not_ready_waits`` the waits for a stopped endpoint, and
``max_elapsed_s`` the whole call. So every bound a user sets holds, whatever the cause.

A ``400`` is ambiguous on Databricks (a stopped or updating endpoint answers 400 too), so it is
*not* decided by :meth:`RetryPolicy.next_delay`: the caller first runs
:func:`classify_bad_request` and, for ``NOT_READY``, pauses and polls the endpoint's state
instead of spending attempts.

(Over 400 lines because classifying a failure, parsing Retry-After and deciding the delay are
one decision, tested as one.)
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from random import Random
from typing import Any, NamedTuple

from engine.errors import UsageError

__all__ = [
    "BAD_REQUEST_PATTERNS",
    "DEFAULT_MAX_RETRY_AFTER_S",
    "NOISE_RESENDS",
    "BadRequestKind",
    "BadRequestPatterns",
    "FailureKind",
    "Outcome",
    "Reason",
    "RetryPolicy",
    "Tally",
    "classify_bad_request",
    "parse_retry_after",
    "pause_until",
]


#: Throttles of one call resent soon as noise (see :meth:`RetryPolicy.decide`); a call refused
#: more often than this backs off as usual, whatever the pacer thinks.
NOISE_RESENDS = 2


class FailureKind(enum.Enum):
    """How a request failed, ordered by what the server may have done with it."""

    STATUS = "status"  # the server answered with an error status
    CONNECT = "connect"  # never reached the server
    RESET = "reset"  # connection dropped after the request went out: may have been processed
    TIMEOUT = "timeout"  # no answer in time: may have been processed
    MALFORMED = "malformed"  # a 200 whose body could not be used (a proxy's page, truncated)


class Reason(enum.Enum):
    """Why a call is sent again; each has its own bound in :class:`RetryPolicy`."""

    FAILURE = "failure"  # it failed: counts against max_attempts
    THROTTLED = "throttled"  # 429/503: the endpoint's pace; counts against max_throttled
    STALE_TOKEN = "stale_token"  # 401/403 on a token that was replaced: send again at once
    NOT_READY = "not_ready"  # the endpoint was stopped or updating and has been waited for


@dataclass(frozen=True, slots=True)
class Tally:
    """How often one call has been sent again, by reason."""

    failures: int = 0
    throttled: int = 0
    stale_tokens: int = 0
    not_ready: int = 0

    @property
    def attempts(self) -> int:
        """Requests sent so far (the first included)."""
        return 1 + self.failures + self.throttled + self.stale_tokens + self.not_ready

    def add(self, reason: Reason) -> Tally:
        counts = {
            Reason.FAILURE: "failures",
            Reason.THROTTLED: "throttled",
            Reason.STALE_TOKEN: "stale_tokens",
            Reason.NOT_READY: "not_ready",
        }
        name = counts[reason]
        return replace(self, **{name: getattr(self, name) + 1})


@dataclass(frozen=True, slots=True)
class Outcome:
    """One failed attempt, as the retry policy needs to see it.

    Attributes:
        kind: how the attempt failed.
        status: the HTTP status when ``kind`` is ``STATUS``.
        retry_after_s: the server's ``Retry-After`` in seconds (see :func:`parse_retry_after`).
        error_code: Databricks' ``error_code`` from the body, when there was one.
        message: the server's message or the transport error, for logs and error reports.
        reason: why it is worth sending again, when the caller knows better than the status
            (a stale token, a not-ready endpoint); None lets the policy decide.
    """

    kind: FailureKind
    status: int | None = None
    retry_after_s: float | None = None
    error_code: str | None = None
    message: str = ""
    reason: Reason | None = None

    @property
    def brief(self) -> str:
        """``HTTP 429 REQUEST_LIMIT_EXCEEDED``, ``timeout``, ...: for log lines."""
        if self.kind is FailureKind.STATUS:
            return f"HTTP {self.status}" + (f" {self.error_code}" if self.error_code else "")
        return str(self.kind.value)


class BadRequestKind(enum.Enum):
    """What a ``400`` most likely means; see :func:`classify_bad_request`."""

    NOT_READY = "not_ready"  # endpoint stopped, updating or scaling up: transient, wait for it
    BAD_ROWS = "bad_rows"  # this batch's own data was refused: bisect or reject its rows
    BAD_SCHEMA = "bad_schema"  # every batch will fail (missing columns): stop the run
    UNKNOWN = "unknown"  # the body does not say: ask the control plane for the endpoint state


class BadRequestPatterns(NamedTuple):
    """Lower-case substrings of a 400's ``error_code`` or message, one group per verdict.

    Checked in the order schema, rows, not-ready. Schema first because MLflow wraps
    "Model is missing inputs" in a longer "Failed to enforce schema..." text; rows before
    not-ready because a model's own message or stack trace may contain any word (even
    "stopped"), and treating bad rows as a not-ready endpoint would wait forever.
    """

    not_ready_codes: tuple[str, ...]
    bad_schema: tuple[str, ...]
    bad_rows: tuple[str, ...]
    not_ready: tuple[str, ...]


#: Known 400 bodies. Databricks documents none for a stopped endpoint (WIRE.md: unverified),
#: so the not-ready phrases are deliberately broad; the MLflow scoring server's phrases are its own.
BAD_REQUEST_PATTERNS = BadRequestPatterns(
    not_ready_codes=("invalid_state", "resource_not_ready", "endpoint_not_ready"),
    bad_schema=(
        "model is missing inputs",
        "missing required input",
        "missing inputs [",
    ),
    bad_rows=(
        "invalid input",
        "failed to convert",
        "not compatible with model signature",
        "incompatible input types",
        "encountered an unexpected error while evaluating the model",
        "traceback (most recent call last)",
        "failed to parse input",
    ),
    not_ready=(
        "not ready",
        "not in a ready state",
        "is stopped",
        "has been stopped",
        "endpoint stopped",
        "currently being updated",
        "endpoint is updating",
        "update in progress",
        "scaled to zero",
        "scale from zero",
        "scaling from zero",
        "not yet ready",
        "invalid_state",
    ),
)


def classify_bad_request(status: int, error_code: str | None, message: str) -> BadRequestKind:
    """Tell a transient 400 (endpoint not ready) from the batch's own fault.

    Args:
        status: the HTTP status; anything but 400 is ``UNKNOWN`` (not a bad request).
        error_code: Databricks' ``error_code`` (``BAD_REQUEST``, ``INVALID_STATE``, ...).
        message: the server's message, or the start of a body that was not JSON.

    Returns:
        ``NOT_READY`` for a stopped/updating/scaling endpoint, ``BAD_SCHEMA`` when the model is
        missing columns (the whole run is wrong: never bisect), ``BAD_ROWS`` when the batch's
        data was refused, else ``UNKNOWN`` (the caller checks the endpoint's state).
    """
    if status != 400:
        return BadRequestKind.UNKNOWN
    code = (error_code or "").lower()
    text = message.lower()
    patterns = BAD_REQUEST_PATTERNS
    if code in patterns.not_ready_codes:
        return BadRequestKind.NOT_READY
    if _contains_any(text, patterns.bad_schema):
        return BadRequestKind.BAD_SCHEMA
    if _contains_any(text, patterns.bad_rows):
        return BadRequestKind.BAD_ROWS
    if _contains_any(text, patterns.not_ready):
        return BadRequestKind.NOT_READY
    return BadRequestKind.UNKNOWN


def _contains_any(text: str, needles: tuple[str, ...]) -> bool:
    return any(needle in text for needle in needles)


#: Longest Retry-After honoured unless set otherwise (``--max-retry-after``).
DEFAULT_MAX_RETRY_AFTER_S = 300.0
#: Exponents past this are capped before ``2 ** n`` (which would overflow a float near 1024).
_MAX_BACKOFF_EXPONENT = 62


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry one request. Computes delays; never sleeps.

    Attributes:
        max_attempts: total attempts per request, the first included (1 = never retry).
        base_delay_s: backoff ceiling for the first retry; it doubles per attempt.
        max_delay_s: cap on the backoff ceiling.
        default_retry_after_s: least wait after a 429 that had no ``Retry-After`` (databricks-sdk
            assumes 1 s too).
        max_retry_after_s: cap on a server's ``Retry-After``, so an absurd value cannot stall
            the run.
        retry_statuses: HTTP statuses worth another attempt.
        throttle_statuses: statuses that mean "over capacity, try later": they do not use up
            ``max_attempts`` but are bounded by ``max_throttled``.
        max_token_refreshes: 401/403s one call may answer with a fresh token.
        max_not_ready_waits: waits for a stopped or updating endpoint one call may make; the
            n-th is followed by ``min(0.5 * 2**n, max_not_ready_delay_s)`` s.
        max_elapsed_s: no retry starts after this long since the call began (None: no bound).
    """

    max_attempts: int = 10
    base_delay_s: float = 0.25
    max_delay_s: float = 30.0
    default_retry_after_s: float = 1.0
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    throttle_statuses: frozenset[int] = frozenset({429, 503})
    max_throttled: int = 100
    max_token_refreshes: int = 3
    max_not_ready_waits: int = 10
    max_not_ready_delay_s: float = 15.0
    max_elapsed_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))
        object.__setattr__(self, "throttle_statuses", frozenset(self.throttle_statuses))
        problems = _policy_problems(self)
        if problems:
            raise UsageError("invalid retry policy: " + "; ".join(problems))

    @classmethod
    def from_options(cls, **options: Any) -> RetryPolicy:
        """Build a policy from optional settings, ``None`` meaning "keep the default".

        Lets the CLI pass its flags straight through:
        ``RetryPolicy.from_options(max_attempts=args.max_attempts, max_delay_s=None)``.

        Raises:
            UsageError: an unknown setting name or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown retry setting(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**{name: value for name, value in options.items() if value is not None})

    def is_retryable(self, outcome: Outcome) -> bool:
        """True when another attempt could succeed (400s are the caller's to classify)."""
        if outcome.kind is FailureKind.STATUS:
            return outcome.status in self.retry_statuses
        return True

    def next_delay(self, attempt: int, outcome: Outcome, rng: Random) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        Backoff uses full jitter,
        ``rng.uniform(0, min(max_delay_s, base_delay_s * 2**(attempt-1)))``, raised to the
        server's ``Retry-After`` when given (capped at ``max_retry_after_s``), or to
        ``default_retry_after_s`` for a 429 without one.

        Args:
            attempt: the number of the attempt that just failed, from 1.
            outcome: how it failed.
            rng: the run's random source; a seeded one makes the sequence reproducible.

        Returns:
            The delay in seconds, or ``None`` when the outcome is not retryable or ``attempt``
            reached ``max_attempts``.

        Raises:
            ValueError: ``attempt`` is below 1 (a caller bug).
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if attempt >= self.max_attempts or not self.is_retryable(outcome):
            return None
        return max(self._backoff(attempt, rng), self._server_floor(outcome))

    def reason_of(self, outcome: Outcome) -> Reason:
        """Why ``outcome`` would be sent again: the caller's reason, else by its status."""
        if outcome.reason is not None:
            return outcome.reason
        if outcome.kind is FailureKind.STATUS and outcome.status in self.throttle_statuses:
            return Reason.THROTTLED
        return Reason.FAILURE

    def decide(
        self,
        tally: Tally,
        outcome: Outcome,
        rng: Random,
        *,
        elapsed_s: float = 0.0,
        noise_wait_s: float | None = None,
    ) -> tuple[float | None, Tally]:
        """Seconds to wait before sending the call again (None: give up), and the new tally.

        Args:
            tally: what this call has been through so far.
            outcome: how the last attempt went.
            rng: the run's random source.
            elapsed_s: time since the call began, for ``max_elapsed_s``.
            noise_wait_s: set when the caller's pacer holds the rate and judges this refusal
                noise, not the endpoint's limit (about one round trip; see
                :meth:`~engine.adaptive.RateController.noise_wait`). A 429 or 503 without
                ``Retry-After`` is then sent again after a short jittered wait,
                ``uniform(0, min(noise_wait_s, base_delay_s))``, instead of the backoff and the
                429 floor, for its
                first ``NOISE_RESENDS`` throttles: the pacer, not this wait, keeps the total rate
                under the limit (a worker idle for a second per random 429 only loses rows).
                A ``Retry-After`` is honoured whatever ``noise_wait_s`` says; ``max_throttled`` and
                ``max_elapsed_s`` bound the resends as any other.
        """
        reason = self.reason_of(outcome)
        tally = tally.add(reason)
        delay: float | None
        if reason is Reason.STALE_TOKEN:
            delay = 0.0 if tally.stale_tokens <= self.max_token_refreshes else None
        elif reason is Reason.NOT_READY:
            waits = tally.not_ready
            wait = min(0.5 * 2.0 ** min(waits, _MAX_BACKOFF_EXPONENT), self.max_not_ready_delay_s)
            delay = wait if waits <= self.max_not_ready_waits else None
        elif reason is Reason.THROTTLED:
            if tally.throttled > self.max_throttled:
                delay = None
            elif (
                noise_wait_s is not None
                and outcome.retry_after_s is None
                and tally.throttled <= NOISE_RESENDS
            ):
                delay = rng.uniform(0.0, min(max(noise_wait_s, 0.0), self.base_delay_s))
            else:
                delay = max(self._backoff(tally.throttled, rng), self._server_floor(outcome))
        else:
            delay = self.next_delay(max(1, tally.failures), outcome, rng)
        budget = self.max_elapsed_s
        if delay is not None and budget is not None and elapsed_s + delay > budget:
            delay = None
        return delay, tally

    def _backoff(self, attempt: int, rng: Random) -> float:
        exponent = min(attempt - 1, _MAX_BACKOFF_EXPONENT)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0**exponent)
        return rng.uniform(0.0, ceiling)

    def _server_floor(self, outcome: Outcome) -> float:
        """The least wait the server asked for (0 when it asked for none)."""
        if outcome.retry_after_s is not None and math.isfinite(outcome.retry_after_s):
            return min(max(outcome.retry_after_s, 0.0), self.max_retry_after_s)
        if outcome.kind is FailureKind.STATUS and outcome.status == 429:
            return min(self.default_retry_after_s, self.max_retry_after_s)
        return 0.0


def _policy_problems(policy: RetryPolicy) -> list[str]:
    problems = []
    if isinstance(policy.max_attempts, bool) or not isinstance(policy.max_attempts, int):
        problems.append(f"max_attempts must be a whole number, got {policy.max_attempts!r}")
    elif policy.max_attempts < 1:
        problems.append(f"max_attempts must be at least 1, got {policy.max_attempts}")
    for name in ("max_throttled", "max_token_refreshes", "max_not_ready_waits"):
        value = getattr(policy, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{name} must be a whole number >= 0, got {value!r}")
    if policy.max_elapsed_s is not None and not _is_seconds(policy.max_elapsed_s):
        problems.append("max_elapsed_s must be a finite number of seconds >= 0 or None")
    seconds: Mapping[str, object] = {
        "base_delay_s": policy.base_delay_s,
        "max_delay_s": policy.max_delay_s,
        "default_retry_after_s": policy.default_retry_after_s,
        "max_retry_after_s": policy.max_retry_after_s,
        "max_not_ready_delay_s": policy.max_not_ready_delay_s,
    }
    for name, value in seconds.items():
        if not _is_seconds(value):
            problems.append(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    bad_statuses = sorted(s for s in policy.retry_statuses if not _is_http_status(s))
    if bad_statuses:
        problems.append(f"retry_statuses must be HTTP statuses (100-599), got {bad_statuses}")
    return problems


def _is_seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def _is_http_status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Read a ``Retry-After`` header as seconds from ``now``.

    Args:
        value: the header: delta-seconds (``"120"``, also decimal ``"1.5"``) or an HTTP-date
            (``"Wed, 21 Oct 2015 07:28:00 GMT"``).
        now: the current time, for HTTP-dates; a naive value is taken as UTC.

    Returns:
        Seconds to wait (``0.0`` for a date in the past), or ``None`` when the header is
        missing or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (_as_utc(when) - _as_utc(now)).total_seconds())


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def pause_until(now: float, current_until: float, delay_s: float) -> float:
    """When a shared pause ends after one more request asked for ``delay_s``.

    Pauses only ever extend: a short delay never cuts a longer pause another request set.
    All times are on one monotonic clock (e.g. ``loop.time()``).
    """
    return max(current_until, now + max(delay_s, 0.0))
