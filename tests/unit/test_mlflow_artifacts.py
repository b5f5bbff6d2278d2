"""MLflow artifacts on Databricks as values and scripted answers: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.calls import Caller
from engine.errors import TransportError
from engine.mlflow_artifacts import (
    CLOUD_RETRY,
    ArtifactUploadError,
    RunArtifactRoot,
    WriteCredential,
    plan_upload,
    storage_outcome,
)
from engine.tracking import TRACKING_RETRY, RunContent, TrackingClient, log_run
from engine.transport import Response, Transport

RUN_URI = "dbfs:/databricks/mlflow-tracking/1234/0f9a/artifacts"
SAS = "https://acct.blob.core.windows.net/c/run/a.json?sv=2023-01-03&sig=abc%2Bdef%3D"


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# --- where artifacts go ----------------------------------------------------------------------


def test_a_databricks_run_uri_maps_to_mlflows_workspace_path_for_the_files_api() -> None:
    root = RunArtifactRoot.parse(RUN_URI)
    assert root == RunArtifactRoot("1234", "0f9a", "/artifacts")
    assert root.files_api_path("summary.json") == (
        "/WorkspaceInternal/Mlflow/Artifacts/1234/Runs/0f9a/artifacts/summary.json"
    )
    assert root.files_api_url("https://ws", "run report.html") == (
        "https://ws/api/2.0/fs/files/WorkspaceInternal/Mlflow/Artifacts/1234/Runs/0f9a/"
        "artifacts/run%20report.html?overwrite=true"
    )


def test_a_profile_in_the_uri_and_a_trailing_slash_do_not_change_the_path() -> None:
    root = RunArtifactRoot.parse("dbfs://prod@databricks/databricks/mlflow-tracking/7/r1/artifacts/")
    assert root == RunArtifactRoot("7", "r1", "/artifacts")
    assert RunArtifactRoot.parse("dbfs:/databricks/mlflow-tracking/7/r1") == RunArtifactRoot(
        "7", "r1", ""
    )


@pytest.mark.parametrize(
    "uri",
    [
        "mlflow-artifacts:/1/r/artifacts",
        "s3://bucket/mlflow/1/r/artifacts",
        "dbfs:/databricks/mlflow-tracking/1/logged_models/m-1/artifacts",
        "dbfs:/databricks/mlflow-tracking/1/tr-abc/artifacts",
        "dbfs:/some/other/place",
        "",
    ],
)
def test_other_artifact_stores_are_not_taken_for_a_databricks_run(uri: str) -> None:
    assert RunArtifactRoot.parse(uri) is None


# --- what is sent to storage, per credential type --------------------------------------------


def test_a_presigned_s3_or_gcs_url_is_one_put_with_the_headers_returned() -> None:
    for kind in ("AWS_PRESIGNED_URL", "GCP_SIGNED_URL"):
        credential = WriteCredential(
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=1", kind,
            (("x-amz-server-side-encryption", "aws:kms"),),
        )
        [put] = plan_upload(credential, b"{}")
        assert (put.method, put.url, put.body) == ("PUT", credential.signed_uri, b"{}")
        assert put.headers == {"x-amz-server-side-encryption": "aws:kms"}


def test_an_azure_sas_uri_puts_blocks_in_order_then_commits_the_block_list() -> None:
    headers = (("x-ms-version", "2023-01-03"), ("x-ms-meta-run", "r"), ("x-unknown", "1"))
    plan = plan_upload(WriteCredential(SAS, "AZURE_SAS_URI", headers), b"x" * 25, chunk_bytes=10)
    assert [r.method for r in plan] == ["PUT"] * 4
    blocks, commit = plan[:3], plan[3]
    assert [len(r.body) for r in blocks] == [10, 10, 5]
    ids = [query(r.url)["blockid"][0] for r in blocks]
    assert len(set(ids)) == 3 and len({len(i) for i in ids}) == 1  # one length, as Azure asks
    assert all(query(r.url)["comp"] == ["block"] for r in blocks)
    assert all(query(r.url)["sig"] == ["abc+def="] for r in plan)  # the SAS token is kept
    assert blocks[0].headers == {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2023-01-03"}
    assert query(commit.url)["comp"] == ["blocklist"]
    assert commit.body.decode().endswith(
        "".join(f"<Uncommitted>{i}</Uncommitted>" for i in ids) + "</BlockList>"
    )
    assert commit.headers == {"x-ms-version": "2023-01-03", "x-ms-meta-run": "r"}
    assert all(base64.b64decode(i) for i in ids)


def test_adls_gen2_creates_appends_at_each_offset_and_flushes_at_the_size() -> None:
    credential = WriteCredential(SAS, "AZURE_ADLS_GEN2_SAS_URI", (("x-ms-version", "v"),))
    plan = plan_upload(credential, b"y" * 25, chunk_bytes=10)
    assert [(r.method, query(r.url).get("action"), query(r.url).get("position")) for r in plan] == [
        ("PUT", None, None),
        ("PATCH", ["append"], ["0"]),
        ("PATCH", ["append"], ["10"]),
        ("PATCH", ["append"], ["20"]),
        ("PATCH", ["flush"], ["25"]),
    ]
    assert query(plan[0].url)["resource"] == ["file"]
    assert b"".join(r.body for r in plan) == b"y" * 25


def test_adls_gen2_flushes_a_single_chunk_with_its_append() -> None:
    plan = plan_upload(WriteCredential(SAS, "AZURE_ADLS_GEN2_SAS_URI"), b"small")
    assert len(plan) == 2
    assert query(plan[1].url)["flush"] == ["true"] and plan[1].body == b"small"


def test_an_unknown_credential_type_is_named() -> None:
    with pytest.raises(ArtifactUploadError, match="a UNKNOWN credential"):
        plan_upload(WriteCredential("https://x", "UNKNOWN"), b"")


def test_a_storage_error_reads_the_code_and_message_from_its_xml() -> None:
    body = (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
            b"<Message>Request has expired</Message></Error>")
    outcome = storage_outcome(Response(403, body))
    assert (outcome.status, outcome.error_code, outcome.message) == (
        403, "AccessDenied", "Request has expired"
    )


# --- the upload, against scripted answers ----------------------------------------------------


class Scripted:
    """Answers by URL prefix, in order; records method, URL and headers (no sockets)."""

    def __init__(self, answers: dict[str, list[tuple[int, bytes]]]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, dict[str, str], bytes | None]] = []

    async def request(
        self, method: str, url: str, *, headers: Any = None, data: bytes | None = None, **_: Any
    ) -> Response:
        self.sent.append((method, url, dict(headers or {}), data))
        for prefix, queue in self.answers.items():
            if url.startswith(prefix):
                status, body = queue.pop(0)
                return Response(status, body)
        raise AssertionError(f"unexpected {method} {url}")


def json_answer(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


def presigned(url: str) -> tuple[int, bytes]:
    return json_answer(200, {"credential_infos": [{"signed_uri": url, "type": "AWS_PRESIGNED_URL",
                                                   "headers": [{"name": "x-amz-acl",
                                                                "value": "private"}]}]})


def client_for(transport: Scripted, slept: list[float]) -> TrackingClient:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return TrackingClient(
        cast(Transport, transport), "https://ws", {"Authorization": "Bearer workspace-token"},
        caller=Caller(TRACKING_RETRY, random.Random(1), lambda: 0.0, sleep),
    )


FILES = "https://ws/api/2.0/fs/files/"
CREDENTIALS = "https://ws/api/2.0/mlflow/artifacts/credentials-for-write"
BUCKET = "https://bucket.s3.amazonaws.com/"
DENIED = json_answer(403, {"error_code": "PERMISSION_DENIED", "message": "not for you"})


def test_the_files_api_is_used_first_with_the_workspace_token() -> None:
    transport = Scripted({FILES: [(204, b"")]})
    assert asyncio.run(client_for(transport, []).upload(RUN_URI, "summary.json", b"{}", "x"))
    [(method, url, headers, data)] = transport.sent
    assert method == "PUT" and url.endswith("/Runs/0f9a/artifacts/summary.json?overwrite=true")
    assert headers["Authorization"] == "Bearer workspace-token" and data == b"{}"


def test_a_refused_files_api_falls_back_to_a_signed_url_without_the_workspace_token() -> None:
    transport = Scripted({
        FILES: [DENIED],
        CREDENTIALS: [presigned(BUCKET + "a/summary.json?X-Amz-Signature=s")],
        BUCKET: [(503, b"<Error><Code>SlowDown</Code></Error>"), (200, b"")],
    })
    slept: list[float] = []
    assert asyncio.run(client_for(transport, slept).upload(RUN_URI, "summary.json", b"{}", "x"))
    methods = [(m, u.split("?")[0]) for m, u, _, _ in transport.sent]
    assert methods == [
        ("PUT", FILES + "WorkspaceInternal/Mlflow/Artifacts/1234/Runs/0f9a/artifacts/summary.json"),
        ("POST", CREDENTIALS),
        ("PUT", BUCKET + "a/summary.json"),
        ("PUT", BUCKET + "a/summary.json"),
    ]
    assert json.loads(transport.sent[1][3] or b"") == {"run_id": "0f9a", "path": ["summary.json"]}
    storage_headers = transport.sent[3][2]
    assert storage_headers == {"x-amz-acl": "private"}  # the credential's headers, no token
    assert len(slept) == 1  # the 503 was retried after a computed wait


def test_a_dropped_connection_to_storage_is_sent_again() -> None:
    class Dropping(Scripted):
        async def request(self, method: str, url: str, **options: Any) -> Response:
            if url.startswith(BUCKET) and not any(u.startswith(BUCKET) for _, u, _, _ in self.sent):
                self.sent.append((method, url, {}, None))
                raise TransportError("connection reset", kind="reset", url=url)
            return await super().request(method, url, **options)

    transport = Dropping({
        FILES: [DENIED], CREDENTIALS: [presigned(BUCKET + "k?sig=s")], BUCKET: [(200, b"")],
    })
    slept: list[float] = []
    assert asyncio.run(client_for(transport, slept).upload(RUN_URI, "a", b"1", "x"))
    assert [u for _, u, _, _ in transport.sent if u.startswith(BUCKET)] == [BUCKET + "k?sig=s"] * 2
    assert len(slept) == 1


def test_storage_that_keeps_failing_gives_up_within_the_bound_and_hides_the_signature() -> None:
    failures = [(500, b"<Error><Code>InternalError</Code><Message>boom</Message></Error>")] * 10
    transport = Scripted({
        FILES: [DENIED], CREDENTIALS: [presigned(BUCKET + "k?X-Amz-Signature=secret")],
        BUCKET: failures,
    })
    slept: list[float] = []
    with pytest.raises(ArtifactUploadError) as caught:
        asyncio.run(client_for(transport, slept).upload(RUN_URI, "summary.json", b"{}", "x"))
    message = str(caught.value)
    assert "PERMISSION_DENIED: not for you" in message  # the Files API's cause
    assert "InternalError: boom" in message and "after 4 attempts" in message
    assert "secret" not in message and BUCKET + "k" in message
    to_storage = [u for _, u, _, _ in transport.sent if u.startswith(BUCKET)]
    assert len(to_storage) == CLOUD_RETRY.max_attempts


def test_an_expired_signed_url_fetches_new_credentials_once() -> None:
    expired = (403, b"<Error><Code>AccessDenied</Code><Message>expired</Message></Error>")
    transport = Scripted({
        FILES: [DENIED],
        CREDENTIALS: [presigned(BUCKET + "k?sig=old"), presigned(BUCKET + "k?sig=new")],
        BUCKET: [expired, (200, b"")],
    })
    assert asyncio.run(client_for(transport, []).upload(RUN_URI, "r.html", b"<p>", "x"))
    assert [u for _, u, _, _ in transport.sent if u.startswith(BUCKET)] == [
        BUCKET + "k?sig=old", BUCKET + "k?sig=new"
    ]


def test_a_failed_artifact_is_a_warning_and_the_run_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def ok(body: Any) -> tuple[int, bytes]:
        return json_answer(200, body)

    mlflow = "https://ws/api/2.0/mlflow/"
    transport = Scripted({
        CREDENTIALS: [json_answer(500, {"error_code": "INTERNAL_ERROR", "message": "no creds"})],
        FILES: [(204, b""), DENIED],
        mlflow + "experiments/get-by-name": [ok({"experiment": {"experiment_id": "1234"}})],
        mlflow + "runs/create": [
            ok({"run": {"info": {"run_id": "0f9a", "artifact_uri": RUN_URI}}})
        ],
        mlflow + "runs/log-batch": [ok({})],
        mlflow + "runs/update": [ok({})],
    })
    content = RunContent(
        run_name="r", start_ms=1, end_ms=2, status="FINISHED", params={"a": "1"}, tags={},
        metrics=[], artifacts={"summary.json": (b"{}", "application/json"),
                               "run_report.html": (b"<p>", "text/html")},
    )
    with caplog.at_level(logging.WARNING, logger="engine"):
        logged = asyncio.run(log_run(client_for(transport, []), "/e", content))
    assert not logged.artifacts_uploaded
    assert transport.sent[-1][1] == mlflow + "runs/update"  # the run was ended all the same
    [warning] = [r.getMessage() for r in caplog.records]
    assert "artifact run_report.html was not uploaded" in warning
    assert "PERMISSION_DENIED" in warning and "INTERNAL_ERROR: no creds" in warning
