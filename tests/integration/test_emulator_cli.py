"""``engine emulate`` as a process: the --json line, serving, and a clean SIGTERM exit."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from typing import Any

import pytest


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers or {}), timeout=10
    ) as r:
        return json.loads(r.read())


def _token(info: dict[str, Any]) -> str:
    basic = base64.b64encode(f"{info['client_id']}:{info['client_secret']}".encode()).decode()
    request = urllib.request.Request(
        info["host"] + "/oidc/v1/token",
        data=b"grant_type=client_credentials&scope=all-apis",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return str(json.loads(r.read())["access_token"])


@pytest.fixture
def emulate_process() -> Any:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulate", "--json", "--seed", "3", "--qps", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()


def test_json_line_then_serves_then_exits_0_on_sigterm(
    emulate_process: subprocess.Popen[str],
) -> None:
    assert emulate_process.stdout is not None
    info = json.loads(emulate_process.stdout.readline())
    assert info["host"].startswith("http://127.0.0.1:")
    assert info["endpoints"] == ["demo-regressor", "demo-classifier", "demo-text"]
    assert info["client_id"] and info["client_secret"]
    config = _get(info["host"] + "/.well-known/databricks-config")
    assert config["oidc_endpoint"] == info["host"] + "/oidc"
    detail = _get(
        info["host"] + "/api/2.0/serving-endpoints/demo-regressor",
        {"Authorization": f"Bearer {_token(info)}"},
    )
    assert detail["endpoint_url"].startswith(info["data_plane_host"])
    emulate_process.send_signal(signal.SIGTERM)
    assert emulate_process.wait(timeout=10) == 0


def test_human_output_has_exports_and_a_score_command() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "emulate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(8)]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    text = "".join(lines)
    assert "export DATABRICKS_HOST=http://127.0.0.1:" in text
    assert "export DATABRICKS_CLIENT_ID=" in text and "export DATABRICKS_CLIENT_SECRET=" in text
    assert "engine score data.parquet --endpoint demo-regressor --output predictions.arrow" in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--qps", "fast"],
        ["--error-503-rate", "2"],
        ["--model", "no_such_module:fn"],
        ["--retry-after", "x"],
        ["--volumes-root", "/nonexistent/volumes-root"],
    ],
)
def test_bad_flags_are_one_line_exit_2_without_traceback(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "emulate", *flags],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


def tripled(table: Any) -> Any:
    """A user model for ``--model``: three times column ``v``."""
    return [3 * v for v in table.column("v").to_pylist()]


tripled.signature = {"v": "double"}  # type: ignore[attr-defined]


def test_user_model_flag_serves_a_callable_on_its_own_endpoint() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "emulate",
            "--json",
            "--model",
            "triple=tests.integration.test_emulator_cli:tripled",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert "triple" in info["endpoints"]
        headers = {"Authorization": f"Bearer {_token(info)}"}
        detail = _get(info["host"] + "/api/2.0/serving-endpoints/triple", headers)
        details = detail["data_plane_info"]["query_info"]["authorization_details"]
        form = urllib.parse.urlencode(
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": _token(info),
                "authorization_details": details,
            }
        ).encode()
        with urllib.request.urlopen(
            urllib.request.Request(info["host"] + "/oidc/v1/token", data=form)
        ) as r:
            data_plane = json.loads(r.read())["access_token"]
        body = json.dumps({"dataframe_split": {"columns": ["v"], "data": [[1.5], [2]]}}).encode()
        request = urllib.request.Request(
            detail["endpoint_url"],
            data=body,
            headers={"Authorization": f"Bearer {data_plane}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert json.loads(r.read()) == {"predictions": [4.5, 6.0]}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
