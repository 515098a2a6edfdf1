"""The sender's pure parts: signing, payloads, the secret and URL it uses, reading answers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from ingest.signature import VerifierConfig, verify
from tests.support.signing import sign_wazza
from wazza_tools.send import webhooks as sender
from wazza_tools.send.webhooks import Answer, SenderError, resolve_secret

NOW = 1_795_000_000


@given(body=st.binary(max_size=2048), secret=st.text(min_size=1, max_size=64))
def test_what_the_sender_signs_the_ingester_verifies_and_the_spec_helper_agrees(
    body: bytes, secret: str
) -> None:
    headers = sender.sign(secret.encode(), body, NOW)

    assert headers == sign_wazza(secret, body, NOW)
    verified = verify(VerifierConfig([secret.encode()]), CIMultiDict(headers), body, NOW)
    assert (verified.scheme, verified.timestamp) == ("wazza", NOW)


@pytest.mark.parametrize("event", sender.EVENT_TYPES)
def test_spec_examples_carry_the_event_its_status_and_a_fresh_timestamp(event: str) -> None:
    doc = sender.spec_example(event, "job_abc123", NOW)

    assert (doc["event"], doc["jobId"], doc["status"]) == (event, "job_abc123", event[4:])
    assert doc["timestamp"] == "2026-11-18T11:06:40Z"  # NOW, in the spec's format
    assert list(doc)[-1] == "timestamp"


def test_a_processing_example_reports_the_percent_asked_for() -> None:
    doc = sender.spec_example("job.processing", "j", NOW, percent=45)

    assert doc["progress"] == {"percent": 45, "stage": "rendering", "estimatedTimeRemaining": 300}


def test_the_secret_comes_from_the_option_then_the_environment_then_the_dev_file(
    tmp_path: Path,
) -> None:
    dev = tmp_path / "dev-secret"
    dev.write_text("from-file\n")
    env = {"WAZZA_WEBHOOK_SECRETS": " ,new, old", "WAZZA_WEBHOOK_SECRET": "spec-name"}

    assert resolve_secret("given", env, dev) == sender.SecretChoice("given", "--secret")
    assert resolve_secret(None, env, dev).value == "new"
    assert resolve_secret(None, {"WAZZA_WEBHOOK_SECRET": "spec-name"}, dev).value == "spec-name"
    assert resolve_secret(None, {}, dev) == sender.SecretChoice("from-file", str(dev))


@pytest.mark.parametrize(
    ("given", "dev_file", "message"),
    [
        pytest.param(" ", None, "--secret is empty", id="empty-option"),
        pytest.param(None, None, "pass --secret or set WAZZA_WEBHOOK_SECRETS", id="no-dev-file"),
        pytest.param(None, "missing", "no secret", id="missing-file"),
        pytest.param(None, "empty", "is empty", id="empty-file"),
    ],
)
def test_no_usable_secret_is_refused_without_showing_any_value(
    tmp_path: Path, given: str | None, dev_file: str | None, message: str
) -> None:
    path = None if dev_file is None else tmp_path / dev_file
    if dev_file == "empty":
        assert path is not None
        path.write_text("\n")

    with pytest.raises(SenderError, match=message):
        resolve_secret(given, {}, path)


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "http:///x", "localhost:8080", "http://h:99999/x", "http://h:port/x"]
)
def test_a_url_that_cannot_be_posted_to_is_refused(url: str) -> None:
    with pytest.raises(SenderError):
        sender.check_url(url)


@given(status=st.one_of(st.none(), st.integers(100, 599)), body=st.binary(max_size=200))
def test_reading_any_answer_never_raises(status: int | None, body: bytes) -> None:
    answer = Answer(status, body, 0.01)

    answer.reason()
    answer.quarantined()
    sender.refusal_hint(answer)
    sender.describe(answer)


@pytest.mark.parametrize(
    ("status", "body", "hint"),
    [
        pytest.param(401, {"error": "invalid_signature"}, "secret", id="401-secret"),
        pytest.param(401, {"error": "stale_timestamp"}, "clock", id="401-clock"),
        pytest.param(403, {"error": "forbidden"}, "WAZZA_ALLOWED_IPS", id="403"),
        pytest.param(404, {}, "path", id="404"),
        pytest.param(503, {"error": "unavailable"}, None, id="503-retried"),
        pytest.param(400, {}, None, id="400-retried"),
    ],
)
def test_only_answers_no_retry_can_change_stop_a_run(
    status: int, body: dict[str, str], hint: str | None
) -> None:
    found = sender.refusal_hint(Answer(status, orjson.dumps(body), 0.01))

    if hint is None:
        assert found is None
    else:
        assert found is not None
        assert hint in found


def test_a_202_is_a_quarantine_only_when_it_says_so() -> None:
    assert Answer(202, b'{"received":true,"quarantined":"missing_job_id"}', 0.0).quarantined()
    assert not Answer(202, b'{"received":true}', 0.0).quarantined()
    assert not Answer(200, b'{"quarantined":"x"}', 0.0).quarantined()
