"""Telemetry without sockets: nothing is imported unless configured; settings are checked;
the Pushgateway's figures are the summary's."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from engine.config import MetricsConfig, ScoreConfig
from engine.errors import UsageError
from engine.stats import RunStats
from engine.telemetry import RunLabels, Telemetry

NO_OTEL = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def test_an_unconfigured_run_imports_no_opentelemetry_or_prometheus_client() -> None:
    script = """
import sys, asyncio
import engine, engine.api, engine.cli, engine.pipeline
from engine.config import ScoreConfig
from engine.telemetry import Telemetry
telemetry = Telemetry.open(ScoreConfig(endpoint="e"), shard=(0, 2))
assert not telemetry.enabled
engine.cli.build_parser("score").parse_args(["score", "x", "--endpoint", "e", "-o", "o"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "prometheus_client"))
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=NO_OTEL, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_otel_is_on_when_an_otlp_endpoint_variable_is_set_unless_disabled() -> None:
    auto = MetricsConfig()
    assert not auto.otel_enabled({})
    assert not auto.otel_enabled({"OTEL_SERVICE_NAME": "x"})  # a name alone sends nothing
    assert auto.otel_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert auto.otel_enabled({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318/v1/metrics"})
    assert not auto.otel_enabled(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert MetricsConfig(otel=True).otel_enabled({})
    assert not MetricsConfig(otel=False).otel_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})


@pytest.mark.parametrize(
    ("settings", "named", "flag"),
    [
        ({"pushgateway_url": "pgw:9091"}, "pushgateway_url", "--pushgateway"),
        (
            {"pushgateway_url": "http://pgw", "pushgateway_job": ""},
            "pushgateway_job",
            "--pushgateway-job",
        ),
        ({"pushgateway_grouping": {"job": "x"}}, "pushgateway_grouping", "--pushgateway-label"),
        ({"pushgateway_grouping": {"shard": "1"}}, "pushgateway_grouping", "--pushgateway-label"),
    ],
)
def test_bad_metrics_settings_are_usage_errors_naming_the_parameter_and_the_cli_flag(
    settings: dict[str, Any], named: str, flag: str
) -> None:
    from engine.cli import in_flags

    with pytest.raises(UsageError, match=f"`{named}`") as caught:
        MetricsConfig(**settings)
    assert in_flags(str(caught.value)).startswith(flag)


def test_the_cli_builds_the_metrics_settings_and_refuses_a_label_without_a_value() -> None:
    from engine.cli import _score_config, build_parser

    base = ["score", "in.parquet", "--endpoint", "e", "-o", "out.arrow"]
    args = build_parser("score").parse_args(
        [*base, "--pushgateway", "http://pgw:9091", "--pushgateway-job", "nightly",
         "--pushgateway-label", "instance=eu", "--no-otel"]
    )
    metrics = _score_config(args).metrics
    assert metrics == MetricsConfig(
        otel=False, pushgateway_url="http://pgw:9091", pushgateway_job="nightly",
        pushgateway_grouping={"instance": "eu"},
    )
    bad = build_parser("score").parse_args([*base, "--pushgateway-label", "instance"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        _score_config(bad)


async def test_an_unconfigured_telemetry_sets_no_request_hook_and_starts_no_task() -> None:
    telemetry = Telemetry.open(ScoreConfig(endpoint="e"))
    stats = RunStats()
    telemetry.start(SimpleNamespace(stats=stats))  # type: ignore[arg-type]
    assert telemetry.exporters == [] and stats.observer is None and telemetry._pusher is None


def test_the_pushed_families_carry_the_summary_and_a_success_timestamp_only_when_finished() -> None:
    from engine.pushgateway import metric_families

    stats = RunStats(rows_total=10, rows_scored=9, rows_rejected=1, requests=4, throttled_429=1)
    stats.retries["429"] = 1
    stats.latencies_s.extend([0.1, 0.2, 0.3, 0.4])
    summary = stats.summary(endpoint="e", output=None, token_refreshes=2, exit_code=3)
    labels = RunLabels("e", model_version="m@1", shard="1/4")

    def samples(final: bool, exit_code: int) -> dict[tuple[str, tuple[Any, ...]], float]:
        from dataclasses import replace

        families = metric_families(
            replace(summary, exit_code=exit_code), {"in_flight_limit": 8.0, "pacing_rps": None},
            labels, final=final,
        )
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples
        }

    base = (("endpoint", "e"), ("model_version", "m@1"))
    running = samples(False, 3)
    assert running[("batch_engine_rows_scored_total", base)] == 9
    assert running[("batch_engine_rows_rejected_total", base)] == 1
    assert running[("batch_engine_requests_throttled_total", base)] == 1
    assert running[("batch_engine_token_refreshes_total", base)] == 2
    assert running[("batch_engine_retries_total", (("cause", "429"), *base))] == 1
    assert running[("batch_engine_in_flight_limit", base)] == 8.0
    assert not any(name.startswith("batch_engine_pacing") for name, _ in running)  # unpaced
    assert not any(name == "batch_engine_exit_code" for name, _ in running)
    finished = samples(True, 3)  # rows rejected, but the run finished
    assert finished[("batch_engine_exit_code", base)] == 3
    assert ("batch_engine_last_success_timestamp_seconds", base) in finished
    failed = samples(True, 1)
    assert ("batch_engine_last_success_timestamp_seconds", base) not in failed


def test_a_push_after_the_final_one_is_skipped() -> None:
    from engine.pushgateway import PushgatewayExporter

    exporter = PushgatewayExporter(
        "http://127.0.0.1:9", job="j", grouping={"shard": "0/1"}, labels=RunLabels("e")
    )
    pushed: list[str] = []
    exporter._push = lambda method, registry: pushed.append(method)  # type: ignore[method-assign]
    stats = RunStats()
    from engine.telemetry import RunView

    exporter.start(RunView(stats, RunLabels("e"), "http://h/x", lambda: 1))
    exporter.push()
    exporter.finish(stats.summary(endpoint="e", output=None, token_refreshes=1, exit_code=0))
    exporter.push()
    assert pushed == ["POST", "PUT"]


async def test_every_exporter_is_pushed_each_interval_and_a_failing_push_does_not_stop_it() -> None:
    import asyncio

    pushes: list[str] = []
    enough = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Exporter:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails = name, fails

        def push(self) -> None:
            pushes.append(self.name)
            if len(pushes) == 6:  # pushes run on a thread
                loop.call_soon_threadsafe(enough.set)
            if self.fails:
                raise RuntimeError("unreachable")

    telemetry = Telemetry([Exporter("a", True), Exporter("b", False)])  # type: ignore[list-item]
    task = asyncio.create_task(telemetry._push_every(0.0))
    await enough.wait()
    task.cancel()
    assert pushes[:6] == ["a", "b", "a", "b", "a", "b"]


def test_a_missing_package_is_a_usage_error_when_asked_for_and_a_warning_when_only_the_env_set_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for module in ("engine.otel", "engine.pushgateway"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    pushed = ScoreConfig(endpoint="e", metrics=MetricsConfig(pushgateway_url="http://pgw:9091"))
    with pytest.raises(UsageError, match=r"pip install 'databricks-batch-engine\[prometheus\]'"):
        Telemetry.open(pushed)
    with pytest.raises(UsageError, match=r"databricks-batch-engine\[otel\]"):
        Telemetry.open(ScoreConfig(endpoint="e", metrics=MetricsConfig(otel=True)))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    telemetry = Telemetry.open(ScoreConfig(endpoint="e"))
    assert telemetry.exporters == []
    assert "opentelemetry is not installed" in caplog.text and "--no-otel" in caplog.text
