"""Retry decisions as plain values: seeded randomness, no clock, no sleeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.errors import UsageError
from engine.retry import (
    NOISE_RESENDS,
    BadRequestKind,
    FailureKind,
    Outcome,
    RetryPolicy,
    Reason,
    Tally,
    classify_bad_request,
    parse_retry_after,
    pause_until,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def status(code: int, retry_after_s: float | None = None) -> Outcome:
    return Outcome(kind=FailureKind.STATUS, status=code, retry_after_s=retry_after_s)


class FixedRandom(random.Random):
    """A Random whose uniform() always returns the top of the range, to pin the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class ZeroRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


# --- next_delay -------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_per_attempt_until_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, max_attempts=100)
    ceilings = [policy.next_delay(n, status(503), FixedRandom()) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_is_full_jitter_between_zero_and_the_ceiling() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, max_attempts=100)
    rng = random.Random(7)
    delays = [policy.next_delay(4, status(503), rng) for _ in range(500)]
    assert all(d is not None and 0.0 <= d <= 8.0 for d in delays)
    numbers = [d for d in delays if d is not None]
    # full jitter spreads over the whole range, not just near the top
    assert min(numbers) < 1.0
    assert max(numbers) > 7.0


def test_backoff_matches_uniform_draws_of_the_same_seed() -> None:
    policy = RetryPolicy(base_delay_s=0.25, max_delay_s=30.0)
    expected = random.Random(42)
    got = random.Random(42)
    for attempt in range(1, 6):
        ceiling = min(30.0, 0.25 * 2 ** (attempt - 1))
        assert policy.next_delay(attempt, status(502), got) == expected.uniform(0, ceiling)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(max_attempts=10_000, max_delay_s=5.0)
    assert policy.next_delay(5_000, status(503), FixedRandom()) == 5.0


def test_retry_after_is_a_floor_on_the_backoff() -> None:
    policy = RetryPolicy(base_delay_s=0.25, max_delay_s=30.0)
    assert policy.next_delay(1, status(503, retry_after_s=7.0), FixedRandom()) == 7.0
    # a backoff longer than Retry-After wins
    assert policy.next_delay(9, status(503, retry_after_s=7.0), FixedRandom()) == 30.0


def test_retry_after_above_the_cap_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert policy.next_delay(1, status(429, retry_after_s=86_400.0), ZeroRandom()) == 60.0


def test_retry_after_of_zero_or_negative_leaves_plain_backoff() -> None:
    policy = RetryPolicy(base_delay_s=0.25)
    assert policy.next_delay(1, status(503, retry_after_s=0.0), ZeroRandom()) == 0.0
    assert policy.next_delay(1, status(503, retry_after_s=-5.0), ZeroRandom()) == 0.0


def test_429_without_retry_after_waits_at_least_the_default() -> None:
    policy = RetryPolicy(default_retry_after_s=1.0, base_delay_s=0.25)
    assert policy.next_delay(1, status(429), ZeroRandom()) == 1.0
    assert policy.next_delay(1, status(429), FixedRandom()) == 1.0


def test_429_with_retry_after_uses_the_server_value_not_the_default() -> None:
    policy = RetryPolicy(default_retry_after_s=1.0)
    assert policy.next_delay(1, status(429, retry_after_s=0.2), ZeroRandom()) == 0.2


def test_503_without_retry_after_has_no_floor() -> None:
    policy = RetryPolicy(default_retry_after_s=1.0)
    assert policy.next_delay(1, status(503), ZeroRandom()) == 0.0


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_overload_and_gateway_statuses_are_retried(code: int) -> None:
    assert RetryPolicy().next_delay(1, status(code), random.Random(0)) is not None


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 413, 422, 501])
def test_client_error_statuses_give_up_at_once(code: int) -> None:
    assert RetryPolicy().next_delay(1, status(code), random.Random(0)) is None


def test_status_outcome_without_a_status_is_not_retried() -> None:
    outcome = Outcome(kind=FailureKind.STATUS)
    assert RetryPolicy().next_delay(1, outcome, random.Random(0)) is None


@pytest.mark.parametrize("kind", [FailureKind.CONNECT, FailureKind.RESET, FailureKind.TIMEOUT])
def test_transport_failures_are_retried(kind: FailureKind) -> None:
    policy = RetryPolicy()
    assert policy.is_retryable(Outcome(kind=kind))
    assert policy.next_delay(1, Outcome(kind=kind), random.Random(0)) is not None


def test_custom_retry_statuses_replace_the_defaults() -> None:
    policy = RetryPolicy(retry_statuses=frozenset({409}))
    assert policy.is_retryable(status(409))
    assert not policy.is_retryable(status(503))


def test_gives_up_once_attempt_reaches_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(1)
    assert policy.next_delay(1, status(503), rng) is not None
    assert policy.next_delay(2, status(503), rng) is not None
    assert policy.next_delay(3, status(503), rng) is None
    assert policy.next_delay(4, status(503), rng) is None


def test_max_attempts_one_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert policy.next_delay(1, Outcome(kind=FailureKind.CONNECT), random.Random(0)) is None


def test_attempt_zero_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().next_delay(0, status(503), random.Random(0))


def test_a_rejected_outcome_does_not_consume_randomness() -> None:
    policy = RetryPolicy(max_attempts=2)
    rng = random.Random(3)
    policy.next_delay(1, status(404), rng)
    policy.next_delay(2, status(503), rng)
    assert rng.random() == random.Random(3).random()


# --- construction -----------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 10
    assert policy.base_delay_s == 0.25
    assert policy.max_delay_s == 30.0
    assert policy.default_retry_after_s == 1.0
    assert policy.max_retry_after_s == 300.0
    assert policy.retry_statuses == frozenset({429, 500, 502, 503, 504})


def test_policy_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[misc]


def test_a_plain_set_of_statuses_is_frozen() -> None:
    policy = RetryPolicy(retry_statuses={429})  # type: ignore[arg-type]
    assert isinstance(policy.retry_statuses, frozenset)
    assert hash(policy) == hash(RetryPolicy(retry_statuses=frozenset({429})))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": 2.5}, "max_attempts must be a whole number"),
        ({"base_delay_s": -1.0}, "base_delay_s"),
        ({"max_delay_s": float("nan")}, "max_delay_s"),
        ({"default_retry_after_s": float("inf")}, "default_retry_after_s"),
        ({"max_retry_after_s": -0.1}, "max_retry_after_s"),
        ({"retry_statuses": frozenset({429, 42})}, "retry_statuses"),
    ],
)
def test_invalid_settings_raise_usage_error_naming_the_setting(
    settings: dict[str, object], named: str
) -> None:
    with pytest.raises(UsageError, match=named):
        RetryPolicy(**settings)  # type: ignore[arg-type]


def test_every_invalid_setting_is_reported_at_once() -> None:
    with pytest.raises(UsageError) as info:
        RetryPolicy(max_attempts=0, max_delay_s=-1.0)
    assert "max_attempts" in str(info.value)
    assert "max_delay_s" in str(info.value)


def test_from_options_ignores_none_and_keeps_defaults() -> None:
    policy = RetryPolicy.from_options(max_attempts=4, max_delay_s=None)
    assert policy == RetryPolicy(max_attempts=4)


def test_from_options_rejects_unknown_settings() -> None:
    with pytest.raises(UsageError, match="max_retries"):
        RetryPolicy.from_options(max_retries=4)


# --- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), (" 3 ", 3.0), ("1.5", 1.5), ("0.25", 0.25)],
)
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    header = "Sun, 01 Mar 2026 12:00:30 GMT"
    assert parse_retry_after(header, now=NOW) == 30.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    header = "Sun, 01 Mar 2026 11:59:00 GMT"
    assert parse_retry_after(header, now=NOW) == 0.0


def test_retry_after_http_date_compares_across_time_zones() -> None:
    header = "Sun, 01 Mar 2026 12:01:00 GMT"
    now_in_paris = NOW.astimezone(timezone(timedelta(hours=1)))
    assert parse_retry_after(header, now=now_in_paris) == 60.0


def test_retry_after_with_a_naive_now_is_taken_as_utc() -> None:
    header = "Sun, 01 Mar 2026 12:00:10 GMT"
    assert parse_retry_after(header, now=NOW.replace(tzinfo=None)) == 10.0


@pytest.mark.parametrize(
    "header",
    [None, "", "soon", "-5", "1e3", "inf", "nan", "12 seconds", "Mon, 99 Foo 2026", "0x10"],
)
def test_unreadable_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


# --- classify_bad_request ---------------------------------------------------------------------

FAILED_TO_CONVERT = (
    "Invalid input. Data is not compatible with model signature. Failed to convert column a "
    "to type 'float64'. Error: 'could not convert string to float: 'x''"
)
MISSING_INPUTS = "Model is missing inputs ['b']."
MISSING_INPUTS_WRAPPED = (
    "Failed to enforce schema of data '   a\n0  1' with schema '['a': double (required), "
    "'b': long (required)]'. Error: Model is missing inputs ['b']."
)
STACK_TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/model/code/predict.py", line 12, in predict\n'
    "    return self.model.predict(df)\n"
    "ValueError: Input contains NaN, infinity or a value too large for dtype('float64')."
)
MODEL_CRASH = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized "
    "input Dataframe is compatible with the model for inference."
)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("BAD_REQUEST", FAILED_TO_CONVERT),
        ("BAD_REQUEST", STACK_TRACE),
        ("BAD_REQUEST", MODEL_CRASH),
        (None, FAILED_TO_CONVERT),
        ("INVALID_PARAMETER_VALUE", "Invalid input: column 'c' has values that are not dates"),
    ],
)
def test_data_refusals_are_bad_rows(code: str | None, message: str) -> None:
    assert classify_bad_request(400, code, message) is BadRequestKind.BAD_ROWS


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("INVALID_PARAMETER_VALUE", MISSING_INPUTS),
        ("INVALID_PARAMETER_VALUE", MISSING_INPUTS_WRAPPED),
        ("BAD_REQUEST", "Invalid input. " + MISSING_INPUTS),
    ],
)
def test_missing_columns_are_bad_schema(code: str, message: str) -> None:
    assert classify_bad_request(400, code, message) is BadRequestKind.BAD_SCHEMA


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("INVALID_STATE", "Endpoint example-endpoint is not in a ready state."),
        ("INVALID_STATE", ""),
        (None, "Endpoint is not ready"),
        ("BAD_REQUEST", "The endpoint is currently being updated. Please retry later."),
        (None, "Endpoint example-endpoint is stopped. Start it to serve requests."),
        (None, "The served entity is scaled to zero and is scaling up."),
        ("RESOURCE_CONFLICT", "Model vanilla_simple_model-2 is not ready yet."),
        (None, "INVALID_STATE: endpoint has been stopped"),
    ],
)
def test_endpoint_not_ready_answers_are_transient(code: str | None, message: str) -> None:
    assert classify_bad_request(400, code, message) is BadRequestKind.NOT_READY


def test_a_model_message_mentioning_stopped_is_still_bad_rows() -> None:
    message = STACK_TRACE + "\nRuntimeError: the endpoint is stopped?"
    assert classify_bad_request(400, "BAD_REQUEST", message) is BadRequestKind.BAD_ROWS


@pytest.mark.parametrize(
    ("code", "message"),
    [("BAD_REQUEST", "Something odd happened"), (None, ""), (None, "<html>Bad Request</html>")],
)
def test_unrecognised_400s_are_unknown(code: str | None, message: str) -> None:
    assert classify_bad_request(400, code, message) is BadRequestKind.UNKNOWN


@pytest.mark.parametrize("code", [401, 403, 404, 429, 500, 503])
def test_other_statuses_are_not_bad_requests(code: int) -> None:
    assert classify_bad_request(code, "INVALID_STATE", "not ready") is BadRequestKind.UNKNOWN


def test_classification_ignores_case() -> None:
    assert classify_bad_request(400, "invalid_state", "") is BadRequestKind.NOT_READY
    assert classify_bad_request(400, None, "MODEL IS MISSING INPUTS ['X']") is (
        BadRequestKind.BAD_SCHEMA
    )


# --- shared backoff ---------------------------------------------------------------------------


def test_pause_until_only_extends() -> None:
    assert pause_until(10.0, 0.0, 2.0) == 12.0
    assert pause_until(10.0, 15.0, 2.0) == 15.0
    assert pause_until(10.0, 11.0, 2.0) == 12.0
    assert pause_until(10.0, 0.0, -3.0) == 10.0


# --- decide: one bound per reason --------------------------------------------------------------


def decide_until_none(policy: RetryPolicy, outcome: Outcome) -> Tally:
    tally, rng = Tally(), random.Random(0)
    while True:
        delay, tally = policy.decide(tally, outcome, rng)
        if delay is None:
            return tally


def test_throttles_do_not_use_up_attempts_but_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3, max_throttled=7)
    tally = decide_until_none(policy, status(429))
    assert tally.throttled == 8 and tally.failures == 0  # the 8th throttle is one too many


def test_failures_are_bounded_by_max_attempts() -> None:
    tally = decide_until_none(RetryPolicy(max_attempts=4), status(502))
    assert tally.failures == 4 and tally.attempts == 5


def test_a_stale_token_is_sent_again_at_once_a_few_times() -> None:
    policy = RetryPolicy(max_token_refreshes=3)
    stale = Outcome(kind=FailureKind.STATUS, status=401, reason=Reason.STALE_TOKEN)
    delay, tally = policy.decide(Tally(), stale, random.Random(0))
    assert delay == 0.0
    assert decide_until_none(policy, stale).stale_tokens == 4


def test_not_ready_waits_grow_to_their_cap_and_are_bounded() -> None:
    policy = RetryPolicy(max_not_ready_waits=6, max_not_ready_delay_s=4.0)
    outcome = Outcome(kind=FailureKind.STATUS, status=400, reason=Reason.NOT_READY)
    tally, delays = Tally(), []
    while True:
        delay, tally = policy.decide(tally, outcome, random.Random(0))
        if delay is None:
            break
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_no_retry_starts_past_the_elapsed_budget() -> None:
    policy = RetryPolicy(max_attempts=100, base_delay_s=1.0, max_elapsed_s=60.0)
    delay, _ = policy.decide(Tally(), status(503), FixedRandom(), elapsed_s=59.5)
    assert delay is None
    delay, _ = policy.decide(Tally(), status(503), FixedRandom(), elapsed_s=10.0)
    assert delay == 1.0


def test_a_malformed_answer_is_retried_like_a_5xx() -> None:
    tally = decide_until_none(RetryPolicy(max_attempts=3), Outcome(kind=FailureKind.MALFORMED))
    assert tally.failures == 3


def test_a_noise_throttle_is_resent_within_about_a_round_trip() -> None:
    policy = RetryPolicy()  # base_delay_s 0.25, default_retry_after_s 1.0
    for code in (429, 503):
        delay, tally = policy.decide(Tally(), status(code), FixedRandom(0), noise_wait_s=0.05)
        assert delay == 0.05 and tally.throttled == 1  # not the 429's default second
    # the short wait is capped by the backoff's first ceiling, whatever the round trip
    delay, _ = policy.decide(Tally(), status(429), FixedRandom(0), noise_wait_s=9.0)
    assert delay == policy.base_delay_s


def test_without_noise_a_bare_429_still_waits_the_default_second() -> None:
    delay, _ = RetryPolicy().decide(Tally(), status(429), ZeroRandom(0))
    assert delay == 1.0


def test_a_retry_after_is_honoured_even_when_the_refusal_looks_like_noise() -> None:
    delay, _ = RetryPolicy().decide(
        Tally(), status(429, retry_after_s=3.0), ZeroRandom(0), noise_wait_s=0.05
    )
    assert delay == 3.0


def test_a_call_refused_again_and_again_backs_off_as_usual() -> None:
    policy = RetryPolicy()
    tally = Tally()
    delays = []
    for _ in range(NOISE_RESENDS + 1):
        delay, tally = policy.decide(tally, status(429), FixedRandom(0), noise_wait_s=0.05)
        delays.append(delay)
    assert delays[:NOISE_RESENDS] == [0.05] * NOISE_RESENDS
    assert delays[-1] is not None and delays[-1] >= policy.default_retry_after_s


def test_noise_resends_stay_bounded_by_max_throttled_and_max_elapsed() -> None:
    policy = RetryPolicy(max_throttled=1)
    delay, tally = policy.decide(Tally(), status(429), ZeroRandom(0), noise_wait_s=0.05)
    assert delay == 0.0
    delay, _ = policy.decide(tally, status(429), ZeroRandom(0), noise_wait_s=0.05)
    assert delay is None
    late, _ = RetryPolicy(max_elapsed_s=10.0).decide(
        Tally(), status(429), FixedRandom(0), elapsed_s=9.99, noise_wait_s=0.05
    )
    assert late is None


def test_a_failure_is_not_noise_and_uses_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.25)
    delay, tally = policy.decide(Tally(), status(502), FixedRandom(0), noise_wait_s=0.01)
    assert delay == 0.25  # the usual backoff, not the noise wait
    delay, _ = policy.decide(tally, status(502), FixedRandom(0), noise_wait_s=0.01)
    assert delay is None
