"""Credentials resolution (flags > env > ~/.databrickscfg) and settings checks: no sockets."""

from __future__ import annotations

import pytest

from engine.config import Credentials, ScoreConfig
from engine.errors import UsageError

CFG = """
[DEFAULT]
host = default-ws.cloud.databricks.com
client_id = default-id
client_secret = default-secret

[prod]
host = https://prod-ws.cloud.databricks.com/
client_id = prod-id
client_secret = prod-secret

[pat-only]
host = https://pat-ws.cloud.databricks.com
token = dapi-123
"""


@pytest.fixture
def cfg_env(tmp_path) -> dict[str, str]:
    path = tmp_path / "databrickscfg"
    path.write_text(CFG)
    return {"DATABRICKS_CONFIG_FILE": str(path)}


def test_default_profile_is_used_when_nothing_else_is_set(cfg_env) -> None:
    creds = Credentials.from_env(env=cfg_env)
    assert creds.host == "https://default-ws.cloud.databricks.com"
    assert creds.client_id == "default-id"


def test_named_profile_from_env_and_host_is_normalised(cfg_env) -> None:
    creds = Credentials.from_env(env={**cfg_env, "DATABRICKS_CONFIG_PROFILE": "prod"})
    assert creds.host == "https://prod-ws.cloud.databricks.com"
    assert (creds.client_id, creds.client_secret) == ("prod-id", "prod-secret")


def test_env_vars_override_the_profile_and_flags_override_env(cfg_env) -> None:
    env = {**cfg_env, "DATABRICKS_CLIENT_ID": "env-id", "DATABRICKS_HOST": "env-ws"}
    creds = Credentials.from_env(env=env, profile="prod", host="flag-ws")
    assert creds.host == "https://flag-ws"
    assert creds.client_id == "env-id"
    assert creds.client_secret == "prod-secret"


def test_unknown_profile_lists_the_profiles_there(cfg_env) -> None:
    with pytest.raises(UsageError, match="prod"):
        Credentials.from_env(env=cfg_env, profile="staging")


def test_personal_access_token_alone_serves_the_control_plane_but_not_scoring(cfg_env) -> None:
    creds = Credentials.from_env(env=cfg_env, profile="pat-only")
    assert creds.kind == "pat" and creds.token == "dapi-123"
    assert "dapi-123" not in repr(creds)
    with pytest.raises(UsageError, match="accept OAuth tokens only") as info:
        creds.require_oauth()
    assert "DATABRICKS_CLIENT_ID" in str(info.value) and "dapi-123" not in str(info.value)
    from_env = Credentials.from_env(
        env={"DATABRICKS_HOST": "h", "DATABRICKS_TOKEN": "dapi-1", "DATABRICKS_CONFIG_FILE": "/no"}
    )
    assert from_env.kind == "pat"


def test_a_service_principal_wins_over_a_token_when_both_are_set(cfg_env) -> None:
    creds = Credentials.from_env(env={**cfg_env, "DATABRICKS_TOKEN": "dapi-9"})
    assert creds.kind == "oauth-m2m"
    creds.require_oauth()  # does not raise


@pytest.mark.parametrize("auth_type", ["databricks-cli", "azure-cli", "external-browser"])
def test_auth_types_the_engine_does_not_handle_go_to_databricks_sdk(cfg_env, auth_type) -> None:
    creds = Credentials.from_env(env={**cfg_env, "DATABRICKS_AUTH_TYPE": auth_type})
    assert creds.kind == "databricks-sdk"
    profile = cfg_env["DATABRICKS_CONFIG_FILE"]
    with open(profile, "a") as f:
        f.write(f"\n[sso]\nhost = https://sso-ws.cloud.databricks.com\nauth_type = {auth_type}\n")
    creds = Credentials.from_env(env=cfg_env, profile="sso")
    assert (creds.kind, creds.profile) == ("databricks-sdk", "sso")


def test_missing_credentials_name_each_setting() -> None:
    with pytest.raises(UsageError) as info:
        Credentials.from_env(env={"DATABRICKS_CONFIG_FILE": "/no"})
    for flag in ("DATABRICKS_HOST", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
        assert flag in str(info.value)
    with pytest.raises(UsageError, match="DATABRICKS_TOKEN"):
        Credentials(host="h", auth="pat")
    with pytest.raises(UsageError, match="not one the engine handles"):
        Credentials(host="h", token="t", auth="azure-cli")


def test_missing_config_file_with_a_named_profile_says_so() -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Credentials.from_env(env={"DATABRICKS_CONFIG_FILE": "/nonexistent/cfg"}, profile="x")


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("batch_rows", 0, "--batch-rows"),
        ("concurrency", 0, "--concurrency"),
        ("qps", -1.0, "--qps"),
        ("max_request_bytes", 10, "--max-request-bytes"),
        ("max_error_rows", -1, "--max-error-rows"),
        ("max_buffer_mib", 0.5, "--max-buffer-mib"),
        ("max_buffer_mib", float("inf"), "--max-buffer-mib"),
    ],
)
def test_bad_settings_name_their_parameter_and_the_cli_its_flag(
    field: str, value: object, flag: str
) -> None:
    from engine.cli import in_flags

    with pytest.raises(UsageError, match=f"`{field}`") as caught:
        ScoreConfig(endpoint="e", **{field: value})
    assert in_flags(str(caught.value)).startswith(f"{flag} ")


def test_missing_endpoint_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="`endpoint`"):
        ScoreConfig(endpoint="")


def test_default_checkpoint_of_an_object_store_output_is_a_local_folder(tmp_path, monkeypatch) -> None:
    from engine.api import _default_checkpoint

    monkeypatch.chdir(tmp_path)
    folder = _default_checkpoint("s3://bucket/run/out.parquet")
    assert folder.parent == tmp_path and folder.name.startswith(".out.parquet.")
    assert folder != _default_checkpoint("s3://other/run/out.parquet")
    assert _default_checkpoint(str(tmp_path / "o.arrow")) == tmp_path / ".o.arrow.checkpoint"
