"""Score a Parquet dataset on Spark with a Databricks serving endpoint: Parquet in, Parquet out.

With spark-submit (the engine and pyspark installed where the driver and executors run,
``pip install 'databricks-batch-engine[spark]'``)::

    export DATABRICKS_HOST=https://my-workspace.cloud.databricks.com
    export DATABRICKS_CLIENT_ID=<service principal application id>
    export DATABRICKS_CLIENT_SECRET=<oauth secret>
    spark-submit examples/spark_score.py s3://exports/2026-11-21/ s3://scored/2026-11-21/ \\
        --endpoint churn-model --qps 200

As a Databricks job: a Python script task running this file with the same arguments, the
engine's wheel as a cluster or job library, and the three DATABRICKS_* values from a secret
scope in the cluster's environment variables (``{{secrets/scope/key}}``), never in the
arguments. On its own, ``python examples/spark_score.py IN OUT --demo`` runs it in local mode
against the embedded emulator, with a sample input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession

from engine.errors import EngineError
from engine.spark import score


def main() -> int:
    parser = argparse.ArgumentParser(description="Score Parquet with a serving endpoint on Spark.")
    parser.add_argument("input", help="Parquet file or folder (any path Spark reads)")
    parser.add_argument("output", help="Parquet folder to write")
    parser.add_argument("--endpoint", default="demo-regressor")
    parser.add_argument("--qps", type=float, help="requests/s for the whole job (default: adaptive)")
    parser.add_argument("--demo", action="store_true", help="local[2] against the emulator")
    args = parser.parse_args()
    if args.demo:
        return demo(args)
    spark = SparkSession.builder.appName(f"score-{args.endpoint}").getOrCreate()
    return run(spark, args)


def run(spark: SparkSession, args: argparse.Namespace) -> int:
    try:
        scored = score(spark.read.parquet(args.input), endpoint=args.endpoint, qps=args.qps)
    except EngineError as exc:  # bad credentials, a missing endpoint, a schema that does not fit
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    scored.write.mode("overwrite").parquet(args.output)
    rejected = spark.read.parquet(args.output).where("error IS NOT NULL").count()
    print(f"scored into {args.output}; {rejected} row(s) rejected (see their error column)")
    return 3 if rejected else 0


def demo(args: argparse.Namespace) -> int:
    """The same job in local mode against the embedded emulator, on a sample if INPUT is missing."""
    import pyarrow.parquet as pq

    from engine.emulator import EmulatorThread
    from engine.emulator.models import builtin_model

    os.environ["PYSPARK_PYTHON"] = sys.executable
    with EmulatorThread() as emu, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            DATABRICKS_HOST=emu.host,
            DATABRICKS_CLIENT_ID=emu.client_id,
            DATABRICKS_CLIENT_SECRET=emu.client_secret,
        )
        if not Path(args.input).exists():
            pq.write_table(builtin_model(args.endpoint).sample(20_000, seed=1), args.input)
        spark = (
            SparkSession.builder.master("local[2]")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.local.dir", tmp)
            .getOrCreate()
        )
        try:
            return run(spark, args)
        finally:
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
