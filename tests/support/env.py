"""Where the tests run from, the secret they sign with, and waiting for a condition."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SECRET = "test-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition; fail the test with `what` when it does not come true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def async_wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """The same, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a project command run as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAZZA_", "KAFKA_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env
