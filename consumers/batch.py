"""One batch, one store transaction (DESIGN.md, "Effectively-once consumption").

(a) guard each partition's stored offset: it must be the batch's first offset, else this is a
    replay or a zombie owner: that partition's records are left alone and the caller seeks it
    to the stored offset;
(b) insert each record's dedup key: a conflict is a duplicate, counted, not applied;
(c) apply the service's handler (in a savepoint, retried a few times; a record that keeps
    failing goes to the dead-letter topic) and record the event in the job's history;
(d) store next_offset = last + 1 for each partition.
A StoreUnavailable anywhere rolls the whole batch back and propagates: the caller waits and
retries the same batch, never skipping it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from wazza_hooks import contract

from .events import EventError, parse_event
from .service import Service
from .store import Store, StoreUnavailable, Tx

log = logging.getLogger("wazza.consumers.batch")

APPLIED = "applied"
DUPLICATE = "duplicate"
SKIPPED = "skipped"
DEAD_LETTERED = "dead_lettered"

# A failing handler is retried inside the transaction, which holds locks (the whole SQLite
# file), so the waits are short: 50 ms, then 200 ms. A failure that outlives them is not a
# passing glitch of this record; a store outage is handled outside, by retrying the batch.
HANDLER_RETRY_DELAYS = (0.05, 0.2)


@dataclass(frozen=True, slots=True)
class Record:
    """A raw-topic record as the batch needs it."""

    topic: str
    """Where it was read."""
    partition: int
    """Its partition."""
    offset: int
    """Its offset."""
    key: bytes | None
    """The jobId, UTF-8."""
    value: bytes
    """The webhook body, byte for byte."""
    headers: Sequence[tuple[str, bytes]]
    """The contract headers."""


@dataclass
class BatchResult:
    """What a batch did."""

    outcomes: list[tuple[str, str, int | None]] = field(default_factory=list)
    """(event type, outcome, receive time ms) per record processed."""
    seek: dict[int, int] = field(default_factory=dict)
    """Partitions whose stored offset did not match the batch: seek them here."""
    next_offsets: dict[int, int] = field(default_factory=dict)
    """The offsets stored for each partition applied (to commit to Kafka as well)."""


DeadLetter = Callable[[Record, BaseException], Awaitable[None]]


async def stored_offsets(store: Store, service: str, topic: str) -> dict[int, int]:
    """next_offset per partition, as the store has them."""
    async with store.reader() as tx:
        rows = await tx.fetchall(
            "SELECT kafka_partition, next_offset FROM consumer_offsets "
            "WHERE service = ? AND topic = ?",
            service,
            topic,
        )
    return {int(p): int(o) for p, o in rows}


async def apply_batch(
    store: Store,
    service: Service,
    topic: str,
    partitions: dict[int, list[Record]],
    dead_letter: DeadLetter,
    accept_gaps: frozenset[int] = frozenset(),
) -> BatchResult:
    """Apply a batch in one transaction; raises StoreUnavailable (roll back, retry later).

    `accept_gaps` names partitions already sought to their stored offset once, whose batch
    still starts later: the records between are gone from Kafka (retention), so go on from here.
    """
    result = BatchResult()
    async with store.transaction() as tx:
        for partition, records in partitions.items():
            row = await tx.fetchone(
                "SELECT next_offset FROM consumer_offsets "  # noqa: S608 - a constant suffix
                f"WHERE service = ? AND topic = ? AND kafka_partition = ?{tx.for_update()}",
                service.name,
                topic,
                partition,
            )
            if row is None:
                continue
            stored = int(row[0])
            first = records[0].offset
            if stored > first or (stored < first and partition not in accept_gaps):
                result.seek[partition] = stored
        for partition, records in partitions.items():
            if partition in result.seek:
                continue
            for record in records:
                result.outcomes.append(await _one(tx, service, record, dead_letter))
            next_offset = records[-1].offset + 1
            await tx.execute(
                "INSERT INTO consumer_offsets (service, topic, kafka_partition, next_offset) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (service, topic, kafka_partition) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                service.name,
                topic,
                partition,
                next_offset,
            )
            result.next_offsets[partition] = next_offset
    return result


async def _one(
    tx: Tx, service: Service, record: Record, dead_letter: DeadLetter
) -> tuple[str, str, int | None]:
    try:
        envelope = contract.RawEnvelope.from_headers(record.headers)
    except contract.ContractError as exc:
        await dead_letter(record, exc)
        return ("unknown", DEAD_LETTERED, None)
    received = envelope.received_at_ms
    if envelope.event_type not in service.event_types:
        return (envelope.event_type, SKIPPED, received)
    now = int(time.time() * 1000)
    inserted = await tx.execute(
        "INSERT INTO processed_events (service, event_id, processed_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (service, event_id) DO NOTHING",
        service.name,
        envelope.event_id,
        now,
    )
    if not inserted:
        return (envelope.event_type, DUPLICATE, received)
    try:
        event = parse_event(record.value, envelope)
    except EventError as exc:
        await dead_letter(record, exc)
        await _history(tx, service, record, envelope, envelope.received_at_ms, DEAD_LETTERED, now)
        return (envelope.event_type, DEAD_LETTERED, received)
    outcome = await _handle(tx, service, record, event, dead_letter)
    await _history(tx, service, record, envelope, event.event_time_ms, outcome, now, event.job_id)
    return (envelope.event_type, outcome, received)


async def _handle(
    tx: Tx, service: Service, record: Record, event: object, dead_letter: DeadLetter
) -> str:
    """The handler in a savepoint, retried; dead-lettered when it keeps failing."""
    attempt = 0
    while True:
        await tx.execute("SAVEPOINT wazza_handler")
        try:
            outcome = await service.handler(event, tx)  # type: ignore[arg-type]
        except StoreUnavailable:
            raise
        except Exception as exc:
            await tx.execute("ROLLBACK TO SAVEPOINT wazza_handler")
            await tx.execute("RELEASE SAVEPOINT wazza_handler")
            if attempt < len(HANDLER_RETRY_DELAYS):
                log.warning(
                    "%s[%d]@%d: handler failed (%r); retrying",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                )
                await asyncio.sleep(HANDLER_RETRY_DELAYS[attempt])
                attempt += 1
                continue
            await dead_letter(record, exc)
            return DEAD_LETTERED
        await tx.execute("RELEASE SAVEPOINT wazza_handler")
        return outcome or APPLIED


async def _history(
    tx: Tx,
    service: Service,
    record: Record,
    envelope: contract.RawEnvelope,
    event_time_ms: int,
    outcome: str,
    now: int,
    job_id: str | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO job_events (service, event_id, job_id, event_type, event_time_ms, "
        "applied_ms, outcome, topic, kafka_partition, kafka_offset) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, event_id) DO NOTHING",
        service.name,
        envelope.event_id,
        job_id if job_id is not None else (record.key or b"").decode(errors="replace"),
        envelope.event_type,
        event_time_ms,
        now,
        outcome,
        record.topic,
        record.partition,
        record.offset,
    )


async def prune_dedup_keys(store: Store, retention_seconds: int) -> int:
    """Delete dedup keys older than the retention window; the number deleted."""
    cutoff = int((time.time() - retention_seconds) * 1000)
    async with store.transaction() as tx:
        return await tx.execute("DELETE FROM processed_events WHERE processed_ms < ?", cutoff)
