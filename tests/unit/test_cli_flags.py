"""engine.cli.in_flags: library errors name parameters; the CLI writes them as its flags."""

from __future__ import annotations

import argparse

import pytest

from engine.cli import FLAGS, SWITCHES, build_parser, in_flags


def _score_flags() -> set[str]:
    """Every option string ``engine score`` accepts."""
    parser = build_parser("score")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    score = commands.choices["score"]
    return {flag for action in score._actions for flag in action.option_strings}


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_parameter_in_the_table_becomes_a_flag_engine_score_takes(name: str) -> None:
    flag = FLAGS[name]
    assert flag in _score_flags()
    assert in_flags(f"check `{name}` first") == f"check {flag} first"


@pytest.mark.parametrize(
    ("name", "value"), sorted((name, value) for name in SWITCHES for value in SWITCHES[name])
)
def test_every_switch_value_becomes_its_flag(name: str, value: str) -> None:
    flag = SWITCHES[name][value]
    assert flag in _score_flags()
    assert in_flags(f"pass `{name}={value}` to do it") == f"pass {flag} to do it"


@pytest.mark.parametrize(
    ("message", "printed"),
    [
        ("more than `max_error_rows=2`; rerun", "more than --max-error-rows 2; rerun"),
        ("pass `mode='append'` to add", "pass --mode append to add"),
        ("use `auth='databricks-sdk'` instead", "use --auth databricks-sdk instead"),
        ("`shard='I/N'` splits it", "--shard I/N splits it"),
        ("`resume` is not a flag", "`resume` is not a flag"),  # only --no-resume exists
        ("their `error` column, `resume=maybe`", "their `error` column, `resume=maybe`"),
        ("a `mlflow server` of your own", "a `mlflow server` of your own"),
    ],
)
def test_values_are_written_as_the_flags_argument_and_unknown_names_are_left(
    message: str, printed: str
) -> None:
    assert in_flags(message) == printed
