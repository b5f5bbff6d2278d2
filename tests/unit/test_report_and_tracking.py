"""The report's HTML and the MLflow batches, as values: no browser, no server."""

from __future__ import annotations

import asyncio
import html.parser
import json
import random
from typing import Any, cast

import pytest

from engine.calls import Caller
from engine.errors import UsageError
from engine.report import RunRecord, render_html
from engine.runrecord import params_of, summary_metrics, timeline_metrics
from engine.stats import RunStats
from engine.timeline import Point
from engine.tracking import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_CHARS,
    MAX_PARAMS_TAGS_PER_BATCH,
    TRACKING_RETRY,
    Metric,
    MlflowTarget,
    TrackingClient,
    TrackingError,
    log_batches,
)
from engine.transport import Response, Transport


def make_points(n: int) -> list[Point]:
    return [
        Point(t_s=float(i), span_s=1.0, rows_done=100 * i, rows_rejected=0, requests=2 * i,
              throttled_429=i // 2, in_flight=3, in_flight_limit=8.0, pacing_rps=5.0,
              window_requests=2, p50_ms=40.0, p95_ms=60.0, p99_ms=90.0)
        for i in range(1, n + 1)
    ]


def record(status: str = "finished", error: str | None = None) -> RunRecord:
    stats = RunStats()
    stats.rows_scored, stats.rows_rejected, stats.requests, stats.throttled_429 = 995, 5, 20, 10
    stats.retries["429"] = 10
    summary = stats.summary(endpoint="churn <model>", output="o.parquet", token_refreshes=1,
                            exit_code=3 if error is None else 1, error=error)
    return RunRecord(
        summary=summary,
        settings={"endpoint": "churn <model>", "input": ["a.parquet"], "batch_rows": 100,
                  "shard": None},
        points=make_points(10),
        rejects=[{"message": "column 'x0' </script> holds -999999", "rows": 5,
                  "examples": [1, 2, 3]}],
        status=status,
    )


class Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    return collector


def test_the_report_is_self_contained_and_escapes_what_it_shows() -> None:
    text = render_html(record())
    assert "http://" not in text and "https://" not in text  # nothing fetched
    assert "<script src" not in text and "<link" not in text
    assert "churn &lt;model&gt;" in text and "churn <model>" not in text
    parsed = parse(text)
    embedded = json.loads(parsed.scripts[0])
    assert embedded["rejected"][0]["message"] == "column 'x0' </script> holds -999999"
    assert embedded["summary"]["rows_rejected"] == 5 and len(embedded["timeline"]) == 10


def test_the_charts_carry_the_run_figures_as_attributes() -> None:
    parsed = parse(render_html(record()))
    figures = {attrs["id"]: attrs for tag, attrs in parsed.tags if tag == "figure"}
    assert set(figures) == {"chart-rows", "chart-in-flight", "chart-pacing", "chart-latency"}
    assert figures["chart-rows"]["data-total-rows"] == "1000"
    assert figures["chart-pacing"]["data-total-429"] == "5"
    assert figures["chart-pacing"]["data-summary-429"] == "10"
    polylines = [a for tag, a in parsed.tags if tag == "polyline"]
    assert len(polylines) == 1 + 2 + 3 + 3
    rows = [a for tag, a in parsed.tags if tag == "tr" and a.get("class") == "reject"]
    assert [r["data-rows"] for r in rows] == ["5"]
    causes = [a for tag, a in parsed.tags if tag == "tr" and "data-cause" in a]
    assert causes == [{"data-cause": "429", "data-count": "10"}]
    settings = [a["data-setting"] for tag, a in parsed.tags if "data-setting" in a]
    assert settings == ["endpoint", "input", "batch_rows"]  # unset ones left out


@pytest.mark.parametrize(
    ("status", "error", "banner"),
    [("stopped", "stopped by SIGTERM", "STOPPED"), ("failed", "HTTP 403 denied", "FAILED")],
)
def test_a_stopped_or_failed_run_says_so_at_the_top_with_the_error(
    status: str, error: str, banner: str
) -> None:
    text = render_html(record(status, error))
    top = text[text.index("<h1>") : text.index("id=\"summary\"")]
    assert banner in top and error in top


def test_log_batches_keep_within_mlflows_limits_and_lose_nothing() -> None:
    metrics = [Metric(f"m{i % 7}", float(i), 0, i) for i in range(2_500)]
    params = {f"p{i}": "v" * 7_000 if i == 0 else str(i) for i in range(150)}
    tags = {"engine.status": "finished"}
    batches = list(log_batches(metrics, params, tags))
    for body in batches:
        assert len(body["metrics"]) <= MAX_METRICS_PER_BATCH
        assert len(body["params"]) + len(body["tags"]) <= MAX_PARAMS_TAGS_PER_BATCH
        assert len(body["metrics"]) + len(body["params"]) + len(body["tags"]) <= 1000
        assert all(len(p["value"]) <= MAX_PARAM_VALUE_CHARS for p in body["params"])
    assert sum(len(b["metrics"]) for b in batches) == 2_500
    assert sum(len(b["params"]) for b in batches) == 150
    assert sum(len(b["tags"]) for b in batches) == 1


def test_summary_and_timeline_metrics_hold_the_runs_figures() -> None:
    run = record()
    metrics = {m.key: m.value for m in summary_metrics(run.summary, 0)}
    assert metrics["rows_rejected"] == 5 and metrics["throttled_429"] == 10
    assert metrics["retries.429"] == 10 and "pacing_rps" not in metrics  # None is left out
    steps = [m for m in timeline_metrics(run, 1_000) if m.key == "timeline.rows_per_s"]
    assert [m.step for m in steps] == list(range(1, 11))
    assert {m.value for m in steps} == {100.0}
    assert params_of(run.settings) == {
        "endpoint": "churn <model>", "input": '["a.parquet"]', "batch_rows": "100"
    }


@pytest.mark.parametrize(
    ("uri", "fix"),
    [("sqlite:///mlflow.db", "http(s)://"), ("file:./mlruns", "http(s)://"),
     ("http://", "has no host")],
)
def test_a_tracking_uri_the_engine_cannot_use_is_refused_with_the_fix(uri: str, fix: str) -> None:
    with pytest.raises(UsageError, match="tracking URI") as caught:
        MlflowTarget.create("/Users/me/x", uri, env={})
    assert fix in str(caught.value)


def test_the_tracking_uri_comes_from_the_flag_then_the_environment_then_the_workspace() -> None:
    env: dict[str, Any] = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000/"}
    assert MlflowTarget.create("e", None, env=env).tracking_uri == "http://127.0.0.1:5000"
    assert MlflowTarget.create("e", "http://h:1", env=env).tracking_uri == "http://h:1"
    workspace = MlflowTarget.create("e", None, env={})
    assert workspace.tracking_uri == "databricks"
    assert workspace.base_url("https://ws.example.com/") == "https://ws.example.com"
    assert workspace.uses_workspace("https://ws.example.com")
    with pytest.raises(UsageError, match="experiment name"):
        MlflowTarget.create("  ", None, env={})


class ScriptedTransport:
    """Answers requests from a script, recording what was sent (no sockets)."""

    def __init__(self, *answers: tuple[int, dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str]] = []

    async def request(self, method: str, url: str, **_: Any) -> Response:
        self.sent.append((method, url))
        status, body = self.answers.pop(0)
        return Response(status, json.dumps(body).encode(), {"Retry-After": "2"})


def scripted_client(transport: ScriptedTransport, slept: list[float]) -> TrackingClient:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    caller = Caller(TRACKING_RETRY, random.Random(1), lambda: 0.0, sleep)
    return TrackingClient(cast(Transport, transport), "http://mlflow", {}, caller=caller)


def test_a_throttled_tracking_call_is_sent_again_after_the_servers_wait() -> None:
    transport = ScriptedTransport(
        (429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}), (200, {})
    )
    slept: list[float] = []
    asyncio.run(scripted_client(transport, slept).log_batch("r1", {"metrics": []}))
    assert len(transport.sent) == 2 and slept and slept[0] >= 2.0  # Retry-After honoured


def test_a_failed_tracking_call_that_may_have_been_processed_is_not_sent_again() -> None:
    transport = ScriptedTransport((500, {"error_code": "INTERNAL_ERROR", "message": "oops"}))
    slept: list[float] = []
    with pytest.raises(TrackingError, match="HTTP 500 INTERNAL_ERROR: oops"):
        asyncio.run(
            scripted_client(transport, slept).create_run("1", run_name="x", start_ms=0)
        )
    assert len(transport.sent) == 1 and not slept  # a second run is never created
