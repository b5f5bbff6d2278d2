"""How engine.spark splits a job's totals across the tasks that run at once (no Spark here)."""

from __future__ import annotations

import pytest

from engine.config import ScoreConfig
from engine.spark import task_share


@pytest.mark.parametrize("tasks", [1, 2, 3, 8])
def test_qps_and_concurrency_are_totals_split_across_tasks_at_once(tasks: int) -> None:
    config = ScoreConfig(endpoint="e", qps=120.0, concurrency=16, max_concurrency=64)
    share = task_share(config, tasks)
    assert share.qps == pytest.approx(120.0 / tasks)
    assert share.qps * tasks <= 120.0 + 1e-9
    assert share.concurrency == max(1, 16 // tasks) and share.concurrency * tasks <= 16
    assert share.max_concurrency == -(-64 // tasks)
    assert share.progress == "off" and share.endpoint == "e"


def test_no_qps_stays_adaptive_and_a_share_never_drops_to_zero() -> None:
    share = task_share(ScoreConfig(endpoint="e", concurrency=2), 8)
    assert share.qps is None
    assert share.concurrency == 1 and share.max_concurrency == 8


def test_spark_connect_sessions_do_not_say_how_many_tasks_run_at_once() -> None:
    from engine.spark import _tasks_at_once

    class ConnectDataFrame:  # Spark Connect: .rdd raises
        @property
        def rdd(self) -> None:
            raise NotImplementedError("rdd is not supported in Spark Connect")

    assert _tasks_at_once(ConnectDataFrame()) is None  # type: ignore[arg-type]
