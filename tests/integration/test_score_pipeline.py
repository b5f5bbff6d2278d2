"""`engine score` end to end against the emulator: every prediction right, in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator, EmulatorConfig, Faults
from engine.errors import AuthError, EndpointError, OutputExistsError, SchemaError
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

ENDPOINT = "demo-regressor"


async def test_parquet_input_scored_in_order_with_every_prediction_right(
    emulator: Emulator, tmp_path
) -> None:
    table = regressor_table(emulator, 5_000, seed=1)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1_000)
    out = tmp_path / "out.arrow"
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=out, endpoint=ENDPOINT,
        credentials=credentials_for(emulator), batch_rows=700, progress="off",
    )
    result = read_output(str(out))
    assert summary.exit_code == 0
    assert summary.rows_scored == 5_000 and summary.rows_rejected == 0
    assert result.num_rows == 5_000
    assert result.select(table.column_names).equals(table)
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
    assert result.column("error").null_count == 5_000
    delivered = emulator.accounting(ENDPOINT)["rows_delivered"]
    assert len(delivered) == 5_000 and set(delivered.values()) == {1}


async def test_csv_directory_input_to_parquet_output(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 3_000, seed=2)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, start in enumerate(range(0, 3_000, 1_000)):
        pacsv.write_csv(table.slice(start, 1_000), folder / f"part-{i}.csv")
    out = tmp_path / "out.parquet"
    summary = await engine.ascore(
        folder, output=out, endpoint=ENDPOINT, credentials=credentials_for(emulator), progress="off"
    )
    result = pq.read_table(out)
    assert summary.exit_code == 0
    assert result.num_rows == 3_000
    want = expected_predictions(emulator, ENDPOINT, table)
    assert np.allclose(result.column("prediction").to_numpy(), want, rtol=0, atol=0)


async def test_faults_at_once_lose_nothing_and_score_each_row_once(emulator_factory, tmp_path) -> None:
    faults = Faults(
        seed=7, qps_limit=150.0, retry_after=None, error_503_rate=0.05,
        reset_after_rate=0.03, reset_before_rate=0.02,
    )
    emulator = await emulator_factory(EmulatorConfig(token_ttl_s=3600.0))
    emulator.set_faults(ENDPOINT, faults)
    table = regressor_table(emulator, 20_000, seed=3)
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out.arrow"
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=out, endpoint=ENDPOINT, credentials=credentials_for(emulator),
        batch_rows=250, concurrency=16, progress="off",
    )
    result = read_output(str(out))
    accounting = emulator.accounting(ENDPOINT)
    assert summary.exit_code == 0
    assert result.column("prediction").to_pylist() == expected_predictions(emulator, ENDPOINT, table)
    assert sum(accounting["requests_by_status"].get(s, 0) for s in (429, 503)) > 0
    assert set(accounting["rows_delivered"].values()) == {1}
    assert len(accounting["rows_delivered"]) == 20_000


async def test_existing_output_is_refused_before_any_request(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 10, seed=4)
    pq.write_table(table, tmp_path / "in.parquet")
    (tmp_path / "out.arrow").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="`overwrite=True`"):
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "out.arrow",
                            endpoint=ENDPOINT, credentials=credentials_for(emulator))
    assert (tmp_path / "out.arrow").read_bytes() == b"keep me"
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == 0


async def test_wrong_secret_is_an_auth_error_without_retry_storm(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 10, seed=5)
    pq.write_table(table, tmp_path / "in.parquet")
    creds = engine.Credentials(host=emulator.host, client_id=emulator.client_id,
                               client_secret="wrong-secret-value")
    with pytest.raises(AuthError) as info:
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "o.arrow",
                            endpoint=ENDPOINT, credentials=creds)
    assert info.value.exit_code == 2
    assert "wrong-secret-value" not in str(info.value)
    token_requests = emulator.accounting()["token_requests_by_status"]
    assert sum(token_requests.values()) == 1
    assert not (tmp_path / "o.arrow").exists()


async def test_missing_endpoint_names_the_endpoint(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 10, seed=6)
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(EndpointError, match="no-such-endpoint"):
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "o.arrow",
                            endpoint="no-such-endpoint", credentials=credentials_for(emulator))


async def test_schema_problems_are_listed_together_before_sending(emulator: Emulator, tmp_path) -> None:
    table = regressor_table(emulator, 10, seed=7)
    first, second = table.column_names[0], table.column_names[1]
    broken = table.drop_columns([first]).set_column(
        0, second, pc.cast(table.column(second), pa.string())
    )
    pq.write_table(broken, tmp_path / "in.parquet")
    with pytest.raises(SchemaError) as info:
        await engine.ascore(tmp_path / "in.parquet", output=tmp_path / "o.arrow",
                            endpoint=ENDPOINT, credentials=credentials_for(emulator))
    message = str(info.value)
    assert first in message and second in message
    assert sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()) == 0


async def test_score_table_accepts_polars_and_pandas(emulator: Emulator) -> None:
    import polars as pl

    table = regressor_table(emulator, 1_200, seed=8)
    want = expected_predictions(emulator, ENDPOINT, table)
    for frame in (pl.from_arrow(table), table.to_pandas()):
        result = await engine.ascore_table(
            frame, endpoint=ENDPOINT, credentials=credentials_for(emulator), batch_rows=500
        )
        assert result.num_rows == 1_200
        assert result.column("prediction").to_pylist() == want
