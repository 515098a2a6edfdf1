"""Signature verification: build a valid request, then break one thing (STYLE.md rule 2)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from ingest.signature import (
    SignatureError,
    Verified,
    VerifierConfig,
    decode_standard_secret,
    verify,
)
from tests.support.signing import (
    completed_body,
    failed_body,
    processing_body,
    sign_legacy,
    sign_standard,
    sign_wazza,
    standard_v1,
    wazza_hex,
)

SECRET = "wazza-test-secret-1"
NEXT_SECRET = "wazza-test-secret-2"
OTHER_SECRET = "not-the-registered-secret"
STD_KEY = b"standard-webhooks-key-0123456789"
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()
OTHER_STD_SECRET = "whsec_" + base64.b64encode(b"some-other-standard-key").decode()
TOLERANCE = 300
# The moment of the spec's examples, so the signed timestamp and the event's own agree.
NOW = int(datetime(2025, 10, 22, 10, 30, tzinfo=UTC).timestamp())
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

CONFIG = VerifierConfig(wazza_secrets=(SECRET.encode(),), tolerance_seconds=TOLERANCE)
STD_CONFIG = VerifierConfig(
    wazza_secrets=(SECRET.encode(),),
    standard_secrets=(STD_KEY,),
    tolerance_seconds=TOLERANCE,
)
LEGACY_CONFIG = VerifierConfig(
    wazza_secrets=(SECRET.encode(),), tolerance_seconds=TOLERANCE, allow_legacy=True
)

BODY = completed_body("job_abc123")
SPEC_BODIES = [
    pytest.param(completed_body("job_abc123"), id="job.completed"),
    pytest.param(failed_body("job_abc123"), id="job.failed"),
    pytest.param(processing_body("job_abc123", 45), id="job.processing"),
]
REASONS = {
    "missing_signature",
    "malformed_signature",
    "missing_timestamp",
    "malformed_timestamp",
    "invalid_signature",
    "stale_timestamp",
    "missing_webhook_id",
    "malformed_webhook_id",
}


def check(
    headers: Mapping[str, str],
    body: bytes = BODY,
    *,
    config: VerifierConfig = CONFIG,
    now: float = NOW,
) -> Verified:
    """Verify with case-insensitive headers, as aiohttp hands them over."""
    return verify(config, CIMultiDict(headers), body, now)


def refused(
    headers: Mapping[str, str],
    body: bytes = BODY,
    *,
    config: VerifierConfig = CONFIG,
    now: float = NOW,
) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        check(headers, body, config=config, now=now)
    return caught.value


def good(body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    return sign_wazza(SECRET, body, timestamp)


def without(headers: Mapping[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != name.lower()}


def flip_hex_char(text: str, index: int) -> str:
    replacement = "0" if text[index] != "0" else "1"
    return text[:index] + replacement + text[index + 1 :]


# --- the sender's scheme: a valid request -----------------------------------------------------


@pytest.mark.parametrize("body", SPEC_BODIES)
def test_a_spec_payload_signed_with_the_secret_is_accepted(body: bytes) -> None:
    result = check(good(body), body)

    assert result == Verified(scheme="wazza", timestamp=NOW, event_id=None)


def test_header_names_are_matched_whatever_their_case() -> None:
    headers = {k.upper(): v for k, v in good().items()}

    assert check(headers).scheme == "wazza"


def test_a_signature_spelled_with_a_sha256_prefix_is_accepted() -> None:
    headers = good()
    headers["X-Wazza-Signature"] = "sha256=" + headers["X-Wazza-Signature"]

    assert check(headers).scheme == "wazza"


# --- one header missing or malformed ----------------------------------------------------------


def test_a_request_without_a_signature_header_is_refused() -> None:
    error = refused(without(good(), "X-Wazza-Signature"))

    assert error.reason == "missing_signature"


def test_a_request_with_no_signing_headers_at_all_is_refused() -> None:
    assert refused({"Content-Type": "application/json"}).reason == "missing_signature"


def test_a_signed_request_without_a_timestamp_header_is_refused() -> None:
    error = refused(without(good(), "X-Wazza-Timestamp"))

    assert error.reason == "missing_timestamp"


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param("17611290OO", id="letters"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("9" * 13, id="huge"),
        pytest.param("-1761129000", id="negative"),
        pytest.param("1761129000.5", id="fractional"),
        pytest.param("١٧٦١١٢٩٠٠٠", id="non-ascii-digits"),
    ],
)
def test_a_malformed_timestamp_is_refused(timestamp: str) -> None:
    headers = good()
    headers["X-Wazza-Timestamp"] = timestamp

    assert refused(headers).reason == "malformed_timestamp"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda sig: "z" * len(sig), id="not-hex"),
        pytest.param(lambda sig: sig[:-1], id="one-char-short"),
        pytest.param(lambda sig: sig + "ab", id="one-byte-long"),
        pytest.param(lambda sig: "", id="empty"),
        pytest.param(lambda sig: sig[:-1] + "é", id="non-ascii"),
        pytest.param(lambda sig: "a" * 5000, id="very-long"),
    ],
)
def test_a_malformed_signature_is_refused(mangle: Callable[[str], str]) -> None:
    headers = good()
    headers["X-Wazza-Signature"] = mangle(headers["X-Wazza-Signature"])

    assert refused(headers).reason == "malformed_signature"


# --- one byte wrong -------------------------------------------------------------------------


@pytest.mark.parametrize("body", SPEC_BODIES)
@pytest.mark.parametrize("position", [0, 17, -1])
def test_a_body_with_one_flipped_byte_is_refused(body: bytes, position: int) -> None:
    headers = good(body)
    spoiled = bytearray(body)
    spoiled[position] ^= 0x01

    assert refused(headers, bytes(spoiled)).reason == "invalid_signature"


def test_a_body_with_one_extra_trailing_newline_is_refused() -> None:
    assert refused(good(), BODY + b"\n").reason == "invalid_signature"


@pytest.mark.parametrize("index", [0, 31, 63])
def test_a_signature_with_one_flipped_character_is_refused(index: int) -> None:
    headers = good()
    headers["X-Wazza-Signature"] = flip_hex_char(headers["X-Wazza-Signature"], index)

    assert refused(headers).reason == "invalid_signature"


def test_a_request_signed_with_another_secret_is_refused() -> None:
    headers = sign_wazza(OTHER_SECRET, BODY, NOW)

    assert refused(headers).reason == "invalid_signature"


def test_a_timestamp_changed_after_signing_is_refused() -> None:
    headers = good()
    headers["X-Wazza-Timestamp"] = str(NOW + 1)

    assert refused(headers).reason == "invalid_signature"


def test_no_configured_wazza_secret_refuses_every_wazza_request() -> None:
    config = VerifierConfig(wazza_secrets=(), standard_secrets=(STD_KEY,))

    assert refused(good(), config=config).reason == "invalid_signature"


def test_a_refusal_never_echoes_the_presented_signature_or_the_secret() -> None:
    headers = sign_wazza(OTHER_SECRET, BODY, NOW)

    error = refused(headers)

    assert headers["X-Wazza-Signature"] not in str(error)
    assert SECRET not in str(error)
    assert OTHER_SECRET not in str(error)


# --- the clock ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset",
    [pytest.param(-(TOLERANCE + 1), id="too-old"), pytest.param(TOLERANCE + 1, id="too-new")],
)
def test_a_timestamp_one_second_past_the_tolerance_is_stale(offset: int) -> None:
    error = refused(good(timestamp=NOW + offset))

    assert error.reason == "stale_timestamp"
    assert error.stale


@pytest.mark.parametrize(
    "offset",
    [pytest.param(-TOLERANCE, id="old"), pytest.param(TOLERANCE, id="new"), 0],
)
def test_a_timestamp_exactly_at_the_tolerance_is_accepted(offset: int) -> None:
    result = check(good(timestamp=NOW + offset))

    assert result.timestamp == NOW + offset


def test_the_tolerance_comes_from_the_configuration() -> None:
    config = VerifierConfig(wazza_secrets=(SECRET.encode(),), tolerance_seconds=10)

    assert refused(good(timestamp=NOW - 11), config=config).reason == "stale_timestamp"
    assert check(good(timestamp=NOW - 10), config=config).scheme == "wazza"


def test_a_stale_timestamp_with_a_wrong_signature_is_an_invalid_signature() -> None:
    headers = sign_wazza(OTHER_SECRET, BODY, NOW - TOLERANCE - 1)

    error = refused(headers)

    assert error.reason == "invalid_signature"
    assert not error.stale


# --- rotation -------------------------------------------------------------------------------


ROTATION = VerifierConfig(
    wazza_secrets=(SECRET.encode(), NEXT_SECRET.encode(), b"third-secret"),
    tolerance_seconds=TOLERANCE,
)


@pytest.mark.parametrize("secret", [SECRET, NEXT_SECRET, "third-secret"])
def test_during_a_rotation_a_request_signed_with_any_configured_secret_is_accepted(
    secret: str,
) -> None:
    assert check(sign_wazza(secret, BODY, NOW), config=ROTATION).scheme == "wazza"


def test_during_a_rotation_an_unlisted_secret_is_still_refused() -> None:
    headers = sign_wazza(OTHER_SECRET, BODY, NOW)

    assert refused(headers, config=ROTATION).reason == "invalid_signature"


# --- raw bytes, never a re-serialisation ----------------------------------------------------


def test_the_exact_raw_bytes_are_verified_even_when_the_json_is_spaced_out() -> None:
    spaced = json.dumps(json.loads(BODY), indent=2).encode()

    assert check(good(spaced), spaced).scheme == "wazza"


def test_a_signature_over_a_reserialisation_of_the_body_is_refused() -> None:
    spaced = json.dumps(json.loads(BODY)).encode()  # ", " and ": ": what a naive sender signs
    assert spaced != BODY
    headers = good(spaced)

    assert refused(headers, BODY).reason == "invalid_signature"


def test_a_raw_body_signed_as_its_compact_reserialisation_is_refused() -> None:
    spaced = json.dumps(json.loads(BODY)).encode()
    headers = good(BODY)  # the sender signed compact JSON; spaces arrived on the wire

    assert refused(headers, spaced).reason == "invalid_signature"


# --- Standard Webhooks ----------------------------------------------------------------------


def std(body: bytes = BODY, timestamp: int = NOW, msg_id: str = MSG_ID) -> dict[str, str]:
    return sign_standard(STD_SECRET, msg_id, body, timestamp)


@pytest.mark.parametrize("body", SPEC_BODIES)
def test_a_standard_webhooks_request_is_accepted_when_standard_secrets_are_configured(
    body: bytes,
) -> None:
    result = check(std(body), body, config=STD_CONFIG)

    assert result == Verified(scheme="standard", timestamp=NOW, event_id=MSG_ID)


def test_a_standard_webhooks_request_is_refused_when_no_standard_secret_is_configured() -> None:
    assert refused(std(), config=CONFIG).reason == "missing_signature"


def test_a_standard_webhooks_request_carries_its_webhook_id_as_the_event_id() -> None:
    result = check(std(msg_id="msg_other"), config=STD_CONFIG)

    assert result.event_id == "msg_other"


def test_a_standard_signature_list_where_one_entry_matches_is_accepted() -> None:
    headers = std()
    wrong = standard_v1(OTHER_STD_SECRET, MSG_ID, BODY, NOW)
    headers["webhook-signature"] = f"v1,{wrong} {headers['webhook-signature']} v1,bm90LWl0"

    assert check(headers, config=STD_CONFIG).scheme == "standard"


def test_a_standard_signature_list_where_no_entry_matches_is_refused() -> None:
    headers = std()
    wrong = standard_v1(OTHER_STD_SECRET, MSG_ID, BODY, NOW)
    headers["webhook-signature"] = f"v1,{wrong} v1,bm90LWl0"

    assert refused(headers, config=STD_CONFIG).reason == "invalid_signature"


def test_a_v1a_entry_is_ignored_even_when_it_holds_the_right_bytes() -> None:
    headers = std()
    headers["webhook-signature"] = "v1a," + standard_v1(STD_SECRET, MSG_ID, BODY, NOW)

    assert refused(headers, config=STD_CONFIG).reason == "malformed_signature"


def test_a_v1a_entry_beside_a_matching_v1_entry_does_not_prevent_acceptance() -> None:
    headers = std()
    headers["webhook-signature"] = "v1a,c29tZXRoaW5n " + headers["webhook-signature"]

    assert check(headers, config=STD_CONFIG).scheme == "standard"


def test_a_standard_request_without_a_webhook_id_is_refused() -> None:
    headers = without(std(), "webhook-id")

    assert refused(headers, config=STD_CONFIG).reason == "missing_webhook_id"


def test_a_standard_request_with_an_unprintable_webhook_id_is_refused() -> None:
    headers = std(msg_id="msg\n1")

    assert refused(headers, config=STD_CONFIG).reason == "malformed_webhook_id"


def test_a_standard_request_without_a_webhook_timestamp_is_refused() -> None:
    headers = without(std(), "webhook-timestamp")

    assert refused(headers, config=STD_CONFIG).reason == "missing_timestamp"


def test_a_standard_request_with_a_flipped_body_byte_is_refused() -> None:
    spoiled = bytearray(BODY)
    spoiled[5] ^= 0x01

    assert refused(std(), bytes(spoiled), config=STD_CONFIG).reason == "invalid_signature"


def test_a_standard_request_signed_with_another_key_is_refused() -> None:
    headers = sign_standard(OTHER_STD_SECRET, MSG_ID, BODY, NOW)

    assert refused(headers, config=STD_CONFIG).reason == "invalid_signature"


def test_a_standard_request_whose_webhook_id_was_changed_is_refused() -> None:
    headers = std()
    headers["webhook-id"] = "msg_replayed"

    assert refused(headers, config=STD_CONFIG).reason == "invalid_signature"


@pytest.mark.parametrize("offset", [-(TOLERANCE + 1), TOLERANCE + 1])
def test_a_standard_request_past_the_tolerance_is_stale(offset: int) -> None:
    headers = std(timestamp=NOW + offset)

    assert refused(headers, config=STD_CONFIG).reason == "stale_timestamp"


def test_a_stale_standard_request_with_a_wrong_signature_is_an_invalid_signature() -> None:
    headers = sign_standard(OTHER_STD_SECRET, MSG_ID, BODY, NOW - TOLERANCE - 1)

    assert refused(headers, config=STD_CONFIG).reason == "invalid_signature"


def test_a_standard_signature_header_that_is_all_garbage_is_malformed() -> None:
    headers = std()
    headers["webhook-signature"] = "v1,!!!not-base64!!! nonsense"

    assert refused(headers, config=STD_CONFIG).reason == "malformed_signature"


# --- legacy body-only signatures ------------------------------------------------------------


def test_a_body_only_signature_is_refused_for_lack_of_a_timestamp_by_default() -> None:
    assert refused(sign_legacy(SECRET, BODY)).reason == "missing_timestamp"


def test_a_body_only_signature_is_accepted_when_legacy_is_allowed() -> None:
    result = check(sign_legacy(SECRET, BODY), config=LEGACY_CONFIG)

    assert result == Verified(scheme="legacy", timestamp=None, event_id=None)


def test_a_body_only_signature_with_another_secret_is_refused_even_when_legacy_is_allowed() -> None:
    headers = sign_legacy(OTHER_SECRET, BODY)

    assert refused(headers, config=LEGACY_CONFIG).reason == "invalid_signature"


def test_a_body_only_signature_over_a_flipped_body_is_refused_when_legacy_is_allowed() -> None:
    spoiled = bytearray(BODY)
    spoiled[0] ^= 0x01

    error = refused(sign_legacy(SECRET, BODY), bytes(spoiled), config=LEGACY_CONFIG)

    assert error.reason == "invalid_signature"


def test_allowing_legacy_does_not_weaken_the_timestamped_scheme() -> None:
    error = refused(good(timestamp=NOW - TOLERANCE - 1), config=LEGACY_CONFIG)

    assert error.reason == "stale_timestamp"


# --- decode_standard_secret -----------------------------------------------------------------


def test_a_whsec_secret_decodes_to_the_key_behind_it() -> None:
    assert decode_standard_secret(STD_SECRET) == STD_KEY


def test_a_standard_secret_without_the_whsec_prefix_decodes_too() -> None:
    assert decode_standard_secret(STD_SECRET.removeprefix("whsec_")) == STD_KEY


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("whsec_", id="empty-key"),
        pytest.param("", id="empty"),
        pytest.param("whsec_not base64!", id="not-base64"),
        pytest.param("whsec_c2VjcmV0cw", id="missing-padding"),
        pytest.param("whsec_c2VjcmV0cw==é", id="non-ascii"),
    ],
)
def test_a_malformed_standard_secret_is_a_value_error_that_does_not_echo_it(secret: str) -> None:
    with pytest.raises(ValueError, match="Standard Webhooks secret") as caught:
        decode_standard_secret(secret)

    payload = secret.removeprefix("whsec_")
    assert not payload or payload not in str(caught.value)


# --- properties -----------------------------------------------------------------------------


HEADER_NAMES = [
    "X-Wazza-Signature",
    "x-wazza-signature",
    "X-Wazza-Timestamp",
    "x-wazza-timestamp",
    "webhook-id",
    "Webhook-Id",
    "webhook-timestamp",
    "webhook-signature",
    "WEBHOOK-SIGNATURE",
    "Content-Type",
]
header_values = st.one_of(
    st.text(),
    st.integers(min_value=NOW - 2 * TOLERANCE, max_value=NOW + 2 * TOLERANCE).map(str),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.lists(
        st.tuples(st.sampled_from(["v1", "v1a", "v2", ""]), st.binary(max_size=40)).map(
            lambda entry: f"{entry[0]},{base64.b64encode(entry[1]).decode()}"
        ),
        max_size=4,
    ).map(" ".join),
)
headers_strategy = st.lists(
    st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=24)), header_values),
    max_size=8,
).map(CIMultiDict)
configs = st.sampled_from([CONFIG, STD_CONFIG, LEGACY_CONFIG, ROTATION])


@given(config=configs, headers=headers_strategy, body=st.binary(max_size=512))
def test_arbitrary_headers_and_bodies_give_a_verified_or_a_signature_error_only(
    config: VerifierConfig, headers: CIMultiDict[str], body: bytes
) -> None:
    outcome: Verified | SignatureError
    try:
        outcome = verify(config, headers, body, NOW)
    except SignatureError as error:  # anything else escapes and fails the property
        outcome = error

    if isinstance(outcome, SignatureError):
        assert outcome.reason in REASONS
    else:
        assert isinstance(outcome, Verified)


@given(
    body=st.binary(max_size=2048),
    offset=st.integers(min_value=-TOLERANCE, max_value=TOLERANCE),
)
def test_any_body_signed_with_the_secret_within_the_tolerance_is_accepted(
    body: bytes, offset: int
) -> None:
    headers = CIMultiDict(sign_wazza(SECRET, body, NOW + offset))

    assert verify(CONFIG, headers, body, NOW).timestamp == NOW + offset


@given(body=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_single_flipped_body_byte_is_refused(body: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    spoiled = bytearray(body)
    spoiled[index] ^= 1 << bit
    headers = CIMultiDict(sign_wazza(SECRET, body, NOW))

    with pytest.raises(SignatureError) as caught:
        verify(CONFIG, headers, bytes(spoiled), NOW)
    assert caught.value.reason == "invalid_signature"


def test_the_helper_signs_the_timestamp_dot_body_concatenation() -> None:
    # Guards the helper itself: a wrong helper would make every test above meaningless.
    headers = good()

    assert headers["X-Wazza-Signature"] == wazza_hex(SECRET, f"{NOW}.".encode() + BODY)
    assert len(headers["X-Wazza-Signature"]) == 64
