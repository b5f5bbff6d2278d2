"""engine.spark.score with pyspark in local mode (``local[2]``) against the emulator.

Needs pyspark (``pip install -e '.[spark]'``) and Java; skipped without pyspark.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pyarrow as pa
import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("pyspark needs Java", allow_module_level=True)

from pyspark.sql import SparkSession  # noqa: E402

from engine.config import Credentials  # noqa: E402
from engine.emulator import (  # noqa: E402
    POISON_VALUE,
    EmulatorConfig,
    EmulatorThread,
    EndpointConfig,
    Faults,
)
from engine.emulator.models import builtin_model  # noqa: E402
from engine.errors import SchemaError, UsageError  # noqa: E402
from engine.spark import score  # noqa: E402

ENDPOINT = "demo-regressor"
MODEL = builtin_model(ENDPOINT)
#: The endpoint's limit, and the total the job is given: 8 partitions, 2 at once.
QPS = 40.0


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    # Python workers are started by the JVM, which inherits this variable: they must run
    # this interpreter (its venv has pyarrow and the engine).
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("engine-spark-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "5000")
        .getOrCreate()
    )
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    # The limit, with a bucket of one second of requests. Spark's workers and this emulator
    # thread share two cores: on a busy machine the emulator reads requests in bunches that
    # left the workers evenly spaced, so a 0.1 s bucket judged the machine's load, not the
    # job (7 of 272 throttled once). A job that does not split the cap sends 80 req/s and is
    # refused far above 2 % within a few seconds; the pacer's own spacing is a unit test.
    faults = Faults(qps_limit=QPS, qps_burst=QPS, seed=4)
    with EmulatorThread(EmulatorConfig(endpoints=(EndpointConfig(name=ENDPOINT, faults=faults),))) as emu:
        yield emu


def credentials(emu: EmulatorThread) -> Credentials:
    return Credentials(host=emu.host, client_id=emu.client_id, client_secret=emu.client_secret)


def poisoned(rows: int, bad: list[int]) -> pa.Table:
    table = MODEL.sample(rows, seed=12)
    values = table.column("x0").to_pylist()
    for index in bad:
        values[index] = float(POISON_VALUE)
    return table.set_column(0, "x0", pa.array(values, pa.float64()))


def test_200k_rows_over_8_partitions_every_prediction_right_and_the_rate_cap_held(
    spark: SparkSession, emulator: EmulatorThread
) -> None:
    bad = [5, 70_001, 199_998]
    table = poisoned(200_000, bad).append_column("row_id", pa.array(range(200_000), pa.int64()))
    df = spark.createDataFrame(table.to_pandas()).repartition(8, "row_id")
    before = emulator.accounting(ENDPOINT)["requests_by_status"]

    scored = score(df, endpoint=ENDPOINT, credentials=credentials(emulator), qps=QPS)
    result = pa.Table.from_pandas(scored.toPandas()).sort_by("row_id")

    assert result.num_rows == 200_000
    assert result.column_names == [*table.column_names, "prediction", "error"]
    errors = result.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e is not None] == bad
    good = [i for i in range(200_000) if i not in bad]
    want = pa.array(MODEL.predict(table.take(good).drop_columns(["row_id"]))).to_pylist()
    assert result.column("prediction").take(good).to_pylist() == want
    assert result.column("prediction").take(bad).null_count == len(bad)
    statuses = emulator.accounting(ENDPOINT)["requests_by_status"]
    sent = {k: v - before.get(k, 0) for k, v in statuses.items()}
    # Two tasks at once, each at 40/2 req/s: together within the endpoint's 40 (without the
    # split, 33 of 298 were throttled even with a 0.1 s bucket).
    assert sent.get(200, 0) >= 200  # 1000-row batches, plus the bad rows' bisections
    assert sent.get(429, 0) <= 0.02 * sum(sent.values()), sent


def test_the_secret_is_not_in_the_plan(spark: SparkSession, emulator: EmulatorThread) -> None:
    df = spark.createDataFrame(MODEL.sample(100, seed=2).to_pandas())
    scored = score(df, endpoint=ENDPOINT, credentials=credentials(emulator))
    plans = [
        scored._jdf.queryExecution().toString(),
        scored._jdf.queryExecution().logical().toString(),
        str(scored.schema),
    ]
    for plan in plans:
        assert emulator.client_secret not in plan
    assert "MapInArrow engine_score(" in plans[0]
    assert scored.count() == 100


def test_a_schema_that_does_not_fit_fails_on_the_driver_before_any_task(
    spark: SparkSession, emulator: EmulatorThread
) -> None:
    df = spark.createDataFrame(MODEL.sample(10, seed=3).drop_columns(["x1", "x2"]).to_pandas())
    before = sum(emulator.accounting(ENDPOINT)["requests_by_status"].values())
    with pytest.raises(SchemaError, match="x1") as info:
        score(df, endpoint=ENDPOINT, credentials=credentials(emulator))
    assert "x2" in str(info.value)
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == before


def test_a_query_that_reads_only_some_rows_ends_its_tasks(
    spark: SparkSession, emulator: EmulatorThread
) -> None:
    df = spark.createDataFrame(MODEL.sample(20_000, seed=6).to_pandas()).repartition(2)
    scored = score(df, endpoint=ENDPOINT, credentials=credentials(emulator), batch_rows=500)
    rows = scored.limit(5).collect()
    assert len(rows) == 5 and all(row["error"] is None for row in rows)


def test_jobs_with_different_columns_in_the_same_workers_each_keep_their_own(
    spark: SparkSession, emulator: EmulatorThread
) -> None:
    plain = MODEL.sample(2_000, seed=7)
    tagged = plain.append_column("tag", pa.array([f"t{i}" for i in range(2_000)]))
    for table in (plain, tagged, plain):  # Python workers are reused from job to job
        df = spark.createDataFrame(table.to_pandas()).coalesce(2)
        scored = score(df, endpoint=ENDPOINT, credentials=credentials(emulator))
        result = pa.Table.from_pandas(scored.toPandas())
        assert result.column_names == [*table.column_names, "prediction", "error"]
        assert result.column("error").null_count == 2_000


def test_served_model_targets_one_served_model_and_an_unknown_one_fails_on_the_driver(
    spark: SparkSession, emulator: EmulatorThread
) -> None:
    served = next(e for e in emulator.config.endpoints if e.name == ENDPOINT).served_entity_name()
    table = MODEL.sample(3_000, seed=8)
    df = spark.createDataFrame(table.to_pandas()).coalesce(2)
    scored = score(df, endpoint=ENDPOINT, credentials=credentials(emulator), served_model=served)
    result = pa.Table.from_pandas(scored.toPandas())
    assert result.column("error").null_count == 3_000
    assert sorted(result.column("prediction").to_pylist()) == sorted(
        pa.array(MODEL.predict(table)).to_pylist()
    )

    before = sum(emulator.accounting(ENDPOINT)["requests_by_status"].values())
    with pytest.raises(UsageError, match="serves no model named 'nope'"):
        score(df, endpoint=ENDPOINT, credentials=credentials(emulator), served_model="nope")
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == before
