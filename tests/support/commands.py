"""Running `wazza-hooks` to its end from a test's event loop, as a person or operator runs it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.support.env import ROOT, subprocess_env

# A command's imports take about a second; a loaded 2-core machine gets room. `simulate` and
# `verify --wait` in the end-to-end test are given their own, longer bound.
COMMAND_SECONDS = 60.0


@dataclass(frozen=True)
class Result:
    """How a command ended."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Its stdout, parsed."""
        return orjson.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


async def hooks(
    *args: str | int | float | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    seconds: float = COMMAND_SECONDS,
) -> Result:
    """Run `wazza-hooks ARGS` (as `python -m wazza_tools.cli`) in `cwd` to its end, the event
    loop going on meanwhile; `env` is its whole environment (default: the tests' subprocess
    environment, `subprocess_env()`). Killed after `seconds`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wazza_tools.cli",
        *map(str, args),
        env=subprocess_env() if env is None else dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
