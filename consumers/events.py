"""Job events as the consumers see them: parsed from a raw record's exact bytes.

The ingester guarantees a JSON object with string `event` and `jobId`; everything else here is
the sender's business and is read leniently (a missing `progress.stage` is no reason to refuse a
completion), except what the order rules need: the event time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from wazza_hooks import contract


class EventError(ValueError):
    """A raw record's body is not a usable job event; retrying cannot help (dead-letter it)."""

    retriable = False


class JobEvent(NamedTuple):
    """One webhook event of one job (a tuple: one is built for every record a service applies,
    and a frozen dataclass costs four times as much to build)."""

    event_type: str
    """`job.completed`, `job.failed` or `job.processing`."""
    job_id: str
    """The sender's job id."""
    event_id: str
    """From the record's headers (the sender's id or the body's SHA-256)."""
    event_time_ms: int
    """The body's `timestamp` in ms since the epoch; the receive time when the sender sent none."""
    percent: float | None = None
    """`progress.percent` of a processing event."""
    stage: str | None = None
    """`progress.stage` of a processing event."""
    eta_seconds: float | None = None
    """`progress.estimatedTimeRemaining` of a processing event."""
    output: Mapping[str, Any] | None = None
    """`output` of a completed event (url, width, height, duration, format)."""
    error: Mapping[str, Any] | None = None
    """`error` of a failed event (code, message)."""
    metadata: Mapping[str, Any] | None = None
    """`metadata` (provider, model, creditsUsed)."""

    @property
    def terminal(self) -> bool:
        """True for `job.completed` and `job.failed`."""
        return self.event_type in (contract.JOB_COMPLETED, contract.JOB_FAILED)


parse_time_ms = contract.parse_time_ms


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _number(value: object) -> float | None:
    # A tuple, not `int | float`: isinstance reads a tuple faster (Python 3.11).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_event(body: bytes, envelope: contract.RawEnvelope) -> JobEvent:
    """The job event in a raw record; raises EventError when the body cannot be one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EventError("body is not a JSON object")
    job_id = doc.get("jobId")
    if not isinstance(job_id, str) or not job_id or len(job_id) > contract.MAX_JOB_ID_CHARS:
        raise EventError("body has no usable jobId")
    event_type = envelope.event_type
    unusable, event_time = contract.check_body(doc, event_type, body)
    if unusable is not None:
        raise EventError(f"body not applicable: {unusable}")
    if event_time is None:
        event_time = envelope.received_at_ms
    # Read for progress events only: a completion's stray `progress` is not its business.
    progress = _mapping(doc.get("progress")) if event_type == contract.JOB_PROCESSING else None
    if progress is None:
        percent = eta_seconds = stage = None
    else:
        percent = _number(progress.get("percent"))
        eta_seconds = _number(progress.get("estimatedTimeRemaining"))
        stage = progress.get("stage")
    # Positional, in field order: one event is built for every record a service applies.
    return JobEvent(
        event_type,
        job_id,
        envelope.event_id,
        event_time,
        percent,
        stage if isinstance(stage, str) else None,
        eta_seconds,
        _mapping(doc.get("output")),
        _mapping(doc.get("error")),
        _mapping(doc.get("metadata")),
    )
