"""Volume paths, where they resolve, and the Files API client's decisions: no sockets."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest

from engine import volumes
from engine.tokens import Token
from engine.config import Credentials
from engine.errors import UsageError
from engine.location import is_uri, locate


@pytest.fixture(autouse=True)
def unmounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(volumes.ROOT_ENV, raising=False)
    if os.path.isdir(volumes.MOUNT):
        pytest.skip("/Volumes is mounted here")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/Volumes/main/default/data/in/a.parquet", ("main", "default", "data", "in/a.parquet")),
        ("dbfs:/Volumes/main/default/data", ("main", "default", "data", "")),
        ("dbfs:///Volumes/c/s/v/x.csv", ("c", "s", "v", "x.csv")),
        ("/Volumes/c/s/v//deep//x/", ("c", "s", "v", "deep/x")),
    ],
)
def test_a_volume_path_names_catalog_schema_volume_and_the_rest(
    text: str, expected: tuple[str, ...]
) -> None:
    volume = volumes.parse(text)
    assert volume is not None
    assert (volume.catalog, volume.schema, volume.volume, volume.relative) == expected
    assert volume.path.startswith("/Volumes/") and "//" not in volume.path


@pytest.mark.parametrize("text", ["/tmp/Volumes/a/b/c", "s3://bucket/Volumes/a/b/c", "/Volumesx/a"])
def test_other_paths_are_not_volume_paths(text: str) -> None:
    assert volumes.parse(text) is None
    assert volumes.local_path(text) == text
    assert not volumes.is_remote(text)


@pytest.mark.parametrize("text", ["/Volumes/main/default", "dbfs:/Volumes", "/Volumes/c/s/v/../x"])
def test_a_volume_path_without_three_names_or_with_dot_dot_is_refused_with_its_form(
    text: str,
) -> None:
    with pytest.raises(UsageError, match=r"/Volumes/<catalog>/<schema>/<volume>/<path>"):
        volumes.parse(text)


def test_without_a_mount_a_volume_path_is_remote_and_a_uri_to_the_engine() -> None:
    assert volumes.is_remote("/Volumes/c/s/v/x.parquet")
    assert volumes.is_remote("dbfs:/Volumes/c/s/v/x.parquet")
    assert is_uri("/Volumes/c/s/v/x.parquet")
    assert volumes.local_path("/Volumes/c/s/v/x.parquet") == "/Volumes/c/s/v/x.parquet"


def test_with_a_mount_a_volume_path_is_a_local_path_under_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(volumes.ROOT_ENV, str(tmp_path))
    expected = str(tmp_path / "c" / "s" / "v" / "in" / "x.parquet")
    assert volumes.local_path("/Volumes/c/s/v/in/x.parquet") == expected
    assert volumes.local_path("dbfs:/Volumes/c/s/v/in/x.parquet") == expected
    assert not volumes.is_remote("/Volumes/c/s/v/in/x.parquet")
    assert not is_uri("dbfs:/Volumes/c/s/v/in/x.parquet")
    location = locate("dbfs:/Volumes/c/s/v/in/x.parquet")
    assert location.is_local and location.path == expected


def test_a_remote_volume_is_located_on_the_volumes_filesystem_keeping_its_name() -> None:
    with volumes.using(Credentials(host="https://ws.example.com", token="dapi-x")):
        location = locate("dbfs:/Volumes/c/s/v/in/")
    assert location.name == "dbfs:/Volumes/c/s/v/in"
    assert location.path == "/Volumes/c/s/v/in"
    assert volumes.is_volume_filesystem(location.filesystem)


def test_a_delta_table_in_an_unmounted_volume_is_refused_naming_it() -> None:
    with pytest.raises(UsageError, match=r"input /Volumes/c/s/v/t is a Delta table.*cluster"):
        volumes.refuse_remote_table("/Volumes/c/s/v/t", "input")
    volumes.refuse_remote_table("s3://bucket/t", "input")  # not a Volume: nothing to refuse


# --- the client's decisions, over a fake connection ----------------------------------------


class FakeTokens:
    host = "https://ws.example.com"

    def __init__(self) -> None:
        self.issued = 0
        self.current: Token | None = None

    def get(self) -> Token:
        if self.current is None:
            self.issued += 1
            self.current = Token(f"t{self.issued}", issued_at=0.0, expires_at=1e9)
        return self.current

    def invalidate(self, token: Token) -> None:
        if self.current is token:
            self.current = None


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}
        self.reason = "reason"

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self) -> bytes:
        return self.body


def _client(answers: list[Any]) -> tuple[volumes.FilesApi, list[Any], list[float]]:
    sent: list[Any] = []
    slept: list[float] = []
    api = volumes.FilesApi(FakeTokens(), sleep=slept.append)  # type: ignore[arg-type]

    def send(method: str, target: str, headers: dict[str, str], body: Any) -> Any:
        sent.append((method, target, headers["Authorization"]))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    api._send = send  # type: ignore[method-assign]
    return api, sent, slept


def test_a_throttled_read_is_sent_again_after_the_servers_retry_after() -> None:
    api, sent, slept = _client(
        [FakeResponse(429, b"{}", {"Retry-After": "2"}), FakeResponse(206, b"abc")]
    )
    assert api.read("/Volumes/c/s/v/x", 0, 3) == b"abc"
    assert len(sent) == 2 and slept == [2.0]


def test_a_401_fetches_one_new_token_and_sends_again() -> None:
    api, sent, _ = _client([FakeResponse(401, b"{}"), FakeResponse(204)])
    api.delete("/Volumes/c/s/v/x")
    assert [auth for _, _, auth in sent] == ["Bearer t1", "Bearer t2"]


def test_an_upload_that_must_not_replace_is_not_resent_after_a_dropped_connection() -> None:
    api, sent, _ = _client([ConnectionResetError("reset"), FakeResponse(204)])
    with pytest.raises(OSError, match="reset"):
        api.upload("/Volumes/c/s/v/x", io.BytesIO(b"abc"), 3, overwrite=False)
    assert len(sent) == 1


def test_a_listing_follows_page_tokens_to_the_end() -> None:
    pages = [
        b'{"contents": [{"path": "/Volumes/c/s/v/a", "file_size": 1}], "next_page_token": "p"}',
        b'{"contents": [{"path": "/Volumes/c/s/v/d/", "is_directory": true}]}',
    ]
    api, sent, _ = _client([FakeResponse(200, page) for page in pages])
    entries = api.list("/Volumes/c/s/v")
    assert [(e.path, e.is_directory) for e in entries] == [
        ("/Volumes/c/s/v/a", False), ("/Volumes/c/s/v/d", True)
    ]
    assert "page_token=p" in sent[1][1]


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (404, FileNotFoundError, "not found"),
        (403, PermissionError, "READ VOLUME ON VOLUME c.s.v"),
        (409, FileExistsError, "already exists"),
        (400, OSError, "HTTP 400"),
    ],
)
def test_errors_become_the_os_errors_filesystems_understand(
    status: int, kind: type[OSError], words: str
) -> None:
    body = b'{"error_code": "CODE", "message": "the server says"}'
    api, _, _ = _client([FakeResponse(status, body)])
    with pytest.raises(kind, match=words) as caught:
        api.read("/Volumes/c/s/v/x", 0, 10)
    assert "/Volumes/c/s/v/x" in str(caught.value) and "the server says" in str(caught.value)


def test_an_output_over_five_gib_is_refused_with_the_fix_before_sending() -> None:
    api, sent, _ = _client([])
    with pytest.raises(OSError, match=r"`shard='I/N'`"):
        api.upload("/Volumes/c/s/v/x", io.BytesIO(), volumes.MAX_UPLOAD_BYTES + 1, overwrite=True)
    assert sent == []
