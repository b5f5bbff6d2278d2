"""A run's MLflow artifacts on Databricks (``dbfs:/databricks/mlflow-tracking/<exp>/<run>/...``).

A Databricks workspace answers ``runs/create`` with such an ``artifact_uri``; nothing serves it
over MLflow's artifact proxy. MLflow's own client (``DatabricksRunArtifactRepository``, which
tries ``DatabricksSdkArtifactRepository`` and falls back to ``DatabricksArtifactRepository``)
writes there in two ways, and so does the engine, in the same order:

1. **The Files API**, with the workspace's credentials:
   ``PUT {host}/api/2.0/fs/files/WorkspaceInternal/Mlflow/Artifacts/<exp>/Runs/<run>/artifacts/
   <name>?overwrite=true`` (the path keeps the part of the URI after the run id).
2. **Signed cloud URLs**, when the Files API fails for any reason (MLflow falls back on any
   error too, not only on a refusal): ``POST /api/2.0/mlflow/artifacts/credentials-for-write``
   with ``{"run_id", "path": [<name>]}`` answers one credential per path, and the bytes go
   straight to the workspace's storage with the headers it returned:

   * ``AWS_PRESIGNED_URL`` / ``GCP_SIGNED_URL``: one ``PUT``;
   * ``AZURE_SAS_URI``: ``Put Block`` per 10 MiB chunk, then ``Put Block List``;
   * ``AZURE_ADLS_GEN2_SAS_URI``: create (``PUT ?resource=file``), append (``PATCH
     ?action=append&position=N``, with ``flush=true`` when there is one chunk), and flush
     (``PATCH ?action=flush&position=<size>``) after several.

   A 401/403 from storage (a credential that expired) fetches new credentials once, as MLflow
   does. AWS multipart uploads (MLflow's above 500 MB) are left out: the engine's artifacts
   are a summary and a report, far below S3's 5 GB single-PUT limit.

The requests are planned by pure functions (:func:`plan_upload`) and sent by
:class:`DatabricksArtifacts`; storage requests are retried on 429, 5xx and connection
failures under :data:`CLOUD_RETRY`, through the engine's one call loop. Signed URLs are
secrets: messages name the storage host and path, never the query.

(Just over 400 lines because the four storage protocols' request plans sit beside the one
sender that runs them; each plan is a few lines and reads best next to the others.)
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson

from engine.calls import Caller, error_outcome
from engine.retry import Outcome, RetryPolicy, Tally
from engine.transport import Response, Transport

__all__ = [
    "CLOUD_RETRY",
    "ArtifactUploadError",
    "CloudRequest",
    "DatabricksArtifacts",
    "RunArtifactRoot",
    "WriteCredential",
    "plan_upload",
]

#: One workspace call: ``(method, url, body, content type) -> Response``; raises on failure.
WorkspaceSend = Callable[[str, str, bytes | None, str], Awaitable[Response]]

#: Chunk size of Azure uploads (MLflow's MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE default).
UPLOAD_CHUNK_BYTES = 10 * 1024 * 1024
#: Bound on one storage request.
CLOUD_TIMEOUT_S = 300.0
#: Retries of a storage request: the RetryPolicy defaults' statuses (429, 500, 502, 503, 504)
#: and every connection failure, a few times; sending the same bytes again is harmless.
CLOUD_RETRY = RetryPolicy(
    max_attempts=4,
    max_throttled=4,
    max_delay_s=8.0,
    max_retry_after_s=30.0,
    max_elapsed_s=120.0,
)

_RUN_ARTIFACT_URI = re.compile(
    r"^dbfs:(?://[^/]*)?/databricks/mlflow-tracking/(?P<experiment_id>[^/]+)/"
    r"(?P<run_id>(?!tr-|logged_models/)[^/]+)(?P<relative_path>/.*)?$"
)
_XML_CODE = re.compile(r"<Code>([^<]{1,200})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{1,500})</Message>")


class ArtifactUploadError(Exception):
    """An artifact could not be stored (a warning: the run record still completes)."""


@dataclass(frozen=True, slots=True)
class RunArtifactRoot:
    """Where a Databricks run's artifacts live, parsed from its ``artifact_uri``.

    Attributes:
        experiment_id: the experiment's id.
        run_id: the run's id.
        relative_path: what follows the run id in the URI (``/artifacts``), or ``""``.
    """

    experiment_id: str
    run_id: str
    relative_path: str

    @classmethod
    def parse(cls, artifact_uri: str) -> RunArtifactRoot | None:
        """The root of a ``dbfs:/databricks/mlflow-tracking/...`` run URI; None otherwise."""
        found = _RUN_ARTIFACT_URI.match(artifact_uri.strip())
        if found is None:
            return None
        relative = (found["relative_path"] or "").rstrip("/")
        return cls(found["experiment_id"], found["run_id"], relative)

    def files_api_path(self, name: str) -> str:
        """The artifact's workspace path (MLflow's ``DatabricksRunArtifactRepository``)."""
        return (
            f"/WorkspaceInternal/Mlflow/Artifacts/{self.experiment_id}/Runs/{self.run_id}"
            f"{self.relative_path}/{name.strip('/')}"
        )

    def files_api_url(self, base_url: str, name: str) -> str:
        """The Files API upload URL, replacing what is there (``overwrite=true``)."""
        return f"{base_url}/api/2.0/fs/files{quote(self.files_api_path(name))}?overwrite=true"


@dataclass(frozen=True, slots=True)
class WriteCredential:
    """One ``credential_infos`` entry of ``credentials-for-write``."""

    signed_uri: str
    type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, doc: Any) -> WriteCredential:
        """Raises ArtifactUploadError when the entry is not a usable credential."""
        if not isinstance(doc, dict) or not isinstance(doc.get("signed_uri"), str):
            raise ArtifactUploadError(f"credentials-for-write answered no signed URI: {doc!r:.200}")
        headers = tuple(
            (str(h["name"]), str(h.get("value", "")))
            for h in doc.get("headers") or ()
            if isinstance(h, dict) and "name" in h
        )
        return cls(doc["signed_uri"], str(doc.get("type", "")), headers)


@dataclass(frozen=True, slots=True)
class CloudRequest:
    """One request to the workspace's storage, with a name for messages."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    what: str


def plan_upload(
    credential: WriteCredential, data: bytes, *, chunk_bytes: int = UPLOAD_CHUNK_BYTES
) -> list[CloudRequest]:
    """The storage requests that write ``data`` with ``credential``, in order.

    Raises:
        ArtifactUploadError: a credential type the engine does not know.
    """
    planners = {
        "AWS_PRESIGNED_URL": _plan_signed_put,
        "GCP_SIGNED_URL": _plan_signed_put,
        "AZURE_SAS_URI": _plan_azure_blocks,
        "AZURE_ADLS_GEN2_SAS_URI": _plan_adls_gen2,
    }
    planner = planners.get(credential.type)
    if planner is None:
        raise ArtifactUploadError(
            f"credentials-for-write answered a {credential.type or 'missing'} credential; the "
            f"engine writes {', '.join(planners)}"
        )
    return planner(credential, data, chunk_bytes)


def _plan_signed_put(credential: WriteCredential, data: bytes, _: int) -> list[CloudRequest]:
    return [CloudRequest("PUT", credential.signed_uri, dict(credential.headers), data, "PUT")]


def _chunks(data: bytes, chunk_bytes: int) -> list[bytes]:
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


def _block_id(index: int) -> str:
    """Base64 block ids of one length, as Azure requires within a blob."""
    return base64.b64encode(f"engine-block-{index:020d}".encode()).decode()


def _plan_azure_blocks(
    credential: WriteCredential, data: bytes, chunk_bytes: int
) -> list[CloudRequest]:
    """Put Block per chunk, then Put Block List committing them in order."""
    chunks = _chunks(data, chunk_bytes)
    block_headers = {
        "x-ms-blob-type": "BlockBlob",
        **_only(credential.headers, _PUT_BLOCK_HEADERS),
    }
    plan = [
        CloudRequest(
            "PUT",
            with_query(credential.signed_uri, {"comp": "block", "blockid": _block_id(i)}),
            block_headers,
            chunk,
            f"Put Block {i + 1}/{len(chunks)}",
        )
        for i, chunk in enumerate(chunks)
    ]
    block_list = "".join(f"<Uncommitted>{_block_id(i)}</Uncommitted>" for i in range(len(chunks)))
    xml = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{block_list}</BlockList>'
    list_headers = _only(credential.headers, _PUT_BLOCK_LIST_HEADERS, prefix="x-ms-meta-")
    plan.append(
        CloudRequest(
            "PUT",
            with_query(credential.signed_uri, {"comp": "blocklist"}),
            list_headers,
            xml.encode(),
            "Put Block List",
        )
    )
    return plan


def _plan_adls_gen2(
    credential: WriteCredential, data: bytes, chunk_bytes: int
) -> list[CloudRequest]:
    """Create the file, append each chunk at its offset, flush at the end."""
    uri, chunks = credential.signed_uri, _chunks(data, chunk_bytes)
    create_headers = _only(credential.headers, _ADLS_CREATE_HEADERS)
    patch_headers = _only(credential.headers, _ADLS_PATCH_HEADERS)
    plan = [CloudRequest("PUT", with_query(uri, {"resource": "file"}), create_headers, b"",
                         "create")]
    single = len(chunks) == 1
    for i, chunk in enumerate(chunks):
        params = {"action": "append", "position": str(i * chunk_bytes)}
        if single:
            params["flush"] = "true"
        plan.append(CloudRequest("PATCH", with_query(uri, params), patch_headers, chunk,
                                 f"append {i + 1}/{len(chunks)}"))
    if not single:
        params = {"action": "flush", "position": str(len(data))}
        plan.append(CloudRequest("PATCH", with_query(uri, params), create_headers, b"", "flush"))
    return plan


def with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` set in its query (the SAS token's own parameters kept)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _only(
    headers: tuple[tuple[str, str], ...], allowed: frozenset[str], *, prefix: str | None = None
) -> dict[str, str]:
    """The headers an Azure operation accepts (others make it fail), as MLflow sends them."""
    return {
        name: value
        for name, value in headers
        if name in allowed or (prefix is not None and name.startswith(prefix))
    }


# The request headers each Azure operation documents (Put Block, Put Block List, and ADLS
# Gen2's Path Create / Path Update); MLflow's azure client drops the others too.
_COMMON_AZURE = frozenset({"x-ms-date", "x-ms-version", "x-ms-client-request-id", "x-ms-lease-id"})
_ENCRYPTION = frozenset(
    {"x-ms-encryption-key", "x-ms-encryption-key-sha256", "x-ms-encryption-algorithm"}
)
_PUT_BLOCK_HEADERS = _COMMON_AZURE | _ENCRYPTION | {
    "Authorization", "Content-Length", "Content-MD5", "x-ms-content-crc64", "x-ms-encryption-scope",
}
_PUT_BLOCK_LIST_HEADERS = _COMMON_AZURE | {
    "Authorization", "Date", "Content-Length", "Content-MD5", "x-ms-content-crc64",
    "x-ms-blob-cache-control", "x-ms-blob-content-type", "x-ms-blob-content-encoding",
    "x-ms-blob-content-language", "x-ms-blob-content-md5", "x-ms-blob-content-disposition",
    "x-ms-encryption-scope", "x-ms-tags", "x-ms-access-tier", "If-Modified-Since",
    "If-Unmodified-Since", "If-Match", "If-None-Match",
}
_CONDITIONS = frozenset({"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"})
_ADLS_PATCH_HEADERS = _COMMON_AZURE | _ENCRYPTION | _CONDITIONS | {
    "Content-Length", "Content-MD5", "x-ms-cache-control", "x-ms-content-type",
    "x-ms-content-disposition", "x-ms-content-encoding", "x-ms-content-language",
    "x-ms-content-md5", "x-ms-properties", "x-ms-owner", "x-ms-group", "x-ms-permissions",
    "x-ms-acl", "x-ms-encryption-context",
}
_ADLS_CREATE_HEADERS = _COMMON_AZURE | _ENCRYPTION | _CONDITIONS | {
    "Cache-Control", "Content-Encoding", "Content-Language", "Content-Disposition",
    "x-ms-cache-control", "x-ms-content-type", "x-ms-content-encoding", "x-ms-content-language",
    "x-ms-content-disposition", "x-ms-rename-source", "x-ms-properties", "x-ms-permissions",
    "x-ms-umask", "x-ms-owner", "x-ms-group", "x-ms-acl", "x-ms-proposed-lease-id",
    "x-ms-expiry-option", "x-ms-expiry-time", "x-ms-source-if-match", "x-ms-source-if-none-match",
    "x-ms-source-if-modified-since", "x-ms-source-if-unmodified-since", "x-ms-encryption-context",
}


def storage_outcome(response: Response) -> Outcome:
    """A storage error answer; S3, GCS and Azure explain themselves in XML ``<Code>`` and
    ``<Message>``, which become the outcome's code and message."""
    outcome = error_outcome(response)
    text = response.body[:4000].decode("utf-8", "replace")
    code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
    if code is None and message is None:
        return outcome
    return replace(
        outcome,
        error_code=code[1] if code else outcome.error_code,
        message=message[1] if message else "",
    )


def without_query(url: str) -> str:
    """A signed URL fit for a message: its host and path, never the signature."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class StorageRefused(ArtifactUploadError):
    """Storage answered an error that retrying the same request will not cure."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class DatabricksArtifacts:
    """Writes artifacts of Databricks runs: the Files API first, then signed cloud URLs.

    Args:
        transport: the pooled client (storage requests carry only the credential's headers,
            never the workspace token).
        base_url: the workspace, ``https://<host>``.
        send_workspace: one authenticated, retried workspace call (the tracking client's).
        caller: retries of storage requests (the tracking client's, under :data:`CLOUD_RETRY`).
    """

    def __init__(
        self,
        transport: Transport,
        base_url: str,
        send_workspace: WorkspaceSend,
        caller: Caller,
    ) -> None:
        self._transport = transport
        self._base_url = base_url
        self._send_workspace = send_workspace
        self._caller = caller

    async def upload(self, root: RunArtifactRoot, name: str, data: bytes) -> str:
        """Store ``data`` as the run's artifact ``name``; returns how (for logs).

        Raises:
            ArtifactUploadError: both ways failed; the message gives each one's cause.
        """
        url = root.files_api_url(self._base_url, name)
        try:
            await self._send_workspace("PUT", url, data, "application/octet-stream")
            return "the Files API"
        except Exception as exc:  # MLflow falls back whatever the Files API's failure
            files_error = exc
        try:
            return await self._upload_signed(root, name, data)
        except Exception as exc:
            raise ArtifactUploadError(
                f"the Files API failed ({files_error}), and so did the signed-URL upload "
                f"({exc})"
            ) from exc

    async def _upload_signed(self, root: RunArtifactRoot, name: str, data: bytes) -> str:
        credential = await self._credential(root.run_id, name)
        try:
            await self._send_plan(plan_upload(credential, data))
        except StorageRefused as exc:
            if exc.status not in (401, 403):
                raise
            # The signed URL may have expired: one new credential, as MLflow does.
            credential = await self._credential(root.run_id, name)
            await self._send_plan(plan_upload(credential, data))
        return f"a {credential.type} credential"

    async def _credential(self, run_id: str, path: str) -> WriteCredential:
        url = f"{self._base_url}/api/2.0/mlflow/artifacts/credentials-for-write"
        body = orjson.dumps({"run_id": run_id, "path": [path]})
        response = await self._send_workspace("POST", url, body, "application/json")
        try:
            infos = orjson.loads(response.body or b"{}").get("credential_infos") or []
        except (orjson.JSONDecodeError, AttributeError):
            infos = []
        if not infos:
            raise ArtifactUploadError(f"credentials-for-write answered no credential for {path}")
        return WriteCredential.from_json(infos[0])

    async def _send_plan(self, plan: list[CloudRequest]) -> None:
        for request in plan:
            await self._send_storage(request)

    async def _send_storage(self, request: CloudRequest) -> Response:
        async def send() -> Response:
            return await self._transport.request(
                request.method, request.url, headers=request.headers, data=request.body,
                timeout_s=CLOUD_TIMEOUT_S,
            )

        async def judge(response: Response) -> Response | Outcome:
            return response if response.ok else storage_outcome(response)

        def give_up(outcome: Outcome, tally: Tally) -> StorageRefused:
            where = f"{request.what} {without_query(request.url)}"
            sent = tally.attempts - 1  # the tally already counts the retry it refused
            tries = f" after {sent} attempts" if sent > 1 else ""
            return StorageRefused(
                f"{where}: {outcome.brief}: {outcome.message}{tries}", outcome.status
            )

        return await self._caller.call(send, judge, give_up=give_up)
