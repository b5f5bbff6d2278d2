"""engine.options: every front end builds one RunOptions; a conflicting pair is an error."""

from __future__ import annotations

from pathlib import Path

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


def test_run_options_build_takes_the_run_level_arguments_as_one_object(tmp_path: Path) -> None:
    built = RunOptions.build(
        endpoint="e", credentials=CREDS, inputs=["a.parquet"], output=tmp_path / "o.arrow",
        shard="1/3", input_version=4, checkpoint=tmp_path / "ck", report=tmp_path / "r.html",
        resume=False, mlflow_experiment="/x",
    )
    assert built.inputs == ["a.parquet"] and built.output == str(tmp_path / "o.arrow")
    assert built.shard == (1, 3) and built.table_read.version == 4
    assert built.checkpoint == str(tmp_path / "ck") and built.report == str(tmp_path / "r.html")
    assert built.resume is False and built.mlflow_experiment == "/x"


@pytest.mark.parametrize("mode", ["error", "append"])
def test_overwrite_with_a_mode_that_keeps_the_output_is_an_error_naming_both(mode: str) -> None:
    with pytest.raises(UsageError) as caught:
        RunOptions.build(endpoint="e", credentials=CREDS, overwrite=True, mode=mode)
    assert "`overwrite`" in str(caught.value) and "`mode`" in str(caught.value)


def test_overwrite_with_mode_overwrite_agrees() -> None:
    built = RunOptions.build(endpoint="e", credentials=CREDS, overwrite=True, mode="overwrite")
    assert built.overwrite and built.mode == "overwrite"


def test_a_tracking_uri_without_an_experiment_is_an_error_naming_both() -> None:
    with pytest.raises(UsageError) as caught:
        RunOptions.build(endpoint="e", credentials=CREDS, mlflow_tracking_uri="http://m:5000")
    assert "`mlflow_tracking_uri`" in str(caught.value)
    assert "`mlflow_experiment`" in str(caught.value)


def test_an_unknown_run_argument_is_refused() -> None:
    with pytest.raises(TypeError):
        RunOptions.build(endpoint="e", credentials=CREDS, outptu="o.arrow")


async def test_arun_without_inputs_or_output_is_an_error_naming_them() -> None:
    from engine.api import arun

    with pytest.raises(UsageError, match="`inputs` and `output`"):
        await arun(RunOptions.build(endpoint="e", credentials=CREDS))


def test_a_conflict_names_parameters_that_the_cli_writes_as_its_flags() -> None:
    from engine.cli import in_flags

    with pytest.raises(UsageError) as caught:
        RunOptions.build(endpoint="e", credentials=CREDS, overwrite=True, mode="append")
    assert in_flags(str(caught.value)).startswith("--overwrite and --mode 'append' disagree")
