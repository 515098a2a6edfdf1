"""`wazza-hooks events list|show`: find what reached the raw and quarantine topics.

- `events list [--job J] [--event-id E] [--type T] [--since TIME] [--until TIME] [--limit N]`:
  the matching deliveries as a table (or `--json`), and how many records were read to find
  them. Reading is bounded: each partition from its first record (or the first at `--since`,
  by Kafka's offsets-for-times) to its end when the command started (or past `--until`); a
  job's records are all in one partition (the key's), so `--job` reads only that one.
- `events show ID`: one delivery's headers and its exact body bytes. ID is the event id as
  `list` prints it, or `TOPIC:PARTITION:OFFSET`.

Read without a consumer group, by assignment: nothing is committed, no service is disturbed.
`find_delivery` is shared with `wazza-hooks resend`.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from wazza_hooks.config import plural, whole_number
from wazza_tools.ops.connect import (
    BROKER_TIMEOUT_SECONDS,
    OpsError,
    UsageError,
    broker_reader,
    offset_bounds,
    partitions_of,
)
from wazza_tools.ops.records import (
    RAW,
    Delivery,
    Source,
    Span,
    add_source_options,
    decode,
    delivery_json,
    event_type_argument,
    key_partition,
    outcome_text,
    parse_record_id,
    parse_time,
    read_spans,
    run_tool,
    text_or_base64,
)
from wazza_tools.render import iso_time, print_json, printable, table

DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000
# The ingester stamps `wazza-received-at-ms` before it publishes and the record's timestamp
# when it does, at most its publish deadline (3 s by default) later; a record received before
# --until may carry a timestamp this much past it, so the read goes on that far.
PUBLISH_SLACK_MS = 60_000

_LIST_EPILOG = """\
examples:
  wazza-hooks events list --job job_abc123
  wazza-hooks events list --type failed --since 2026-11-26T09:00:00Z --until 2026-11-26T10:00:00Z
  wazza-hooks events list --event-id 3f2a9c1e... --json
  wazza-hooks events list --limit 10

Reads the raw and quarantine topics to their ends as they were when the command started and
says how many records it read. --job reads one partition (a job's records all go to its key's
partition); --since starts near the time (Kafka's offsets-for-times) instead of the beginning.
"""

_SHOW_EPILOG = """\
examples:
  wazza-hooks events show 5d41402abc4b2a76b9719d911017c592ae0e3a1c0f7e1b7a4c2d6e8f90a1b2c3
  wazza-hooks events show wazza.webhooks.raw:3:17
  wazza-hooks events show wazza.webhooks.quarantine:0:4 --json
  wazza-hooks events show wazza.webhooks.raw:3:17 --body > body.json

Finding an event by its id reads the raw and quarantine topics (--job narrows it to the job's
partition); a TOPIC:PARTITION:OFFSET is read directly, in any of the three topics.
"""


def add_events_parser(sub: Any) -> None:
    """Register `events list|show`."""
    events = sub.add_parser(
        "events",
        help="find deliveries in the raw and quarantine topics; show one's exact bytes",
        description="Find deliveries in the raw and quarantine topics, and show one whole.",
        epilog=(
            "examples:\n  wazza-hooks events list --job job_abc123\n"
            "  wazza-hooks events show wazza.webhooks.raw:3:17"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="the deliveries matching a job, an event id, a type or a time range",
        description=(
            "Print the deliveries in the raw and quarantine topics that match, oldest first "
            "(the latest --limit of them), and how many records were read to find them."
        ),
        epilog=_LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--job", metavar="JOB_ID", help="only this job's deliveries")
    listing.add_argument("--event-id", metavar="ID", help="only the copies of this event")
    listing.add_argument(
        "--type",
        type=event_type_argument,
        metavar="TYPE",
        help="only this event type: completed, failed, processing, or a full name",
    )
    listing.add_argument(
        "--since",
        metavar="TIME",
        help="only deliveries received at or after TIME (ISO-8601; UTC without an offset)",
    )
    listing.add_argument(
        "--until",
        metavar="TIME",
        help="only deliveries received at or before TIME (ISO-8601; UTC without an offset)",
    )
    listing.add_argument(
        "--limit",
        type=whole_number(1, MAX_LIMIT),
        default=DEFAULT_LIMIT,
        help=f"print the latest N matches (1-{MAX_LIMIT}, default {DEFAULT_LIMIT})",
    )
    listing.add_argument(
        "--json", action="store_true", help="print JSON in the documented, stable format"
    )
    add_source_options(listing, store=False)
    show = actions.add_parser(
        "show",
        help="one delivery's headers and exact body",
        description=(
            "Print one delivery: where it is, its record headers, then its body byte for byte "
            "(followed by a newline; --body prints the body alone, exactly)."
        ),
        epilog=_SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_find_arguments(show)
    what = show.add_mutually_exclusive_group()
    what.add_argument(
        "--json",
        action="store_true",
        help="print JSON: the delivery, its headers, its body (text, or base64 when not UTF-8)",
    )
    what.add_argument("--body", action="store_true", help="print only the body's exact bytes")
    add_source_options(show, store=False)


def add_find_arguments(parser: argparse.ArgumentParser) -> None:
    """ID and --job, as `events show` and `resend` take them."""
    parser.add_argument(
        "id",
        metavar="ID",
        help="the event id (as `events list` prints it) or TOPIC:PARTITION:OFFSET",
    )
    parser.add_argument(
        "--job",
        metavar="JOB_ID",
        help="the event's job: only its partition is read (faster on a large topic)",
    )


def run_events(args: argparse.Namespace) -> int:
    """Run `wazza-hooks events ACTION`; returns the exit code."""
    if args.events_command == "list":
        return run_tool(args, lambda source: _list(args, source), database=False)
    return run_tool(args, lambda source: _show(args, source), database=False)


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scan:
    """What a bounded read covered."""

    spans: list[Span]
    """The partition ranges read."""
    scanned: int
    """Records read."""

    def describe(self, job: str | None) -> str:
        """`scanned 120 records of wazza.webhooks.raw (partition 2, the job's), ...`."""
        topics: dict[str, list[int]] = {}
        for span in self.spans:
            topics.setdefault(span.partition.topic, []).append(span.partition.partition)
        where = ", ".join(
            f"{topic} (partition {parts[0]}, the job's)" if job is not None else topic
            for topic, parts in topics.items()
        )
        return (
            f"read {plural(self.scanned, 'record')} of {where}, "
            "up to their ends when the command started"
        )


async def _offsets_at(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ms: int
) -> dict[TopicPartition, int | None]:
    """Per partition, the first offset whose timestamp is at or after `ms` (None: none is)."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
            found = await consumer.offsets_for_times(dict.fromkeys(partitions, ms))
    except (KafkaError, TimeoutError) as exc:
        raise OpsError(f"cannot look up offsets by time: {exc!r}") from exc
    return {tp: None if at is None else int(at.offset) for tp, at in found.items()}


def _or(offset: int | None, otherwise: int) -> int:
    return otherwise if offset is None else offset


async def plan_spans(
    consumer: AIOKafkaConsumer,
    topics: list[str],
    job: str | None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> list[Span]:
    """The ranges to read: every partition (the job's only, with `job`) from its first record
    (or the first at `since_ms`) to its end now (or the first record past `until_ms`)."""
    spans = []
    for topic in topics:
        partitions = await partitions_of(consumer, topic)
        if job is not None:
            partitions = [key_partition(job, partitions)]
        starts, ends = await offset_bounds(consumer, partitions)
        firsts = {tp: starts[tp.partition] for tp in partitions}
        lasts = {tp: ends[tp.partition] for tp in partitions}
        if since_ms is not None:
            at = await _offsets_at(consumer, partitions, since_ms)
            firsts = {tp: min(_or(at[tp], lasts[tp]), lasts[tp]) for tp in partitions}
        if until_ms is not None:
            past = await _offsets_at(consumer, partitions, until_ms + PUBLISH_SLACK_MS + 1)
            lasts = {tp: min(_or(past[tp], lasts[tp]), lasts[tp]) for tp in partitions}
        spans += [Span(tp, firsts[tp], lasts[tp]) for tp in partitions]
    return spans


async def _scan(
    source: Source,
    topics: list[str],
    job: str | None,
    take: Callable[[Delivery], bool],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> Scan:
    settings = source.settings

    def record(message: ConsumerRecord[bytes, bytes]) -> bool:
        kind = source.kind_of(message.topic) or RAW
        return take(decode(message, kind, settings.group_prefix))

    async with broker_reader(settings.bootstrap_servers, settings.kafka_security) as consumer:
        spans = await plan_spans(consumer, topics, job, since_ms, until_ms)
        scanned = await read_spans(consumer, spans, record)
    return Scan(spans, scanned)


@dataclass(frozen=True, slots=True)
class Found:
    """A delivery found by its id, and the other copies of the same event."""

    delivery: Delivery
    """The first copy received."""
    copies: list[Delivery]
    """Every copy found (the sender's retries and duplicates share an event id)."""


async def find_delivery(source: Source, text: str, job: str | None) -> Found:
    """The delivery at `TOPIC:PARTITION:OFFSET`, or the first copy of the event with id
    `text` in the raw and quarantine topics; raises OpsError naming what was read."""
    settings = source.settings
    position = parse_record_id(text)
    if position is not None:
        topic, partition, offset = position
        if source.kind_of(topic) is None:
            raise OpsError(
                f"{topic} is not one of the topics: {settings.raw_topic}, "
                f"{source.quarantine_topic}, {settings.dlq_topic}"
            )
        delivery = await _at(source, topic, partition, offset)
        return Found(delivery, [delivery])
    copies: list[Delivery] = []

    def take(d: Delivery) -> bool:
        if d.event_id == text:
            copies.append(d)
        return True

    topics = [settings.raw_topic, source.quarantine_topic]
    scan = await _scan(source, topics, job, take)
    if not copies:
        raise OpsError(f"no event {printable(text)}: {scan.describe(job)}")
    copies.sort(key=_order)
    return Found(copies[0], copies)


async def _at(source: Source, topic: str, partition: int, offset: int) -> Delivery:
    settings = source.settings
    kind = source.kind_of(topic) or RAW
    found: list[Delivery] = []
    async with broker_reader(settings.bootstrap_servers, settings.kafka_security) as consumer:
        partitions = await partitions_of(consumer, topic)
        if partition >= len(partitions):
            raise OpsError(f"{topic} has no partition {partition} (it has {len(partitions)})")
        tp = partitions[partition]
        starts, ends = await offset_bounds(consumer, [tp])
        first, end = starts[partition], ends[partition]
        if not first <= offset < end:
            held = f"offsets {first} to {end - 1}" if end > first else "no records"
            raise OpsError(
                f"no record at {topic}:{partition}:{offset} (that partition holds {held})"
            )

        def take(message: ConsumerRecord[bytes, bytes]) -> bool:
            if message.offset == offset:
                found.append(decode(message, kind, settings.group_prefix))
            return bool(message.offset < offset)

        await read_spans(consumer, [Span(tp, offset, end)], take)
    if not found:
        raise OpsError(f"no record at {topic}:{partition}:{offset}")
    return found[0]


def _order(d: Delivery) -> tuple[int, str, int, int]:
    """Deliveries by receive time, then position."""
    return (d.received_ms, d.topic, d.partition, d.offset)


# --- list ---------------------------------------------------------------------------------------


async def _list(args: argparse.Namespace, source: Source) -> int:
    since = None if args.since is None else parse_time("--since", args.since)
    until = None if args.until is None else parse_time("--until", args.until)
    if since is not None and until is not None and since > until:
        raise UsageError("--since is after --until: no delivery can match")
    # The partitions are read side by side, not in time order: the latest matches by receive
    # time are kept in a heap whose smallest is dropped past the limit.
    latest: list[tuple[tuple[int, str, int, int], Delivery]] = []
    matched = 0

    def take(d: Delivery) -> bool:
        nonlocal matched
        if (
            (args.job is None or d.job_id == args.job)
            and (args.event_id is None or d.event_id == args.event_id)
            and (args.type is None or d.event_type == args.type)
            and (since is None or d.received_ms >= since)
            and (until is None or d.received_ms <= until)
        ):
            matched += 1
            heapq.heappush(latest, (_order(d), d))
            if len(latest) > args.limit:
                heapq.heappop(latest)
        return True

    topics = [source.settings.raw_topic, source.quarantine_topic]
    scan = await _scan(source, topics, args.job, take, since, until)
    found = [d for _, d in sorted(latest)]
    if args.json:
        print_json(
            {
                "events": [delivery_json(d) for d in found],
                "matched": matched,
                "scanned": scan.scanned,
                "read": [
                    {
                        "topic": s.partition.topic,
                        "partition": s.partition.partition,
                        "from": s.start,
                        "to": s.end,
                    }
                    for s in scan.spans
                ],
            }
        )
        return 0
    if found:
        sys.stdout.write(
            table(
                ("RECEIVED", "EVENT TYPE", "JOB", "OUTCOME", "RECORD", "EVENT ID"),
                [
                    (
                        iso_time(d.received_ms),
                        d.event_type,
                        d.job_id,
                        outcome_text(d),
                        d.id,
                        d.event_id,
                    )
                    for d in found
                ],
            )
        )
    shown = "" if matched == len(found) else f" (the latest {len(found)} shown: --limit)"
    sys.stdout.write(
        f"{plural(matched, 'delivery', 'deliveries')} matched{shown}; {scan.describe(args.job)}\n"
    )
    return 0


# --- show ---------------------------------------------------------------------------------------


async def _show(args: argparse.Namespace, source: Source) -> int:
    found = await find_delivery(source, args.id, args.job)
    d = found.delivery
    if len(found.copies) > 1:
        others = ", ".join(c.id for c in found.copies[1:])
        print(
            f"wazza-hooks: {len(found.copies)} copies of this event; showing the first "
            f"received, {d.id} (others: {others})",
            file=sys.stderr,
        )
    if args.body:
        sys.stdout.buffer.write(d.body)
        return 0
    if args.json:
        body, encoding = text_or_base64(d.body)
        headers = []
        for name, value in d.headers:
            text, how = text_or_base64(value)
            headers.append({"name": name, "value": text, "encoding": how})
        print_json(
            {
                **delivery_json(d),
                "key": d.job_id,
                "headers": headers,
                "body": body,
                "bodyEncoding": encoding,
            }
        )
        return 0
    pairs = [
        ("record", d.id),
        ("received", iso_time(d.received_ms)),
        ("event type", d.event_type),
        ("job", d.job_id),
        ("event id", d.event_id),
        ("outcome", outcome_text(d)),
    ]
    head = "".join(f"{key:<10}  {printable(value)}\n" for key, value in pairs)
    lines = "".join(
        f"  {printable(name)}: {printable(value.decode(errors='backslashreplace'))}\n"
        for name, value in d.headers
    )
    sys.stdout.write(f"{head}headers:\n{lines}body ({plural(len(d.body), 'byte')}):\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(d.body + b"\n")
    return 0
