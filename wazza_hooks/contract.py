"""The record contract: what the ingester writes to Kafka and every consumer reads.

This is the one module both sides import (docs/architecture.md). Header names,
topic defaults and the record shapes live here and nowhere else.

- Raw topic: key = jobId (UTF-8), value = the request body byte for byte, headers below.
- Quarantine topic: the same value plus a reason header; the key is the jobId when one could be
  read, else none.
- Dead-letter topic: the original key and value plus headers naming the consumer group, the error
  and the original position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

RAW_TOPIC = "wazza.webhooks.raw"
QUARANTINE_TOPIC = "wazza.webhooks.quarantine"
DLQ_TOPIC = "wazza.webhooks.dlq"

# Event types the sender documents. Others (a future `job.cancelled`) travel like any other.
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
JOB_PROCESSING = "job.processing"
KNOWN_EVENT_TYPES = frozenset({JOB_COMPLETED, JOB_FAILED, JOB_PROCESSING})

H_EVENT_TYPE = "wazza-event-type"
H_EVENT_ID = "wazza-event-id"
H_RECEIVED_AT_MS = "wazza-received-at-ms"
H_SIGNATURE_TIMESTAMP = "wazza-signature-timestamp"
H_CONTENT_TYPE = "content-type"
H_INGESTER = "wazza-ingester"
H_SIGNATURE_SCHEME = "wazza-signature-scheme"
H_QUARANTINE_REASON = "wazza-quarantine-reason"
H_DLQ_GROUP = "wazza-dlq-group"
H_DLQ_ERROR_CLASS = "wazza-dlq-error-class"
H_DLQ_ERROR_MESSAGE = "wazza-dlq-error-message"
H_DLQ_TOPIC = "wazza-dlq-original-topic"
H_DLQ_PARTITION = "wazza-dlq-original-partition"
H_DLQ_OFFSET = "wazza-dlq-original-offset"
# On a raw record `dlq redrive` sent back: the dead letter it copies, as DLQ_TOPIC:PARTITION:OFFSET.
H_REDRIVEN_FROM = "wazza-redriven-from"

KafkaHeaders = list[tuple[str, bytes]]

# --- what every consumer service can apply ---------------------------------------------------
# The ingester answers 200 only to a body every consumer can parse and store; what fails these
# checks is quarantined at the edge (202 with the reason) and, arriving any other way, is
# dead-lettered by the consumers with the same reason (`inapplicable`).

MAX_JOB_ID_CHARS = 256
"""A jobId is an opaque id ("job_abc123"); a key of kilobytes is not one, and would be copied
into every record and database row downstream."""
MAX_EVENT_TYPE_CHARS = 128
"""An event type is a short name (`job.completed`)."""
MAX_DEPTH = 32
"""Nesting levels a body may have. The sender's payloads have 3; the consumers store `output`,
`error` and `metadata` as JSON, and orjson writes at most 254 levels."""
MIN_TIME_MS = 0
MAX_TIME_MS = 253_402_300_799_999
"""Event times the store keeps and the tools print: 1970-01-01 to the end of 9999 (UTC)."""
TIMESTAMP_HEADER_MAX = 2**53
"""Numeric headers (receive time in ms, signature timestamp in s) above this are not ours:
the store's BIGINT and JSON's exact integers both end near it."""


def parse_time_ms(text: object) -> int | None:
    """ISO-8601 (`2025-10-22T10:30:00Z`, offsets, fractions) to ms since the epoch; None when it
    is no time. A bare time is read as UTC (the sender writes UTC). The result may lie outside
    MIN_TIME_MS..MAX_TIME_MS (see `inapplicable`)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError):  # year 1 with a positive offset is before year 1 in UTC
        return MIN_TIME_MS - 1


def _deeper_than(value: Any, limit: int) -> bool:
    """True when `value` nests containers more than `limit` levels deep. Recursive, but never
    more than `limit` calls deep: a body nested thousands deep cannot exhaust the stack."""
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if limit < 1:
        return True
    for child in children:
        # Scalars, the most children by far, are told apart here rather than in a call of their
        # own; a tuple, not `dict | list`: isinstance reads a tuple faster (Python 3.11).
        if isinstance(child, (dict, list)) and _deeper_than(child, limit - 1):
            return True
    return False


def _outside(value: object, low: float, high: float) -> bool:
    """True for a number (not a bool) outside low..high."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not low <= value <= high


def inapplicable(doc: Mapping[str, Any], event_type: str, body: bytes | None = None) -> str | None:
    """Why the consumer services could not apply this event body, as a reason code, or None.

    `body`, the bytes `doc` was parsed from, makes the depth check cheap (`check_body`)."""
    return check_body(doc, event_type, body)[0]


def check_body(
    doc: Mapping[str, Any], event_type: str, body: bytes | None = None
) -> tuple[str | None, int | None]:
    """(`inapplicable`'s reason or None, the body's `timestamp` in ms or None when it has none
    that reads as a time): the consumers need both, and the time is parsed once.

    Checks follow the event type: a completion's stray `progress` is not looked at. `body`, when
    given, must be the bytes `doc` was parsed from."""
    # Every JSON container opens with a `{` or `[` byte of its own (inside strings they only add
    # to the count), so a body with no more of them than MAX_DEPTH cannot nest deeper: the
    # senders' bodies (2 or 3) are never walked.
    if (body is None or body.count(b"{") + body.count(b"[") > MAX_DEPTH) and _deeper_than(
        doc, MAX_DEPTH
    ):
        return "too_deep", None
    ms = parse_time_ms(doc.get("timestamp"))
    if ms is not None and not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return "invalid_timestamp", ms
    if event_type == JOB_PROCESSING:
        progress = doc.get("progress")
        if isinstance(progress, dict):
            if _outside(progress.get("percent"), 0, 100):
                return "invalid_progress", ms
            # Seconds remaining: a negative one, or one past 30,000 years, is no estimate.
            if _outside(progress.get("estimatedTimeRemaining"), 0, 10**12):
                return "invalid_progress", ms
    return None, ms


class ContractError(ValueError):
    """A Kafka record does not follow the contract (a header is missing or malformed)."""


def body_event_id(body: bytes) -> str:
    """The id of an event the sender gave none for: the body's SHA-256 hex (retries share it)."""
    return hashlib.sha256(body).hexdigest()


class RawEnvelope(NamedTuple):
    """The headers of a raw-topic record: everything a consumer may route on without the body.
    (A tuple: a consumer reads one for every record it takes, and a frozen dataclass costs
    three times as much to build.)"""

    event_type: str
    """The body's `event` field (`job.completed`, ...); empty never, unknown types allowed."""
    event_id: str
    """The sender's event id where it sent one, else the SHA-256 hex of the raw body."""
    received_at_ms: int
    """When the ingester received the request, in milliseconds since the epoch."""
    signature_timestamp: int | None
    """The signed timestamp (unix seconds); None for the opt-in legacy body-only scheme."""
    content_type: str
    """The request's Content-Type, as sent."""
    ingester: str
    """The ingester instance that took the request (host:pid), for tracing a record back."""
    scheme: str
    """The signature scheme that verified the request: `wazza`, `standard` or `legacy`."""

    def to_headers(self) -> KafkaHeaders:
        """The Kafka headers of this envelope, in a fixed order."""
        return raw_headers(
            self.event_type,
            self.event_id,
            self.received_at_ms,
            self.signature_timestamp,
            self.content_type,
            self.ingester,
            self.scheme,
        )

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> RawEnvelope:
        """Read an envelope back from a record's headers; raises ContractError when unusable."""
        if len(headers) == len(_RAW_HEADER_NAMES):
            # The ingester's seven headers in raw_headers' order (every record it writes): read
            # by position, without building a dict (a consumer reads this for every record).
            (
                (n0, event_type),
                (n1, event_id),
                (n2, received),
                (n3, signed),
                (n4, content_type),
                (n5, ingester),
                (n6, scheme),
            ) = headers
            if (n0, n1, n2, n3, n4, n5, n6) == _RAW_HEADER_NAMES:
                return _envelope(
                    cls, event_type, event_id, received, signed, content_type, ingester, scheme
                )
        h = headers_dict(headers)
        try:
            return _envelope(
                cls,
                h[H_EVENT_TYPE],
                h[H_EVENT_ID],
                h[H_RECEIVED_AT_MS],
                h.get(H_SIGNATURE_TIMESTAMP),
                h.get(H_CONTENT_TYPE, b""),
                h.get(H_INGESTER, b""),
                h.get(H_SIGNATURE_SCHEME, b""),
            )
        except KeyError as exc:
            raise ContractError(f"raw record headers do not follow the contract: {exc!r}") from exc


_RAW_HEADER_NAMES = (
    H_EVENT_TYPE,
    H_EVENT_ID,
    H_RECEIVED_AT_MS,
    H_SIGNATURE_TIMESTAMP,
    H_CONTENT_TYPE,
    H_INGESTER,
    H_SIGNATURE_SCHEME,
)
"""The raw headers' names, in the order raw_headers writes them."""


def _envelope(
    cls: type[RawEnvelope],
    event_type: bytes,
    event_id: bytes,
    received_at_ms: bytes,
    signature_timestamp: bytes | None,
    content_type: bytes,
    ingester: bytes,
    scheme: bytes,
) -> RawEnvelope:
    """The envelope of these header values, checked; raises ContractError."""
    try:
        event_type_text = event_type.decode()
        event_id_text = event_id.decode()
        received = int(received_at_ms)
        signed = int(signature_timestamp) if signature_timestamp else None
        if not 0 <= received < TIMESTAMP_HEADER_MAX:
            raise ValueError(f"{H_RECEIVED_AT_MS} {received} is out of range")
        if signed is not None and not 0 <= signed < TIMESTAMP_HEADER_MAX:
            raise ValueError(f"{H_SIGNATURE_TIMESTAMP} {signed} is out of range")
        if not event_id_text or len(event_id_text) > 256:
            raise ValueError(f"{H_EVENT_ID} must have 1 to 256 characters")
        # Positional, in field order: the envelope is built for every record a service reads.
        return cls(
            event_type_text,
            event_id_text,
            received,
            signed,
            content_type.decode(),
            ingester.decode(),
            scheme.decode(),
        )
    except (ValueError, AttributeError, TypeError) as exc:  # a null header: None
        raise ContractError(f"raw record headers do not follow the contract: {exc!r}") from exc


def raw_headers(
    event_type: str,
    event_id: str,
    received_at_ms: int,
    signature_timestamp: int | None,
    content_type: str,
    ingester: str,
    scheme: str,
) -> KafkaHeaders:
    """The headers of a raw-topic record (`RawEnvelope.to_headers`), without building the
    envelope: the ingester's hot path, where the frozen dataclass cost more than the list."""
    ts = b"" if signature_timestamp is None else str(signature_timestamp).encode()
    return [
        (H_EVENT_TYPE, event_type.encode()),
        (H_EVENT_ID, event_id.encode()),
        (H_RECEIVED_AT_MS, str(received_at_ms).encode()),
        (H_SIGNATURE_TIMESTAMP, ts),
        (H_CONTENT_TYPE, content_type.encode()),
        (H_INGESTER, ingester.encode()),
        (H_SIGNATURE_SCHEME, scheme.encode()),
    ]


def headers_dict(headers: Iterable[tuple[str, bytes]]) -> dict[str, bytes]:
    """Kafka headers as a dict; the last value wins for a repeated name."""
    return dict(headers)


def quarantine_headers(envelope: RawEnvelope, reason: str) -> KafkaHeaders:
    """The headers of a quarantined record: the raw envelope plus the reason it was kept aside."""
    return [*envelope.to_headers(), (H_QUARANTINE_REASON, reason.encode())]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why and from where a consumer gave a record up; its headers travel with the original."""

    group: str
    """The consumer group (service) that gave up."""
    error_class: str
    """The class name of the last error the handler raised."""
    error_message: str
    """That error's message, cut to a bounded length."""
    topic: str
    """The topic the record was read from."""
    partition: int
    """Its partition there."""
    offset: int
    """Its offset there."""

    # Kafka headers are not a log: a long traceback message would bloat every DLQ record.
    MAX_MESSAGE_BYTES = 2048

    def to_headers(self, original: Iterable[tuple[str, bytes]] = ()) -> KafkaHeaders:
        """The original record's headers followed by the dead-letter headers."""
        # Cut on a character boundary: the header stays valid UTF-8.
        cut = self.error_message.encode()[: self.MAX_MESSAGE_BYTES]
        message = cut.decode(errors="ignore").encode()
        return [
            *original,
            (H_DLQ_GROUP, self.group.encode()),
            (H_DLQ_ERROR_CLASS, self.error_class.encode()),
            (H_DLQ_ERROR_MESSAGE, message),
            (H_DLQ_TOPIC, self.topic.encode()),
            (H_DLQ_PARTITION, str(self.partition).encode()),
            (H_DLQ_OFFSET, str(self.offset).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]]) -> DeadLetter:
        """Read the dead-letter part of a DLQ record's headers; raises ContractError."""
        h = headers if isinstance(headers, Mapping) else headers_dict(headers)
        try:
            return cls(
                group=h[H_DLQ_GROUP].decode(),
                error_class=h[H_DLQ_ERROR_CLASS].decode(),
                error_message=h[H_DLQ_ERROR_MESSAGE].decode(errors="replace"),
                topic=h[H_DLQ_TOPIC].decode(),
                partition=int(h[H_DLQ_PARTITION]),
                offset=int(h[H_DLQ_OFFSET]),
            )
        except (KeyError, ValueError, AttributeError, TypeError) as exc:  # a null header: None
            raise ContractError(f"dead-letter headers do not follow the contract: {exc!r}") from exc


def job_key(job_id: str) -> bytes:
    """The record key for a job: its id in UTF-8, so one job's events share one partition."""
    return job_id.encode()
