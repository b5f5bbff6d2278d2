"""The run record for real: the HTML report in headless Chromium, the MLflow run on a local
``mlflow server``, both after runs against the emulator with 429s and rejected rows.

Chromium: Debian's ``chromium`` (``apt-get install -y chromium``), never a browser download.
MLflow: a server from its own venv, so its dependencies stay apart from Airflow's
(``python -m venv .venv-mlflow && .venv-mlflow/bin/pip install mlflow``); ENGINE_TEST_MLFLOW
names its ``mlflow`` command when it lives elsewhere. Either missing skips its tests locally
and fails them in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import engine
from engine.emulator import POISON_VALUE, Emulator, Faults
from engine.errors import Interrupted, RunAborted, UsageError
from engine.pipeline import StopSignal
from tests.helpers import credentials_for, regressor_table
from tests.integration.test_auth_and_secrets import run_cli

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "demo-regressor"
POISON_ROWS = (17, 1_234, 2_900)
#: Seeded 429s unrelated to load, and latency enough that the run spans a few samples.
FAULTS = Faults(seed=5, throttle_rate=0.15, latency_ms=60.0, jitter_ms=20.0)


def required(what: str, how: str) -> None:
    """Skip locally, fail in CI: CI must run these tests."""
    message = f"{what} is not installed: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        required("chromium", "apt-get install -y chromium")
    assert path is not None
    return path


def poisoned_input(emulator: Emulator, path: Path, rows: int = 3_000) -> pa.Table:
    table = regressor_table(emulator, rows, seed=11)
    values = table.column("x0").to_pylist()
    for row in POISON_ROWS:
        if row < rows:
            values[row] = POISON_VALUE
    table = table.set_column(0, "x0", pa.array(values, pa.float64()))
    pq.write_table(table, path)
    return table


class Dom(html.parser.HTMLParser):
    """Elements' attributes from the DOM Chromium rendered, by id and by tag."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if "id" in values:
            self.by_id[values["id"]] = values


def browse(chromium: str, page: Path, tmp_path: Path) -> tuple[Dom, Image.Image]:
    """The page's rendered DOM and a screenshot, from headless Chromium (no network)."""
    common = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1000,1800",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
        check=True,
    ).stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120,
        check=True,
    )
    return Dom(dom), Image.open(shot).convert("RGB")


async def test_the_report_renders_in_chromium_with_the_runs_numbers(
    emulator: Emulator, chromium: str, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, FAULTS)
    poisoned_input(emulator, tmp_path / "in.parquet")
    report = tmp_path / "run.html"
    code, printed = await run_cli(
        emulator, tmp_path, "score", str(tmp_path / "in.parquet"), "--endpoint", ENDPOINT,
        "--output", str(tmp_path / "o.parquet"), "--batch-rows", "100", "--concurrency", "4",
        "--summary", str(tmp_path / "s.json"), "--report", str(report),
    )
    assert code == 3, printed.decode()[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["throttled_429"] > 0 and summary["rows_rejected"] == len(POISON_ROWS)

    dom, shot = await asyncio.to_thread(browse, chromium, report, tmp_path)

    body = next(attrs for tag, attrs in dom.tags if tag == "body")
    assert body["data-rendered"] == "1"  # the page's script ran to the end
    assert dom.by_id["status"]["data-status"] == "finished"
    assert dom.by_id["status"]["data-exit-code"] == "3"
    rows = dom.by_id["chart-rows"]
    assert int(rows["data-total-rows"]) == summary["rows_scored"] + summary["rows_rejected"]
    assert int(rows["data-total-rejected"]) == summary["rows_rejected"]
    pacing = dom.by_id["chart-pacing"]
    assert int(pacing["data-total-429"]) == summary["throttled_429"]
    assert int(pacing["data-total-requests"]) == summary["requests"]
    for chart in ("chart-rows", "chart-in-flight", "chart-pacing", "chart-latency"):
        assert int(dom.by_id[chart]["data-drawn-width"]) > 0, f"{chart} drew no line"
    groups = [attrs for tag, attrs in dom.tags if tag == "tr" and attrs.get("class") == "reject"]
    assert sum(int(g["data-rows"]) for g in groups) == summary["rows_rejected"]
    causes = {a["data-cause"]: int(a["data-count"]) for t, a in dom.tags if "data-cause" in a}
    assert causes == summary["retries"]
    tiles = {a["data-field"]: a["data-value"] for t, a in dom.tags if "data-field" in a}
    assert int(tiles["rows_scored"]) == summary["rows_scored"]
    assert int(tiles["throttled_429"]) == summary["throttled_429"]
    embedded = json.loads(report.read_text().split('id="run-data">')[1].split("</script>")[0])
    assert [g["examples"] for g in embedded["rejected"]] == [list(POISON_ROWS)]
    # A real picture: far from one flat colour.
    colours = shot.getcolors(maxcolors=1_000_000) or []
    assert shot.size == (1000, 1800) and len(colours) > 50
    assert max(count for count, _ in colours) < 0.95 * shot.size[0] * shot.size[1]


async def test_a_stopped_run_and_a_failed_run_still_write_their_report(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, Faults(latency_ms=40.0))
    poisoned_input(emulator, tmp_path / "in.parquet")
    stop = StopSignal()

    async def stop_after_some_rows() -> None:
        while sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) < 5:
            await asyncio.sleep(0.01)
        stop.request("SIGTERM")

    stopper = asyncio.create_task(stop_after_some_rows())
    with pytest.raises(Interrupted) as stopped:
        await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "a.parquet", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), batch_rows=50, concurrency=2,
            progress="off", stop=stop, report=tmp_path / "stopped.html",
        )
    await stopper
    text = (tmp_path / "stopped.html").read_text()
    assert 'data-status="stopped"' in text and "stopped by SIGTERM" in text
    assert stopped.value.summary is not None
    assert f'data-exit-code="{stopped.value.summary.exit_code}"' in text

    with pytest.raises(RunAborted) as failed:
        await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "b.parquet", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), batch_rows=50, progress="off",
            max_error_rows=0, report=tmp_path / "failed.html",
        )
    text = (tmp_path / "failed.html").read_text()
    assert 'data-status="failed"' in text and "more than `max_error_rows=0`" in text
    assert failed.value.summary is not None and failed.value.summary.exit_code == 1


async def test_an_unwritable_report_or_an_unusable_tracking_uri_is_refused_before_sending(
    emulator: Emulator, tmp_path: Path
) -> None:
    poisoned_input(emulator, tmp_path / "in.parquet", rows=100)
    options: dict[str, Any] = {
        "output": tmp_path / "o.parquet", "endpoint": ENDPOINT,
        "credentials": credentials_for(emulator), "progress": "off",
    }
    with pytest.raises(UsageError, match="does not exist; create it"):
        await engine.ascore(tmp_path / "in.parquet", report=tmp_path / "no" / "r.html", **options)
    with pytest.raises(UsageError, match="give 'databricks'"):
        await engine.ascore(
            tmp_path / "in.parquet", mlflow_experiment="/x", mlflow_tracking_uri="sqlite:///m.db",
            **options,
        )
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == 0


# --- MLflow ------------------------------------------------------------------------------


def mlflow_command() -> str:
    named = os.environ.get("ENGINE_TEST_MLFLOW")
    for candidate in (named, str(ROOT / ".venv-mlflow" / "bin" / "mlflow"), shutil.which("mlflow")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    required(
        "an MLflow server",
        "python -m venv .venv-mlflow && .venv-mlflow/bin/pip install mlflow "
        "(or set ENGINE_TEST_MLFLOW to an mlflow command)",
    )
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on loopback with a sqlite store and proxied artifacts; stopped after."""
    command = mlflow_command()
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [command, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--artifacts-destination", str(home / "artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a start-up wait, not a speed assertion
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def rest(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw = answer.read()
    return json.loads(raw) if path.startswith("/api/2.0/mlflow/") else raw


async def test_the_mlflow_run_holds_params_metrics_and_artifacts_equal_to_the_summary(
    emulator: Emulator, mlflow_server: str, tmp_path: Path
) -> None:
    emulator.set_faults(ENDPOINT, FAULTS)
    poisoned_input(emulator, tmp_path / "in.parquet")
    experiment = "/Users/scheduler@example.com/nightly-scoring"

    summary = await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "o.parquet", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), batch_rows=100, concurrency=4, progress="off",
        report=tmp_path / "run.html", mlflow_experiment=experiment,
        mlflow_tracking_uri=mlflow_server,
    )
    assert summary.throttled_429 > 0 and summary.rows_rejected == len(POISON_ROWS)

    found = await asyncio.to_thread(
        rest, mlflow_server,
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=" + urllib.request.quote(
            experiment, safe=""
        ),
    )
    experiment_id = found["experiment"]["experiment_id"]
    runs = (await asyncio.to_thread(
        rest, mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]}
    ))["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["endpoint"] == ENDPOINT and params["batch_rows"] == "100"
    assert params["model_version"] == summary.model
    assert params["input"] == str(tmp_path / "in.parquet")
    assert params["output"] == str(tmp_path / "o.parquet") and params["concurrency"] == "4"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["rows_scored"] == summary.rows_scored
    assert metrics["rows_rejected"] == summary.rows_rejected
    assert metrics["throttled_429"] == summary.throttled_429
    assert metrics["throttled_share"] == summary.throttled_share
    assert metrics["rows_per_s"] == summary.rows_per_s
    assert metrics["latency_p99_ms"] == summary.latency_ms["p99"]
    assert metrics["retries.429"] == summary.retries["429"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["engine.status"] == "finished" and tags["engine.exit_code"] == "3"
    run_id = run["info"]["run_id"]
    history = (await asyncio.to_thread(
        rest, mlflow_server,
        f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=timeline.in_flight",
    ))["metrics"]
    assert len(history) >= 2 and history[0]["step"] == 0  # the timeline, a step a second
    listed = await asyncio.to_thread(
        rest, mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}"
    )
    assert {f["path"] for f in listed["files"]} == {"summary.json", "run_report.html"}
    base = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts"
    uploaded = await asyncio.to_thread(rest, mlflow_server, f"{base}/summary.json")
    assert json.loads(uploaded) == json.loads(json.dumps(summary.to_dict()))
    report = await asyncio.to_thread(rest, mlflow_server, f"{base}/run_report.html")
    assert report.decode() == (tmp_path / "run.html").read_text()


async def test_a_tracking_server_that_cannot_be_reached_is_a_warning_not_a_failure(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned_input(emulator, tmp_path / "in.parquet", rows=200)
    with caplog.at_level(logging.WARNING, logger="engine"):
        summary = await engine.ascore(
            tmp_path / "in.parquet", output=tmp_path / "o.parquet", endpoint=ENDPOINT,
            credentials=credentials_for(emulator), progress="off", mlflow_experiment="/x",
            mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        )
    assert summary.exit_code == 3 and summary.rows_scored == 200 - 1  # row 17 is poisoned
    warning = next(r for r in caplog.records if "not logged to MLflow" in r.getMessage())
    assert "cannot connect to http://127.0.0.1" in warning.getMessage()
