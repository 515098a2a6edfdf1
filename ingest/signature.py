"""Webhook signature verification: one pure function of (config, headers, raw body, now).

No aiohttp import and no clock read here: the caller passes the headers as a case-insensitive
mapping and the current time, and gets a `Verified` or ONE error type, `SignatureError`, whose
`reason` is a stable code. Nothing else escapes for any input.

Schemes, chosen by the headers a request carries:
- `wazza` (always on): `X-Wazza-Timestamp` (unix seconds) and `X-Wazza-Signature` (hex
  HMAC-SHA256 over `<timestamp>.<raw body>`).
- `standard` (when Standard Webhooks secrets are configured): `webhook-id`, `webhook-timestamp`,
  `webhook-signature` (`v1,<base64>` entries, space-separated) over `<id>.<timestamp>.<body>`.
- `legacy` (explicit opt-in, weaker: no timestamp, so a captured request can be replayed forever):
  `X-Wazza-Signature` alone, hex HMAC-SHA256 over the raw body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WAZZA_SIGNATURE = "x-wazza-signature"
WAZZA_TIMESTAMP = "x-wazza-timestamp"
STD_ID = "webhook-id"
STD_TIMESTAMP = "webhook-timestamp"
STD_SIGNATURE = "webhook-signature"

# A signature header is one hex digest (64 chars) or a handful of `v1,` entries; anything longer is
# not a signature and is refused before any HMAC work.
_MAX_SIGNATURE_HEADER = 2048
# Unix seconds fit in 10 digits until 2286; more digits is garbage, not a timestamp.
_MAX_TIMESTAMP_DIGITS = 12
# Standard Webhooks caps ids at a modest size; ours only needs it to stay a sane Kafka header.
_MAX_WEBHOOK_ID = 256
_SHA256_HEX_LEN = 64


class SignatureError(Exception):
    """A request failed verification; `reason` is a stable code for the 401 body and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        """Stable code: missing_signature, malformed_signature, missing_timestamp, ..."""
        self.detail = detail
        """A human sentence; never contains a secret or the presented signature."""

    @property
    def stale(self) -> bool:
        """True when the signature may be fine but the timestamp is outside the tolerance."""
        return self.reason == "stale_timestamp"


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """What verification accepts; built once from the settings."""

    wazza_secrets: Sequence[bytes]
    """HMAC keys for the `wazza` and `legacy` schemes; several during a rotation."""
    standard_secrets: Sequence[bytes] = ()
    """Decoded Standard Webhooks keys (the bytes behind `whsec_...`); empty disables the scheme."""
    tolerance_seconds: int = 300
    """Largest accepted |now - timestamp|, both directions (the sender's spec uses 5 minutes)."""
    allow_legacy: bool = False
    """Accept body-only signatures without a timestamp. Weaker: replays are never stale."""


@dataclass(frozen=True, slots=True)
class Verified:
    """A request that passed verification."""

    scheme: str
    """`wazza`, `standard` or `legacy`."""
    timestamp: int | None
    """The signed timestamp in unix seconds; None for `legacy`."""
    event_id: str | None
    """The sender's event id (Standard Webhooks' `webhook-id`); None when the sender gave none."""


def decode_standard_secret(secret: str) -> bytes:
    """The key behind a Standard Webhooks secret (`whsec_<base64>`); raises ValueError."""
    text = secret.strip()
    if text.startswith("whsec_"):
        text = text[len("whsec_") :]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret must be whsec_ followed by base64") from exc
    if not key:
        raise ValueError("a Standard Webhooks secret must not be empty")
    return key


def verify(config: VerifierConfig, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
    """Verify one request. `headers` must be case-insensitive (or lower-case keys).

    Raises SignatureError, and only SignatureError, when the request must be refused.
    """
    if WAZZA_TIMESTAMP in headers:
        return _verify_wazza(config, headers, body, now)
    if config.standard_secrets and STD_SIGNATURE in headers:
        return _verify_standard(config, headers, body, now)
    if WAZZA_SIGNATURE in headers:
        if config.allow_legacy:
            return _verify_legacy(config, headers, body)
        raise SignatureError("missing_timestamp", "X-Wazza-Timestamp header is required")
    raise SignatureError("missing_signature", "no X-Wazza-Signature header")


def _verify_wazza(
    config: VerifierConfig, headers: Mapping[str, str], body: bytes, now: float
) -> Verified:
    raw_ts = headers[WAZZA_TIMESTAMP]
    raw_sig = headers.get(WAZZA_SIGNATURE)
    if raw_sig is None:
        raise SignatureError("missing_signature", "no X-Wazza-Signature header")
    timestamp = _parse_timestamp(raw_ts, "X-Wazza-Timestamp")
    presented = _parse_hex_signature(raw_sig)
    if not config.wazza_secrets:
        raise SignatureError("invalid_signature", "no secret is configured for this scheme")
    prefix = raw_ts.strip().encode() + b"."
    if not _any_hex_match(config.wazza_secrets, prefix, body, presented):
        raise SignatureError("invalid_signature", "signature does not match any configured secret")
    # The timestamp is checked after the HMAC so that a stale answer is only ever given to a
    # request that was really signed with our secret (a forger learns nothing from it).
    _check_tolerance(timestamp, now, config.tolerance_seconds)
    return Verified(scheme="wazza", timestamp=timestamp, event_id=None)


def _verify_legacy(config: VerifierConfig, headers: Mapping[str, str], body: bytes) -> Verified:
    presented = _parse_hex_signature(headers[WAZZA_SIGNATURE])
    if not _any_hex_match(config.wazza_secrets, b"", body, presented):
        raise SignatureError("invalid_signature", "signature does not match any configured secret")
    return Verified(scheme="legacy", timestamp=None, event_id=None)


def _verify_standard(
    config: VerifierConfig, headers: Mapping[str, str], body: bytes, now: float
) -> Verified:
    msg_id = headers.get(STD_ID)
    raw_ts = headers.get(STD_TIMESTAMP)
    raw_sig = headers[STD_SIGNATURE]
    if not msg_id:
        raise SignatureError("missing_webhook_id", "no webhook-id header")
    if len(msg_id) > _MAX_WEBHOOK_ID or not msg_id.isascii() or not msg_id.isprintable():
        raise SignatureError("malformed_webhook_id", "webhook-id is not a short printable ASCII id")
    if raw_ts is None:
        raise SignatureError("missing_timestamp", "no webhook-timestamp header")
    timestamp = _parse_timestamp(raw_ts, "webhook-timestamp")
    if len(raw_sig) > _MAX_SIGNATURE_HEADER:
        raise SignatureError("malformed_signature", "webhook-signature header is too long")
    presented: list[bytes] = []
    for entry in raw_sig.split():
        version, sep, value = entry.partition(",")
        if not sep or version != "v1":
            continue  # other versions (v1a: asymmetric) are not ours to check
        try:
            presented.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not presented:
        raise SignatureError("malformed_signature", "webhook-signature has no v1 entry")
    content = f"{msg_id}.{raw_ts.strip()}.".encode() + body
    for key in config.standard_secrets:
        expected = hmac.new(key, content, hashlib.sha256).digest()
        if any(hmac.compare_digest(expected, sig) for sig in presented):
            _check_tolerance(timestamp, now, config.tolerance_seconds)
            return Verified(scheme="standard", timestamp=timestamp, event_id=msg_id)
    raise SignatureError("invalid_signature", "signature does not match any configured secret")


def _parse_timestamp(raw: str, name: str) -> int:
    text = raw.strip()
    if not text or len(text) > _MAX_TIMESTAMP_DIGITS or not (text.isascii() and text.isdigit()):
        raise SignatureError("malformed_timestamp", f"{name} must be unix seconds")
    return int(text)


def _parse_hex_signature(raw: str) -> bytes:
    text = raw.strip()
    if text.startswith("sha256="):  # a common spelling; the digest after it is the same
        text = text[len("sha256=") :]
    if len(text) != _SHA256_HEX_LEN or not text.isascii():
        raise SignatureError("malformed_signature", "X-Wazza-Signature must be 64 hex characters")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise SignatureError(
            "malformed_signature", "X-Wazza-Signature must be 64 hex characters"
        ) from exc


def _any_hex_match(secrets: Sequence[bytes], prefix: bytes, body: bytes, presented: bytes) -> bool:
    matched = False
    for key in secrets:
        mac = hmac.new(key, prefix, hashlib.sha256)
        mac.update(body)
        # Every secret is tried (no early exit) so timing does not tell which one matched.
        matched |= hmac.compare_digest(mac.digest(), presented)
    return matched


def _check_tolerance(timestamp: int, now: float, tolerance: int) -> None:
    skew = now - timestamp
    if skew > tolerance:
        raise SignatureError("stale_timestamp", f"timestamp is {int(skew)} s old")
    if -skew > tolerance:
        raise SignatureError("stale_timestamp", f"timestamp is {int(-skew)} s in the future")
