"""The real databricks-sdk, given only host, client id and secret, works against the emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from engine.emulator import EmulatorConfig, EmulatorThread

sdk = pytest.importorskip("databricks.sdk")


@pytest.fixture
def isolated_sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.databrickscfg, no DATABRICKS_* variables: the sdk sees only what we pass."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such-databrickscfg"))
    monkeypatch.setenv("HOME", str(tmp_path))


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(row))


@pytest.mark.usefixtures("isolated_sdk_env")
def test_sdk_lists_gets_reads_openapi_and_queries_every_endpoint() -> None:
    from databricks.sdk import WorkspaceClient

    with EmulatorThread(EmulatorConfig()) as emu:
        client = WorkspaceClient(
            host=emu.host, client_id=emu.client_id, client_secret=emu.client_secret
        )
        names = [endpoint.name for endpoint in client.serving_endpoints.list()]
        assert names == ["demo-regressor", "demo-classifier", "demo-text"]
        for name in names:
            assert name is not None
            detail = client.serving_endpoints.get(name)
            assert detail.route_optimized and detail.endpoint_url == emu.endpoint_url(name)
            assert detail.state is not None and detail.state.ready is not None
            assert detail.state.ready.value == "READY"
            openapi = json.loads(client.serving_endpoints.get_open_api(name).contents.read())
            assert openapi["info"]["title"] == name
            table = emu.model(name).sample(25, seed=3)
            response = client.serving_endpoints_data_plane.query(
                name, dataframe_records=[_jsonable(r) for r in table.to_pylist()]
            )
            want = pa.array(emu.model(name).predict(table)).to_pylist()
            assert response.predictions == want
            assert response.served_model_name == emu.model(name).name + "-1"
        tokens = emu.accounting()["tokens_issued"]
        assert tokens["workspace"] >= 1 and tokens["data_plane"] == 3
