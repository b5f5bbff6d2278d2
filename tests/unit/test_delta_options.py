"""Delta options as values: checked when built, no table or socket needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.delta_sink import RunTransaction, TableWrite
from engine.errors import UsageError
from engine.source.delta import TableRead


def test_a_table_read_takes_one_of_version_and_timestamp() -> None:
    with pytest.raises(UsageError, match="give one"):
        TableRead(version=1, timestamp="2025-01-01T00:00:00Z")
    with pytest.raises(UsageError, match="0 or more"):
        TableRead(version=-1)
    with pytest.raises(UsageError, match="`where` is empty"):
        TableRead(where="  ")
    assert not TableRead().chosen
    assert TableRead(where="a = 1").given() == "`where`"


def test_the_output_is_delta_when_asked_or_already_a_table(tmp_path: Path) -> None:
    plain = TableWrite.chosen(
        str(tmp_path / "o.parquet"), output_format=None, mode=None, partition_by=None,
        overwrite=False,
    )
    assert plain is None
    (tmp_path / "t" / "_delta_log").mkdir(parents=True)
    existing = TableWrite.chosen(
        str(tmp_path / "t"), output_format="auto", mode=None, partition_by="day, country",
        overwrite=True,
    )
    assert existing == TableWrite(
        uri=str(tmp_path / "t"), mode="overwrite", partition_by=("day", "country")
    )
    with pytest.raises(UsageError, match="`output_format` 'csv'"):
        TableWrite.chosen("o", output_format="csv", mode=None, partition_by=None,
                          overwrite=False)
    with pytest.raises(UsageError, match="names a column twice"):
        TableWrite(uri="t", partition_by=("day", "day"))


def test_the_run_transaction_is_named_by_the_identity_alone() -> None:
    identity = {"input": "delta:/t@3", "endpoint": "e", "params": {"b": 1, "a": 2}}
    same = RunTransaction.for_run(dict(reversed(list(identity.items()))))
    assert RunTransaction.for_run(identity).app_id == same.app_id
    assert same.app_id.startswith("databricks-batch-engine-")
    other = RunTransaction.for_run({**identity, "input": "delta:/t@4"})
    assert other.app_id != same.app_id
