"""What the replay and dead-letter tests share: the environment the operator commands run in,
their refusals, and snapshots of everything a replay must leave alone."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from consumers.settings import ConsumerSettings
from consumers.store import Store
from tests.support.commands import Result
from tests.support.consumers import opened, rows
from tests.support.env import subprocess_env


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


async def store_offset(url: str, topic: str, next_offset: int, service: str = "completion") -> None:
    """A store at `url` where `service` has taken partition 0 of `topic` up to `next_offset`:
    a service the operator commands know, without running it."""
    async with opened(url) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO consumer_offsets (service, topic, kafka_partition, next_offset) "
            "VALUES (?, ?, 0, ?)",
            service,
            topic,
            next_offset,
        )
