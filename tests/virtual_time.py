"""Virtual time for tests that run the engine and the emulator on one event loop.

:class:`VirtualClock` is a clock and a sleep (the ``clock=``/``sleep=`` both sides accept)
whose time moves only when the loop is idle: when no callback is ready, no socket has data
and every task waits on a virtual sleep, time jumps straight to the earliest wake-up (like
trio's ``MockClock(autojump_threshold=...)``). CPU work, a loaded machine, a slow garbage
collection take no virtual time at all, so a latency the emulator injects is measured by the
engine exactly as injected, however fast the machine. A 20x warped wall clock, by contrast,
turns every 5 ms of real scheduling delay into 100 ms of apparent latency.

Idle is detected in the loop's selector: :func:`virtual_loop` makes a loop whose selector,
asked to wait with nothing ready, waits ``idle_s`` of real time for I/O (loopback data
between the two ends arrives in microseconds), and only if none came, advances the clock.
Work on threads (``asyncio.to_thread``) does not count as busy: time may jump while a
thread decodes, which delays what waits on that thread, never what a latency measures
(so a run's elapsed virtual time is no measure of its speed).

:func:`score_on_virtual_clock` runs ``engine score``'s pipeline against an emulator endpoint
with given faults, both on one such clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from engine.config import ScoreConfig
from engine.emulator import Emulator, EmulatorConfig, EndpointConfig, Faults
from engine.pipeline import MemorySink, Scorer, run
from engine.prepare import prepare
from engine.source import open_source
from engine.stats import Summary
from engine.transport import Response, Transport
from tests.helpers import credentials_for, expected_predictions

__all__ = ["CallLog", "VirtualClock", "VirtualRun", "score_on_virtual_clock", "virtual_loop"]


class VirtualClock:
    """Monotonic seconds that advance only by jumps to the next sleeper's wake-up."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.jumps = 0

    def __call__(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def advance(self) -> bool:
        """Jump to the earliest pending wake-up and wake everyone due; False if none."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            return False
        self._now = max(self._now, self._sleepers[0][0])
        self.jumps += 1
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        return True


class _IdleJumpSelector(selectors.BaseSelector):
    """The default selector, except that an idle wait advances ``clock`` instead."""

    def __init__(self, clock: VirtualClock, idle_s: float) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock
        self._idle_s = idle_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= self._idle_s:
            return self._inner.select(timeout)  # callbacks ready, or a real timer due soon
        events = self._inner.select(self._idle_s)
        if events or self._clock.advance():
            return events
        rest = None if timeout is None else max(0.0, timeout - self._idle_s)
        return self._inner.select(rest)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


def virtual_loop(clock: VirtualClock, *, idle_s: float = 0.002) -> asyncio.AbstractEventLoop:
    """A new event loop on which ``clock`` jumps whenever the loop is idle for ``idle_s``."""
    return asyncio.SelectorEventLoop(_IdleJumpSelector(clock, idle_s))


class CallLog(Transport):
    """A transport that notes every call: (sent at, answered at, method, path, status, body),
    times on ``clock``, the path without scheme and host."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.calls: list[tuple[float, float, str, str, int, bytes | None]] = []

    async def request(self, method: str, url: str, **options: Any) -> Response:
        sent_at = self.clock()
        response = await super().request(method, url, **options)
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        self.calls.append(
            (sent_at, self.clock(), method, path, response.status, options.get("data"))
        )
        return response

    @property
    def invocations(self) -> list[tuple[float, float, int, bytes]]:
        """The data-plane calls: (sent at, answered at, status, body)."""
        return [
            (sent, answered, status, body or b"")
            for sent, answered, _, path, status, body in self.calls
            if path.endswith("/invocations")
        ]


@dataclass
class VirtualRun:
    """What a run of the engine against the emulator on one virtual clock left."""

    predictions: list[Any]  # the output's, in order
    expected: list[Any]  # what the endpoint's model predicts for the input
    summary: Summary
    scorer: Scorer
    accounting: dict[str, Any]  # the emulator's, for the endpoint


def score_on_virtual_clock(
    tmp_path: Path,
    faults: Faults,
    *,
    rows: int,
    seed: int,
    endpoint: str = "demo-regressor",
    options: Mapping[str, Any] | None = None,
    transport: Callable[[VirtualClock], Transport] | None = None,
    emulator: Mapping[str, Any] | None = None,
) -> VirtualRun:
    """Score ``rows`` sample rows with default settings (100-row requests) but ``options``
    (:class:`~engine.config.ScoreConfig` fields) against an emulator endpoint with ``faults``
    (and ``emulator``'s :class:`~engine.emulator.EmulatorConfig` fields), both on one
    :class:`VirtualClock`, through ``transport(clock)`` (a plain one if None)."""
    clock = VirtualClock()
    make = transport or (lambda _: Transport())
    settings = dict(emulator or {})
    with asyncio.Runner(loop_factory=lambda: virtual_loop(clock)) as runner:
        return runner.run(
            _score(
                clock, tmp_path, faults, rows, seed, endpoint, dict(options or {}), make, settings
            )
        )


async def _score(
    clock: VirtualClock,
    tmp_path: Path,
    faults: Faults,
    rows: int,
    seed: int,
    endpoint: str,
    options: dict[str, Any],
    make: Callable[[VirtualClock], Transport],
    emulator_settings: dict[str, Any],
) -> VirtualRun:
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name=endpoint, faults=faults),), **emulator_settings
    )
    async with Emulator(config, clock=clock, sleep=clock.sleep) as emulator:
        table = emulator.model(endpoint).sample(rows, seed=seed)
        pq.write_table(table, tmp_path / "in.parquet")
        source = open_source(tmp_path / "in.parquet")
        sink = MemorySink()
        settings = ScoreConfig(
            endpoint=endpoint, **{"batch_rows": 100, "progress": "off", **options}
        )
        async with make(clock) as transport:
            scorer = await prepare(
                source, credentials_for(emulator), settings, transport,
                clock=clock, sleep=clock.sleep,
            )
            summary = await run(source, sink, scorer, transport)
        return VirtualRun(
            predictions=sink.table().column("prediction").to_pylist(),
            expected=expected_predictions(emulator, endpoint, table),
            summary=summary,
            scorer=scorer,
            accounting=emulator.accounting(endpoint),
        )
