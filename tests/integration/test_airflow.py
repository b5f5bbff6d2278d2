"""ServingBatchOperator inside a real Airflow: ``dag.test()`` against the emulator on loopback.

Each DAG runs in a child process with its own AIRFLOW_HOME and sqlite database, because
importing Airflow configures logging and settings for the whole process; the emulator runs
here, in a thread. Summaries come back through XCom: a downstream task pulls them and writes
them to a JSON file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.emulator import POISON_VALUE, EmulatorConfig, EmulatorThread, EndpointConfig, Faults
from engine.emulator.models import builtin_model
from engine.sink import read_output
from tests.receivers import otlp_receiver, point_value, running_pushgateway, sample_value

if importlib.util.find_spec("airflow") is None:  # importing it here would configure Airflow
    pytest.skip("needs apache-airflow: pip install -e '.[airflow]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
MODEL = builtin_model("demo-regressor")
DS = "2026-11-21"
#: Slow enough (2 requests of 100 rows in flight, 150 ms each) to kill mid-run.
SLOW_FAULTS = Faults(latency_ms=150.0)
#: Airflow 2's dag.test() drops task logs (its task handler has no file to write to).
TASK_LOGS_SHOWN = int(importlib.metadata.version("apache-airflow").split(".")[0]) >= 3

DAGS = '''
"""DAGs for tests/integration/test_airflow.py; every path comes from ENGINE_TEST_DATA."""
import json
import os
from pathlib import Path

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

from engine.airflow import ServingBatchOperator

DATA = Path(os.environ["ENGINE_TEST_DATA"])
START = pendulum.datetime(2026, 11, 1, tz="UTC")
OPTIONS = {"batch_rows": 500}


@task
def record_both(plain, shards):
    (DATA / "summaries.json").write_text(json.dumps({"plain": plain, "shards": list(shards)}))


@task
def record_one(summary):
    (DATA / "resumed.json").write_text(json.dumps(summary))


@task(trigger_rule="all_done")
def record_failures(ti=None):
    tasks = ("rejected_ok", "rejected_strict", "wrong_secret")
    summaries = {name: ti.xcom_pull(task_ids=name, key="summary") for name in tasks}
    reports = {name: ti.xcom_pull(task_ids=name, key="report") for name in tasks}
    (DATA / "failures.json").write_text(json.dumps(summaries))
    (DATA / "reports.json").write_text(json.dumps(reports))


with DAG("plain_and_mapped", schedule=None, start_date=START, catchup=False) as plain_and_mapped:
    plain = ServingBatchOperator(
        task_id="plain",
        input=str(DATA / "day={{ ds }}" / "*.parquet"),
        output=str(DATA / "scored" / "{{ ds }}.arrow"),
        endpoint="demo-regressor",
        score_options=OPTIONS,
    )
    shards = ServingBatchOperator.partial(
        task_id="shards",
        input=str(DATA / "day={{ ds }}"),
        endpoint="demo-regressor",
        output=str(DATA / "scored" / "{{ ds }}" / "shard-{{ ti.map_index }}.parquet"),
        score_options=OPTIONS,
    ).expand(shard=["0/3", "1/3", "2/3"])
    record_both(plain.output, shards.output)

with DAG("killed", schedule=None, start_date=START, catchup=False) as killed:
    slow = ServingBatchOperator(
        task_id="slow",
        input=str(DATA / "slow.parquet"),
        output=str(DATA / "scored" / "slow.arrow"),
        endpoint="slow-regressor",
        score_options={"batch_rows": 100, "concurrency": 2},
    )
    record_one(slow.output)

with DAG("failures", schedule=None, start_date=START, catchup=False) as failures:
    rejected_ok = ServingBatchOperator(
        task_id="rejected_ok",
        input=str(DATA / "poisoned.parquet"),
        output=str(DATA / "scored" / "rejected_ok.arrow"),
        endpoint="demo-regressor",
        score_options=OPTIONS,
        report=str(DATA / "rejected_ok-{{ ds }}.html"),
    )
    rejected_strict = ServingBatchOperator(
        task_id="rejected_strict",
        input=str(DATA / "poisoned.parquet"),
        output=str(DATA / "scored" / "rejected_strict.arrow"),
        endpoint="demo-regressor",
        fail_on_rejected_rows=True,
        score_options=OPTIONS,
    )
    wrong_secret = ServingBatchOperator(
        task_id="wrong_secret",
        input=str(DATA / "shard-0.parquet"),
        output=str(DATA / "scored" / "wrong_secret.arrow"),
        endpoint="demo-regressor",
        databricks_conn_id="databricks_wrong",
        report=str(DATA / "wrong_secret-{{ ds }}.html"),
    )
    [rejected_ok, rejected_strict, wrong_secret] >> record_failures()


@task
def record_delta(summary, ti=None):
    version = ti.xcom_pull(task_ids="to_delta", key="delta_version")
    (DATA / "delta.json").write_text(json.dumps({"summary": summary, "version": version}))


with DAG("delta", schedule=None, start_date=START, catchup=False) as delta:
    to_delta = ServingBatchOperator(
        task_id="to_delta",
        input=str(DATA / "table"),
        input_version="{{ 0 }}",
        output=str(DATA / "scored_table"),
        output_format="delta",
        mode="append",
        endpoint="demo-regressor",
        score_options=OPTIONS,
    )
    record_delta(to_delta.output)


@task
def record_measured(summaries):
    (DATA / "measured.json").write_text(json.dumps(list(summaries)))


with DAG("metrics", schedule=None, start_date=START, catchup=False) as metrics:
    measured = ServingBatchOperator.partial(
        task_id="measured",
        input=str(DATA / "measured.parquet"),
        output=str(DATA / "scored" / "measured-{{ ti.map_index }}.arrow"),
        endpoint="demo-regressor",
        score_options=OPTIONS,
        pushgateway="{{ var.value.pushgateway }}",
        pushgateway_job="{{ dag.dag_id }}",
        pushgateway_labels={"instance": "{{ ds }}"},
    ).expand(shard=["0/2", "1/2"])
    record_measured(measured.output)
'''

RUN_DAG = '''
"""Run one DAG of a file with dag.test() and print its task states as JSON."""
import importlib.util
import inspect
import json
import sys

import pendulum
from airflow.utils import db

db.initdb()
spec = importlib.util.spec_from_file_location("engine_test_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = getattr(module, sys.argv[2])
date = pendulum.parse(sys.argv[3])
parameters = inspect.signature(dag.test).parameters
try:
    run = dag.test(**{"logical_date" if "logical_date" in parameters else "execution_date": date})
except BaseException as exc:  # Airflow 2's dag.test() lets AirflowTaskTerminated out
    print("DAG-TEST-RAISED", repr(exc), flush=True)
    from airflow.models import DagRun

    run = DagRun.find(dag_id=dag.dag_id)[0]
states = {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in run.get_task_instances()}
print("TASK-STATES " + json.dumps(states), flush=True)
'''


class Airflow:
    """An AIRFLOW_HOME with the test DAGs, connections to the emulator, and a DAG runner."""

    def __init__(self, home: Path, emulator: EmulatorThread) -> None:
        self.home = home
        self.data = home / "data"
        self.data.mkdir()
        (home / "dags").mkdir()
        self.dags_file = home / "dags" / "engine_test_dags.py"
        self.dags_file.write_text(DAGS)
        self.runner = home / "run_dag.py"
        self.runner.write_text(RUN_DAG)
        self.client_id = emulator.client_id
        connection = {
            "conn_type": "databricks",
            "host": emulator.host,
            "login": emulator.client_id,
            "password": emulator.client_secret,
            "extra": {"service_principal_oauth": True},
        }
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(connection),
            "AIRFLOW_CONN_DATABRICKS_WRONG": json.dumps({**connection, "password": "wrong"}),
            "ENGINE_TEST_DATA": str(self.data),
            "PYTHONPATH": str(ROOT),
        }

    def start(self, dag_id: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(self.runner), str(self.dags_file), dag_id, DS],
            env=self.env,
            cwd=self.home,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def finish(self, process: subprocess.Popen[str]) -> tuple[dict[str, str], str]:
        """The task states ("task[map_index]" -> state) and everything the run printed."""
        log, _ = process.communicate(timeout=90)
        states = [line for line in log.splitlines() if line.startswith("TASK-STATES ")]
        assert process.returncode == 0 and states, log[-4000:]
        return json.loads(states[-1].removeprefix("TASK-STATES ")), log

    def test(self, dag_id: str) -> tuple[dict[str, str], str]:
        return self.finish(self.start(dag_id))


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    slow = EndpointConfig(name="slow-regressor", model="demo-regressor", faults=SLOW_FAULTS)
    config = EmulatorConfig(endpoints=(EndpointConfig(name="demo-regressor"), slow))
    with EmulatorThread(config) as emu:
        yield emu


@pytest.fixture
def airflow(tmp_path: Path, emulator: EmulatorThread) -> Airflow:
    return Airflow(tmp_path, emulator)


def sample(path: Path, rows: int, *, seed: int, row_group: int | None = None) -> pa.Table:
    table = MODEL.sample(rows, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group)
    return table


def predictions_of(path: Path) -> list[Any]:
    return list(read_output(path).column("prediction").to_pylist())


def expected(table: pa.Table) -> list[Any]:
    return list(pa.array(MODEL.predict(table)).to_pylist())


def test_plain_and_mapped_tasks_score_every_row_and_push_their_summaries(
    airflow: Airflow,
) -> None:
    day = [
        sample(airflow.data / f"day={DS}" / f"part-{i}.parquet", 1_500, seed=i, row_group=500)
        for i in (1, 2)
    ]

    states, log = airflow.test("plain_and_mapped")

    assert set(states.values()) == {"success"}, states
    assert set(states) == {"plain[-1]", "shards[0]", "shards[1]", "shards[2]", "record_both[-1]"}
    scored = airflow.data / "scored"
    whole = read_output(scored / f"{DS}.arrow")
    assert whole.column("prediction").to_pylist() == expected(pa.concat_tables(day))
    # Shard 1 of 3 spans both files; the shards in order are the whole day, row for row.
    parts = [read_output(scored / DS / f"shard-{i}.parquet") for i in range(3)]
    assert [p.num_rows for p in parts] == [1_000, 1_000, 1_000]
    assert pa.concat_tables(parts).to_pylist() == whole.to_pylist()
    summaries = json.loads((airflow.data / "summaries.json").read_text())
    plain = summaries["plain"]
    assert plain["exit_code"] == 0 and plain["rows_scored"] == plain["rows_total"] == 3_000
    assert plain["output"] == str(scored / f"{DS}.arrow")
    assert [s["output"] for s in summaries["shards"]] == [
        str(scored / DS / f"shard-{i}.parquet") for i in range(3)
    ]
    assert [s["rows_scored"] for s in summaries["shards"]] == [1_000, 1_000, 1_000]
    if TASK_LOGS_SHOWN:  # the engine's progress lines reach the task log
        assert "progress: 3,000/3,000 rows" in log
    assert not list(scored.rglob("*.checkpoint")), "default checkpoints are removed on success"


def test_killed_task_stops_gracefully_and_the_next_try_resumes_from_its_checkpoint(
    airflow: Airflow,
) -> None:
    table = sample(airflow.data / "slow.parquet", 6_000, seed=3)
    output = airflow.data / "scored" / "slow.arrow"
    manifest = output.parent / ".slow.arrow.checkpoint" / "manifest.jsonl"

    first = airflow.start("killed")
    deadline = time.monotonic() + 60
    while not (manifest.exists() and manifest.stat().st_size):
        assert first.poll() is None and time.monotonic() < deadline, "no batch was checkpointed"
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # what Airflow sends a task it kills
    states, log = airflow.finish(first)

    assert states["slow[-1]"] == "failed", states
    if TASK_LOGS_SHOWN:
        assert "task killed: stopping the engine" in log
        assert "stopped by SIGTERM; finished batches are checkpointed" in log
    assert not output.exists()
    checkpointed = len(manifest.read_text().splitlines())
    assert 0 < checkpointed < 60

    states, log = airflow.test("killed")

    assert states == {"slow[-1]": "success", "record_one[-1]": "success"}, states
    summary = json.loads((airflow.data / "resumed.json").read_text())
    assert summary["rows_skipped"] >= 100 * checkpointed
    assert summary["rows_skipped"] + summary["rows_scored"] == 6_000
    assert predictions_of(output) == expected(table)


def test_rejected_rows_pass_by_default_fail_when_strict_and_engine_errors_fail_the_task(
    airflow: Airflow,
) -> None:
    table = MODEL.sample(1_000, seed=4)
    name = table.column_names[0]
    values = table.column(name).to_pylist()
    values[7] = POISON_VALUE
    poisoned = table.set_column(0, name, pa.array(values, table.schema.field(name).type))
    pq.write_table(poisoned, airflow.data / "poisoned.parquet")
    sample(airflow.data / "shard-0.parquet", 100, seed=5)

    states, log = airflow.test("failures")

    assert states == {
        "rejected_ok[-1]": "success",
        "rejected_strict[-1]": "failed",
        "wrong_secret[-1]": "failed",
        "record_failures[-1]": "success",
    }
    # XCom "summary" on every exit, failures included: the code and the engine's message.
    summaries = json.loads((airflow.data / "failures.json").read_text())
    assert summaries["rejected_ok"]["exit_code"] == 3
    assert summaries["rejected_strict"]["exit_code"] == 3
    wrong = summaries["wrong_secret"]
    assert wrong["exit_code"] == 2 and f"refused the OAuth client '{airflow.client_id}'" in (
        wrong["error"]
    )
    errors = read_output(airflow.data / "scored" / "rejected_ok.arrow").column("error")
    assert [i for i, e in enumerate(errors.to_pylist()) if e is not None] == [7]
    # The templated report paths, written on success and on failure, linked in the log.
    reports = json.loads((airflow.data / "reports.json").read_text())
    ok_report = airflow.data / f"rejected_ok-{DS}.html"
    failed_report = airflow.data / f"wrong_secret-{DS}.html"
    assert reports["rejected_ok"] == str(ok_report)
    assert reports["wrong_secret"] == str(failed_report)
    ok_html = ok_report.read_text()
    assert 'data-status="finished"' in ok_html and 'class="reject" data-rows="1"' in ok_html
    failed_html = failed_report.read_text()
    assert 'data-status="failed"' in failed_html and "refused the OAuth client" in failed_html
    if TASK_LOGS_SHOWN:
        assert f"run report: {ok_report.as_uri()}" in log
        assert "the endpoint rejected 1 of 1,000 rows (fail_on_rejected_rows=True)" in log
        assert f"refused the OAuth client '{airflow.client_id}'" in log, log[-3000:]


def test_example_dag_parses_in_airflow(airflow: Airflow) -> None:
    check = """
import sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(sorted(bag.dag_ids))
"""
    done = subprocess.run(
        [sys.executable, "-c", check, str(ROOT / "examples" / "airflow_dag.py")],
        env=airflow.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "['score_daily', 'score_daily_sharded']" in done.stdout


def test_the_operator_builds_run_options_and_refuses_a_score_option_that_would_be_ignored(
    airflow: Airflow,
) -> None:
    check = """
import json
from engine.airflow import ServingBatchOperator
from engine.config import Credentials, MetricsConfig
from engine.errors import UsageError

task = ServingBatchOperator(
    task_id="t", input="in/*.parquet", output="out.parquet", endpoint="e", shard="1/4",
    input_version="3", mode="append", report="r.html", score_options={"qps": 8.0},
)
options = task._run_options(task._score_config(), Credentials(host="https://h", token="x"))
print("BUILT " + json.dumps([options.inputs, options.output, options.shard,
    options.table_read.version, options.mode, options.report, options.config.qps]))
for clash in ({"pushgateway": "http://p:9091", "score_options": {"metrics": MetricsConfig()}},
              {"score_options": {"endpoint": "other"}}):
    try:
        ServingBatchOperator(task_id="x", input="i", output="o.arrow", endpoint="e", **clash)
    except UsageError as exc:
        print("REFUSED " + str(exc))
"""
    done = subprocess.run(
        [sys.executable, "-c", check], env=airflow.env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    built = next(line for line in done.stdout.splitlines() if line.startswith("BUILT "))
    assert json.loads(built.removeprefix("BUILT ")) == [
        "in/*.parquet", "out.parquet", [1, 4], 3, "append", "r.html", 8.0
    ]
    refused = [line for line in done.stdout.splitlines() if line.startswith("REFUSED ")]
    assert len(refused) == 2, done.stdout[-2000:]
    assert "`score_options['metrics']` and `pushgateway`" in refused[0]
    assert "`score_options['endpoint']` and `endpoint`" in refused[1]


def test_a_delta_task_reads_the_templated_version_and_pushes_the_version_it_wrote(
    airflow: Airflow,
) -> None:
    deltalake = pytest.importorskip("deltalake")
    first = MODEL.sample(700, seed=11)
    deltalake.write_deltalake(str(airflow.data / "table"), first)
    deltalake.write_deltalake(str(airflow.data / "table"), MODEL.sample(300, seed=12), mode="append")
    deltalake.write_deltalake(str(airflow.data / "scored_table"), MODEL.sample(0, seed=13).append_column(
        "prediction", pa.array([], pa.float64())).append_column("error", pa.array([], pa.string())))

    states, log = airflow.test("delta")

    assert set(states.values()) == {"success"}, (states, log[-3000:])
    recorded = json.loads((airflow.data / "delta.json").read_text())
    assert recorded["version"] == recorded["summary"]["output_version"] == 1
    assert recorded["summary"]["rows_scored"] == 700
    written = pa.table(deltalake.DeltaTable(str(airflow.data / "scored_table")).to_pyarrow_table())
    assert sorted(written.column("prediction").to_pylist()) == sorted(expected(first))


def test_operator_pushes_each_shards_figures_and_exports_them_over_otlp(
    airflow: Airflow, tmp_path: Path
) -> None:
    sample(airflow.data / "measured.parquet", 2_000, seed=6, row_group=500)
    with running_pushgateway(tmp_path) as pushgateway, otlp_receiver() as otlp:
        airflow.env["AIRFLOW_VAR_PUSHGATEWAY"] = pushgateway.url  # {{ var.value.pushgateway }}
        airflow.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.url
        states, _ = airflow.test("metrics")
        assert set(states.values()) == {"success"}, states
        pushed = pushgateway.scrape()
        points = otlp.last_points()
    summaries = json.loads((airflow.data / "measured.json").read_text())
    assert [s["rows_scored"] for s in summaries] == [1_000, 1_000]
    for shard, summary in zip(("0/2", "1/2"), summaries, strict=True):
        group = {"job": "metrics", "instance": DS, "shard": shard, "endpoint": "demo-regressor"}
        for name, key in [
            ("batch_engine_rows_scored_total", "rows_scored"),
            ("batch_engine_requests_total", "requests"),
            ("batch_engine_exit_code", "exit_code"),
        ]:
            assert sample_value(pushed, name, **group) == summary[key], (shard, name)
        run = {"endpoint": "demo-regressor", "shard": shard, "model_version": summary["model"]}
        assert point_value(points["batch_engine.rows.scored"], **run) == summary["rows_scored"]
        durations = [p for a, p in points["http.client.request.duration"] if a["shard"] == shard]
        assert sum(p.count for p in durations) == summary["requests"]
