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

outcomes = st.one_of(
    st.builds(Outcome, kind=st.sampled_from([FailureKind.CONNECT, FailureKind.RESET])),
    st.builds(Outcome, kind=st.just(FailureKind.TIMEOUT)),
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


@given(policies, outcomes, st.integers(min_value=1, max_value=200), st.integers())
def test_delay_is_within_bounds_or_none(
    policy: RetryPolicy, outcome: Outcome, attempt: int, seed: int
) -> None:
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


@given(policies, outcomes, st.integers(min_value=1, max_value=49))
def test_retryable_outcomes_get_a_delay_before_max_attempts(
    policy: RetryPolicy, outcome: Outcome, attempt: int
) -> None:
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


@given(policies, outcomes, st.integers(min_value=1, max_value=49), st.integers())
def test_server_retry_after_is_honoured_up_to_its_cap(
    policy: RetryPolicy, outcome: Outcome, attempt: int, seed: int
) -> None:
    delay = policy.next_delay(attempt, outcome, random.Random(seed))
    if delay is None or outcome.retry_after_s is None:
        return
    assert delay >= min(max(outcome.retry_after_s, 0.0), policy.max_retry_after_s)
