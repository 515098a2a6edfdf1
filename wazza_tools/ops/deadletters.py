"""Reading the dead-letter topic and sending its records back (`wazza-hooks dlq list|redrive`).

A redrive of one dead-letter record, the store's steps in `consumers.redrive` (they encode the
consumers' dedup rules):

1. `claim_redrive`: records the redrive and lets the service that gave the event up take it
   again, while the other services keep it as a duplicate;
2. here: publishes the original key, value and contract headers to the raw topic (the only
   topic the services read; one job's events keep one partition), plus `wazza-redriven-from`;
3. `mark_published`, with the raw position.

So the event is applied once by the service that gave it up and by no other. Redriving the
same record again does nothing once published; a redrive interrupted between 1 and 3 is
completed by the next one (a second copy, if the first did land, is a duplicate). An event
taken since is not sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aiokafka.errors import KafkaError

from consumers.redrive import (
    ALREADY_REDRIVEN,
    ALREADY_TAKEN,
    NOT_RECORDED_YET,
    REDRIVEN,
    DeadLetterPosition,
    Redrive,
    claim_redrive,
    mark_published,
    redrives,
)
from consumers.store import Store
from wazza_hooks import contract
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity
from wazza_tools.ops.connect import (
    BROKER_TIMEOUT_SECONDS,
    OpsError,
    broker_reader,
    broker_writer,
    offset_bounds,
    partitions_of,
)

_DLQ_HEADERS = frozenset(
    {
        contract.H_DLQ_GROUP,
        contract.H_DLQ_ERROR_CLASS,
        contract.H_DLQ_ERROR_MESSAGE,
        contract.H_DLQ_TOPIC,
        contract.H_DLQ_PARTITION,
        contract.H_DLQ_OFFSET,
    }
)
# Reading the whole topic to its end: generous for a large one on a loaded machine.
_READ_TIMEOUT_SECONDS = 60.0

# A redrive's result found before the store is asked (the others: consumers.redrive).
NOT_REDRIVABLE = "not_redrivable"


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic."""

    partition: int
    """Its partition in the dead-letter topic."""
    offset: int
    """Its offset there; `partition:offset` is its id."""
    timestamp_ms: int
    """When it was dead-lettered (the record's timestamp)."""
    key: bytes | None
    """The original key (the jobId)."""
    value: bytes
    """The original value (the webhook body), byte for byte."""
    headers: tuple[tuple[str, bytes], ...]
    """The original contract headers, without the dead-letter ones."""
    letter: contract.DeadLetter | None
    """Who gave it up, why, and from where; None when those headers are unusable."""
    envelope: contract.RawEnvelope | None
    """The original envelope; None when the contract headers are unusable."""
    service: str | None
    """The service: the group without the group prefix; None when unknown."""
    redrive: Redrive | None = None
    """Its redrive, when one was recorded."""

    @property
    def id(self) -> str:
        """`partition:offset` in the dead-letter topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def job_id(self) -> str | None:
        """The key as text."""
        return None if self.key is None else self.key.decode(errors="replace")


def parse_id(text: str) -> tuple[int, int]:
    """`P:O` as (partition, offset); raises ValueError."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not a dead-letter id (PARTITION:OFFSET, e.g. 3:17)")
    return int(partition), int(offset)


async def read_dead_letters(
    bootstrap_servers: str, topic: str, group_prefix: str, security: KafkaSecurity = PLAINTEXT
) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic, from the first held to the end as it is now,
    in (partition, offset) order; read by assignment, without a consumer group."""
    found: list[DeadLetterRecord] = []
    async with broker_reader(bootstrap_servers, security) as consumer:
        partitions = await partitions_of(consumer, topic)
        starts, ends = await offset_bounds(consumer, partitions)
        todo = [tp for tp in partitions if ends[tp.partition] > starts[tp.partition]]
        if not todo:
            return []
        consumer.assign(todo)
        for tp in todo:
            # From 0, not the log start the broker gives: the local broker was seen to answer
            # past a partition's first records (consumers.runtime, where a partition is first
            # assigned). A log that starts later answers OffsetOutOfRange, and the reader moves
            # to its first record (auto_offset_reset="earliest").
            consumer.seek(tp, 0)
        left = {tp.partition for tp in todo}
        try:
            async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                while left:
                    batch = await consumer.getmany(timeout_ms=200)
                    for tp, messages in batch.items():
                        for m in messages:
                            if m.offset < ends[tp.partition]:
                                found.append(_record(m, group_prefix))
                        if messages and messages[-1].offset + 1 >= ends[tp.partition]:
                            left.discard(tp.partition)
        except TimeoutError:
            raise OpsError(
                f"{topic} was not read to its end within {_READ_TIMEOUT_SECONDS:g} s"
            ) from None
        except KafkaError as exc:
            raise OpsError(f"cannot read {topic}: {exc!r}") from exc
    found.sort(key=lambda r: (r.partition, r.offset))
    return found


def _record(message: object, group_prefix: str) -> DeadLetterRecord:
    from aiokafka.structs import ConsumerRecord

    assert isinstance(message, ConsumerRecord)  # noqa: S101
    headers = [(k, v) for k, v in message.headers]
    try:
        letter: contract.DeadLetter | None = contract.DeadLetter.from_headers(headers)
    except contract.ContractError:
        letter = None
    original = tuple((k, v) for k, v in headers if k not in _DLQ_HEADERS)
    try:
        envelope: contract.RawEnvelope | None = contract.RawEnvelope.from_headers(original)
    except contract.ContractError:
        envelope = None
    service = None
    if letter is not None and letter.group.startswith(group_prefix):
        service = letter.group[len(group_prefix) :] or None
    return DeadLetterRecord(
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp,
        key=message.key,
        value=message.value or b"",
        headers=original,
        letter=letter,
        envelope=envelope,
        service=service,
    )


async def with_redrives(
    store: Store, topic: str, records: Sequence[DeadLetterRecord]
) -> list[DeadLetterRecord]:
    """The records with the redrives the store recorded for them."""
    recorded = await redrives(store, topic)
    return [
        replace(r, redrive=recorded.get((r.partition, r.offset, _event_id(r)))) for r in records
    ]


def _event_id(record: DeadLetterRecord) -> str:
    return record.envelope.event_id if record.envelope is not None else ""


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """What a redrive did with one dead-letter record."""

    record: DeadLetterRecord
    """The record."""
    result: str
    """`redriven`, `already_redriven`, `already_taken` or `not_redrivable`."""
    detail: str
    """A sentence for the operator."""
    raw_partition: int | None = None
    """Where the copy went on the raw topic (redriven, or already redriven)."""
    raw_offset: int | None = None
    """Its offset there."""


async def redrive(
    store: Store,
    bootstrap_servers: str,
    enable_idempotence: bool,
    raw_topic: str,
    dlq_topic: str,
    records: Sequence[DeadLetterRecord],
    known: Sequence[str],
    security: KafkaSecurity = PLAINTEXT,
) -> list[RedriveResult]:
    """Redrive each record (see the module docstring); records come with their redrives."""
    results: list[RedriveResult] = []
    pending: list[tuple[DeadLetterRecord, str, str]] = []
    for record in records:
        refusal = _refusal(record, known)
        if refusal is not None:
            results.append(RedriveResult(record, NOT_REDRIVABLE, refusal))
            continue
        done = record.redrive
        if done is not None and done.published_ms is not None:
            results.append(
                RedriveResult(
                    record,
                    ALREADY_REDRIVEN,
                    "already redriven",
                    done.raw_partition,
                    done.raw_offset,
                )
            )
            continue
        assert record.envelope is not None  # noqa: S101 - _refusal checked it
        assert record.service is not None  # noqa: S101
        pending.append((record, record.service, record.envelope.event_id))
    if pending:
        results += await _send_back(
            store, bootstrap_servers, enable_idempotence, raw_topic, dlq_topic, pending, security
        )
    return sorted(results, key=lambda r: (r.record.partition, r.record.offset))


async def _send_back(
    store: Store,
    bootstrap_servers: str,
    enable_idempotence: bool,
    raw_topic: str,
    dlq_topic: str,
    pending: list[tuple[DeadLetterRecord, str, str]],
    security: KafkaSecurity,
) -> list[RedriveResult]:
    """Steps 1 to 3 of the module docstring for each record, in order."""
    results: list[RedriveResult] = []
    async with broker_writer(bootstrap_servers, enable_idempotence, security) as producer:
        for record, service, event_id in pending:
            position = DeadLetterPosition(dlq_topic, record.partition, record.offset, event_id)
            state = await claim_redrive(store, position, record.key, service)
            if state == ALREADY_REDRIVEN:
                results.append(RedriveResult(record, ALREADY_REDRIVEN, "already redriven"))
                continue
            if state == NOT_RECORDED_YET:
                results.append(
                    RedriveResult(
                        record,
                        NOT_RECORDED_YET,
                        f"{service} has not committed the batch that dead-lettered it yet; "
                        "nothing done, redrive again in a moment",
                    )
                )
                continue
            if state == ALREADY_TAKEN:
                results.append(
                    RedriveResult(
                        record,
                        ALREADY_TAKEN,
                        f"{service} has taken this event since; not sent again",
                    )
                )
                continue
            headers = [
                *record.headers,
                (contract.H_REDRIVEN_FROM, f"{dlq_topic}:{record.id}".encode()),
            ]
            try:
                meta = await asyncio.wait_for(
                    producer.send_and_wait(
                        raw_topic, record.value, key=record.key, headers=headers
                    ),
                    BROKER_TIMEOUT_SECONDS,
                )
            except (KafkaError, TimeoutError) as exc:
                raise OpsError(
                    f"dead letter {record.id}: {raw_topic} did not acknowledge its copy ({exc!r}); "
                    "run the redrive again to finish it"
                ) from exc
            await mark_published(store, position, meta.partition, meta.offset)
            results.append(
                RedriveResult(
                    record,
                    REDRIVEN,
                    f"sent back to {raw_topic} for {service}",
                    meta.partition,
                    meta.offset,
                )
            )
    return results


def _refusal(record: DeadLetterRecord, known: Sequence[str]) -> str | None:
    if record.letter is None:
        return "its dead-letter headers do not follow the contract"
    if record.envelope is None:
        return "its headers do not follow the record contract (no event id): nothing to dedup by"
    if record.service is None or record.service not in known:
        return f"group {record.letter.group!r} is not a service the store knows"
    return None
