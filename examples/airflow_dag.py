"""Score each day's export with a Databricks serving endpoint, from Airflow.

Copy this file into your DAGs folder and change the paths and the endpoint. It needs
``pip install 'databricks-batch-engine[airflow]'`` on the workers and a Databricks connection
``databricks_default`` for an OAuth service principal with CAN_QUERY on the endpoint::

    airflow connections add databricks_default --conn-type databricks \\
        --conn-host https://my-workspace.cloud.databricks.com \\
        --conn-login <client id> --conn-password <OAuth secret> \\
        --conn-extra '{"service_principal_oauth": true}'

Two DAGs: one task for the whole day, or one mapped task per shard file (smaller retries,
parallel scoring). Either way a retry resumes from the checkpoint beside its output, so keep
the outputs on storage every worker sees.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

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
    )


@task
def shard_files(ds: str | None = None) -> list[str]:
    """The day's Parquet files, sorted so each keeps its map index (and output) on every try."""
    return sorted(str(path) for path in Path(EXPORTS, str(ds)).glob("*.parquet"))


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
        endpoint=ENDPOINT,
        # Every mapped task needs its own output; its checkpoint sits beside it.
        output=SCORED + "/{{ ds }}/part-{{ ti.map_index }}.parquet",
        overwrite=True,
        # The shards share the endpoint: each finds its share of the capacity on its own
        # (it backs off at the first 429), but fewer at once are gentler on the endpoint.
        max_active_tis_per_dagrun=4,
    ).expand(input=shard_files())
