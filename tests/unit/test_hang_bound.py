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


# --- a second copy (hedge) of a request far slower than usual --------------------------------


def test_no_copy_is_sent_before_the_endpoint_s_latency_is_known() -> None:
    bound = HangBound(ceiling_s=300.0)
    for _ in range(19):
        bound.record(0.01)
    assert bound.hedge_after_s() is None
    bound.record(0.01)
    assert bound.hedge_after_s() == 1.0


def test_a_fast_endpoint_s_requests_get_a_copy_after_the_one_second_floor() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for _ in range(200):
        bound.record(0.010)
    assert bound.hedge_after_s() == 1.0
    assert bound.deadline_s() == 30.0  # the copy comes long before the request is abandoned


def test_a_slow_endpoint_s_requests_get_a_copy_after_three_times_its_p99() -> None:
    bound = HangBound(ceiling_s=300.0, floor_s=30.0)
    for i in range(200):
        bound.record(4.0 + (i % 10) * 0.1)  # 4.0 .. 4.9 s
    assert bound.hedge_after_s() == 3.0 * 4.9


def test_no_copy_when_it_would_come_no_sooner_than_the_abandonment() -> None:
    bound = HangBound(ceiling_s=10.0, floor_s=30.0)
    for _ in range(100):
        bound.record(5.0)  # 3 x p99 = 15 s, past the 10 s request timeout
    assert bound.hedge_after_s() is None


def test_hedging_turned_off_sends_no_copy() -> None:
    bound = HangBound(ceiling_s=300.0, hedge=False)
    for _ in range(100):
        bound.record(0.01)
    assert bound.hedge_after_s() is None


def test_copies_are_budgeted_to_a_small_share_of_the_answers() -> None:
    bound = HangBound(ceiling_s=300.0)
    assert bound.take_hedge()  # one to start with: the first hang is caught
    assert not bound.take_hedge()
    for _ in range(49):
        bound.record(0.01)
    assert not bound.take_hedge()  # 49 answers earn 0.98 of a copy
    bound.record(0.01)
    assert bound.take_hedge()
    for _ in range(10_000):  # a long quiet stretch saves a few, not hundreds
        bound.record(0.01)
    taken = 0
    while bound.take_hedge():
        taken += 1
    assert taken == 4
