"""`wazza-hooks send-test|simulate|verify|register`: the sender's side (in progress)."""

from __future__ import annotations

import argparse
from typing import Any


def add_sender_parsers(sub: Any) -> None:
    """Register the sender-side subcommands."""


def run_sender(args: argparse.Namespace) -> int:
    """Run one sender-side subcommand; returns the exit code."""
    return 2
