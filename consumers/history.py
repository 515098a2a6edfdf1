"""The events history, which is also the dedup (`event_history`, migration 5).

One row per service and distinct event: the service's outcome, for people to read
(`wazza-hooks jobs history`), and its key, for the service to drop any later copy of the
event by. Keyed by (job, service, event key): the job is the record's key (the jobId the
ingester keyed the record by, so one job's copies meet), the event key is the event id as 32
bytes (consumers/store/keys.py). Rows are kept for the history retention
(WAZZA_HISTORY_RETENTION_SECONDS) after `kept_ms`, and within it a copy is a duplicate.

The tools read and change the history only through the functions here and in redrive.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from wazza_hooks import contract

from .store import IN_LIST_CHUNK, Column, Store, Tx
from .store.keys import event_id_of

HISTORY_COLUMNS: list[Column] = [
    ("job_id", "text"),
    ("service", "text"),
    ("event_key", "bytea"),
    ("event_name", "text"),
    ("event_type", "text"),
    ("event_time_ms", "bigint"),
    ("applied_ms", "bigint"),
    ("kept_ms", "bigint"),
    ("outcome", "text"),
    ("topic", "text"),
    ("kafka_partition", "integer"),
    ("kafka_offset", "bigint"),
]
"""The columns of a history row, in the order `batch` builds them."""
KEEP_FIRST = "ON CONFLICT (job_id, service, event_key) DO NOTHING"
"""A row already there is the event's first outcome: it stays."""
# (job, key) pairs per lookup: two bound values each, under SQLite's historical limit of 999.
_PAIRS_CHUNK = 400
# PostgreSQL: a batch's keys (`v`: job, service, event key, one array each) joined to their history
# rows by the whole primary key. The service comes in beside each key, as a join column, not as
# `h.service = ?`: a condition on `h` alone let the planner weigh reading all of the service's
# rows through event_history_kept, and on a table not analysed yet (a new store's first minute,
# before autovacuum comes by) it takes any one service for 0.5 % of the rows, so it chose that
# and a hash join: every batch with an outcome to set read the service's whole history (8 ms at
# 35k rows, growing with it). Joined by all three columns, the only other way is the whole
# table, which the planner sizes from the file itself: each key stays one index lookup.
_BY_KEY = "h.job_id = v.job_id AND h.service = v.service AND h.event_key = v.k"
KNOWN_POSTGRESQL = (
    "SELECT h.job_id, h.event_key FROM unnest(?::text[], ?::text[], ?::bytea[]) "  # noqa: S608 - constants
    f"AS v(job_id, service, k) JOIN event_history h ON {_BY_KEY}"
)
"""`known` on PostgreSQL: jobs, services (the one service repeated), event keys."""
SET_OUTCOMES = (
    "UPDATE event_history h SET outcome = v.outcome FROM "  # noqa: S608 - constants
    "unnest(?::text[], ?::text[], ?::bytea[], ?::text[]) AS v(job_id, service, k, outcome) "
    f"WHERE {_BY_KEY}"
)
"""`set_outcomes`: jobs, services (the one service repeated), event keys, outcomes."""
# Rows deleted per statement when pruning, so that the write lock is never held for long.
_PRUNE_CHUNK = 5000


def history_job(record_key: bytes | None) -> str:
    """The job a record's event is kept under: the record's key (the jobId the ingester keyed
    it by), known before the body is read, so that every copy of an event meets its row."""
    return (record_key or b"").decode(errors="replace")[: contract.MAX_JOB_ID_CHARS]


async def known(tx: Tx, service: str, pairs: Sequence[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """The (job, event key) pairs of `pairs` that `service`'s history already holds: copies."""
    found: set[tuple[str, bytes]] = set()
    if not pairs:
        return found
    if tx.dialect == "postgresql":
        rows = await tx.fetchall(
            KNOWN_POSTGRESQL,
            [job for job, _ in pairs],
            [service] * len(pairs),
            [key for _, key in pairs],
        )
        return {(str(job), bytes(key)) for job, key in rows}
    for start in range(0, len(pairs), _PAIRS_CHUNK):
        chunk = pairs[start : start + _PAIRS_CHUNK]
        values = ", ".join("(?, ?)" for _ in chunk)
        # CROSS JOIN keeps SQLite's plan: the batch's pairs outside, one key lookup each.
        rows = await tx.fetchall(
            f"SELECT h.job_id, h.event_key FROM (VALUES {values}) AS v "  # noqa: S608 - marks
            "CROSS JOIN event_history h ON h.job_id = v.column1 AND h.service = ? "
            "AND h.event_key = v.column2",
            *[value for pair in chunk for value in pair],
            service,
        )
        found.update((str(job), bytes(key)) for job, key in rows)
    return found


async def claim(tx: Tx, rows: Sequence[Sequence[object]]) -> set[tuple[str, bytes]]:
    """Insert the history rows (HISTORY_COLUMNS) not there yet, in one statement; the (job,
    event key) pairs inserted. PostgreSQL: a row another transaction is inserting meanwhile
    waits for it, and is not claimed when it commits."""
    if not rows:
        return set()
    names = ", ".join(name for name, _ in HISTORY_COLUMNS)
    arrays = ", ".join(f"?::{kind}[]" for _, kind in HISTORY_COLUMNS)
    found = await tx.fetchall(
        f"INSERT INTO event_history ({names}) SELECT * FROM unnest({arrays}) "  # noqa: S608
        f"{KEEP_FIRST} RETURNING job_id, event_key",
        *[list(column) for column in zip(*rows, strict=True)],
    )
    return {(str(job), bytes(key)) for job, key in found}


async def set_outcomes(tx: Tx, service: str, changes: Sequence[tuple[str, bytes, str]]) -> None:
    """Set the outcome of `service`'s rows claimed `applied` whose event turned out otherwise:
    (job, event key, outcome) each, in one statement (PostgreSQL)."""
    if not changes:
        return
    await tx.execute(
        SET_OUTCOMES,
        [job for job, _, _ in changes],
        [service] * len(changes),
        [key for _, key, _ in changes],
        [outcome for _, _, outcome in changes],
    )


async def prune_history(store: Store, service: str, retention_seconds: int) -> int:
    """Delete `service`'s history rows kept past its retention; the number deleted.

    Only its own: services sharing a store may keep theirs for different windows
    (WAZZA_HISTORY_RETENTION_SECONDS is per process), and one's pruning must not shorten
    another's duplicate protection. In chunks, each its own transaction: a week of a busy
    service is millions of rows, and other services wait for the write lock meanwhile."""
    cutoff = int((time.time() - retention_seconds) * 1000)
    total = 0
    while True:
        async with store.transaction() as tx:
            oldest = await tx.fetchall(
                "SELECT kept_ms FROM event_history WHERE service = ? AND kept_ms < ? "
                "ORDER BY kept_ms LIMIT 1 OFFSET ?",
                service,
                cutoff,
                _PRUNE_CHUNK - 1,
            )
            # Up to the chunk's last time (or everything left, when fewer remain).
            bound = int(oldest[0][0]) + 1 if oldest else cutoff
            deleted = await tx.execute(
                "DELETE FROM event_history WHERE service = ? AND kept_ms < ?", service, bound
            )
        total += deleted
        if not oldest:
            return total


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One row of a job's history, as `wazza-hooks jobs history` shows it."""

    job_id: str
    """The job (the record's key)."""
    service: str
    """The service that took the event."""
    event_id: str
    """The event id (the sender's, or the body's SHA-256 hex)."""
    event_type: str
    """`job.completed`, `job.failed`, `job.processing`, ..."""
    event_time_ms: int
    """The event's time."""
    applied_ms: int
    """When the service took it."""
    outcome: str
    """`applied`, `stale`, `conflict` or `dead_lettered`."""
    topic: str
    """Where the record the service took was read."""
    partition: int
    """Its partition."""
    offset: int
    """Its offset."""


_EVENT_COLUMNS = (
    "job_id, service, event_key, event_name, event_type, event_time_ms, applied_ms, outcome, "
    "topic, kafka_partition, kafka_offset"
)


async def jobs_history(tx: Tx, job_ids: Sequence[str]) -> list[HistoryEvent]:
    """Every event of these jobs every service took, by job, event time, taken time, service
    and event id."""
    unique = sorted(set(job_ids))
    events: list[HistoryEvent] = []
    for start in range(0, len(unique), IN_LIST_CHUNK):
        member, args = tx.in_list(unique[start : start + IN_LIST_CHUNK])
        rows = await tx.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM event_history WHERE job_id {member}",  # noqa: S608
            *args,
        )
        events += [
            HistoryEvent(
                str(j), str(s), event_id_of(bytes(k), n), str(t), int(e), int(a), str(o),
                str(topic), int(p), int(offset),
            )
            for j, s, k, n, t, e, a, o, topic, p, offset in rows
        ]  # fmt: skip
    return sorted(
        events,
        key=lambda e: (e.job_id, e.event_time_ms, e.applied_ms, e.service, e.event_id),
    )


async def job_history(tx: Tx, job_id: str) -> list[HistoryEvent]:
    """Every event of `job_id` every service took, by event time (then taken time, service,
    event id)."""
    return await jobs_history(tx, [job_id])


async def last_kept_ms(tx: Tx, service: str) -> int | None:
    """When `service` last took an event (None: never, or every row pruned): its newest row's
    `kept_ms`, read from the index's end. A redrive renews another service's older rows, so
    this may be later than the event it last took, never earlier."""
    row = await tx.fetchone("SELECT MAX(kept_ms) FROM event_history WHERE service = ?", service)
    return None if row is None or row[0] is None else int(row[0])


async def first_offsets_since(tx: Tx, service: str, topic: str, since_ms: int) -> dict[int, int]:
    """Per partition of `topic`, the first offset whose event `service` took at or after
    `since_ms`, among the events its history still holds (a replay's starting points)."""
    # kept_ms >= applied_ms: the index's range holds every row wanted.
    rows = await tx.fetchall(
        "SELECT kafka_partition, MIN(kafka_offset) FROM event_history "
        "WHERE service = ? AND kept_ms >= ? AND applied_ms >= ? AND topic = ? "
        "GROUP BY kafka_partition",
        service,
        since_ms,
        since_ms,
        topic,
    )
    return {int(p): int(o) for p, o in rows}
