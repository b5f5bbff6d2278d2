"""Metrics against real receivers on loopback: an OTLP/HTTP endpoint this test serves (it
decodes the protobuf the exporter sends) and Debian's Prometheus Pushgateway binary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.emulator import POISON_VALUE, Emulator, Faults
from tests.helpers import regressor_table
from tests.receivers import (
    OtlpReceiver,
    Pushgateway,
    attrs,
    free_port,
    otlp_receiver,
    point_value,
    running_pushgateway,
    sample_value,
)

ENDPOINT = "demo-regressor"


async def run_engine(emulator: Emulator, *args: str, env: dict[str, str] | None = None):
    """``python -m engine *args`` with the emulator's credentials and no OTEL_* but ``env``."""
    full = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABRICKS_", "OTEL_"))
    }
    full.update(
        DATABRICKS_HOST=emulator.host,
        DATABRICKS_CLIENT_ID=emulator.client_id,
        DATABRICKS_CLIENT_SECRET=emulator.client_secret,
        DATABRICKS_CONFIG_FILE="/nonexistent/databrickscfg",
    )
    full.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", *args, env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, (out + err).decode()


def _score_args(emulator: Emulator, tmp_path: Path, rows: int, seed: int) -> list[str]:
    pq.write_table(regressor_table(emulator, rows, seed=seed), tmp_path / "in.parquet")
    return [
        "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), "--overwrite", "--batch-rows", "100",
        "--summary", str(tmp_path / "summary.json"), "--progress", "log",
    ]


# -- OpenTelemetry: an OTLP/HTTP receiver ------------------------------------------------


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


async def test_otlp_receiver_gets_http_and_engine_metrics_equal_to_the_summary_and_a_run_span(
    emulator: Emulator, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(seed=7, error_500_rate=0.1, throttle_rate=0.1))
    code, printed = await run_engine(
        emulator, *_score_args(emulator, tmp_path, 3_000, seed=61),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_SERVICE_NAME": "nightly-backfill",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,team=ml",
        },
    )
    assert code == 0, printed[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["throttled_429"] > 0 and summary["retries"].get("500", 0) > 0
    assert otlp.resource()["service.name"] == "nightly-backfill"
    assert otlp.resource()["deployment.environment"] == "ci"

    points = otlp.last_points()
    run = {"endpoint": ENDPOINT, "model_version": summary["model"], "shard": "0/1"}
    for name, key in [
        ("batch_engine.rows.scored", "rows_scored"),
        ("batch_engine.rows.rejected", "rows_rejected"),
        ("batch_engine.rows.from_checkpoint", "rows_skipped"),
        ("batch_engine.requests.throttled", "throttled_429"),
        ("batch_engine.requests.abandoned", "requests_abandoned"),
        ("batch_engine.requests.hedged", "requests_hedged"),
        ("batch_engine.requests.hedges_won", "hedges_won"),
        ("batch_engine.token.refreshes", "token_refreshes"),
    ]:
        assert point_value(points[name], **run) == summary[key], name
    for cause, count in summary["retries"].items():
        assert point_value(points["batch_engine.retries"], cause=cause, **run) == count
    assert point_value(points["batch_engine.in_flight.limit"], **run) > 0
    assert point_value(points["batch_engine.buffer.size"], **run) == 0  # all written at exit
    assert point_value(points["http.client.active_requests"], **run) == 0  # all answered

    durations = points["http.client.request.duration"]
    assert sum(p.count for _, p in durations) == summary["requests"]
    by_status: dict[int, int] = defaultdict(int)
    for labels, point in durations:
        assert labels["http.request.method"] == "POST"
        assert labels["server.address"] == "127.0.0.1"
        assert labels["endpoint"] == ENDPOINT and labels["shard"] == "0/1"
        status = labels["http.response.status_code"]
        by_status[status] += point.count
        if status >= 400:
            assert labels["error.type"] == str(status)
        else:
            assert "error.type" not in labels
    assert by_status[200] == summary["requests_ok"]
    assert by_status[429] == summary["throttled_429"]
    assert by_status[500] == summary["retries"]["500"]

    spans = otlp.spans()
    assert [s.name for s in spans] == ["engine score"]
    span_attrs = attrs(spans[0].attributes)
    assert span_attrs["rows_scored"] == summary["rows_scored"] and span_attrs["exit_code"] == 0


async def test_a_failed_run_still_flushes_its_metrics_and_an_error_span(
    emulator: Emulator, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    table = regressor_table(emulator, 2_000, seed=62)
    values = table.column("x0").to_pylist()
    values[1_500] = POISON_VALUE
    pq.write_table(table.set_column(0, "x0", pa.array(values, pa.float64())),
                   tmp_path / "in.parquet")
    code, printed = await run_engine(
        emulator, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "out.arrow"), "--batch-rows", "100", "--max-error-rows", "0",
        "--summary", str(tmp_path / "summary.json"), "--progress", "off",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url},
    )
    assert code == 1 and "Traceback" not in printed, printed[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_rejected"] == 1
    spans = otlp.spans()
    assert len(spans) == 1 and spans[0].status.code == 2  # STATUS_CODE_ERROR
    assert "`max_error_rows=0`" in spans[0].status.message
    points = otlp.last_points()  # the last export, made at exit
    run = {"endpoint": ENDPOINT, "shard": "0/1"}
    assert point_value(points["batch_engine.rows.rejected"], **run) == 1
    assert point_value(points["batch_engine.rows.scored"], **run) == summary["rows_scored"]
    assert otlp.resource()["service.name"] == "databricks-batch-engine"


# -- Prometheus Pushgateway ---------------------------------------------------------------


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    with running_pushgateway(tmp_path) as gateway:
        yield gateway


async def test_pushgateway_holds_the_runs_figures_equal_to_the_summary(
    emulator: Emulator, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(seed=8, error_500_rate=0.1, throttle_rate=0.1))
    before = time.time()
    code, printed = await run_engine(
        emulator, *_score_args(emulator, tmp_path, 3_000, seed=63),
        "--pushgateway", pushgateway.url, "--pushgateway-job", "nightly",
        "--pushgateway-label", "instance=ci",
    )
    assert code == 0, printed[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["retries"]
    got = pushgateway.scrape()
    group = {"job": "nightly", "instance": "ci", "shard": "0/1", "endpoint": ENDPOINT,
             "model_version": summary["model"]}
    for name, key in [
        ("batch_engine_rows_scored_total", "rows_scored"),
        ("batch_engine_rows_rejected_total", "rows_rejected"),
        ("batch_engine_rows_from_checkpoint_total", "rows_skipped"),
        ("batch_engine_rows_input", "rows_total"),
        ("batch_engine_requests_total", "requests"),
        ("batch_engine_requests_throttled_total", "throttled_429"),
        ("batch_engine_requests_abandoned_total", "requests_abandoned"),
        ("batch_engine_requests_hedged_total", "requests_hedged"),
        ("batch_engine_requests_hedges_won_total", "hedges_won"),
        ("batch_engine_token_refreshes_total", "token_refreshes"),
        ("batch_engine_exit_code", "exit_code"),
        ("batch_engine_buffer_peak_bytes", "buffer_peak_bytes"),
    ]:
        assert sample_value(got, name, **group) == summary[key], name
    assert summary["buffer_peak_bytes"] > 0
    for cause, count in summary["retries"].items():
        assert sample_value(got, "batch_engine_retries_total", cause=cause, **group) == count
    assert sample_value(got, "batch_engine_request_latency_seconds", quantile="0.5", **group) == (
        pytest.approx(summary["latency_ms"]["p50"] / 1000, abs=1e-5)
    )
    assert sample_value(got, "batch_engine_duration_seconds", **group) == pytest.approx(
        summary["elapsed_s"], abs=0.01
    )
    assert before <= sample_value(got, "batch_engine_last_success_timestamp_seconds", **group)


async def test_a_failed_run_pushes_its_exit_code_and_keeps_the_last_success(
    emulator: Emulator, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    args = [*_score_args(emulator, tmp_path, 200, seed=64), "--pushgateway", pushgateway.url]
    code, printed = await run_engine(emulator, *args)
    assert code == 0, printed[-2000:]
    group = {"job": "databricks_batch_engine", "shard": "0/1"}
    last_success = "batch_engine_last_success_timestamp_seconds"
    success = sample_value(pushgateway.scrape(), last_success, **group)

    code, printed = await run_engine(
        emulator, *args, "--max-attempts", "1", env={"DATABRICKS_CLIENT_SECRET": "wrong-secret"}
    )
    assert code == 2 and "Traceback" not in printed
    got = pushgateway.scrape()
    assert sample_value(got, "batch_engine_exit_code", **group) == 2
    assert sample_value(got, last_success, **group) == success


async def test_an_unreachable_pushgateway_warns_once_and_the_run_succeeds(
    emulator: Emulator, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    code, printed = await run_engine(
        emulator, *_score_args(emulator, tmp_path, 500, seed=65), "--pushgateway", closed
    )
    assert code == 0, printed[-2000:]
    assert printed.count("pushing metrics to the Pushgateway") == 1
    assert "Traceback" not in printed


async def test_a_bad_pushgateway_url_is_a_usage_error(emulator: Emulator, tmp_path: Path) -> None:
    code, printed = await run_engine(
        emulator, *_score_args(emulator, tmp_path, 10, seed=66), "--pushgateway", "pgw:9091"
    )
    assert code == 2 and "--pushgateway" in printed and "http://" in printed
    assert "Traceback" not in printed



async def test_a_run_stopped_by_sigterm_flushes_its_metrics_to_both_receivers(
    emulator: Emulator, otlp: OtlpReceiver, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(latency_ms=100.0))
    args = _score_args(emulator, tmp_path, 6_000, seed=67)
    checkpoint = tmp_path / "ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "OTEL_"))}
    env.update(
        DATABRICKS_HOST=emulator.host, DATABRICKS_CLIENT_ID=emulator.client_id,
        DATABRICKS_CLIENT_SECRET=emulator.client_secret,
        DATABRICKS_CONFIG_FILE="/nonexistent/databrickscfg", OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", *args, "--concurrency", "2", "--checkpoint",
        str(checkpoint), "--pushgateway", pushgateway.url, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    manifest = checkpoint / "manifest.jsonl"
    while not (manifest.exists() and manifest.stat().st_size):  # some batches are done
        assert proc.returncode is None, "the run ended before it could be stopped"
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    printed, _ = await proc.communicate()
    assert proc.returncode == 143, printed.decode()[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["rows_scored"] < 6_000
    group = {"job": "databricks_batch_engine", "shard": "0/1"}
    pushed = pushgateway.scrape()
    assert sample_value(pushed, "batch_engine_exit_code", **group) == 143
    assert sample_value(pushed, "batch_engine_rows_scored_total", **group) == summary["rows_scored"]
    points = otlp.last_points()
    assert point_value(points["batch_engine.rows.scored"], shard="0/1") == summary["rows_scored"]
    [span] = otlp.spans()
    assert span.status.code == 2 and "SIGTERM" in span.status.message
