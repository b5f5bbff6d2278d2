"""RunStats: latency percentiles as numpy computes them, without numpy.ma's import."""

from __future__ import annotations

import numpy as np
import pytest

from engine.stats import RunStats
from tests.helpers import in_fresh_interpreter


@pytest.mark.parametrize("count", [1, 2, 3, 7, 100, 1001])
def test_percentiles_equal_numpys_linear_interpolation(count: int) -> None:
    stats = RunStats()
    latencies = np.random.default_rng(count).exponential(0.05, size=count)
    for value in latencies:
        stats.latencies_s.append(float(value))
    expected = np.percentile(latencies, [50, 95, 99]) * 1000.0
    got = stats.percentiles_ms()
    assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(expected.tolist(), rel=1e-12)


def test_no_latencies_give_zeros() -> None:
    assert RunStats().percentiles_ms() == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


def test_percentiles_do_not_import_numpy_ma() -> None:
    # np.percentile's first call imported numpy.ma: 7-9 ms at the end of every run
    probe = (
        "import json, sys\n"
        "from engine.stats import RunStats\n"
        "stats = RunStats()\n"
        "stats.latencies_s.extend([0.05, 0.01, 0.2])\n"
        "stats.percentiles_ms()\n"
        "print(json.dumps('numpy.ma' in sys.modules))\n"
    )
    assert in_fresh_interpreter(probe) is False
