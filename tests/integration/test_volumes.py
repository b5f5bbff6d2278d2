"""Unity Catalog Volumes: through the emulator's Files API (not mounted here), and as local
files where they are mounted (``ENGINE_VOLUMES_ROOT`` stands in for a cluster's ``/Volumes``).

In-process runs go through ``asyncio.to_thread(engine.score, ...)``: the Files API client is
synchronous (pyarrow calls it from plain threads), so the test's loop must stay free to serve
the emulator.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import engine
from engine import volumes
from engine.emulator import Emulator, EmulatorConfig, Faults
from engine.emulator.config import ServicePrincipal
from engine.errors import InputError, OutputExistsError, UsageError
from engine.sink import read_output
from tests.helpers import credentials_for, expected_predictions, regressor_table

ENDPOINT = "demo-regressor"
VOLUME = "/Volumes/main/default/data"
READER = ServicePrincipal(
    client_id="reader", client_secret="reader-secret", volume_privileges=frozenset({"READ VOLUME"})
)
STRANGER = ServicePrincipal(
    client_id="stranger", client_secret="stranger-secret", volume_privileges=frozenset()
)


@pytest.fixture(autouse=True)
def files_api_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No local mount: Volume paths go through the Files API (unless a test sets one)."""
    monkeypatch.delenv(volumes.ROOT_ENV, raising=False)
    if os.path.isdir(volumes.MOUNT):
        pytest.skip("/Volumes is mounted here: these tests need it not to be")


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """The directory the emulator serves as /Volumes, holding the Volume main.default.data."""
    root = tmp_path / "served"
    (root / "main" / "default" / "data").mkdir(parents=True)
    return root


@pytest.fixture
async def emulator(emulator_factory: Any, served: Path) -> Emulator:
    config = EmulatorConfig(
        principals=(ServicePrincipal(), READER, STRANGER), volumes_root=str(served)
    )
    emu: Emulator = await emulator_factory(config)
    return emu


def _local(served: Path, volume_path: str) -> Path:
    return served / volume_path.removeprefix("/Volumes/").removeprefix("dbfs:/Volumes/")


async def _score(emulator: Emulator, inputs: Any, output: str, **options: Any) -> engine.Summary:
    options.setdefault("credentials", credentials_for(emulator))
    return await asyncio.to_thread(
        engine.score, inputs, output=output, endpoint=ENDPOINT, progress="off",
        batch_rows=250, **options,
    )


def _principal(emulator: Emulator, who: ServicePrincipal) -> engine.Credentials:
    return engine.Credentials(
        host=emulator.host, client_id=who.client_id, client_secret=who.client_secret
    )


def _requests(emulator: Emulator) -> int:
    return int(sum(emulator.accounting(ENDPOINT)["requests_by_status"].values()))


# --- through the Files API --------------------------------------------------------------


async def test_a_csv_directory_in_a_volume_is_listed_across_pages_and_scored_to_a_volume(
    emulator: Emulator, served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volumes, "LIST_PAGE_SIZE", 2)  # 5 files and a subdirectory: 4 pages
    parts = [regressor_table(emulator, 300, seed=60 + i) for i in range(5)]
    folder = _local(served, f"{VOLUME}/csv")
    (folder / "more").mkdir(parents=True)
    for i, part in enumerate(parts):
        where = folder / "more" if i == 4 else folder
        pcsv.write_csv(part, where / f"part-{i}.csv")
    (folder / "_SUCCESS").write_text("")

    output = f"dbfs:{VOLUME}/scored/out.arrow"
    summary = await _score(emulator, f"{VOLUME}/csv", output)

    table = pa.concat_tables(parts[4:] + parts[:4])  # in path order: more/ sorts first
    result = pa.ipc.open_file(str(_local(served, output))).read_all()
    assert summary.rows_scored == 1_500 and summary.exit_code == 0
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert sorted(p.name for p in _local(served, f"{VOLUME}/scored").iterdir()) == ["out.arrow"]


async def test_a_volume_output_can_be_read_back_through_the_files_api(
    emulator: Emulator, served: Path
) -> None:
    table = regressor_table(emulator, 500, seed=61)
    pq.write_table(table, _local(served, f"{VOLUME}/in.parquet"), row_group_size=100)
    await _score(emulator, f"{VOLUME}/in.parquet", f"{VOLUME}/out.parquet")

    with volumes.using(credentials_for(emulator)):
        result = await asyncio.to_thread(read_output, f"{VOLUME}/out.parquet")
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )


async def test_a_missing_input_in_a_volume_fails_like_a_missing_file_naming_the_path(
    emulator: Emulator, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=f"input not found: {VOLUME}/absent.parquet") as remote:
        await _score(emulator, f"{VOLUME}/absent.parquet", f"{VOLUME}/out.parquet")
    with pytest.raises(InputError) as local:
        await _score(emulator, str(tmp_path / "absent.parquet"), str(tmp_path / "o.parquet"))
    assert remote.value.exit_code == local.value.exit_code == 2
    assert _requests(emulator) == 0


async def test_a_principal_without_read_volume_is_told_which_grant_it_needs(
    emulator: Emulator, served: Path
) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=62), _local(served, f"{VOLUME}/in.parquet"))
    with pytest.raises(InputError) as caught:
        await _score(
            emulator, f"{VOLUME}/in.parquet", f"{VOLUME}/out.parquet",
            credentials=_principal(emulator, STRANGER),
        )
    message = str(caught.value)
    assert f"{VOLUME}/in.parquet" in message
    assert "READ VOLUME ON VOLUME main.default.data" in message
    assert caught.value.exit_code == 2 and _requests(emulator) == 0


async def test_a_principal_that_may_only_read_is_refused_before_any_row_is_sent(
    emulator: Emulator, served: Path
) -> None:
    pq.write_table(regressor_table(emulator, 100, seed=63), _local(served, f"{VOLUME}/in.parquet"))
    with pytest.raises(UsageError, match=r"WRITE VOLUME ON VOLUME main\.default\.data"):
        await _score(
            emulator, f"{VOLUME}/in.parquet", f"{VOLUME}/out/o.parquet",
            credentials=_principal(emulator, READER),
        )
    assert _requests(emulator) == 0
    assert not _local(served, f"{VOLUME}/out").exists()


async def test_an_existing_output_in_a_volume_is_refused_unless_overwrite(
    emulator: Emulator, served: Path
) -> None:
    table = regressor_table(emulator, 200, seed=64)
    pq.write_table(table, _local(served, f"{VOLUME}/in.parquet"))
    existing = _local(served, f"{VOLUME}/out.parquet")
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="`overwrite=True`") as caught:
        await _score(emulator, f"{VOLUME}/in.parquet", f"{VOLUME}/out.parquet")
    assert caught.value.exit_code == 2 and _requests(emulator) == 0
    assert existing.read_bytes() == b"keep me"

    await _score(emulator, f"{VOLUME}/in.parquet", f"{VOLUME}/out.parquet", overwrite=True)
    assert pq.read_table(existing).num_rows == 200


async def test_an_output_that_appears_during_the_run_is_kept_by_the_servers_409(
    emulator: Emulator, served: Path, tmp_path: Path
) -> None:
    finished = tmp_path / "finished.parquet"
    finished.write_bytes(b"the run's output")
    target = _local(served, f"{VOLUME}/raced.parquet")
    target.write_bytes(b"someone else's")
    with volumes.using(credentials_for(emulator)):
        filesystem = volumes.filesystem()
    publish = volumes.publish
    with pytest.raises(OutputExistsError, match="left untouched"):
        await asyncio.to_thread(
            publish, str(finished), filesystem, f"{VOLUME}/raced.parquet", overwrite=False
        )
    assert target.read_bytes() == b"someone else's"
    await asyncio.to_thread(
        publish, str(finished), filesystem, f"{VOLUME}/raced.parquet", overwrite=True
    )
    assert target.read_bytes() == b"the run's output"


async def test_a_delta_table_in_an_unmounted_volume_is_refused_with_the_ways_round_it(
    emulator: Emulator, served: Path
) -> None:
    deltalake = pytest.importorskip("deltalake")
    deltalake.write_deltalake(
        str(_local(served, f"{VOLUME}/table")), regressor_table(emulator, 10, seed=65)
    )
    with pytest.raises(UsageError, match=r"cluster.*s3://"):
        await _score(emulator, f"{VOLUME}/table", f"{VOLUME}/out.parquet")
    assert _requests(emulator) == 0


async def test_a_run_into_a_volume_stopped_by_sigterm_resumes_scoring_no_row_twice(
    emulator: Emulator, served: Path, tmp_path: Path
) -> None:
    rows = 12_000
    emulator.set_faults(ENDPOINT, Faults(qps_limit=40.0, qps_burst=1.0))
    table = regressor_table(emulator, rows, seed=66)
    pq.write_table(table, _local(served, f"{VOLUME}/big.parquet"), row_group_size=2_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.pop(volumes.ROOT_ENV, None)
    env.update(
        DATABRICKS_HOST=emulator.host, DATABRICKS_CLIENT_ID=emulator.client_id,
        DATABRICKS_CLIENT_SECRET=emulator.client_secret,
        DATABRICKS_CONFIG_FILE=str(tmp_path / "absent.cfg"),
    )
    cmd = [sys.executable, "-m", "engine", "score", f"{VOLUME}/big.parquet", "--endpoint",
           ENDPOINT, "--output", f"dbfs:{VOLUME}/scored.parquet", "--progress", "log",
           "--batch-rows", "200"]

    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    while sum(emulator.accounting(ENDPOINT)["rows_delivered"].values()) < 2_000:
        assert proc.returncode is None
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = await proc.communicate()
    assert proc.returncode == 143, stderr.decode()[-2000:]
    assert not _local(served, f"{VOLUME}/scored.parquet").exists()
    assert _checkpoints(tmp_path)  # kept locally: the Files API has no fsync or rename

    emulator.set_faults(ENDPOINT, Faults())
    rerun = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    result = pq.read_table(_local(served, f"{VOLUME}/scored.parquet"))
    assert result.column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    scored = emulator.accounting(ENDPOINT)["rows_scored"]
    assert len(scored) == rows and sum(count - 1 for count in scored.values()) == 0
    assert not _checkpoints(tmp_path)  # removed after success


def _checkpoints(folder: Path) -> list[Path]:
    return list(folder.glob(".scored.parquet.*.checkpoint"))


# --- the emulator's Files API on the wire -------------------------------------------------


async def test_the_files_api_answers_ranges_metadata_pages_and_its_errors(
    emulator: Emulator, served: Path, emu_client: Any
) -> None:
    (_local(served, VOLUME) / "a.bin").write_bytes(bytes(range(100)))
    for name in ("b.bin", "c.bin", "d"):
        (_local(served, VOLUME) / name).write_bytes(b"x")
    headers = {"Authorization": f"Bearer {await emu_client.workspace_token()}"}
    files, dirs = emulator.host + "/api/2.0/fs/files", emulator.host + "/api/2.0/fs/directories"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{files}{VOLUME}/a.bin", headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == bytes(range(10, 20))
            assert r.headers["Content-Range"] == "bytes 10-19/100"
        async with session.head(f"{files}{VOLUME}/a.bin") as r:
            assert r.status == 200 and r.headers["Content-Length"] == "100"
        async with session.get(f"{files}{VOLUME}/nope") as r:
            assert r.status == 404 and (await r.json())["error_code"] == "NOT_FOUND"
        async with session.put(f"{files}{VOLUME}/a.bin?overwrite=false", data=b"new") as r:
            assert r.status == 409 and (await r.json())["error_code"] == "ALREADY_EXISTS"
        names, token = [], None
        while True:
            query = {"page_size": "3", **({"page_token": token} if token else {})}
            async with session.get(f"{dirs}{VOLUME}", params=query) as r:
                page = await r.json()
            names += [entry["name"] for entry in page["contents"]]
            token = page.get("next_page_token")
            if not token:
                break
        assert names == ["a.bin", "b.bin", "c.bin", "d"]
    token = await emu_client.workspace_token(STRANGER.client_id, STRANGER.client_secret)
    stranger = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=stranger) as session, session.get(
        f"{files}{VOLUME}/a.bin"
    ) as r:
        assert r.status == 403 and (await r.json())["error_code"] == "PERMISSION_DENIED"


# --- mounted (a cluster) ----------------------------------------------------------------


async def test_a_mounted_volume_is_local_files_and_the_output_is_renamed_into_place(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mount"
    (mount / "main" / "default" / "data").mkdir(parents=True)
    monkeypatch.setenv(volumes.ROOT_ENV, str(mount))
    table = regressor_table(emulator, 400, seed=67)
    pq.write_table(table, mount / "main" / "default" / "data" / "in.parquet")
    output = mount / "main" / "default" / "data" / "out.parquet"
    moves: list[tuple[str, str, bool]] = []
    publish = engine.sink.writer.publish_local

    def watched(tmp: str, path: str, *, overwrite: bool) -> None:
        moves.append((tmp, path, os.path.exists(path)))
        publish(tmp, path, overwrite=overwrite)

    monkeypatch.setattr(engine.sink.writer, "publish_local", watched)
    await _score(emulator, f"dbfs:{VOLUME}/in.parquet", f"{VOLUME}/out.parquet")

    [(tmp, path, existed)] = moves
    assert path == str(output) and not existed
    assert Path(tmp).parent == output.parent and Path(tmp).name.startswith(".out.parquet.")
    assert pq.read_table(output).column("prediction").to_pylist() == expected_predictions(
        emulator, ENDPOINT, table
    )
    assert sorted(p.name for p in output.parent.iterdir()) == ["in.parquet", "out.parquet"]


async def test_a_delta_table_in_a_mounted_volume_is_read_as_a_table(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deltalake = pytest.importorskip("deltalake")
    mount = tmp_path / "mount"
    monkeypatch.setenv(volumes.ROOT_ENV, str(mount))
    table = regressor_table(emulator, 300, seed=68)
    deltalake.write_deltalake(str(mount / "main" / "default" / "data" / "t"), table)
    summary = await _score(emulator, f"{VOLUME}/t", f"{VOLUME}/t-scored.arrow")
    assert summary.rows_scored == 300
    assert (mount / "main" / "default" / "data" / "t-scored.arrow").exists()


async def test_a_volume_root_that_is_not_a_directory_is_a_usage_error(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(volumes.ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(UsageError, match=f"{volumes.ROOT_ENV}=.*not a directory"):
        await _score(emulator, f"{VOLUME}/in.parquet", str(tmp_path / "o.parquet"))

