"""Any custom-model endpoint: one without a route-optimized URL is scored through the workspace
URL (a PAT is enough there), and --served-model targets one served model on either path."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator, EmulatorConfig, EndpointConfig
from engine.errors import UsageError
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

PLAIN = "plain-regressor"
ROUTED = "demo-regressor"


@pytest.fixture
async def emulator(emulator_factory) -> Emulator:
    return await emulator_factory(
        EmulatorConfig(
            endpoints=(
                EndpointConfig(name=ROUTED),
                EndpointConfig(name=PLAIN, model="demo-regressor", route_optimized=False),
            )
        )
    )


async def score(emulator: Emulator, tmp_path, endpoint: str, credentials=None, **options):
    table = regressor_table(emulator, 2_000, seed=5, endpoint=endpoint)
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / f"out-{endpoint}.arrow"
    summary = await engine.ascore(
        tmp_path / "in.parquet", output=out, endpoint=endpoint, progress="off",
        credentials=credentials or credentials_for(emulator), batch_rows=200, **options,
    )
    return table, summary, out


async def test_an_endpoint_without_a_route_optimized_url_is_scored_through_the_workspace(
    emulator: Emulator, tmp_path, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    table, summary, out = await score(emulator, tmp_path, PLAIN)
    got = read_output(str(out)).column("prediction").to_pylist()
    assert got == expected_predictions(emulator, PLAIN, table)
    assert summary.rows_scored == 2_000
    assert emulator.accounting(PLAIN)["requests_by_status"] == {200: 10}
    assert any("not route-optimized" in r.getMessage() for r in caplog.records)


async def test_a_personal_access_token_scores_an_endpoint_on_the_workspace_url(
    emulator: Emulator, tmp_path
) -> None:
    pat = engine.Credentials(host=emulator.host, token=emulator.personal_access_token)
    table, summary, out = await score(emulator, tmp_path, PLAIN, credentials=pat)
    assert summary.rows_scored == 2_000


async def test_a_personal_access_token_still_cannot_query_a_route_optimized_endpoint(
    emulator: Emulator, tmp_path
) -> None:
    pat = engine.Credentials(host=emulator.host, token=emulator.personal_access_token)
    with pytest.raises(UsageError):
        await score(emulator, tmp_path, ROUTED, credentials=pat)
    assert emulator.accounting(ROUTED)["requests_total"] == 0


@pytest.mark.parametrize("endpoint", [ROUTED, PLAIN])
async def test_served_model_sends_every_request_to_that_model(
    emulator: Emulator, tmp_path, endpoint: str
) -> None:
    served = next(e for e in emulator.config.endpoints if e.name == endpoint).served_entity_name()
    table, summary, out = await score(emulator, tmp_path, endpoint, served_model=served)
    assert summary.rows_scored == 2_000


async def test_an_unknown_served_model_is_refused_naming_the_ones_there(
    emulator: Emulator, tmp_path
) -> None:
    with pytest.raises(UsageError, match="serves no model named 'nope'"):
        await score(emulator, tmp_path, ROUTED, served_model="nope")
    assert emulator.accounting(ROUTED)["requests_total"] == 0
