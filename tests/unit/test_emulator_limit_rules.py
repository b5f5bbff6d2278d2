"""The emulator's limits as pure values: default burst, schedules, bucket retuning, random 429s,
hangs, and the concurrency gate. No sockets, no sleeps: time is a FakeClock or a number."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from engine.emulator import FakeClock, Faults
from engine.emulator.cli import add_arguments, build_config
from engine.emulator.config import KEEP, EndpointConfig, LimitStep
from engine.emulator.gate import ConcurrencyGate
from engine.emulator.plan import (
    Limits,
    TokenBucket,
    default_burst,
    limits_at,
    plan_request,
    plan_throttle,
)
from engine.emulator.runtime import EmulatorState
from engine.errors import UsageError

# ---- default burst -----------------------------------------------------------------------


@pytest.mark.parametrize(("qps", "burst"), [(40.0, 4.0), (2000.0, 200.0), (5.0, 1.0), (0.1, 1.0)])
def test_default_burst_is_a_tenth_of_a_second_at_least_one(qps: float, burst: float) -> None:
    assert default_burst(qps) == burst
    assert limits_at(Faults(qps_limit=qps), 0.0) == Limits(qps, burst, None)


def test_explicit_burst_wins_and_must_be_at_least_one() -> None:
    assert limits_at(Faults(qps_limit=100.0, qps_burst=1.0), 0.0).qps_burst == 1.0
    with pytest.raises(ValueError, match="qps_burst"):
        Faults(qps_limit=100.0, qps_burst=0.5)


def test_a_default_bucket_at_forty_per_second_grants_four_then_one_per_25_ms() -> None:
    limits = limits_at(Faults(qps_limit=40.0), 0.0)
    assert limits.qps_limit is not None and limits.qps_burst is not None
    bucket = TokenBucket(limits.qps_limit, limits.qps_burst, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, pytest.approx(0.025)]
    assert bucket.take(0.025) == 0.0


# ---- schedule ----------------------------------------------------------------------------


def test_schedule_steps_apply_at_or_after_their_time_and_keep_what_they_do_not_name() -> None:
    faults = Faults(
        qps_limit=20.0,
        max_concurrency=8,
        schedule=(
            LimitStep(at_s=8.0, qps_limit=60.0),
            LimitStep(at_s=10.0, max_concurrency=None),
            LimitStep(at_s=12.0, qps_limit=None, max_concurrency=2),
        ),
    )
    assert limits_at(faults, 0.0) == Limits(20.0, 2.0, 8)
    assert limits_at(faults, 7.999) == Limits(20.0, 2.0, 8)
    assert limits_at(faults, 8.0) == Limits(60.0, 6.0, 8)
    assert limits_at(faults, 10.0) == Limits(60.0, 6.0, None)
    assert limits_at(faults, 99.0) == Limits(None, None, 2)


def test_schedule_from_json_objects_missing_is_keep_and_null_lifts() -> None:
    faults = Faults(
        schedule=[{"at_s": 0, "qps_limit": 5}, {"at_s": 3, "qps_limit": None}]  # type: ignore[arg-type]
    )
    assert faults.schedule == (
        LimitStep(at_s=0, qps_limit=5),
        LimitStep(at_s=3, qps_limit=None),
    )
    assert faults.schedule[0].max_concurrency is KEEP
    assert faults.as_dict()["schedule"] == [
        {"at_s": 0, "qps_limit": 5},
        {"at_s": 3, "qps_limit": None},
    ]


@pytest.mark.parametrize(
    "schedule",
    [
        (LimitStep(at_s=5.0, qps_limit=1.0), LimitStep(at_s=2.0, qps_limit=2.0)),
        (LimitStep(at_s=2.0, qps_limit=1.0), LimitStep(at_s=2.0, qps_limit=2.0)),
    ],
)
def test_schedule_steps_must_increase(schedule: tuple[LimitStep, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Faults(schedule=schedule)


@pytest.mark.parametrize(
    "bad", [{"at_s": -1.0}, {"at_s": 0.0, "qps_limit": 0.0}, {"at_s": 0.0, "max_concurrency": 0}]
)
def test_limit_step_refuses_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LimitStep(**bad)  # type: ignore[arg-type]


def test_retuned_bucket_keeps_earned_tokens_and_refills_at_the_new_rate() -> None:
    bucket = TokenBucket(rate=20.0, burst=2.0, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    bucket.retune(rate=60.0, burst=6.0, now=0.025)  # half a token earned at 20/s
    assert bucket.take(0.025) == pytest.approx(0.5 / 60.0)  # no fresh burst of six
    assert bucket.take(0.025 + 0.51 / 60.0) == 0.0
    bucket.retune(rate=60.0, burst=6.0, now=1.0)
    assert [bucket.take(1.0) for _ in range(6)] == [0.0] * 6  # full at the new size


def test_retuning_down_caps_the_saved_tokens_at_the_new_burst() -> None:
    bucket = TokenBucket(rate=60.0, burst=6.0, now=0.0)
    bucket.retune(rate=20.0, burst=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.05)]


def runtime_with(faults: Faults, clock: FakeClock) -> EmulatorState:
    from engine.emulator.config import EmulatorConfig

    config = EmulatorConfig(endpoints=(EndpointConfig(name="demo-text", faults=faults),))
    return EmulatorState(config, clock, clock.sleep)


def granted(state: EmulatorState, clock: FakeClock, seconds: float, step_s: float) -> int:
    """Requests granted when one arrives every ``step_s`` for ``seconds``."""
    runtime = state.endpoints["demo-text"]
    count = 0
    for _ in range(round(seconds / step_s)):
        runtime.refresh_limits(clock())
        count += runtime.throttle_wait(clock()) == 0.0
        clock.advance(step_s)
    return count


def test_schedule_starts_at_the_first_request_and_steps_on_the_injected_clock() -> None:
    clock = FakeClock(start=100.0)
    faults = Faults(qps_limit=20.0, schedule=(LimitStep(at_s=8.0, qps_limit=60.0),))
    state = runtime_with(faults, clock)
    runtime = state.endpoints["demo-text"]
    clock.advance(50.0)  # idle time before the first request does not count
    assert runtime.schedule_started is None
    first = granted(state, clock, 8.0, 0.001)
    assert runtime.schedule_started == 150.0
    assert first == pytest.approx(20 * 8 + 2, abs=1)  # the burst, then 20/s
    second = granted(state, clock, 4.0, 0.001)
    assert second == pytest.approx(60 * 4, abs=1)  # no fresh burst at the step
    assert state.snapshot("demo-text")["limits"]["qps_limit"] == 60.0


def test_set_faults_restarts_the_schedule() -> None:
    clock = FakeClock()
    faults = Faults(qps_limit=1.0, schedule=(LimitStep(at_s=5.0, qps_limit=50.0),))
    state = runtime_with(faults, clock)
    runtime = state.endpoints["demo-text"]
    runtime.refresh_limits(clock())
    clock.advance(6.0)
    assert runtime.refresh_limits(clock()).qps_limit == 50.0
    runtime.set_faults(faults, clock())
    assert runtime.refresh_limits(clock()).qps_limit == 1.0
    clock.advance(5.0)
    assert runtime.refresh_limits(clock()).qps_limit == 50.0


def test_concurrency_step_resizes_the_gate_in_place() -> None:
    clock = FakeClock()
    faults = Faults(max_concurrency=2, schedule=(LimitStep(at_s=1.0, max_concurrency=4),))
    state = runtime_with(faults, clock)
    runtime = state.endpoints["demo-text"]
    runtime.refresh_limits(clock())
    assert [runtime.gate.try_enter() for _ in range(3)] == [True, True, False]
    clock.advance(1.0)
    runtime.refresh_limits(clock())
    assert [runtime.gate.try_enter() for _ in range(3)] == [True, True, False]
    assert runtime.gate.held == 4


# ---- random 429s and hangs -----------------------------------------------------------------


def test_random_throttles_are_seeded_and_near_their_rate() -> None:
    faults = Faults(seed=3, throttle_rate=0.05)
    draws = [plan_throttle(faults, n) for n in range(4000)]
    assert draws == [plan_throttle(faults, n) for n in range(4000)]
    assert sum(draws) / 4000 == pytest.approx(0.05, abs=0.012)
    assert not any(plan_throttle(Faults(seed=3), n) for n in range(1000))


def test_hang_every_hangs_exactly_those_requests() -> None:
    faults = Faults(hang_every=500, latency_ms=10.0)
    hung = [n for n in range(1000) if plan_request(faults, n).outcome == "hang"]
    assert hung == [499, 999]


def test_hang_rate_is_seeded_and_leaves_other_outcomes_as_they_were() -> None:
    plain = Faults(seed=8, error_503_rate=0.03, reset_before_rate=0.01)
    hanging = Faults(seed=8, error_503_rate=0.03, reset_before_rate=0.01, hang_rate=0.002)
    outcomes = [plan_request(hanging, n).outcome for n in range(20_000)]
    assert outcomes == [plan_request(hanging, n).outcome for n in range(20_000)]
    assert outcomes.count("hang") / 20_000 == pytest.approx(0.002, abs=0.001)
    before = [plan_request(plain, n).outcome for n in range(20_000)]
    assert all(o == b for o, b in zip(outcomes, before, strict=True) if o != "hang")


@pytest.mark.parametrize(
    "bad",
    [
        {"throttle_rate": 1.5},
        {"hang_rate": -0.1},
        {"hang_every": 0},
        {"error_503_rate": 0.6, "hang_rate": 0.6},
    ],
)
def test_new_fault_knobs_refuse_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**bad)  # type: ignore[arg-type]


# ---- the concurrency gate ----------------------------------------------------------------


async def test_gate_queues_in_order_and_admits_on_leave() -> None:
    gate = ConcurrencyGate(1)
    await gate.enter()
    order: list[int] = []

    async def wait(n: int) -> None:
        await gate.enter()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert order == [] and gate.full and not gate.try_enter()
    for _ in range(3):
        gate.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and gate.held == 1


async def test_gate_lowered_below_its_holders_admits_nobody_until_they_leave() -> None:
    gate = ConcurrencyGate(3)
    assert all(gate.try_enter() for _ in range(3))
    gate.set_limit(1)
    gate.leave()
    assert not gate.try_enter()
    gate.leave()
    assert not gate.try_enter()
    gate.leave()
    assert gate.try_enter()


async def test_gate_raised_admits_waiters_at_once_and_a_cancelled_waiter_leaves_the_line() -> None:
    gate = ConcurrencyGate(1)
    assert gate.try_enter()
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set_limit(2)
    await second
    assert first.cancelled() and gate.held == 2
    gate.leave()
    assert gate.try_enter()  # no ghost of the cancelled waiter holds the freed slot


# ---- CLI ---------------------------------------------------------------------------------


def parse(*flags: str) -> Faults:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_config(parser.parse_args(list(flags))).endpoints[0].faults


def test_cli_schedules_merge_by_time() -> None:
    faults = parse(
        "--limit-schedule", "0:20,8:60,20:none", "--concurrency-schedule", "8:4", "--qps-burst", "1"
    )
    assert faults.qps_burst == 1.0
    assert faults.schedule == (
        LimitStep(at_s=0.0, qps_limit=20.0),
        LimitStep(at_s=8.0, qps_limit=60.0, max_concurrency=4),
        LimitStep(at_s=20.0, qps_limit=None),
    )


def test_cli_throttle_and_hang_flags() -> None:
    faults = parse("--throttle-rate", "0.05", "--hang-rate", "0.01", "--hang-every", "500")
    assert (faults.throttle_rate, faults.hang_rate, faults.hang_every) == (0.05, 0.01, 500)


@pytest.mark.parametrize(
    "flags",
    [
        ("--limit-schedule", "0:x"),
        ("--limit-schedule", "8"),
        ("--concurrency-schedule", "0:2.5"),
        ("--limit-schedule", "0:-5"),
    ],
)
def test_cli_bad_schedules_are_usage_errors(flags: tuple[str, ...]) -> None:
    with pytest.raises(UsageError, match="emulate"):
        parse(*flags)
