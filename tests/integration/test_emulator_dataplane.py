"""The emulator's data plane: predictions, MLflow-style 400s, every fault knob, accounting."""

from __future__ import annotations

import asyncio
import email.utils

import aiohttp
import orjson
import pyarrow as pa
import pytest

from engine.emulator import (
    POISON_TEXT,
    POISON_VALUE,
    Emulator,
    EmulatorConfig,
    EndpointConfig,
    FakeClock,
    Faults,
)
from tests.conftest import EmuClient


def split_body(table: pa.Table) -> dict[str, object]:
    return {
        "dataframe_split": {
            "columns": table.column_names,
            "data": [list(r.values()) for r in table.to_pylist()],
        }
    }


def expected(emu: Emulator, name: str, table: pa.Table) -> list[object]:
    return list(pa.array(emu.model(name).predict(table)).to_pylist())


@pytest.mark.parametrize("name", ["demo-regressor", "demo-classifier", "demo-text"])
async def test_every_demo_endpoint_returns_the_models_predictions(
    emu_client: EmuClient, name: str
) -> None:
    emu = emu_client.emu
    table = emu.model(name).sample(300, seed=9)
    status, body, response = await emu_client.invoke(name, split_body(table))
    assert status == 200 and body["predictions"] == expected(emu, name, table)
    assert response.headers["served-model-name"] == emu.model(name).name + "-1"
    status, records, _ = await emu_client.invoke(name, {"dataframe_records": table.to_pylist()})
    assert records == body


async def test_params_reach_the_model(emu_client: EmuClient) -> None:
    status, body, _ = await emu_client.invoke(
        "demo-text", {"inputs": {"text": ["ee"]}, "params": {"scale": 3.0}}
    )
    assert (status, body) == (200, {"predictions": [18.0]})


async def test_bad_rows_and_schema_errors_have_mlflow_bodies(emu_client: EmuClient) -> None:
    token = await emu_client.data_plane_token("demo-regressor")
    table = emu_client.emu.model("demo-regressor").sample(2, seed=1)
    missing = split_body(table.drop_columns(["x3"]))
    status, error, response = await emu_client.invoke("demo-regressor", missing, token)
    assert (status, error["error_code"], response.content_type) == (
        400,
        "INVALID_PARAMETER_VALUE",
        "application/json",
    )
    assert "Model is missing inputs ['x3']" in error["message"]
    bad = split_body(table)
    bad["dataframe_split"]["data"][1][0] = "oops"  # type: ignore[index]
    status, error, _ = await emu_client.invoke("demo-regressor", bad, token)
    assert (status, error["error_code"]) == (400, "BAD_REQUEST")
    assert "Failed to convert column x0 to type 'float64'" in error["message"]
    status, error, _ = await emu_client.invoke("demo-regressor", b"{not json", token)
    assert (status, error["error_code"]) == (
        400,
        "BAD_REQUEST",
    ) and "Failed to parse input" in error["message"]
    status, error, _ = await emu_client.invoke("demo-regressor", {"rows": []}, token)
    assert status == 400 and "dataframe_records" in error["message"]


@pytest.mark.parametrize(
    ("name", "column", "marker"),
    [
        ("demo-regressor", "count", POISON_VALUE),
        ("demo-regressor", "x5", float(POISON_VALUE)),
        ("demo-text", "text", POISON_TEXT),
    ],
)
async def test_a_poison_value_fails_the_whole_batch_with_a_stack_trace(
    emu_client: EmuClient, name: str, column: str, marker: object
) -> None:
    table = emu_client.emu.model(name).sample(5, seed=2)
    body = split_body(table)
    body["dataframe_split"]["data"][3][table.column_names.index(column)] = marker  # type: ignore[index]
    status, error, _ = await emu_client.invoke(name, body)
    assert (status, error["error_code"]) == (400, "BAD_REQUEST")
    assert f"column '{column}' holds the poison value" in error["message"]
    assert "row 3" in error["message"]
    assert "Traceback" in error["stack_trace"]
    assert emu_client.emu.accounting(name)["rows_scored"] == {}
    emu_client.emu.set_faults(name, Faults(poison=False))
    assert (await emu_client.invoke(name, body))[0] == 200


async def test_payload_over_the_limit_is_413_json(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    emu = await emulator_factory(EmulatorConfig(max_payload_bytes=10_000))
    client: EmuClient = emu_client_factory(emu)
    table = emu.model("demo-regressor").sample(200, seed=1)
    status, error, response = await client.invoke("demo-regressor", split_body(table))
    assert (status, error["error_code"], response.content_type) == (
        413,
        "BAD_REQUEST",
        "application/json",
    )
    assert (await client.invoke("demo-regressor", split_body(table.slice(0, 5))))[0] == 200


async def test_unknown_endpoint_and_workspace_are_404(emu_client: EmuClient) -> None:
    token = await emu_client.data_plane_token("demo-text")
    url = emu_client.emu.endpoint_url("demo-text")
    status, error, _ = await emu_client.invoke(
        "demo-text", {}, token, url=url.replace("demo-text", "nope")
    )
    assert (status, error["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    status, _, _ = await emu_client.invoke(
        "demo-text", {}, token, url=url.replace(emu_client.emu.workspace_id, "42")
    )
    assert status == 404


async def test_qps_limit_answers_429_with_retry_after_and_refills_on_the_clock(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(clock=clock)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token("demo-text")
    body = {"inputs": {"text": ["a"]}}
    emu.set_faults("demo-text", Faults(qps_limit=2.0, qps_burst=2.0))
    statuses = [(await client.invoke("demo-text", body, token))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    status, error, response = await client.invoke("demo-text", body, token)
    assert (status, error["error_code"], response.headers["Retry-After"]) == (
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "1",
    )
    clock.advance(0.5)
    assert (await client.invoke("demo-text", body, token))[0] == 200
    emu.set_faults("demo-text", Faults(qps_limit=0.1, retry_after="date"))
    await client.invoke("demo-text", body, token)
    _, _, response = await client.invoke("demo-text", body, token)
    assert email.utils.parsedate_to_datetime(response.headers["Retry-After"]) is not None
    emu.set_faults("demo-text", Faults(qps_limit=0.05, retry_after=None))
    await client.invoke("demo-text", body, token)
    status, _, response = await client.invoke("demo-text", body, token)
    assert status == 429 and "Retry-After" not in response.headers
    accounting = emu.accounting("demo-text")
    assert accounting["throttled"] == accounting["requests_by_status"][429] == 4


async def test_concurrency_cap_queues_or_refuses(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def held(_: float) -> None:
        await gate.wait()

    emu = await emulator_factory(sleep=held)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token("demo-text")
    body = {"inputs": {"text": ["a"]}}
    emu.set_faults("demo-text", Faults(max_concurrency=2, latency_ms=1.0))
    calls = [asyncio.create_task(client.invoke("demo-text", body, token)) for _ in range(5)]
    while emu.accounting("demo-text")["in_flight"] < 5:  # noqa: ASYNC110 - a counter, no event
        await asyncio.sleep(0.001)
    gate.set()
    assert [(await c)[0] for c in calls] == [200] * 5
    accounting = emu.accounting("demo-text")
    assert (accounting["peak_in_flight"], accounting["peak_admitted"]) == (5, 2)

    gate.clear()
    emu.set_faults("demo-text", Faults(max_concurrency=1, concurrency_mode="429", latency_ms=1.0))
    first = asyncio.create_task(client.invoke("demo-text", body, token))
    while emu.accounting("demo-text")["in_flight"] < 1:  # noqa: ASYNC110 - a counter, no event
        await asyncio.sleep(0.001)
    status, error, _ = await client.invoke("demo-text", body, token)
    gate.set()
    assert (await first)[0] == 200
    assert (status, error["error_code"]) == (
        429,
        "REQUEST_LIMIT_EXCEEDED",
    ) and "concurrency" in error["message"]


async def test_latency_jitter_and_tail_wait_on_the_injected_sleep(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    emu = await emulator_factory(clock=clock)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token("demo-text")
    emu.set_faults(
        "demo-text",
        Faults(seed=4, latency_ms=200.0, jitter_ms=10.0, tail_prob=0.25, tail_ms=5000.0),
    )
    for _ in range(40):
        assert (await client.invoke("demo-text", {"inputs": {"text": ["a"]}}, token))[0] == 200
    normal = [s for s in clock.slept if s < 1.0]
    tail = [s for s in clock.slept if s >= 1.0]
    assert len(clock.slept) == 40 and tail and normal
    assert all(0.2 <= s < 0.21 for s in normal) and all(5.2 <= s < 5.21 for s in tail)


async def test_injected_500_and_503_rates_never_run_the_model(emu_client: EmuClient) -> None:
    emu = emu_client.emu
    token = await emu_client.data_plane_token("demo-text")
    emu.set_faults("demo-text", Faults(seed=1, error_500_rate=0.3, error_503_rate=0.3))
    results = [
        await emu_client.invoke("demo-text", {"inputs": {"text": [str(i)]}}, token)
        for i in range(60)
    ]
    by_status = emu.accounting("demo-text")["requests_by_status"]
    assert set(by_status) == {200, 500, 503} and sum(by_status.values()) == 60
    assert {r[1]["error_code"] for r in results if r[0] == 500} == {"INTERNAL_ERROR"}
    assert {r[1]["error_code"] for r in results if r[0] == 503} == {"TEMPORARILY_UNAVAILABLE"}
    assert len(emu.accounting("demo-text")["rows_scored"]) == by_status[200]


async def test_resets_before_and_after_the_model_are_told_apart_in_accounting(
    emu_client: EmuClient,
) -> None:
    emu = emu_client.emu
    token = await emu_client.data_plane_token("demo-text")
    emu.set_faults("demo-text", Faults(seed=2, reset_before_rate=0.3, reset_after_rate=0.3))
    dropped = 0
    for i in range(40):
        try:
            status, _, _ = await emu_client.invoke(
                "demo-text", {"inputs": {"text": [f"row{i}"]}}, token
            )
            assert status == 200
        except aiohttp.ClientError:
            dropped += 1
    accounting = emu.accounting("demo-text")
    assert accounting["resets_before"] > 0 and accounting["resets_after"] > 0
    assert dropped == accounting["resets_before"] + accounting["resets_after"]
    assert len(accounting["rows_scored"]) == 40 - accounting["resets_before"]
    assert (
        len(accounting["rows_delivered"]) == accounting["requests_by_status"][200] == 40 - dropped
    )


async def test_same_seed_same_fault_sequence(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    async def run() -> list[int]:
        emu = await emulator_factory()
        client: EmuClient = emu_client_factory(emu)
        token = await client.data_plane_token("demo-text")
        emu.set_faults("demo-text", Faults(seed=11, error_503_rate=0.4))
        return [
            (await client.invoke("demo-text", {"inputs": {"text": ["a"]}}, token))[0]
            for _ in range(30)
        ]

    first, second = await run(), await run()
    assert first == second and 503 in first and 200 in first


async def test_row_accounting_counts_repeats_and_uses_the_row_key_column(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    config = EmulatorConfig(endpoints=(EndpointConfig(name="demo-text", row_key="boost"),))
    emu = await emulator_factory(config)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token("demo-text")
    body = {"dataframe_split": {"columns": ["text", "boost"], "data": [["a", 1], ["b", 2]]}}
    await client.invoke("demo-text", body, token)
    await client.invoke("demo-text", body, token)
    accounting = emu.accounting("demo-text")
    assert accounting["rows_delivered"] == {"1": 2, "2": 2} == accounting["rows_scored"]
    emu.reset_accounting()
    assert emu.accounting("demo-text")["rows_delivered"] == {}
    with pytest.raises(KeyError):
        emu.accounting("nope")


async def test_endpoint_configured_stopped_refuses_until_started(
    emulator_factory, emu_client_factory
) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    config = EmulatorConfig(
        endpoints=(EndpointConfig(name="demo-text", start_stopped=True, start_duration_s=5.0),)
    )
    emu = await emulator_factory(config, clock=clock)
    client: EmuClient = emu_client_factory(emu)
    token = await client.data_plane_token("demo-text")
    body = {"inputs": {"text": ["a"]}}
    status, error, _ = await client.invoke("demo-text", body, token)
    assert status == 400 and error["error_code"] == "INVALID_STATE"
    assert error["message"].startswith(
        "Endpoint demo-text is not ready (state: NOT_READY, config_update: NOT_UPDATING)"
    )
    emu.start_endpoint("demo-text")
    assert emu.endpoint_state("demo-text") == {
        "ready": "NOT_READY",
        "config_update": "IN_PROGRESS",
        "config_version": 2,
    }
    clock.advance(5.0)
    assert (await client.invoke("demo-text", body, token))[0] == 200


async def test_nan_in_request_is_accepted_and_nan_prediction_is_null(emu_client: EmuClient) -> None:
    names = orjson.dumps([f"x{i}" for i in range(8)] + ["count"])
    body = (
        b'{"dataframe_split": {"columns": ' + names + b', "data": [[NaN, 1, 1, 1, 1, 1, 1, 1, 1]]}}'
    )
    status, result, _ = await emu_client.invoke("demo-regressor", body)
    assert status == 200 and result == {"predictions": [None]}
    assert orjson.dumps(result) == b'{"predictions":[null]}'


async def test_row_accounting_can_be_turned_off(emulator_factory, emu_client_factory) -> None:  # type: ignore[no-untyped-def]
    emu = await emulator_factory(EmulatorConfig(track_rows=False))
    client: EmuClient = emu_client_factory(emu)
    assert (await client.invoke("demo-text", {"inputs": {"text": ["a", "b"]}}))[0] == 200
    accounting = emu.accounting("demo-text")
    assert accounting["rows_delivered"] == {} and accounting["requests_by_status"] == {200: 1}
