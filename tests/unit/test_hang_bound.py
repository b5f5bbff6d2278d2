"""When a request is taken for hung: a pure rule on the endpoint's observed latency."""

from __future__ import annotations

from engine.hang import HangBound


def test_before_any_answer_a_request_may_take_the_whole_request_timeout() -> None:
    assert HangBound(ceiling_s=300.0).deadline_s() == 300.0


def test_a_fast_endpoint_gets_the_floor_not_ten_times_its_p99() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for _ in range(200):
        bound.record(0.010)
    assert bound.deadline_s() == 30.0


def test_a_slow_endpoint_gets_ten_times_its_p99() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for i in range(200):
        bound.record(4.0 + (i % 10) * 0.1)  # 4.0 .. 4.9 s
    assert bound.deadline_s() == 49.0


def test_the_request_timeout_is_never_exceeded() -> None:
    bound = HangBound(ceiling_s=60.0, floor_s=30.0)
    for _ in range(100):
        bound.record(20.0)
    assert bound.deadline_s() == 60.0


def test_until_twenty_answers_are_known_a_request_may_take_the_whole_timeout() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for _ in range(19):
        bound.record(0.01)
    assert bound.deadline_s() == 300.0
    bound.record(0.01)
    assert bound.deadline_s() == 30.0


def test_abandoned_waits_raise_the_bound_for_an_endpoint_that_became_slow() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for _ in range(100):
        bound.record(0.5)
    assert bound.deadline_s() == 30.0
    for _ in range(64):  # every request now takes longer than the bound: each abandoned wait
        bound.record(30.0)
    assert bound.deadline_s() == 300.0
