"""The pacer's precise sleep: the loop sleeps the coarse part, a thread the last ~1.5 ms.

No real clock: a fake one moves only when a sleep runs, so the split is checked exactly and
the test cannot depend on how late this machine's timers are.
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from aiolimiter import AsyncLimiter

from engine.adaptive import RateController
from engine.aio import PreciseSleep
from engine.dispatch import Dispatcher, Pacer
from engine.retry import RetryPolicy
from engine.stats import RunStats
from engine.tokens import Token, TokenRefresher


class Fake:
    def __init__(self, late_s: float = 0.0) -> None:
        self.now = 100.0
        self.late_s = late_s  # how late the loop's own timer wakes
        self.coarse: list[float] = []
        self.fine: list[tuple[float, bool]] = []

    def clock(self) -> float:
        return self.now

    async def coarse_sleep(self, seconds: float) -> None:
        self.coarse.append(seconds)
        self.now += seconds + (self.late_s if seconds else 0.0)

    def fine_sleep(self, seconds: float) -> None:
        self.fine.append((seconds, threading.current_thread() is threading.main_thread()))
        self.now += seconds


async def test_the_loop_sleeps_all_but_the_last_part_and_a_thread_sleeps_the_rest() -> None:
    fake = Fake()
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    try:
        await sleep(0.0054)
    finally:
        sleep.close()
    assert fake.coarse == [0.0054 - PreciseSleep.FINE_S]
    [(rest, on_main)] = fake.fine
    assert abs(rest - (PreciseSleep.FINE_S - PreciseSleep.HANDOFF_S)) < 1e-12
    assert not on_main  # the loop's thread stays free while the rest is slept
    assert abs(fake.now - (100.0 + 0.0054 - PreciseSleep.HANDOFF_S)) < 1e-12


async def test_a_late_coarse_wake_up_shortens_the_fine_part_instead_of_adding_to_it() -> None:
    fake = Fake(late_s=0.0009)
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    try:
        await sleep(0.01)
    finally:
        sleep.close()
    [(rest, _)] = fake.fine
    assert abs(rest - (PreciseSleep.FINE_S - 0.0009 - PreciseSleep.HANDOFF_S)) < 1e-12
    assert abs(fake.now - (100.0 + 0.01 - PreciseSleep.HANDOFF_S)) < 1e-12


async def test_asked_again_within_the_handoff_it_sleeps_the_rest_instead_of_returning_early(
) -> None:
    # Woken HANDOFF_S early (on purpose: the loop runs the sleeper about that much later), a
    # pacer finds its turn not yet due and asks for the last 0.1 ms: returning at once would
    # have it spin on the loop until the clock got there.
    fake = Fake()
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    try:
        await sleep(0.005)
        due = 100.0 + 0.005
        await sleep(due - fake.now)
    finally:
        sleep.close()
    assert fake.now >= due - 1e-12
    assert len(fake.fine) == 2


async def test_a_coarse_wake_up_past_the_deadline_sleeps_no_more() -> None:
    fake = Fake(late_s=0.002)
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    await sleep(0.005)
    assert fake.fine == []
    assert fake.coarse == [0.005 - PreciseSleep.FINE_S, 0]  # one yield to the loop
    sleep.close()


async def test_a_short_delay_is_slept_on_the_thread_alone() -> None:
    fake = Fake()
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    try:
        await sleep(0.0008)
    finally:
        sleep.close()
    assert fake.coarse == []
    assert [round(rest, 12) for rest, _ in fake.fine] == [round(0.0008 - PreciseSleep.HANDOFF_S, 12)]


async def test_with_the_real_clock_it_never_wakes_before_the_time_less_the_handoff() -> None:
    sleep = PreciseSleep()
    loop = asyncio.get_running_loop()
    try:
        for delay in (0.0, 0.0003, 0.002, 0.0056):
            started = loop.time()
            await sleep(delay)
            assert loop.time() - started >= delay - PreciseSleep.HANDOFF_S - 1e-6
    finally:
        sleep.close()
    sleep.close()  # twice is fine


def _dispatcher(**kwargs: object) -> Dispatcher:
    async def fetch() -> Token:
        return Token(access_token="t", issued_at=0.0, expires_at=3600.0)

    return Dispatcher(
        transport=None,  # type: ignore[arg-type]
        tokens=TokenRefresher(fetch),
        endpoint_url="http://127.0.0.1:1/serving-endpoints/e/invocations",
        encode=lambda rows: b"",
        policy=RetryPolicy(max_attempts=4),
        stats=RunStats(),
        rng=random.Random(0),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_only_a_told_qps_gives_the_pacer_the_precise_sleep() -> None:
    told = _dispatcher(limiter=AsyncLimiter(9, 0.05))
    found = _dispatcher()

    async def injected(seconds: float) -> None:
        await asyncio.sleep(0)

    tested = _dispatcher(limiter=AsyncLimiter(9, 0.05), sleep=injected)
    try:
        assert isinstance(told.pacer._precise, PreciseSleep)
        assert told.pacer._sleep is asyncio.sleep
        assert found.pacer._precise is None
        assert tested.pacer._precise is None  # an injected sleep is used as it is
        assert tested.pacer._sleep is injected
    finally:
        for dispatcher in (told, found, tested):
            await dispatcher.aclose()
    assert told._precise is not None and told._precise._pool is None  # closed


@pytest.mark.parametrize(("capacity", "precise_turns"), [(None, True), (100.0, False)])
async def test_turns_are_precise_at_the_users_cap_and_not_below_it(
    capacity: float | None, precise_turns: bool
) -> None:
    # Told --qps 200: with the endpoint's capacity unknown the pace is the cap, and the turns
    # wake on time; once the endpoint is found below the cap (100/s), the finder paces with
    # the loop's own timer, the one it was tuned against.
    clock = Fake()
    loop_sleeps: list[float] = []

    async def loop_sleep(seconds: float) -> None:
        loop_sleeps.append(seconds)
        clock.now += seconds

    precise = PreciseSleep(clock=clock.clock, coarse=clock.coarse_sleep, fine=clock.fine_sleep)
    controller = RateController(max_rate=200.0, max_in_flight=8, initial_in_flight=8)
    if capacity is not None:
        controller.capacity = capacity
        controller._set_rate()
    assert (controller.rate == 200.0) == (capacity is None)
    pacer = Pacer(controller, clock=clock.clock, sleep=loop_sleep, precise=precise)
    for _ in range(5):
        await pacer.acquire()
        pacer.release()
    await pacer.aclose()
    precise.close()
    assert bool(clock.fine) == precise_turns
    assert bool(loop_sleeps) != precise_turns
