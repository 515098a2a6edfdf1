"""The built-in job effects: the `jobs` row and its history, under the order rules."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from .events import JobEvent
from .state import APPLIED, JobState, Rank, decide
from .store import IN_LIST_CHUNK, Column, Tx
from .store.keys import event_key
from .store.schema import EVENT_ID_SQL

JOB_COLUMNS = (
    "job_id, status, percent, stage, eta_seconds, output, error, metadata, progress_rank, "
    "terminal_rank, terminal_event_id, last_progress_ms, finished_ms, created_ms, updated_ms"
)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _rank(text: str | None) -> Rank | None:
    value = _load(text)
    return None if value is None else (value[0], value[1], value[2])


def row_to_state(row: Sequence[Any]) -> JobState:
    """A `jobs` row (JOB_COLUMNS order) as a JobState."""
    return JobState(
        job_id=row[0],
        status=row[1],
        percent=row[2],
        stage=row[3],
        eta_seconds=row[4],
        output=_load(row[5]),
        error=_load(row[6]),
        metadata=_load(row[7]),
        progress_rank=_rank(row[8]),
        terminal_rank=_rank(row[9]),
        terminal_event_id=row[10],
        last_progress_ms=row[11],
        finished_ms=row[12],
    )


_UPDATE_JOB = (
    "UPDATE jobs SET status = ?, percent = ?, stage = ?, eta_seconds = ?, output = ?, error = ?, "
    "metadata = ?, progress_rank = ?, terminal_rank = ?, terminal_event_id = ?, "
    "last_progress_ms = ?, finished_ms = ?, updated_ms = ? WHERE job_id = ?"
)
# The columns _update_args fills, in its order (the key, job_id, last).
_JOB_KEY: Column = ("job_id", "text")
_JOB_UPDATE_COLUMNS: list[Column] = [
    ("status", "text"),
    ("percent", "double precision"),
    ("stage", "text"),
    ("eta_seconds", "double precision"),
    ("output", "text"),
    ("error", "text"),
    ("metadata", "text"),
    ("progress_rank", "text"),
    ("terminal_rank", "text"),
    ("terminal_event_id", "text"),
    ("last_progress_ms", "bigint"),
    ("finished_ms", "bigint"),
    ("updated_ms", "bigint"),
]
_NEW_JOB_COLUMNS: list[Column] = [
    ("job_id", "text"),
    ("status", "text"),
    ("created_ms", "bigint"),
    ("updated_ms", "bigint"),
]
# PostgreSQL: insert the jobs not there yet and lock the others, in job-id order.
_CREATE_AND_LOCK = (
    "WITH new AS (INSERT INTO jobs (job_id, status, created_ms, updated_ms) "  # noqa: S608
    "SELECT j, 'processing', ?::bigint, ?::bigint FROM unnest(?::text[]) AS j ORDER BY j "
    f"ON CONFLICT (job_id) DO NOTHING RETURNING {JOB_COLUMNS}), "
    f"old AS (SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ANY(?::text[]) "
    "ORDER BY job_id FOR UPDATE) "
    "SELECT * FROM new UNION ALL SELECT * FROM old"
)
# PostgreSQL: the terminal events a batch superseded (job, event key), any service's, say
# conflict. The decisions name them (state.Decision.superseded_event_id): every applied terminal
# event either still wins or was superseded by a later decision.
_MARK_SUPERSEDED = (
    "UPDATE event_history h SET outcome = 'conflict' "
    "FROM unnest(?::text[], ?::bytea[]) AS s(job_id, k) "
    "WHERE h.job_id = s.job_id AND h.event_key = s.k AND h.outcome = 'applied' "
    "AND h.event_type IN ('job.completed', 'job.failed')"
)
_MARK_CONFLICT = (
    "UPDATE event_history SET outcome = 'conflict' FROM jobs "
    "WHERE jobs.job_id = event_history.job_id AND event_history.job_id {member} "
    "AND event_history.outcome = 'applied' "
    "AND event_history.event_type IN ('job.completed', 'job.failed') "
    "AND {event_id} <> jobs.terminal_event_id"
)


def _update_args(s: JobState, now: int) -> tuple[Any, ...]:
    return (
        s.status,
        s.percent,
        s.stage,
        s.eta_seconds,
        _json(s.output),
        _json(s.error),
        _json(s.metadata),
        _json(s.progress_rank),
        _json(s.terminal_rank),
        s.terminal_event_id,
        s.last_progress_ms,
        s.finished_ms,
        now,
        s.job_id,
    )


async def apply_job_events(events: Sequence[JobEvent], tx: Tx) -> list[str]:
    """The batch form of `apply_job_event`: the same decisions with a handful of statements.

    Every job of the batch is created (if new) and locked in job-id order first, so that two
    services' batches sharing jobs lock them in the same order and cannot deadlock; the rules
    are then folded in memory, in arrival order, and the changed rows written back at once.
    """
    now = int(time.time() * 1000)
    job_ids = sorted({e.job_id for e in events})
    states = await _lock_jobs(tx, job_ids, now)
    changed: set[str] = set()
    superseded: list[tuple[str, str]] = []
    outcomes: list[str] = []
    for event in events:
        decision = decide(states[event.job_id], event)
        if decision.outcome == APPLIED:
            states[event.job_id] = decision.state
            changed.add(event.job_id)
            if decision.superseded_event_id is not None:
                superseded.append((event.job_id, decision.superseded_event_id))
        outcomes.append(decision.outcome)
    await tx.update_rows(
        "jobs",
        _JOB_KEY,
        _JOB_UPDATE_COLUMNS,
        [_update_args(states[j], now) for j in sorted(changed)],
    )
    if superseded and tx.dialect == "postgresql":
        # Rare (two terminal events of one job): a statement of its own.
        await tx.execute(
            _MARK_SUPERSEDED,
            [job for job, _ in superseded],
            [event_key(event_id) for _, event_id in superseded],
        )
    return outcomes


async def _lock_jobs(tx: Tx, job_ids: list[str], now: int) -> dict[str, JobState]:
    """Create the jobs not there yet and lock every one, in job-id order: their states."""
    states: dict[str, JobState] = {}
    if tx.dialect == "postgresql":
        # One round trip for both: the new rows come back from the insert, the others from the
        # lock. Both parts read one snapshot, so a job another transaction created and committed
        # while this statement waited for it is in neither: it is locked again below.
        for row in await tx.fetchall(_CREATE_AND_LOCK, now, now, job_ids, job_ids):
            states[row[0]] = row_to_state(row)
        missing = [j for j in job_ids if j not in states]
        if not missing:
            return states
        job_ids = missing
    for start in range(0, len(job_ids), IN_LIST_CHUNK):
        chunk = job_ids[start : start + IN_LIST_CHUNK]
        member, args = tx.in_list(chunk)
        for row in await tx.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id {member} "  # noqa: S608 - constants
            f"ORDER BY job_id{tx.for_update()}",
            *args,
        ):
            states[row[0]] = row_to_state(row)
    if tx.dialect != "postgresql":
        # SQLite: the transaction holds the file's write lock since BEGIN, so a job not found
        # above is not created by anyone else meanwhile: insert only those, as they read.
        new = [j for j in job_ids if j not in states]
        if new:
            await tx.insert_rows(
                "jobs", _NEW_JOB_COLUMNS, [(j, "processing", now, now) for j in new]
            )
            for j in new:
                states[j] = JobState(job_id=j, status="processing")
    return states


async def apply_job_event(event: JobEvent, tx: Tx) -> str:
    """The completion, failure and progress services' handler: one event onto its job."""
    now = int(time.time() * 1000)
    # Make the row exist first, so that the lock below always has a row to hold: two services
    # creating one job at once then take turns instead of racing on the insert.
    await tx.execute(
        "INSERT INTO jobs (job_id, status, created_ms, updated_ms) VALUES (?, 'processing', ?, ?) "
        "ON CONFLICT (job_id) DO NOTHING",
        event.job_id,
        now,
        now,
    )
    row = await tx.fetchone(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?{tx.for_update()}",  # noqa: S608 - constants
        event.job_id,
    )
    assert row is not None  # noqa: S101 - inserted just above, in this transaction
    decision = decide(row_to_state(row), event)
    if decision.outcome == APPLIED:
        await tx.execute(_UPDATE_JOB, *_update_args(decision.state, now))
        if decision.superseded_event_id is not None and tx.dialect == "postgresql":
            await tx.execute(
                _MARK_SUPERSEDED, [event.job_id], [event_key(decision.superseded_event_id)]
            )
    return decision.outcome


async def settle_conflicts(tx: Tx, job_ids: Sequence[str]) -> None:
    """A terminal event in a job's history marked applied that is not the job's winning one has
    lost to a later event (applied by whichever service, in whichever batch): it says conflict,
    as it would have had the two arrived the other way round. Run after the history is written
    (SQLite, which writes a batch's history after its handler; on PostgreSQL the history is
    claimed first, and the handlers mark the events they supersede themselves)."""
    unique = sorted(set(job_ids))
    for start in range(0, len(unique), IN_LIST_CHUNK):
        member, args = tx.in_list(unique[start : start + IN_LIST_CHUNK])
        await tx.execute(
            _MARK_CONFLICT.format(member=member, event_id=EVENT_ID_SQL[tx.dialect]), *args
        )
