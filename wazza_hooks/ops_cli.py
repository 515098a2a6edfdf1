"""`wazza-hooks replay|dlq`: operator tools over the consumers' offsets and dead letters
(in progress)."""

from __future__ import annotations

import argparse
from typing import Any


def add_ops_parsers(sub: Any) -> None:
    """Register the operator subcommands."""


def run_ops(args: argparse.Namespace) -> int:
    """Run one operator subcommand; returns the exit code."""
    return 2
