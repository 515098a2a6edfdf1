"""What the replay and dead-letter tests share: the store fixture over both databases, the
command run as the operator runs it, and snapshots of everything a replay must leave alone."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.settings import ConsumerSettings
from consumers.store import Store, open_store
from tests.conftest import ROOT, subprocess_env
from tests.consumers.helpers import rows
from tests.postgres import fresh_database

# A command's own work takes well under a second; the rest is the interpreter starting on a
# loaded 2-core machine.
COMMAND_SECONDS = 60.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str
) -> AsyncIterator[str]:
    """A fresh store's URL: a SQLite file, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wazza.db"
        return
    async with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at `store_url`, migrated."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@dataclass(frozen=True)
class Result:
    """A finished command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


def env_for(settings: ConsumerSettings, database_url: str) -> dict[str, str]:
    """The environment a consumer service with these settings runs in."""
    return subprocess_env(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_RAW_TOPIC=settings.raw_topic,
        WAZZA_DLQ_TOPIC=settings.dlq_topic,
        WAZZA_GROUP_PREFIX=settings.group_prefix,
    )


async def hooks(*args: str, env: dict[str, str]) -> Result:
    """Run `python -m wazza_hooks.cli ARGS` to its end (the event loop goes on meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wazza_hooks.cli",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def one_line_refusal(result: Result, code: int = 1) -> str:
    """The refusal's message: one line on stderr, no traceback, the given exit code."""
    assert result.code == code, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("wazza-hooks: ")
    return lines[0]


@dataclass(frozen=True)
class Snapshot:
    """Everything the consumers wrote that a replay must not change."""

    jobs: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]
    dedup_keys: list[tuple[Any, ...]]


async def snapshot(store: Store, leaving_out: Sequence[bytes] = ()) -> Snapshot:
    """Every job row, history row and dedup key, in a stable order; those of the events in
    `leaving_out` (bodies) and of their jobs left out."""
    events = {hashlib.sha256(b).hexdigest() for b in leaving_out}
    jobs_out = {orjson.loads(b)["jobId"] for b in leaving_out}
    jobs = await rows(store, "SELECT * FROM jobs ORDER BY job_id")
    history = await rows(store, "SELECT * FROM job_events ORDER BY service, event_id")
    keys = await rows(
        store, "SELECT service, event_id FROM processed_events ORDER BY service, event_id"
    )
    return Snapshot(
        [tuple(r) for r in jobs if r[0] not in jobs_out],
        [tuple(r) for r in history if r[1] not in events],
        [tuple(r) for r in keys if r[1] not in events],
    )


async def stored(store: Store, service: str) -> dict[int, int]:
    """The service's stored next offsets on any topic, by partition."""
    found = await rows(
        store,
        "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE service = ?",
        service,
    )
    return {int(p): int(o) for p, o in found}


def iso(ms: int) -> str:
    """A time as the commands print it, computed independently of their code."""
    moment = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")
