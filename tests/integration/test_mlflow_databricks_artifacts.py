"""The MLflow run record on a Databricks workspace: the emulator is the workspace (tracking
API, Files API), and credentials-for-write hands out presigned URLs of moto's S3 server on
loopback, whose objects are read back and compared byte for byte.

moto comes from the test extras (``moto[server]``); the server is started once for the
module and stopped at its end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import engine
from engine.emulator import Emulator
from tests.helpers import credentials_for, regressor_table

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

ENDPOINT = "demo-regressor"
EXPERIMENT = "/Users/scheduler@example.com/nightly-scoring"
BUCKET = "workspace-root"


@dataclass
class S3:
    """moto's server and a client of it (fake credentials)."""

    endpoint_url: str
    client: Any

    def signer(self, *, bucket: str = BUCKET) -> Any:
        """credentials-for-write's answer, as an AWS workspace gives it: a presigned PUT."""

        def sign(experiment_id: str, run_id: str, path: str) -> Mapping[str, Any]:
            url = self.client.generate_presigned_url(
                "put_object",
                Params={"Bucket": bucket, "Key": self.key(experiment_id, run_id, path)},
                ExpiresIn=600,
            )
            return {"signed_uri": url, "type": "AWS_PRESIGNED_URL", "headers": []}

        return sign

    @staticmethod
    def key(experiment_id: str, run_id: str, path: str) -> str:
        return f"mlflow-tracking/{experiment_id}/{run_id}/artifacts/{path}"

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing-key-id", aws_secret_access_key="testing-secret-key",
        )
        client.create_bucket(Bucket=BUCKET)
        yield S3(endpoint_url, client)
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture(autouse=True)
def workspace_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's workspace is the tracking server (no MLFLOW_* from the environment)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)


async def score_with_record(emulator: Emulator, tmp_path: Path, rows: int = 300) -> Any:
    pq.write_table(regressor_table(emulator, rows, seed=3), tmp_path / "in.parquet")
    return await engine.ascore(
        tmp_path / "in.parquet", output=tmp_path / "o.parquet", endpoint=ENDPOINT,
        credentials=credentials_for(emulator), batch_rows=100, progress="off",
        report=tmp_path / "run.html", mlflow_experiment=EXPERIMENT,
    )


def the_run(emulator: Emulator) -> Any:
    [run] = emulator.mlflow.runs.values()
    assert emulator.mlflow.experiments[run.experiment_id] == EXPERIMENT
    return run


async def test_artifacts_go_through_a_presigned_s3_url_when_the_files_api_refuses(
    emulator: Emulator, s3: S3, tmp_path: Path
) -> None:
    emulator.mlflow.files_api_enabled = False
    emulator.mlflow.signer = s3.signer()

    summary = await score_with_record(emulator, tmp_path)

    run = the_run(emulator)
    assert run.status == "FINISHED" and run.params["endpoint"] == ENDPOINT
    assert sorted(emulator.mlflow.credential_requests) == ["run_report.html", "summary.json"]
    stored = s3.read(S3.key(run.experiment_id, run.run_id, "summary.json"))
    assert json.loads(stored) == json.loads(json.dumps(summary.to_dict()))
    report = s3.read(S3.key(run.experiment_id, run.run_id, "run_report.html"))
    assert report == (tmp_path / "run.html").read_bytes()
    assert not emulator.mlflow.files


async def test_artifacts_go_through_the_files_api_when_it_accepts_them(
    emulator: Emulator, tmp_path: Path
) -> None:
    summary = await score_with_record(emulator, tmp_path)

    run = the_run(emulator)
    root = f"/WorkspaceInternal/Mlflow/Artifacts/{run.experiment_id}/Runs/{run.run_id}/artifacts"
    assert sorted(emulator.mlflow.files) == [f"{root}/run_report.html", f"{root}/summary.json"]
    stored = emulator.mlflow.files[f"{root}/summary.json"]
    assert json.loads(stored) == json.loads(json.dumps(summary.to_dict()))
    assert emulator.mlflow.files[f"{root}/run_report.html"] == (tmp_path / "run.html").read_bytes()
    assert not emulator.mlflow.credential_requests  # no fallback was needed
    assert run.status == "FINISHED"


async def test_storage_that_refuses_both_ways_is_a_warning_and_the_run_still_completes(
    emulator: Emulator, s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.mlflow.files_api_enabled = False
    emulator.mlflow.signer = s3.signer(bucket="no-such-bucket")

    with caplog.at_level(logging.WARNING, logger="engine"):
        summary = await score_with_record(emulator, tmp_path, rows=100)

    assert summary.exit_code == 0 and summary.rows_scored == 100
    run = the_run(emulator)
    assert run.status == "FINISHED" and run.metrics  # the record itself was logged and ended
    warnings = [r.getMessage() for r in caplog.records if "was not uploaded" in r.getMessage()]
    assert len(warnings) == 2
    summary_warning = next(w for w in warnings if "artifact summary.json" in w)
    assert "PERMISSION_DENIED" in summary_warning  # the Files API's cause
    assert "HTTP 404 NoSuchBucket" in summary_warning  # and storage's
    assert "X-Amz-Signature" not in summary_warning  # the signed URL's secret stays out
