"""The emulator's strict limits end to end, with a real aiohttp client on 127.0.0.1:
concurrency caps in both modes, limit schedules, random 429s, hanging requests, accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from engine.emulator import Emulator, FakeClock, Faults
from engine.emulator.config import LimitStep
from tests.conftest import EmuClient

BODY = {"inputs": {"text": ["a"]}}
ENDPOINT = "demo-text"


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (a counter to wait on, not a timing)."""
    while not condition():  # noqa: ASYNC110 - the emulator's counters have no event
        await asyncio.sleep(0.001)


def counters(emu: Emulator) -> dict[str, Any]:
    return emu.accounting(ENDPOINT)


class Gate:
    """An injected sleep that holds every request's latency until opened."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def __call__(self, _: float) -> None:
        await self.event.wait()


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), ("seconds", "1")])
async def test_concurrency_cap_in_429_mode_refuses_with_the_databricks_body(
    emulator_factory, emu_client_factory, retry_after: str | None, header: str | None
) -> None:  # type: ignore[no-untyped-def]
    gate = Gate()
    emu = await emulator_factory(sleep=gate)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(
        ENDPOINT,
        Faults(
            max_concurrency=2,
            concurrency_mode="429",
            latency_ms=1.0,
            retry_after=retry_after,  # type: ignore[arg-type]
        ),
    )
    held = [asyncio.create_task(client.invoke(ENDPOINT, BODY, token)) for _ in range(2)]
    await until(lambda: counters(emu)["peak_admitted"] == 2)
    status, error, response = await client.invoke(ENDPOINT, BODY, token)
    assert status == 429 and set(error) == {"error_code", "message"}
    assert error["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "provisioned concurrency of 2" in error["message"]
    assert response.content_type == "application/json"
    assert response.headers.get("Retry-After") == header
    gate.event.set()
    assert [(await h)[0] for h in held] == [200, 200]
    accounting = counters(emu)
    assert (accounting["throttled_concurrency"], accounting["throttled"]) == (1, 1)
    assert (accounting["throttled_rate"], accounting["throttled_random"]) == (0, 0)
    assert accounting["requests_by_status"] == {200: 2, 429: 1}


async def test_concurrency_cap_in_queue_mode_serves_everyone_never_more_than_the_cap(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    gate = Gate()
    emu = await emulator_factory(sleep=gate)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(ENDPOINT, Faults(max_concurrency=3, latency_ms=1.0))
    calls = [asyncio.create_task(client.invoke(ENDPOINT, BODY, token)) for _ in range(8)]
    await until(lambda: counters(emu)["in_flight"] == 8)
    assert counters(emu)["peak_admitted"] == 3
    gate.event.set()
    assert [(await c)[0] for c in calls] == [200] * 8
    accounting = counters(emu)
    assert (accounting["peak_admitted"], accounting["throttled"]) == (3, 0)


async def test_rate_schedule_steps_on_the_injected_clock_from_the_first_request(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(clock=clock)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(
        ENDPOINT,
        Faults(qps_limit=1.0, retry_after=None, schedule=(LimitStep(at_s=10.0, qps_limit=4.0),)),
    )
    clock.advance(30.0)  # before the first request: the schedule has not started
    assert [(await client.invoke(ENDPOINT, BODY, token))[0] for _ in range(2)] == [200, 429]
    clock.advance(9.0)
    assert [(await client.invoke(ENDPOINT, BODY, token))[0] for _ in range(2)] == [200, 429]
    clock.advance(1.0)  # the step: 4/s, bucket of 1 (a tenth of a second, at least one)
    statuses = []
    for _ in range(8):
        statuses.append((await client.invoke(ENDPOINT, BODY, token))[0])
        clock.advance(0.25)
    assert statuses == [200] * 8
    assert (await client.invoke(ENDPOINT, BODY, token))[0] == 200
    status, error, _ = await client.invoke(ENDPOINT, BODY, token)
    assert status == 429 and "rate limit of 4 requests per second" in error["message"]
    accounting = counters(emu)
    assert accounting["limits"]["qps_limit"] == 4.0
    assert accounting["limits"]["schedule_started_s"] == 30.0
    assert accounting["throttled_rate"] == accounting["requests_by_status"][429] == 3


async def test_concurrency_schedule_raises_the_cap_while_requests_hold_slots(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock, gate = FakeClock(), Gate()
    emu = await emulator_factory(clock=clock, sleep=gate)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(
        ENDPOINT,
        Faults(
            max_concurrency=1,
            concurrency_mode="429",
            latency_ms=1.0,
            schedule=(
                LimitStep(at_s=5.0, max_concurrency=2),
                LimitStep(at_s=9.0, max_concurrency=1),
            ),
        ),
    )
    first = asyncio.create_task(client.invoke(ENDPOINT, BODY, token))
    await until(lambda: counters(emu)["peak_admitted"] == 1)
    assert (await client.invoke(ENDPOINT, BODY, token))[0] == 429
    clock.advance(5.0)
    second = asyncio.create_task(client.invoke(ENDPOINT, BODY, token))
    await until(lambda: counters(emu)["peak_admitted"] == 2)
    clock.advance(4.0)  # cap back to 1 while two hold slots: nobody new gets in
    assert (await client.invoke(ENDPOINT, BODY, token))[0] == 429
    gate.event.set()
    assert [(await first)[0], (await second)[0]] == [200, 200]
    assert (await client.invoke(ENDPOINT, BODY, token))[0] == 200
    assert counters(emu)["throttled_concurrency"] == 2


async def test_schedule_set_over_http_and_limits_shown_in_debug_accounting(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(clock=clock)
    client: EmuClient = emu_client_factory(emu)
    faults = {"qps_limit": 1, "schedule": [{"at_s": 3, "qps_limit": 100, "max_concurrency": 8}]}
    status, body, _ = await client.post(f"/debug/faults/{ENDPOINT}", None, faults)
    assert status == 200 and body["faults"]["schedule"] == faults["schedule"]
    await client.invoke(ENDPOINT, BODY)
    clock.advance(3.0)
    status, snapshot, _ = await client.get(f"/debug/accounting?endpoint={ENDPOINT}", None)
    assert snapshot["limits"] == {
        "qps_limit": 100,
        "qps_burst": 10,
        "max_concurrency": 8,
        "schedule_started_s": 0.0,
        "schedule_elapsed_s": 3.0,
    }
    assert snapshot["clock_s"] == 3.0
    for key in ("throttled_rate", "throttled_concurrency", "throttled_random", "hung", "hanging"):
        assert snapshot[key] == 0
    bad = {"schedule": [{"at_s": 5, "qps_limit": 1}, {"at_s": 2, "qps_limit": 2}]}
    status, error, _ = await client.post(f"/debug/faults/{ENDPOINT}", None, bad)
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


async def test_random_429s_come_without_load_honour_retry_after_and_never_run_the_model(
    emu_client: EmuClient,
) -> None:
    emu = emu_client.emu
    token = await emu_client.data_plane_token(ENDPOINT)
    emu.set_faults(ENDPOINT, Faults(seed=1, throttle_rate=0.3, retry_after="date"))
    results = [
        await emu_client.invoke(ENDPOINT, {"inputs": {"text": [f"r{i}"]}}, token) for i in range(60)
    ]
    refused = [r for r in results if r[0] == 429]
    assert 0 < len(refused) < 60 and {r[0] for r in results} == {200, 429}
    assert {r[1]["error_code"] for r in refused} == {"REQUEST_LIMIT_EXCEEDED"}
    assert all("GMT" in r[2].headers["Retry-After"] for r in refused)
    accounting = counters(emu)
    assert accounting["throttled_random"] == accounting["throttled"] == len(refused)
    assert len(accounting["rows_scored"]) == 60 - len(refused)


async def test_a_hanging_request_holds_its_slot_until_its_client_gives_up(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    emu = await emulator_factory()
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(ENDPOINT, Faults(hang_every=2, max_concurrency=1))
    assert (await client.invoke(ENDPOINT, {"inputs": {"text": ["r0"]}}, token))[0] == 200
    hanging = asyncio.create_task(client.invoke(ENDPOINT, {"inputs": {"text": ["r1"]}}, token))
    await until(lambda: counters(emu)["hanging"] == 1)
    queued = asyncio.create_task(client.invoke(ENDPOINT, {"inputs": {"text": ["r2"]}}, token))
    await until(lambda: counters(emu)["in_flight"] == 2)
    assert not hanging.done() and not queued.done()
    hanging.cancel()  # the client gives up: its connection closes
    assert (await queued)[0] == 200
    await until(lambda: counters(emu)["hanging"] == 0)
    accounting = counters(emu)
    assert (accounting["hung"], accounting["requests_by_status"]) == (1, {200: 2})
    assert len(accounting["rows_scored"]) == 2  # r0 and r2: the hanging one never ran


async def test_stopping_the_emulator_drops_hanging_requests_instead_of_waiting(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    emu = await emulator_factory()
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(ENDPOINT, Faults(hang_rate=1.0))
    hanging = [asyncio.create_task(client.invoke(ENDPOINT, BODY, token)) for _ in range(3)]
    await until(lambda: counters(emu)["hanging"] == 3)
    await asyncio.wait_for(emu.stop(), timeout=30)  # aiohttp alone would wait 60 s for them
    for task in hanging:
        with pytest.raises(aiohttp.ClientError):
            await task
    assert (counters(emu)["hung"], counters(emu)["hanging"]) == (3, 0)


async def test_a_client_gone_before_its_answer_is_counted_not_logged_as_a_server_error(
    emulator_factory, emu_client_factory, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    # A client's timeout or Ctrl-C closes the connection while the model runs. Writing the
    # answer then fails; aiohttp logged that as "Error handling request" with a traceback,
    # once per request, in the terminal of `engine emulate`.
    gate = Gate()
    emu = await emulator_factory(sleep=gate)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token(ENDPOINT)
    emu.set_faults(ENDPOINT, Faults(latency_ms=1.0))
    data_plane = emu._runners[-1].server
    assert data_plane is not None
    request = asyncio.create_task(client.invoke(ENDPOINT, BODY, token))
    await until(lambda: counters(emu)["in_flight"] == 1)  # held at the gate
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    # the server saw the close (the handler, still running, keeps its place in the list)
    await until(lambda: all(h.transport is None for h in data_plane.connections))
    caplog.set_level("DEBUG")
    gate.event.set()
    await until(lambda: counters(emu)["in_flight"] == 0)
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
    accounting = counters(emu)
    assert accounting["answers_lost"] == 1
    assert accounting["requests_by_status"] == {}  # no answer was delivered
    assert accounting["rows_delivered"] == {}
