"""Commands run as real subprocesses by the end-to-end tests, and their cleanup.

`running()` starts a command in its own session with its output collected by threads, and on
the way out kills it together with every descendant it was seen with, so that a hung or
failing test leaves nothing behind. The /proc helpers look at live processes (Linux only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.env import subprocess_env


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants_of(pid: int) -> set[int]:
    """Every live process below `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _collect(stream: IO[bytes], into: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        into.append(raw.decode(errors="replace"))


class Running:
    """A command run as a subprocess with its output collected by threads.

    `close()` kills it and every descendant it was seen with, so that a hung or failing test
    leaves nothing behind.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: the cleanup reaches orphans too
        )
        self._out: list[str] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=_collect, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=_collect, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.seen: set[int] = set()
        """Descendants seen while it ran; killed on close if still alive."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def output(self) -> str:
        """Both streams, for failure messages."""
        return f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"

    def descendants(self) -> set[int]:
        """The live processes below it now (remembered for the cleanup)."""
        found = descendants_of(self.pid)
        self.seen |= found
        return found

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        """Poll `predicate(self)` until true; fail on timeout or when the process exits first."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.proc.poll() is not None:
                self._join()
                if predicate(self):
                    return
                pytest.fail(f"exited with {self.proc.returncode} before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.output()}")
            await asyncio.sleep(0.05)

    async def wait_for_stdout(self, text: str, timeout: float) -> None:
        """Until `text` shows on its stdout; fails on timeout or when it exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            if self.proc.poll() is not None:
                self._join()
                if text in self.stdout:
                    return
                pytest.fail(f"exited with {self.proc.returncode} before {text!r}\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} on stdout within {timeout} s\n{self.output()}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fails the test when it is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                command = shlex.join(self.argv)
                pytest.fail(f"{command} still running {timeout} s later\n{self.output()}")
            await asyncio.sleep(0.05)
        self._join()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.descendants()
            # Not yet reaped, so its process group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for pid in self.seen:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Running]:
    """Start a command (in the tests' subprocess environment unless `env` is given, in `cwd`
    if given); kill it and its descendants on the way out, whatever happened."""
    proc = Running(argv, env if env is not None else subprocess_env(), cwd)
    try:
        yield proc
    finally:
        proc.close()


def thread_states(pid: int) -> list[str]:
    """The scheduler state letter of each thread of the process (R, S, T for stopped...)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            stat = (task / "stat").read_text()
            states.append(stat[stat.rindex(")") + 2])  # the field after the (name)
    return states


async def hang(pid: int) -> None:
    """SIGSTOP the process and return once every thread of it has stopped.

    kill() returns before the stop takes hold: the kernel wakes one thread to start the group
    stop, and on a loaded machine the others may go on for milliseconds, answering a produce
    request sent meanwhile (seen in CI as a 200 among the hung broker's answers)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = thread_states(pid)
        if states and all(state in "Tt" for state in states):
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"the broker (pid {pid}) did not stop within 10 s of SIGSTOP")
