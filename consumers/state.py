"""The order rules (invariant 5 of docs/architecture.md) as one pure function:
(job state, event) -> decision.

The final state of a job is the same whatever order its events arrive in, because every rule
compares events by a total order instead of by arrival:

- Terminal events (`job.completed`, `job.failed`) are ranked by (event time, kind, event id):
  the later event time wins; at equal times `job.failed` wins over `job.completed` (a job
  reported failed is not handed out as done); at equal time and kind the larger event id wins.
  The highest-ranked terminal event is the job's outcome; every other terminal event is a
  `conflict`, recorded and counted, whichever arrived first.
- Progress (`job.processing`) never goes backwards: it applies only when its (percent, event
  time, event id) ranks above the progress already applied, and never once the job is terminal
  (`stale`). A terminal state fixes the progress fields itself (completed: 100 %, stage
  `completed`, no time remaining; failed: the stage `failed`, percent and time cleared; the last
  progress time cleared; metadata from the winning terminal event), so they do not depend on
  which progress events happened to arrive before it.
- The first event of a job creates its row, whatever its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from wazza_hooks import contract

from .events import JobEvent

APPLIED = "applied"
STALE = "stale"
CONFLICT = "conflict"

# At equal event times a failure outranks a completion (see the module docstring).
_KIND_RANK = {contract.JOB_COMPLETED: 0, contract.JOB_FAILED: 1}

Rank = tuple[float, int | float, str]


class JobState(NamedTuple):
    """A job as the store keeps it (a tuple: one is built for every event applied, and a frozen
    dataclass costs five times as much to build)."""

    job_id: str
    """The sender's job id."""
    status: str
    """`processing`, `completed` or `failed`."""
    percent: float | None = None
    """Progress in percent, never lower than before."""
    stage: str | None = None
    """The sender's stage name (`rendering`, ...), or `completed`/`failed` once terminal."""
    eta_seconds: float | None = None
    """Estimated time remaining, as last reported."""
    output: Mapping[str, Any] | None = None
    """The completed job's output."""
    error: Mapping[str, Any] | None = None
    """The failed job's error."""
    metadata: Mapping[str, Any] | None = None
    """Provider, model and credits: from the winning terminal event, else the applied progress."""
    progress_rank: Rank | None = None
    """(percent, event time, event id) of the applied progress event."""
    terminal_rank: Rank | None = None
    """(event time, kind rank, event id) of the winning terminal event."""
    terminal_event_id: str | None = None
    """The winning terminal event's id."""
    last_progress_ms: int | None = None
    """Event time of the applied progress event."""
    finished_ms: int | None = None
    """Event time of the winning terminal event."""

    @property
    def terminal(self) -> bool:
        """True once completed or failed."""
        return self.terminal_rank is not None


class Decision(NamedTuple):
    """What one event does to a job (a tuple, as JobState)."""

    outcome: str
    """`applied`, `stale` or `conflict`."""
    state: JobState
    """The job after the event (unchanged unless applied)."""
    superseded_event_id: str | None = None
    """A terminal event that was applied before and has now lost: its history says conflict."""


def terminal_rank(event: JobEvent) -> Rank:
    """The rank of a terminal event among the job's terminal events."""
    return (event.event_time_ms, _KIND_RANK[event.event_type], event.event_id)


def progress_rank(event: JobEvent) -> Rank:
    """The rank of a progress event among the job's progress events."""
    return (
        event.percent if event.percent is not None else -1.0,
        event.event_time_ms,
        event.event_id,
    )


def decide(current: JobState | None, event: JobEvent) -> Decision:
    """Apply one event of `event.job_id` to its current state (None: a job not seen before)."""
    state = current if current is not None else JobState(job_id=event.job_id, status="processing")
    if event.terminal:
        return _terminal(state, event)
    if event.event_type == contract.JOB_PROCESSING:
        return _progress(state, event)
    raise ValueError(f"no order rule for event type {event.event_type!r}")


def _terminal(state: JobState, event: JobEvent) -> Decision:
    rank = terminal_rank(event)
    if state.terminal_rank is not None and state.terminal_rank >= rank:
        return Decision(CONFLICT, state)
    superseded = state.terminal_event_id
    completed = event.event_type == contract.JOB_COMPLETED
    # Built field by field rather than with dataclasses.replace(), which costs several times
    # more: this runs once per event.
    new = JobState(
        job_id=state.job_id,
        status="completed" if completed else "failed",
        percent=100.0 if completed else None,
        stage="completed" if completed else "failed",
        eta_seconds=0.0 if completed else None,
        output=event.output if completed else None,
        error=None if completed else event.error,
        metadata=event.metadata,
        progress_rank=None,
        last_progress_ms=None,
        terminal_rank=rank,
        terminal_event_id=event.event_id,
        finished_ms=event.event_time_ms,
    )
    return Decision(APPLIED, new, superseded_event_id=superseded)


def _progress(state: JobState, event: JobEvent) -> Decision:
    rank = progress_rank(event)
    if state.terminal or (state.progress_rank is not None and state.progress_rank >= rank):
        return Decision(STALE, state)
    # The winning event alone says where the job is: a field it leaves out is unknown, not
    # carried over from the event it outranks, which would make the result depend on which of
    # the two arrived first (invariant 5).
    new = JobState(
        job_id=state.job_id,
        status=state.status,
        percent=event.percent,
        stage=event.stage,
        eta_seconds=event.eta_seconds,
        output=state.output,
        error=state.error,
        metadata=event.metadata,
        progress_rank=rank,
        terminal_rank=state.terminal_rank,
        terminal_event_id=state.terminal_event_id,
        last_progress_ms=event.event_time_ms,
        finished_ms=state.finished_ms,
    )
    return Decision(APPLIED, new)
