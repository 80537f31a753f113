"""Every flag of every command says what it does and, where it has one, its default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from engine.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _commands(
    parser: argparse.ArgumentParser, name: str = "osupgrade"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _commands(sub, f"{name} {sub_name}")


def _flags() -> list[tuple[str, argparse.Action]]:
    return [
        (command, action)
        for command, parser in _commands(build_parser())
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def test_every_flag_has_help_that_shows_its_default() -> None:
    missing, no_default = [], []
    for command, action in _flags():
        flag = f"{command} {action.option_strings[-1]}"
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(flag)
        elif action.default not in (None, False, [], argparse.SUPPRESS) and (
            "%(default)" not in action.help
        ):
            no_default.append(flag)
    assert missing == [], "flags without help"
    assert no_default == [], "flags whose help does not show the default"


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--version"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.startswith("osupgrade ")
    assert result.stdout.split()[1][0].isdigit()
