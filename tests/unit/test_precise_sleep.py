"""The pacer's precise sleep: the loop sleeps the coarse part, a thread the last ~1.5 ms.

The split is checked on a fake clock that moves only when a sleep runs, so it cannot depend
on how late this machine's timers are. With the real clock the tests assert only what holds
on any machine: nothing wakes before its time (less the handoff), and the thread goes once
closed (joined, with a generous timeout).
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


async def _slept(*delays: float, late_s: float = 0.0) -> Fake:
    """What a PreciseSleep on a fake clock did for ``delays`` (the loop's timer ``late_s``
    late)."""
    fake = Fake(late_s)
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    try:
        for delay in delays:
            await sleep(delay)
    finally:
        sleep.close()
    return fake


async def test_the_loop_sleeps_all_but_the_last_part_and_a_thread_sleeps_the_rest() -> None:
    fake = await _slept(0.0054)
    assert fake.coarse == [0.0054 - PreciseSleep.FINE_S]
    [(rest, on_main)] = fake.fine
    assert abs(rest - (PreciseSleep.FINE_S - PreciseSleep.HANDOFF_S)) < 1e-12
    assert not on_main  # the loop's thread stays free while the rest is slept
    assert abs(fake.now - (100.0 + 0.0054 - PreciseSleep.HANDOFF_S)) < 1e-12


async def test_a_late_coarse_wake_up_shortens_the_fine_part_instead_of_adding_to_it() -> None:
    fake = await _slept(0.01, late_s=0.0009)
    [(rest, _)] = fake.fine
    assert abs(rest - (PreciseSleep.FINE_S - 0.0009 - PreciseSleep.HANDOFF_S)) < 1e-12
    assert abs(fake.now - (100.0 + 0.01 - PreciseSleep.HANDOFF_S)) < 1e-12


async def test_asked_again_within_the_handoff_it_sleeps_the_rest() -> None:
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
    fake = await _slept(0.005, late_s=0.002)
    assert fake.fine == []
    assert fake.coarse == [0.005 - PreciseSleep.FINE_S, 0]  # one yield to the loop


async def test_a_short_delay_is_slept_on_the_thread_alone() -> None:
    fake = await _slept(0.0008)
    assert fake.coarse == []
    [(rest, _)] = fake.fine
    assert abs(rest - (0.0008 - PreciseSleep.HANDOFF_S)) < 1e-12


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


def _told(qps: float = 200.0) -> RateController:
    return RateController(max_rate=qps, max_in_flight=8, initial_in_flight=8)


def _pacer_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("pacer")}


def _still_alive(threads: set[threading.Thread]) -> list[threading.Thread]:
    """Those of ``threads`` alive after a generous wait to end (a last sleep is 1.5 ms)."""
    for thread in threads:
        thread.join(timeout=10.0)
    return [thread for thread in threads if thread.is_alive()]


async def test_only_a_told_qps_gives_the_pacer_the_precise_sleep() -> None:
    told = _dispatcher(limiter=AsyncLimiter(9, 0.05), controller=_told())
    found = _dispatcher()

    async def injected(seconds: float) -> None:
        await asyncio.sleep(0)

    tested = _dispatcher(limiter=AsyncLimiter(9, 0.05), controller=_told(), sleep=injected)
    try:
        assert isinstance(told.pacer._precise, PreciseSleep)
        assert told.pacer._sleep is asyncio.sleep
        assert found.pacer._precise is None
        assert tested.pacer._precise is None  # an injected sleep is used as it is
        assert tested.pacer._sleep is injected
    finally:
        for dispatcher in (told, found, tested):
            await dispatcher.aclose()


async def _pace(dispatcher: Dispatcher, stop_after: int | None) -> None:
    turns = 0
    while stop_after is None or turns < stop_after:
        await dispatcher.pacer.acquire()
        dispatcher.pacer.release()
        turns += 1


async def _make_the_thread(dispatcher: Dispatcher) -> set[threading.Thread]:
    """One sleep on the thread, whatever the machine's timing (a frozen clock: all of the
    0.001 s is the fine part), and the thread it made."""
    before = _pacer_threads()
    precise = dispatcher._precise
    assert precise is not None
    clock = precise._clock
    precise._clock = lambda: 0.0
    try:
        await precise(0.001)
    finally:
        precise._clock = clock
    ours = _pacer_threads() - before
    assert len(ours) == 1 and precise._pool is not None
    return ours


async def test_closing_the_dispatcher_lets_the_pacer_thread_go() -> None:
    dispatcher = _dispatcher(limiter=AsyncLimiter(9, 0.05), controller=_told())
    try:
        ours = await _make_the_thread(dispatcher)
        await _pace(dispatcher, stop_after=4)
    finally:
        await dispatcher.aclose()
    assert dispatcher._precise._pool is None
    assert _still_alive(ours) == []


async def test_a_run_cancelled_while_pacing_still_lets_the_pacer_thread_go() -> None:
    # A caller's timeout (asyncio.wait_for around ascore) cancels the run; the pipeline's
    # `finally: await dispatcher.aclose()` then runs inside a cancelled task, where waiting
    # for the ticker raises CancelledError again. The thread must go all the same.
    dispatcher = _dispatcher(limiter=AsyncLimiter(9, 0.05), controller=_told(qps=2.0))
    ours = await _make_the_thread(dispatcher)
    await _pace(dispatcher, stop_after=1)  # the next turn is half a second away

    async def run() -> None:
        try:
            await _pace(dispatcher, stop_after=None)
        finally:
            await dispatcher.aclose()

    task = asyncio.create_task(run())
    await asyncio.sleep(0)  # it waits for its turn now, and the ticker to give it
    assert dispatcher.pacer._ticker is not None and not dispatcher.pacer._ticker.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dispatcher._precise is not None and dispatcher._precise._pool is None
    assert _still_alive(ours) == []


async def test_once_closed_it_sleeps_on_the_loops_timer_alone() -> None:
    fake = Fake()
    sleep = PreciseSleep(clock=fake.clock, coarse=fake.coarse_sleep, fine=fake.fine_sleep)
    sleep.close()
    await sleep(0.005)
    assert fake.coarse == [0.005] and fake.fine == []
    assert sleep._pool is None


@pytest.mark.parametrize(
    ("qps", "capacity", "precise_turns"),
    [(200.0, None, True), (200.0, 100.0, False), (1000.0, None, False)],
    ids=["at-the-cap", "below-the-cap", "cap-too-fast-to-matter"],
)
async def test_turns_are_precise_at_the_users_cap_and_not_below_it(
    qps: float, capacity: float | None, precise_turns: bool
) -> None:
    # Told --qps 200: with the endpoint's capacity unknown the pace is the cap, and the turns
    # wake on time; once the endpoint is found below the cap (100/s), the finder paces with
    # the loop's own timer, the one it was tuned against. At 1,000/s (1 ms apart) a late
    # turn is made up by the next (turns_due): no thread round trip per turn.
    clock = Fake()
    loop_sleeps: list[float] = []

    async def loop_sleep(seconds: float) -> None:
        loop_sleeps.append(seconds)
        clock.now += seconds

    precise = PreciseSleep(clock=clock.clock, coarse=clock.coarse_sleep, fine=clock.fine_sleep)
    controller = RateController(max_rate=qps, max_in_flight=8, initial_in_flight=8)
    if capacity is not None:
        controller.capacity = capacity
        controller._set_rate()
    assert (controller.rate == qps) == (capacity is None)
    pacer = Pacer(controller, clock=clock.clock, sleep=loop_sleep, precise=precise)
    for _ in range(5):
        await pacer.acquire()
        pacer.release()
    await pacer.aclose()
    precise.close()
    assert bool(clock.fine) == precise_turns
    assert bool(loop_sleeps) != precise_turns
