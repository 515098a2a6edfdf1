"""Running `wazza-hooks` to its end from a test's event loop, in a folder of the test's own."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import subprocess_env

# A command's imports take about a second; a loaded machine gets room. `simulate` and
# `verify --wait` in the end-to-end test are given their own, longer bound.
COMMAND_SECONDS = 60.0


@dataclass(frozen=True)
class Result:
    """How a command ended."""

    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


async def hooks(
    *args: str | int | float | Path, cwd: Path, seconds: float = COMMAND_SECONDS, **env: str
) -> Result:
    """Run `wazza-hooks ARGS` (as `python -m wazza_hooks.cli`) in `cwd` to its end, with the
    tests' subprocess environment plus `env`; killed after `seconds`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wazza_hooks.cli",
        *map(str, args),
        env=subprocess_env(**env),
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
