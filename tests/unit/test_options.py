"""engine.options: every front end builds one RunOptions; a conflicting pair is an error."""

from __future__ import annotations

import pytest

from engine.config import Credentials, ScoreConfig
from engine.errors import UsageError
from engine.options import RunOptions, resolve_credentials, score_config

CREDS = Credentials(host="https://ws.example.com", client_id="id", client_secret="secret")


def test_options_override_the_fields_of_the_config_they_come_with() -> None:
    built = score_config(ScoreConfig(endpoint="e", batch_rows=10), None, {"batch_rows": 20})
    assert built.endpoint == "e" and built.batch_rows == 20


def test_an_endpoint_equal_to_the_configs_is_not_a_conflict() -> None:
    assert score_config(ScoreConfig(endpoint="e"), "e", {}).endpoint == "e"


def test_an_endpoint_other_than_the_configs_is_an_error_naming_both_parameters() -> None:
    with pytest.raises(UsageError) as caught:
        score_config(ScoreConfig(endpoint="e"), "other", {})
    assert "`endpoint`" in str(caught.value) and "`config`" in str(caught.value)
    assert "--" not in str(caught.value)  # a Python caller never passed a flag


def test_without_a_config_the_endpoint_and_options_make_one() -> None:
    built = score_config(None, "e", {"qps": 5.0})
    assert built.endpoint == "e" and built.qps == 5.0


@pytest.mark.parametrize("name", ["host", "client_id", "client_secret", "profile", "auth"])
def test_credentials_with_a_separate_value_is_an_error_naming_both(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        resolve_credentials(CREDS, **{name: "x"})
    assert f"`{name}`" in str(caught.value) and "`credentials`" in str(caught.value)


def test_credentials_alone_are_used_as_given() -> None:
    assert resolve_credentials(CREDS) is CREDS


def test_run_options_build_holds_the_config_and_the_credentials() -> None:
    built = RunOptions.build(endpoint="e", credentials=CREDS, options={"batch_rows": 7})
    assert built.credentials is CREDS
    assert built.config.endpoint == "e" and built.config.batch_rows == 7


def test_a_bad_setting_names_the_parameter_and_the_cli_writes_it_as_its_flag() -> None:
    from engine.cli import in_flags

    with pytest.raises(UsageError) as caught:
        ScoreConfig(endpoint="e", batch_rows=0)
    assert str(caught.value) == "`batch_rows` must be at least 1, got 0"
    assert in_flags(str(caught.value)) == "--batch-rows must be at least 1, got 0"


def test_the_cli_leaves_backticked_names_it_has_no_flag_for() -> None:
    from engine.cli import in_flags

    message = "their `error` column holds it; `keep` and `shard` are flags"
    assert in_flags(message) == "their `error` column holds it; --keep and --shard are flags"
