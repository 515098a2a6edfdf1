"""End to end: the stack as `make run` starts it (`wazza-hooks dev`: broker, ingester, three
consumer services on SQLite), fed by `simulate` the way Wazza would feed it, checked by `verify`.

Every step is a real command run in the folder `make run` would run in, so the defaults are
exercised too: the secret from ./var/dev-secret, the store at ./var/wazza.db.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.commands import Result, hooks
from tests.support.env import BIN, subprocess_env
from tests.support.processes import Running, running
from wazza_tools.dev.localbroker import free_port, port_in_use

pytestmark = pytest.mark.slow

# The broker (a JVM: 3-6 s alone, much more on a loaded machine), the ingester and three consumers
# start in seconds; a loaded 2-core CI machine gets ample room.
START_SECONDS = 90.0
# 2,000 jobs are ~13,000 webhooks: about 8 s at the ~1,600/s the 2-core machine takes them.
SIMULATE_SECONDS = 60.0
# The consumers keep up while simulate runs; this only bounds a stall.
CATCH_UP_SECONDS = 30.0


@dataclass(frozen=True)
class DevStack:
    """A running `wazza-hooks dev` and the folder it runs for."""

    folder: Path
    """Where `make run` would run: ./var holds the dev secret and the store."""
    url: str
    """The webhook URL."""
    metrics_ports: tuple[int, int, int]
    """The completion, failure and progress services' /metrics ports."""
    process: Running
    """The `wazza-hooks dev` process."""
    bootstrap_servers: str
    """The stack's broker."""
    store_url: str
    """The consumers' store (./var/wazza.db in `folder`)."""

    @property
    def env(self) -> dict[str, str]:
        """What an operator command (`replay`, `dlq`) needs to find this stack's broker and
        store: `await stack.hooks("replay", ..., **stack.env)`."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "DATABASE_URL": self.store_url,
        }

    async def hooks(
        self, *args: str | int | float | Path, seconds: float = 60.0, **env: str
    ) -> Result:
        """`wazza-hooks ARGS` in the stack's folder, with no WAZZA_/KAFKA_ variables set but
        `env`: the sender commands find the secret and the store by their defaults."""
        return await hooks(*args, env=subprocess_env(**env), cwd=self.folder, seconds=seconds)

    async def consumer_events(self) -> dict[tuple[str, str], float]:
        """(event type, outcome) -> count, summed over the three services' /metrics."""
        out: dict[tuple[str, str], float] = {}
        async with aiohttp.ClientSession() as http:
            for port in self.metrics_ports:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "wazza_consumer_events_total":
                            key = (sample.labels["event_type"], sample.labels["outcome"])
                            out[key] = out.get(key, 0.0) + sample.value
        return out


def _free_run(count: int) -> int:
    """The first of `count` consecutive free ports (dev takes the metrics ports in a row)."""
    while True:
        first = free_port()
        if first + count <= 65535 and not any(
            port_in_use("127.0.0.1", first + i) for i in range(1, count)
        ):
            return first


async def _all_assigned(ports: tuple[int, ...]) -> bool:
    """True once each consumer reports partitions assigned (its store is open by then)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for port in ports:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                assigned = [
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "wazza_consumer_assigned_partitions"
                ]
                if not assigned or max(assigned) <= 0:
                    return False
    except aiohttp.ClientError:
        return False
    return True


@contextlib.asynccontextmanager
async def dev_stack(tmp_path: Path) -> AsyncIterator[DevStack]:
    """`wazza-hooks dev` on free ports for `tmp_path`, ready to take webhooks and with every
    consumer assigned; stopped with Ctrl-C (SIGINT) on the way out, as a person stops it."""
    port, broker_port = free_port(), free_port()
    metrics = _free_run(3)
    var = tmp_path / "var"
    argv = [
        str(BIN / "wazza-hooks"), "dev", "--port", str(port), "--broker-port", str(broker_port),
        "--metrics-port", str(metrics), "--var", str(var), "--store", f"sqlite:///{var}/wazza.db",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/webhooks/wazza"
    ports = (metrics, metrics + 1, metrics + 2)
    with running(argv) as dev:
        await dev.wait_for_stdout(url, START_SECONDS)
        deadline = time.monotonic() + START_SECONDS
        while not await _all_assigned(ports):
            if dev.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the consumers never got their partitions\n{dev.output()}")
            await asyncio.sleep(0.2)
        yield DevStack(
            tmp_path, url, ports, dev, f"127.0.0.1:{broker_port}", f"sqlite:///{var}/wazza.db"
        )
        # Ctrl-C in a terminal: SIGINT to its whole process group at once.
        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.wait_exit(30) == 0, dev.output()
        # Every part stopped in order (the broker last): no crash report on the way out.
        assert "Traceback" not in dev.output(), dev.output()
        assert "Unclosed" not in dev.output(), dev.output()


async def test_2000_jobs_sent_like_wazza_with_duplicates_and_reordering_end_as_expected(
    tmp_path: Path,
) -> None:
    async with dev_stack(tmp_path) as stack:
        sent = await stack.hooks(
            "simulate", "--jobs", 2000, "--duplicates", 0.1, "--reorder", 0.1,
            "--concurrency", 32, "--url", stack.url, "--expect", "var/expect.json",
            seconds=SIMULATE_SECONDS,
        )  # fmt: skip
        assert sent.code == 0, sent
        assert "given up    0" in sent.out, sent
        expect = orjson.loads((tmp_path / "var" / "expect.json").read_bytes())
        assert expect["summary"] == {"jobs": 2000, "definite": 2000, "undetermined": 0}

        checked = await stack.hooks(
            "verify", "--expect", "var/expect.json", "--wait", CATCH_UP_SECONDS,
            seconds=CATCH_UP_SECONDS + 30,
        )  # fmt: skip
        assert checked.code == 0, checked
        assert "verify: 2000 jobs, 2000 match, 0 differ (0 differences)" in checked.out, checked

        # The duplicates were real duplicates and the reordering reached the consumers.
        events = await stack.consumer_events()
        assert events.get(("job.processing", "duplicate"), 0) > 0, events
        assert events.get(("job.completed", "duplicate"), 0) > 0, events
        assert events.get(("job.processing", "stale"), 0) > 0, events

        # Every service back to the beginning, while the stack runs: effectively once makes it
        # harmless. The same state, the same history rows (none doubled, none rewritten).
        before = await _settled(stack)
        for service in SERVICES:
            moved = await stack.hooks(
                "replay", "--service", service, "--from-beginning", **stack.env
            )
            assert moved.code == 0, moved
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while _store_snapshot(stack).offsets != before.offsets:
            if time.monotonic() > deadline:
                pytest.fail(f"the replay did not catch up\n{stack.process.output()}")
            await asyncio.sleep(0.2)
        after = _store_snapshot(stack)
        assert after.jobs == before.jobs
        assert after.history == before.history
        again = await stack.hooks("verify", "--expect", "var/expect.json")
        assert again.code == 0, again
        assert "verify: 2000 jobs, 2000 match, 0 differ (0 differences)" in again.out, again
        # Read again, and counted as duplicates: every event each service had taken.
        replayed = await stack.consumer_events()
        for service, event_type in SERVICES.items():
            taken = sum(1 for row in before.history if row[0] == service)
            grown = replayed.get((event_type, "duplicate"), 0) - events.get(
                (event_type, "duplicate"), 0
            )
            assert grown >= taken, (service, grown, taken)


SERVICES = {
    "completion": "job.completed",
    "failure": "job.failed",
    "progress": "job.processing",
}


@dataclass(frozen=True)
class _Snapshot:
    offsets: set[tuple[Any, ...]]
    jobs: set[tuple[Any, ...]]
    history: set[tuple[Any, ...]]


async def _settled(stack: DevStack) -> _Snapshot:
    """The store once no service's offsets moved for a second (the tail of duplicates read)."""
    previous = _store_snapshot(stack)
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while True:
        await asyncio.sleep(1.0)
        current = _store_snapshot(stack)
        if current.offsets == previous.offsets:
            return current
        if time.monotonic() > deadline:
            pytest.fail("the consumers never settled")
        previous = current


def _store_snapshot(stack: DevStack) -> _Snapshot:
    """The stored offsets, jobs rows and history rows, read from the SQLite file."""
    conn = sqlite3.connect(f"file:{stack.folder / 'var' / 'wazza.db'}?mode=ro", uri=True)
    try:
        return _Snapshot(
            offsets=set(conn.execute("SELECT * FROM consumer_offsets")),
            jobs=set(conn.execute("SELECT * FROM jobs")),
            history=set(conn.execute("SELECT * FROM job_events")),
        )
    finally:
        conn.close()
