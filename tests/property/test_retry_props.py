"""Properties of RetryPolicy.next_delay over any policy, outcome, attempt and seed."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from engine.retry import FailureKind, Outcome, RetryPolicy

seconds = st.floats(min_value=0.0, max_value=1_000.0, allow_nan=False)

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=50),
    base_delay_s=seconds,
    max_delay_s=seconds,
    default_retry_after_s=seconds,
    max_retry_after_s=seconds,
)

transport_failures = st.builds(
    Outcome, kind=st.sampled_from([FailureKind.CONNECT, FailureKind.RESET, FailureKind.TIMEOUT])
)
outcomes = st.one_of(
    transport_failures,
    st.builds(
        Outcome,
        kind=st.just(FailureKind.STATUS),
        status=st.sampled_from([400, 401, 403, 404, 429, 500, 502, 503, 504]),
        retry_after_s=st.one_of(
            st.none(),
            st.floats(min_value=-10.0, max_value=1e9, allow_nan=False, allow_infinity=False),
        ),
    ),
)


@st.composite
def policy_and_attempt(draw: st.DrawFn) -> tuple[RetryPolicy, int]:
    """A policy and an attempt number that is mostly below its ``max_attempts``."""
    policy = draw(policies)
    attempt = draw(st.integers(min_value=1, max_value=policy.max_attempts + 2))
    return policy, attempt


@given(policy_and_attempt(), outcomes, st.integers())
def test_delay_is_within_bounds_or_none(
    case: tuple[RetryPolicy, int], outcome: Outcome, seed: int
) -> None:
    policy, attempt = case
    delay = policy.next_delay(attempt, outcome, random.Random(seed))
    if delay is None:
        return
    upper = max(policy.max_delay_s, policy.max_retry_after_s)
    assert 0.0 <= delay <= upper


@given(policies, outcomes, st.integers(min_value=0, max_value=100), st.integers())
def test_none_from_max_attempts_on(
    policy: RetryPolicy, outcome: Outcome, extra: int, seed: int
) -> None:
    attempt = policy.max_attempts + extra
    assert policy.next_delay(attempt, outcome, random.Random(seed)) is None


@given(policy_and_attempt(), outcomes)
def test_retryable_outcomes_get_a_delay_before_max_attempts(
    case: tuple[RetryPolicy, int], outcome: Outcome
) -> None:
    policy, attempt = case
    delay = policy.next_delay(attempt, outcome, random.Random(0))
    expected = attempt < policy.max_attempts and policy.is_retryable(outcome)
    assert (delay is not None) == expected


@given(policies, st.lists(outcomes, min_size=1, max_size=20), st.integers())
def test_same_seed_gives_the_same_sequence(
    policy: RetryPolicy, failures: list[Outcome], seed: int
) -> None:
    def run(rng: random.Random) -> list[float | None]:
        return [policy.next_delay(n, o, rng) for n, o in enumerate(failures, start=1)]

    assert run(random.Random(seed)) == run(random.Random(seed))


@given(policy_and_attempt(), outcomes, st.integers())
def test_server_retry_after_is_honoured_up_to_its_cap(
    case: tuple[RetryPolicy, int], outcome: Outcome, seed: int
) -> None:
    policy, attempt = case
    delay = policy.next_delay(attempt, outcome, random.Random(seed))
    if delay is None or outcome.retry_after_s is None:
        return
    assert delay >= min(max(outcome.retry_after_s, 0.0), policy.max_retry_after_s)


throttled = st.builds(
    Outcome,
    kind=st.just(FailureKind.STATUS),
    status=st.sampled_from([429, 503]),
    retry_after_s=st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
)


@given(policy_and_attempt(), throttled, st.integers())
def test_throttled_delay_stays_between_the_server_floor_and_the_caps(
    case: tuple[RetryPolicy, int], outcome: Outcome, seed: int
) -> None:
    policy, attempt = case
    delay = policy.next_delay(attempt, outcome, random.Random(seed))
    if attempt >= policy.max_attempts:
        assert delay is None
        return
    assert delay is not None
    assert outcome.retry_after_s is not None
    floor = min(outcome.retry_after_s, policy.max_retry_after_s)
    assert floor <= delay <= max(policy.max_delay_s, policy.max_retry_after_s)
