"""Parsing raw records into job events."""

from __future__ import annotations

import pytest

from consumers.events import EventError, parse_event, parse_time_ms
from tests.support.signing import completed_body, failed_body, processing_body
from wazza_hooks import contract


def envelope(event_type: str, received_at_ms: int = 1_000) -> contract.RawEnvelope:
    return contract.RawEnvelope(
        event_type=event_type,
        event_id="evt-1",
        received_at_ms=received_at_ms,
        signature_timestamp=1,
        content_type="application/json",
        ingester="test:1",
        scheme="wazza",
    )


SPEC_TIME_MS = 1_761_129_000_000  # 2025-10-22T10:30:00Z


def test_the_spec_completion_parses_with_output_metadata_and_time() -> None:
    event = parse_event(completed_body("job_abc123"), envelope(contract.JOB_COMPLETED))
    assert (event.job_id, event.event_id, event.event_time_ms) == (
        "job_abc123",
        "evt-1",
        SPEC_TIME_MS,
    )
    assert event.terminal
    assert event.output is not None
    assert event.output["format"] == "mp4"
    assert event.metadata == {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15}


def test_the_spec_failure_and_progress_parse() -> None:
    failure = parse_event(failed_body("job_abc123"), envelope(contract.JOB_FAILED))
    assert failure.error == {
        "code": "CONTENT_POLICY_VIOLATION",
        "message": "Content violates safety policy",
    }
    step = parse_event(processing_body("job_abc123", 45), envelope(contract.JOB_PROCESSING))
    assert (step.percent, step.stage, step.eta_seconds) == (45.0, "rendering", 300.0)
    assert not step.terminal


def test_an_event_without_a_timestamp_takes_the_receive_time() -> None:
    body = b'{"event": "job.completed", "jobId": "j1"}'
    assert parse_event(body, envelope(contract.JOB_COMPLETED, 4242)).event_time_ms == 4242


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-22T10:30:00Z", SPEC_TIME_MS),
        ("2025-10-22T12:30:00+02:00", SPEC_TIME_MS),
        ("2025-10-22T10:30:00.250Z", SPEC_TIME_MS + 250),
        ("2025-10-22T10:30:00", SPEC_TIME_MS),
        ("yesterday", None),
        ("", None),
        (1761129000, None),
    ],
)
def test_event_times_parse_from_iso_8601_only(text: object, expected: int | None) -> None:
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"event": "job.failed"}',
        b'{"jobId": "j", "progress": {"percent": 140}}',
    ],
)
def test_an_unusable_body_is_an_event_error_that_is_not_retried(body: bytes) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(body, envelope(contract.JOB_PROCESSING))
    assert caught.value.retriable is False


def test_an_event_time_that_is_no_time_takes_the_receive_time() -> None:
    body = b'{"event": "job.completed", "jobId": "j1", "timestamp": "soon"}'
    assert parse_event(body, envelope(contract.JOB_COMPLETED, 4242)).event_time_ms == 4242


def test_an_event_time_out_of_range_is_an_event_error() -> None:
    body = b'{"event": "job.completed", "jobId": "j1", "timestamp": "1969-12-31T23:59:59Z"}'
    with pytest.raises(EventError, match="invalid_timestamp"):
        parse_event(body, envelope(contract.JOB_COMPLETED))


def test_progress_is_read_for_progress_events_only() -> None:
    body = (
        b'{"jobId": "j1", "progress": {"percent": 40, "stage": "x", "estimatedTimeRemaining": 9}}'
    )
    completion = parse_event(body, envelope(contract.JOB_COMPLETED))
    assert (completion.percent, completion.stage, completion.eta_seconds) == (None, None, None)
    step = parse_event(body, envelope(contract.JOB_PROCESSING))
    assert (step.percent, step.stage, step.eta_seconds) == (40.0, "x", 9.0)


@pytest.mark.parametrize(
    "progress",
    [b"null", b"{}", b"[40]", b'{"percent": true, "stage": 3, "estimatedTimeRemaining": "9"}'],
)
def test_a_progress_event_with_unusable_progress_fields_reads_them_as_none(progress: bytes) -> None:
    body = b'{"jobId": "j1", "progress": ' + progress + b"}"
    step = parse_event(body, envelope(contract.JOB_PROCESSING))
    assert (step.percent, step.stage, step.eta_seconds) == (None, None, None)


def test_a_body_nested_too_deep_is_an_event_error() -> None:
    body = b'{"jobId": "j1", "metadata": ' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(EventError, match="too_deep"):
        parse_event(body, envelope(contract.JOB_COMPLETED))
