"""Score each day's export with a Databricks serving endpoint, from Airflow.

Copy this file into your DAGs folder and change the paths and the endpoint. It needs
``pip install 'databricks-batch-engine[airflow]'`` on the workers and a Databricks connection
``databricks_default`` for an OAuth service principal with CAN_QUERY on the endpoint::

    airflow connections add databricks_default --conn-type databricks \\
        --conn-host https://my-workspace.cloud.databricks.com \\
        --conn-login <client id> --conn-password <OAuth secret> \\
        --conn-extra '{"service_principal_oauth": true}'

Two DAGs: one task for the whole day, or one mapped task per shard of it (``--shard I/N``:
by row group, so every row is scored once; smaller retries, parallel scoring). Either way a
retry resumes from the checkpoint beside its output, so keep
the outputs on storage every worker sees.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG

from engine.airflow import ServingBatchOperator

EXPORTS = "/data/exports"  # one folder of Parquet files per day: /data/exports/2026-11-21/
SCORED = "/data/scored"
ENDPOINT = "churn-model"

DEFAULTS = {"retries": 3, "retry_delay": timedelta(minutes=2)}

with DAG(
    dag_id="score_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
):
    ServingBatchOperator(
        task_id="score",
        input=EXPORTS + "/{{ ds }}/*.parquet",
        output=SCORED + "/{{ ds }}.parquet",
        endpoint=ENDPOINT,
        overwrite=True,  # clearing a finished run scores the day again
        score_options={"batch_rows": 1000, "max_error_rows": 100},
        execution_timeout=timedelta(hours=6),  # on timeout the checkpoint is kept for a retry
        report=SCORED + "/{{ ds }}.report.html",  # linked in the task log, also on failure
    )


SHARDS = 8

with DAG(
    dag_id="score_daily_sharded",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
):
    ServingBatchOperator.partial(
        task_id="score_shard",
        input=EXPORTS + "/{{ ds }}/",
        endpoint=ENDPOINT,
        # Every mapped task needs its own output; its checkpoint sits beside it. The shard
        # outputs, read in map-index order, are the whole day in input order.
        output=SCORED + "/{{ ds }}/part-{{ ti.map_index }}.parquet",
        overwrite=True,
        # The total across the shards: each of the 8 sends at most 200 / 8 = 25 requests/s.
        score_options={"qps": 200},
        max_active_tis_per_dagrun=4,
    ).expand(shard=[f"{i}/{SHARDS}" for i in range(SHARDS)])
