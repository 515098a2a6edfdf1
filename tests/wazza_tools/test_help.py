"""Every command's help is complete: each option says what it is, and `--version` answers."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator

import pytest

from consumers.cli import parser as consumer_parser
from ingest.server import _parser as ingest_parser
from tests.support.env import BIN, subprocess_env
from wazza_hooks.config import version
from wazza_tools.cli import _parser as hooks_parser

# Runs the project's commands or external tools as processes.
pytestmark = pytest.mark.slow


def every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Each command and subcommand's parser, with its name."""
    todo = [
        ("wazza-hooks", hooks_parser()),
        ("wazza-ingest", ingest_parser()),
        ("wazza-consumer", consumer_parser()),
    ]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {sub}", child) for sub, child in action.choices.items())


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in every_parser()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
        and action.help != argparse.SUPPRESS
        and not (action.help or "").strip()
    ]
    assert missing == [], missing


def test_the_commands_are_many_and_found() -> None:
    names = {name for name, _ in every_parser()}
    for expected in ("wazza-hooks dev", "wazza-hooks topics ensure", "wazza-hooks dlq list"):
        assert expected in names, sorted(names)


@pytest.mark.parametrize("command", ["wazza-hooks", "wazza-ingest", "wazza-consumer"])
def test_version_prints_the_installed_version(command: str) -> None:
    done = subprocess.run(
        [str(BIN / command), "--version"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done
    assert done.stdout.strip() == f"{command} {version()}"
    assert version() != "unknown"
