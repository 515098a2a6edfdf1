"""The record contract: what the ingester writes and every consumer reads back."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import orjson
import pytest

from tests.support.signing import completed_body, failed_body
from wazza_hooks import contract
from wazza_hooks.contract import ContractError, DeadLetter, RawEnvelope

ENVELOPE = RawEnvelope(
    event_type="job.completed",
    event_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    received_at_ms=1_761_129_000_123,
    signature_timestamp=1_761_129_000,
    content_type="application/json",
    ingester="ingest-0:4242",
    scheme="wazza",
)
DEAD = DeadLetter(
    group="completion",
    error_class="KeyError",
    error_message="'output'",
    topic=contract.RAW_TOPIC,
    partition=3,
    offset=1234,
)


def without(headers: list[tuple[str, bytes]], name: str) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers if k != name]


def replaced(headers: list[tuple[str, bytes]], name: str, value: bytes) -> list[tuple[str, bytes]]:
    return [(k, value if k == name else v) for k, v in headers]


# --- RawEnvelope ----------------------------------------------------------------------------


def test_an_envelope_survives_a_round_trip_through_kafka_headers() -> None:
    assert RawEnvelope.from_headers(ENVELOPE.to_headers()) == ENVELOPE


def test_a_legacy_envelope_without_a_signature_timestamp_survives_a_round_trip() -> None:
    legacy = ENVELOPE._replace(signature_timestamp=None, scheme="legacy")

    assert RawEnvelope.from_headers(legacy.to_headers()) == legacy


def test_an_unknown_event_type_survives_a_round_trip() -> None:
    future = ENVELOPE._replace(event_type="job.cancelled")

    assert RawEnvelope.from_headers(future.to_headers()).event_type == "job.cancelled"


def test_envelope_headers_have_the_contract_names_and_bytes_values() -> None:
    headers = dict(ENVELOPE.to_headers())

    assert headers == {
        contract.H_EVENT_TYPE: b"job.completed",
        contract.H_EVENT_ID: b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        contract.H_RECEIVED_AT_MS: b"1761129000123",
        contract.H_SIGNATURE_TIMESTAMP: b"1761129000",
        contract.H_CONTENT_TYPE: b"application/json",
        contract.H_INGESTER: b"ingest-0:4242",
        contract.H_SIGNATURE_SCHEME: b"wazza",
    }


def test_an_envelope_is_read_back_whatever_the_header_order() -> None:
    assert RawEnvelope.from_headers(list(reversed(ENVELOPE.to_headers()))) == ENVELOPE


def test_a_non_ascii_event_id_survives_a_round_trip() -> None:
    envelope = ENVELOPE._replace(event_id="msg_é✓")

    assert RawEnvelope.from_headers(envelope.to_headers()) == envelope


@pytest.mark.parametrize(
    "name", [contract.H_EVENT_TYPE, contract.H_EVENT_ID, contract.H_RECEIVED_AT_MS]
)
def test_an_envelope_missing_a_required_header_is_a_contract_error(name: str) -> None:
    with pytest.raises(ContractError):
        RawEnvelope.from_headers(without(ENVELOPE.to_headers(), name))


def test_no_headers_at_all_is_a_contract_error() -> None:
    with pytest.raises(ContractError):
        RawEnvelope.from_headers([])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param(contract.H_RECEIVED_AT_MS, b"yesterday", id="received-not-a-number"),
        pytest.param(contract.H_RECEIVED_AT_MS, b"", id="received-empty"),
        pytest.param(contract.H_SIGNATURE_TIMESTAMP, b"12:30", id="timestamp-not-a-number"),
        pytest.param(contract.H_EVENT_TYPE, b"\xff\xfe", id="event-type-not-utf8"),
        pytest.param(contract.H_EVENT_ID, b"\xc3", id="event-id-truncated-utf8"),
        pytest.param(contract.H_CONTENT_TYPE, b"\x80", id="content-type-not-utf8"),
        pytest.param(contract.H_INGESTER, b"\xff", id="ingester-not-utf8"),
    ],
)
def test_a_garbled_envelope_header_is_a_contract_error(name: str, value: bytes) -> None:
    with pytest.raises(ContractError):
        RawEnvelope.from_headers(replaced(ENVELOPE.to_headers(), name, value))


@pytest.mark.parametrize(
    "name", [contract.H_EVENT_TYPE, contract.H_RECEIVED_AT_MS, contract.H_CONTENT_TYPE]
)
def test_a_null_envelope_header_value_is_a_contract_error(name: str) -> None:
    # aiokafka hands a Kafka header with a null value over as None (its headers are bytes | None).
    headers = [(k, None if k == name else v) for k, v in ENVELOPE.to_headers()]

    with pytest.raises(ContractError):
        RawEnvelope.from_headers(headers)  # type: ignore[arg-type]


def test_a_null_signature_timestamp_header_reads_as_no_timestamp() -> None:
    headers = [
        (k, None if k == contract.H_SIGNATURE_TIMESTAMP else v) for k, v in ENVELOPE.to_headers()
    ]

    envelope = RawEnvelope.from_headers(headers)  # type: ignore[arg-type]

    assert envelope.signature_timestamp is None


def test_the_last_of_two_repeated_headers_wins() -> None:
    headers = [*ENVELOPE.to_headers(), (contract.H_EVENT_TYPE, b"job.failed")]

    assert RawEnvelope.from_headers(headers).event_type == "job.failed"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param(contract.H_RECEIVED_AT_MS, b"-1", id="received-negative"),
        pytest.param(
            contract.H_RECEIVED_AT_MS, str(2**53).encode(), id="received-past-exact-integers"
        ),
        pytest.param(contract.H_SIGNATURE_TIMESTAMP, b"-1", id="timestamp-negative"),
        pytest.param(contract.H_EVENT_ID, b"", id="event-id-empty"),
        pytest.param(contract.H_EVENT_ID, b"e" * 257, id="event-id-too-long"),
    ],
)
def test_an_envelope_header_out_of_range_is_a_contract_error_naming_it(
    name: str, value: bytes
) -> None:
    with pytest.raises(ContractError, match=name):
        RawEnvelope.from_headers(replaced(ENVELOPE.to_headers(), name, value))


def test_optional_envelope_headers_may_be_missing() -> None:
    headers = [
        (k, v)
        for k, v in ENVELOPE.to_headers()
        if k in (contract.H_EVENT_TYPE, contract.H_EVENT_ID, contract.H_RECEIVED_AT_MS)
    ]

    envelope = RawEnvelope.from_headers(headers)

    assert envelope == ENVELOPE._replace(
        signature_timestamp=None, content_type="", ingester="", scheme=""
    )


# --- applicable bodies ----------------------------------------------------------------------


def nested_in(levels: int, inner: object = "x") -> dict[str, object]:
    """A body whose containers nest `levels` deep (the body itself is level 1)."""
    value = inner
    for _ in range(levels - 1):
        value = {"n": value}
    return {"event": "job.completed", "jobId": "j", "output": value}


@pytest.mark.parametrize("with_body", [True, False], ids=["with-body", "without-body"])
def test_a_body_at_the_depth_limit_is_applicable_and_one_level_more_is_too_deep(
    with_body: bool,
) -> None:
    at_limit, past = nested_in(contract.MAX_DEPTH), nested_in(contract.MAX_DEPTH + 1)

    def reason(doc: dict[str, object]) -> str | None:
        body = orjson.dumps(doc) if with_body else None
        return contract.inapplicable(doc, contract.JOB_COMPLETED, body)

    assert reason(at_limit) is None
    assert reason(past) == "too_deep"


def test_a_document_nested_thousands_deep_is_too_deep_without_exhausting_the_stack() -> None:
    assert contract.inapplicable(nested_in(5000), contract.JOB_COMPLETED) == "too_deep"


def test_brackets_inside_strings_neither_hide_nor_fake_depth() -> None:
    shallow = {"event": "job.failed", "jobId": "j", "error": {"message": "[{" * 100}}
    deep = nested_in(contract.MAX_DEPTH + 1, inner='"}]' * 100)

    for doc, expected in ((shallow, None), (deep, "too_deep")):
        assert contract.inapplicable(doc, contract.JOB_FAILED, orjson.dumps(doc)) == expected


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"timestamp": "2025-10-22T10:30:00Z"}, (None, 1_761_129_000_000), id="time"),
        pytest.param({}, (None, None), id="no-time"),
        pytest.param({"timestamp": "soon"}, (None, None), id="not-a-time"),
        pytest.param({"timestamp": 1_761_129_000}, (None, None), id="a-number-is-no-time"),
        pytest.param(
            {"timestamp": "1969-12-31T23:59:59Z"}, ("invalid_timestamp", -1000), id="before-1970"
        ),
        pytest.param(
            {"timestamp": "2025-10-22T10:30:00Z", "progress": {"percent": 101}},
            ("invalid_progress", 1_761_129_000_000),
            id="progress",
        ),
        pytest.param(
            {"progress": {"estimatedTimeRemaining": -1}}, ("invalid_progress", None), id="eta"
        ),
    ],
)
def test_check_body_gives_the_reason_and_the_event_time_parsed_once(
    doc: dict[str, object], expected: tuple[str | None, int | None]
) -> None:
    body = orjson.dumps(doc)

    assert contract.check_body(doc, contract.JOB_PROCESSING, body) == expected
    assert contract.inapplicable(doc, contract.JOB_PROCESSING) == expected[0]


def test_a_completions_stray_progress_is_not_checked() -> None:
    doc = {"progress": {"percent": 400}}

    assert contract.inapplicable(doc, contract.JOB_COMPLETED) is None


# --- event ids ------------------------------------------------------------------------------


def test_the_body_event_id_is_the_sha256_hex_of_the_raw_body() -> None:
    body = completed_body("job_abc123")

    assert contract.body_event_id(body) == hashlib.sha256(body).hexdigest()


def test_identical_bodies_share_a_body_event_id() -> None:
    assert contract.body_event_id(completed_body("job_abc123")) == contract.body_event_id(
        completed_body("job_abc123")
    )


def test_different_bodies_have_different_body_event_ids() -> None:
    assert contract.body_event_id(completed_body("job_abc123")) != contract.body_event_id(
        failed_body("job_abc123")
    )
    assert contract.body_event_id(b"{}") != contract.body_event_id(b"{} ")


def test_a_job_key_is_the_job_id_in_utf8() -> None:
    assert contract.job_key("job_abc123") == b"job_abc123"
    assert contract.job_key("job_é") == "job_é".encode()


# --- quarantine -----------------------------------------------------------------------------


def test_quarantine_headers_carry_the_envelope_and_the_reason() -> None:
    headers = contract.quarantine_headers(ENVELOPE, "not_json")

    assert dict(headers)[contract.H_QUARANTINE_REASON] == b"not_json"
    assert RawEnvelope.from_headers(headers) == ENVELOPE


# --- dead letters ---------------------------------------------------------------------------


def test_a_dead_letter_survives_a_round_trip_through_kafka_headers() -> None:
    assert DeadLetter.from_headers(DEAD.to_headers()) == DEAD


def test_a_dead_letter_can_be_read_from_a_mapping_too() -> None:
    assert DeadLetter.from_headers(dict(DEAD.to_headers())) == DEAD


def test_dead_letter_headers_follow_the_original_headers() -> None:
    original = ENVELOPE.to_headers()

    headers = DEAD.to_headers(original)

    assert headers[: len(original)] == original
    assert RawEnvelope.from_headers(headers) == ENVELOPE
    assert DeadLetter.from_headers(headers) == DEAD


def test_a_long_error_message_is_cut_to_the_byte_limit() -> None:
    dead = replace(DEAD, error_message="x" * (DeadLetter.MAX_MESSAGE_BYTES * 3))

    message = dict(dead.to_headers())[contract.H_DLQ_ERROR_MESSAGE]

    assert message == b"x" * DeadLetter.MAX_MESSAGE_BYTES
    assert DeadLetter.from_headers(dead.to_headers()).error_message == message.decode()


def test_a_message_at_the_byte_limit_is_kept_whole() -> None:
    dead = replace(DEAD, error_message="y" * DeadLetter.MAX_MESSAGE_BYTES)

    assert DeadLetter.from_headers(dead.to_headers()) == dead


def test_a_cut_multibyte_message_stays_valid_utf8_within_the_limit() -> None:
    # "é" is two bytes: an odd limit would split one in half if cut blindly at a byte offset.
    dead = replace(DEAD, error_message="a" + "é" * DeadLetter.MAX_MESSAGE_BYTES)

    message = dict(dead.to_headers())[contract.H_DLQ_ERROR_MESSAGE]

    assert len(message) <= DeadLetter.MAX_MESSAGE_BYTES
    assert message.decode("utf-8").startswith("aé")


@pytest.mark.parametrize(
    "name",
    [
        contract.H_DLQ_GROUP,
        contract.H_DLQ_ERROR_CLASS,
        contract.H_DLQ_ERROR_MESSAGE,
        contract.H_DLQ_TOPIC,
        contract.H_DLQ_PARTITION,
        contract.H_DLQ_OFFSET,
    ],
)
def test_dead_letter_headers_missing_one_field_are_a_contract_error(name: str) -> None:
    with pytest.raises(ContractError):
        DeadLetter.from_headers(without(DEAD.to_headers(), name))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (contract.H_DLQ_PARTITION, b"three"),
        (contract.H_DLQ_OFFSET, b""),
        (contract.H_DLQ_GROUP, b"\xff"),
    ],
)
def test_garbled_dead_letter_headers_are_a_contract_error(name: str, value: bytes) -> None:
    with pytest.raises(ContractError):
        DeadLetter.from_headers(replaced(DEAD.to_headers(), name, value))


def test_a_null_dead_letter_header_value_is_a_contract_error() -> None:
    headers = [(k, None if k == contract.H_DLQ_PARTITION else v) for k, v in DEAD.to_headers()]

    with pytest.raises(ContractError):
        DeadLetter.from_headers(headers)  # type: ignore[arg-type]


def test_a_contract_error_is_a_value_error() -> None:
    assert issubclass(ContractError, ValueError)


def test_value_types_are_immutable() -> None:
    with pytest.raises(AttributeError):
        ENVELOPE.event_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        DEAD.offset = 0  # type: ignore[misc]
