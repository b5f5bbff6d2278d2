"""Command line: argument parsing -> config objects -> the library. No logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Async batch inference for Databricks model serving.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from engine.emulator import cli as emulator_cli

    emulate = commands.add_parser(
        "emulate",
        help="run the local Databricks serving emulator",
        description="Serve a local stand-in for Databricks' OAuth, control plane and "
        "route-optimized data plane until SIGINT/SIGTERM.",
    )
    emulator_cli.add_arguments(emulate)
    emulate.set_defaults(run=emulator_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
