"""Reading deliveries back from the topics, for `wazza-hooks tail|events|resend`.

One raw, quarantine or dead-letter record becomes one `Delivery`: when it came, the event
type, the job, the event id, where it is (`TOPIC:PARTITION:OFFSET`, its id), what became of
it at the edge (published, quarantined and why, dead-lettered and by whom), its headers and
its exact body. The three commands share it, its JSON object (documented in docs/cli.md, only
ever gains fields), the options that say where the broker, the store and the topics are, and
the bounded reading of a partition range.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord

from consumers.settings import ConsumerSettings
from consumers.store import store_problem
from wazza_hooks import contract
from wazza_hooks.config import ConfigError
from wazza_tools.ops.connect import BROKER_TIMEOUT_SECONDS, OpsError, UsageError
from wazza_tools.options import SHORT_EVENT_TYPES, add_bootstrap_servers, add_database_url
from wazza_tools.render import dead_letter_fields, iso_time, printable

RAW = "raw"
QUARANTINE = "quarantine"
DEAD_LETTER = "deadLetter"

# What became of a delivery at the edge (`outcome` in the JSON object).
ACCEPTED = "accepted"
QUARANTINED = "quarantined"
DEAD_LETTERED = "dead_lettered"


def event_type_argument(text: str) -> str:
    """`--type`: a short name (completed, failed, processing) or a full `job.*` name (a type
    Wazza adds later travels like the others)."""
    name = SHORT_EVENT_TYPES.get(text.strip(), text.strip())
    if not name.startswith("job.") or len(name) > contract.MAX_EVENT_TYPE_CHARS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an event type (completed, failed, processing, or job.NAME)"
        )
    return name


# --- where to read --------------------------------------------------------------------------------


def add_source_options(parser: argparse.ArgumentParser, *, store: bool) -> None:
    """The options naming the broker, the topics and (with `store`) the consumers' store."""
    add_bootstrap_servers(parser)
    if store:
        add_database_url(parser)
    parser.add_argument(
        "--raw-topic",
        default=None,
        metavar="TOPIC",
        help=f"the raw topic (default: $WAZZA_RAW_TOPIC or {contract.RAW_TOPIC})",
    )
    parser.add_argument(
        "--quarantine-topic",
        default=None,
        metavar="TOPIC",
        help=f"the quarantine topic (default: $WAZZA_QUARANTINE_TOPIC or "
        f"{contract.QUARANTINE_TOPIC})",
    )
    parser.add_argument(
        "--dlq-topic",
        default=None,
        metavar="TOPIC",
        help=f"the dead-letter topic (default: $WAZZA_DLQ_TOPIC or {contract.DLQ_TOPIC})",
    )


@dataclass(frozen=True, slots=True)
class Source:
    """Where the deliveries are: the consumers' settings (the same variables), the options on
    top, and the ingester's quarantine topic."""

    settings: ConsumerSettings
    """Broker, TLS/SASL, store, raw and dead-letter topics, group prefix."""
    quarantine_topic: str
    """WAZZA_QUARANTINE_TOPIC, as the ingester reads it."""

    def kind_of(self, topic: str) -> str | None:
        """RAW, QUARANTINE or DEAD_LETTER for one of the three topics, else None."""
        kinds = {
            self.settings.raw_topic: RAW,
            self.quarantine_topic: QUARANTINE,
            self.settings.dlq_topic: DEAD_LETTER,
        }
        return kinds.get(topic)


def source_of(args: argparse.Namespace) -> Source:
    """The source from the environment and the options; raises ConfigError."""
    settings = ConsumerSettings.from_env()
    settings = dataclasses.replace(
        settings,
        database_url=getattr(args, "database_url", None) or settings.database_url,
        bootstrap_servers=args.bootstrap_servers or settings.bootstrap_servers,
        raw_topic=args.raw_topic or settings.raw_topic,
        dlq_topic=args.dlq_topic or settings.dlq_topic,
    )
    quarantine = args.quarantine_topic or os.environ.get(
        "WAZZA_QUARANTINE_TOPIC", contract.QUARANTINE_TOPIC
    )
    return Source(settings, quarantine)


def run_tool(
    args: argparse.Namespace, work: Callable[[Source], Awaitable[int]], database: bool
) -> int:
    """Run one command to its exit code: its refusals as one line on stderr (exit 1, or 2 for
    a bad argument or setting), never a traceback for a broker or store that went away."""
    # aiokafka logs each failed connection attempt; the command's own line says it all.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        source = source_of(args)
    except ConfigError as exc:
        return refuse(str(exc), 2)

    async def main() -> int:
        return await work(source)

    try:
        return asyncio.run(main())
    except OpsError as exc:
        return refuse(str(exc), exc.exit_code)
    except Exception as exc:
        # The store going away mid-command: one line. Anything else is a bug: let it show.
        message = store_problem(exc, source.settings.database_url) if database else None
        if message is None:
            raise
        return refuse(message, 1)


def refuse(message: str, code: int = 1) -> int:
    """Print the one-line refusal; returns the exit code."""
    print(f"wazza-hooks: {message}", file=sys.stderr)
    return code


def parse_time(option: str, text: str) -> int:
    """An ISO-8601 time as ms since the epoch (UTC when it has no offset); raises UsageError
    naming the option."""
    ms = contract.parse_time_ms(text.strip())
    if ms is None or not contract.MIN_TIME_MS <= ms <= contract.MAX_TIME_MS:
        raise UsageError(f"{option} {text!r} is not an ISO-8601 time (e.g. 2026-11-26T09:00:00Z)")
    return ms


# --- one delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record of the raw, quarantine or dead-letter topic, read for a person."""

    topic: str
    """The topic it is in."""
    partition: int
    """Its partition there."""
    offset: int
    """Its offset there."""
    kind: str
    """RAW, QUARANTINE or DEAD_LETTER."""
    timestamp_ms: int
    """The record's timestamp (when it was written to the topic)."""
    key: bytes | None
    """The record key: the jobId (none for a quarantined body without a readable one)."""
    body: bytes
    """The webhook body, byte for byte as the sender signed it."""
    headers: tuple[tuple[str, bytes], ...]
    """The record headers, in their order."""
    reason: str | None
    """Why it was quarantined (`wazza-quarantine-reason`)."""
    letter: contract.DeadLetter | None
    """Who gave it up and why, for a dead-letter record whose headers say so."""
    service: str | None
    """That group without WAZZA_GROUP_PREFIX."""

    @property
    def id(self) -> str:
        """`TOPIC:PARTITION:OFFSET`: what `events show` and `resend` take."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def _header(self, name: str) -> str | None:
        value = contract.headers_dict(self.headers).get(name)
        return None if value is None else value.decode(errors="replace")

    @property
    def event_type(self) -> str | None:
        """`wazza-event-type`; None when empty (a body quarantined before its type was read)."""
        return self._header(contract.H_EVENT_TYPE) or None

    @property
    def event_id(self) -> str | None:
        """`wazza-event-id`: the sender's webhook-id, else the body's SHA-256 hex."""
        return self._header(contract.H_EVENT_ID)

    @property
    def job_id(self) -> str | None:
        """The key as text."""
        return None if self.key is None else self.key.decode(errors="replace")

    @property
    def received_ms(self) -> int:
        """When the ingester received it (`wazza-received-at-ms`), else the record's time."""
        text = self._header(contract.H_RECEIVED_AT_MS)
        if text is not None and text.isdigit() and int(text) < contract.TIMESTAMP_HEADER_MAX:
            return int(text)
        return self.timestamp_ms

    @property
    def outcome(self) -> str:
        """ACCEPTED, QUARANTINED or DEAD_LETTERED."""
        return {RAW: ACCEPTED, QUARANTINE: QUARANTINED}.get(self.kind, DEAD_LETTERED)


def decode(message: ConsumerRecord[bytes, bytes], kind: str, group_prefix: str) -> Delivery:
    """The delivery a record holds (any record: what does not follow the contract shows as
    missing fields, never an error)."""
    headers = tuple((k, v or b"") for k, v in message.headers)
    letter = None
    service = None
    if kind == DEAD_LETTER:
        try:
            letter = contract.DeadLetter.from_headers(headers)
        except contract.ContractError:
            letter = None
        if letter is not None and letter.group.startswith(group_prefix):
            service = letter.group[len(group_prefix) :] or None
    reason = contract.headers_dict(headers).get(contract.H_QUARANTINE_REASON)
    return Delivery(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        kind=kind,
        timestamp_ms=message.timestamp,
        key=message.key,
        body=message.value or b"",
        headers=headers,
        reason=None if reason is None else reason.decode(errors="replace"),
        letter=letter,
        service=service,
    )


def delivery_json(d: Delivery) -> dict[str, Any]:
    """The documented JSON object of a delivery, keys in their documented order."""
    letter = d.letter
    return {
        "id": d.id,
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "receivedAt": iso_time(d.received_ms),
        "eventType": d.event_type,
        "eventId": d.event_id,
        "jobId": d.job_id,
        "outcome": d.outcome,
        "reason": d.reason,
        "deadLetter": None
        if d.kind != DEAD_LETTER
        else {
            "service": d.service,
            **dead_letter_fields(letter),
        },
    }


def outcome_text(d: Delivery) -> str:
    """`accepted`, `quarantined: invalid_progress`, `dead-lettered by completion: ...`."""
    if d.kind == RAW:
        return ACCEPTED
    if d.kind == QUARANTINE:
        return f"quarantined: {printable(d.reason)}"
    letter = d.letter
    why = "" if letter is None else f": {letter.error_class}: {printable(letter.error_message)}"
    return f"dead-lettered by {printable(d.service or (letter and letter.group))}{why}"


def text_or_base64(data: bytes) -> tuple[str, str]:
    """(value, encoding): the bytes as text when they are UTF-8, else base64."""
    try:
        return data.decode(), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


# --- ids and partitions ---------------------------------------------------------------------------


def parse_record_id(text: str) -> tuple[str, int, int] | None:
    """`TOPIC:PARTITION:OFFSET` as its parts (a topic name has no colon), else None."""
    topic, sep, rest = text.rpartition(":")
    topic, sep2, partition = topic.rpartition(":")
    if not (sep and sep2 and topic and partition.isdigit() and rest.isdigit()):
        return None
    return topic, int(partition), int(rest)


def key_partition(job_id: str, partitions: list[TopicPartition]) -> TopicPartition:
    """The partition a job's records go to: Kafka's default partitioner over the key, as the
    ingester, the redrive and every Kafka client place it (ingest/publisher.py)."""
    index = (murmur2(contract.job_key(job_id)) & 0x7FFFFFFF) % len(partitions)
    return partitions[index]


# --- reading a bounded range ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets [start, end) of one partition, to read."""

    partition: TopicPartition
    """The topic and partition."""
    start: int
    """The first offset to read."""
    end: int
    """The log end when the command started: nothing at or past it is read."""


async def read_spans(
    consumer: AIOKafkaConsumer,
    spans: Iterable[Span],
    take: Callable[[ConsumerRecord[bytes, bytes]], bool],
) -> int:
    """Read every record of the spans, handing each to `take` (False stops the read early);
    returns how many records were read. A broker that stops answering for
    BROKER_TIMEOUT_SECONDS is an OpsError."""
    todo = {s.partition: s for s in spans if s.end > s.start}
    if not todo:
        return 0
    consumer.assign(list(todo))
    for span in todo.values():
        consumer.seek(span.partition, span.start)
    scanned = 0
    try:
        while todo:
            async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
                batch = await consumer.getmany(*todo, timeout_ms=500)
                for tp, messages in batch.items():
                    wanted = todo.get(tp)
                    if wanted is None:
                        continue
                    for m in messages:
                        if m.offset >= wanted.end:
                            break
                        scanned += 1
                        if not take(m):
                            return scanned
                for tp in list(todo):
                    # The position, not the last offset seen: control records and retention
                    # leave gaps that no record fills.
                    if await consumer.position(tp) >= todo[tp].end:
                        del todo[tp]
                        consumer.pause(tp)
    except TimeoutError:
        raise OpsError(
            f"the broker stopped answering after {scanned} records "
            f"(no answer within {BROKER_TIMEOUT_SECONDS:g} s)"
        ) from None
    except KafkaError as exc:
        raise OpsError(f"cannot read the topics: {exc!r}") from exc
    return scanned
