"""The built-in job effects: the `jobs` row and its history, under the order rules."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from .events import JobEvent
from .state import APPLIED, JobState, Rank, decide
from .store import Tx

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
        s = decision.state
        await tx.execute(
            "UPDATE jobs SET status = ?, percent = ?, stage = ?, eta_seconds = ?, output = ?, "
            "error = ?, metadata = ?, progress_rank = ?, terminal_rank = ?, terminal_event_id = ?, "
            "last_progress_ms = ?, finished_ms = ?, updated_ms = ? WHERE job_id = ?",
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
            event.job_id,
        )
    if decision.superseded_event_id is not None:
        # The terminal event this one outranks was applied before (by whichever service): its
        # history now says conflict, as it would have had the two arrived the other way round.
        await tx.execute(
            "UPDATE job_events SET outcome = 'conflict' "
            "WHERE job_id = ? AND event_id = ? AND outcome = 'applied'",
            event.job_id,
            decision.superseded_event_id,
        )
    return decision.outcome
