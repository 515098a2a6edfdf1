"""One batch, one store transaction (docs/architecture.md, "A batch, effectively once").

(a) guard each partition's stored offset: it must be the batch's first offset, else this is a
    replay or a zombie owner: that partition's records are left alone and the caller seeks it
    to the stored offset;
(b) look each record's event up in the service's history (history.py), which is the dedup:
    an event there already is a duplicate, counted, not applied;
(c) apply the service's handler (in a savepoint, retried a few times; a record that keeps
    failing goes to the dead-letter topic) and write each event's history row, with its
    outcome: from then on it is the event's dedup key;
(d) store next_offset = last + 1 for each partition.
A StoreUnavailable anywhere rolls the whole batch back and propagates: the caller waits and
retries the same batch, never skipping it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from wazza_hooks import contract

from .events import EventError, JobEvent, parse_event
from .history import HISTORY_COLUMNS, KEEP_FIRST, claim, history_job, known, set_outcomes
from .jobs import settle_conflicts
from .log_identity import LogReset, Stored
from .service import Service
from .store import Column, Store, StoreUnavailable, Tx
from .store.keys import event_key, event_name

log = logging.getLogger("wazza.consumers.batch")

APPLIED = "applied"
DUPLICATE = "duplicate"
SKIPPED = "skipped"
DEAD_LETTERED = "dead_lettered"

# A failing handler is retried inside the transaction, which holds locks (the whole SQLite
# file), so the waits are short: 50 ms, then 200 ms. A failure that outlives them is not a
# passing glitch of this record; a store outage is handled outside, by retrying the batch.
HANDLER_RETRY_DELAYS = (0.05, 0.2)


class Record(NamedTuple):
    """A raw-topic record as the batch needs it (a tuple: the runtime makes one per record
    taken, and a frozen dataclass costs three times as much to build)."""

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


DeadLetter = Callable[[Tx, Record, BaseException], Awaitable[None]]
"""Gives a record up (to the dead-letter topic, or, when the broker refuses it, to the store
through the batch's transaction)."""

_OFFSET_COLUMNS: list[Column] = [
    ("service", "text"),
    ("topic", "text"),
    ("kafka_partition", "integer"),
    ("next_offset", "bigint"),
    ("topic_id", "text"),
]


_ADVANCE = (
    "ON CONFLICT (service, topic, kafka_partition) "
    "DO UPDATE SET next_offset = excluded.next_offset, "
    "topic_id = COALESCE(excluded.topic_id, consumer_offsets.topic_id)"
)
"""A partition's next offset stored over the one there; a topic id kept when none is known."""
# The guard of apply_batch in SQL: a partition passes when it has no stored offset, or its
# stored offset is the batch's first, or lies before it with the gap accepted.
_GUARD_AND_ADVANCE = (
    "WITH stored AS (SELECT kafka_partition, next_offset FROM consumer_offsets "  # noqa: S608
    "WHERE service = ? AND topic = ? AND kafka_partition = ANY(?::integer[]) "
    "ORDER BY kafka_partition FOR UPDATE), "
    "advanced AS (INSERT INTO consumer_offsets "
    "(service, topic, kafka_partition, next_offset, topic_id) "
    "SELECT ?, ?, v.p, v.next, ?::text "
    "FROM unnest(?::integer[], ?::bigint[], ?::bigint[], ?::boolean[]) "
    "AS v(p, first, next, gap) "
    "LEFT JOIN stored s ON s.kafka_partition = v.p "
    "WHERE s.next_offset IS NULL OR s.next_offset = v.first "
    "OR (s.next_offset < v.first AND v.gap) "
    f"ORDER BY v.p {_ADVANCE}) "
    "SELECT kafka_partition, next_offset FROM stored"
)

_KEPT_COLUMNS: list[Column] = [
    ("service", "text"),
    ("topic", "text"),
    ("kafka_partition", "integer"),
    ("kafka_offset", "bigint"),
    ("error_class", "text"),
    ("error_message", "text"),
    ("refusal", "text"),
    ("record_key", "text"),
    ("record_value", "text"),
    ("record_headers", "text"),
    ("kept_ms", "bigint"),
]


async def stored_offsets(store: Store, service: str, topic: str) -> dict[int, Stored]:
    """The next offset per partition, and the topic id it was taken from, as the store has
    them."""
    async with store.reader() as tx:
        rows = await tx.fetchall(
            "SELECT kafka_partition, next_offset, topic_id FROM consumer_offsets "
            "WHERE service = ? AND topic = ?",
            service,
            topic,
        )
    return {int(p): Stored(int(o), None if t is None else str(t)) for p, o, t in rows}


async def reset_offsets(
    store: Store, service: str, topic: str, resets: Sequence[LogReset], topic_id: str | None
) -> list[LogReset]:
    """Move each partition of `resets` to its new log's first record, where the store still
    holds the offset the reset was found on (another instance, or a replay, may have moved it
    meanwhile: that one is left as it is); the resets done."""
    done: list[LogReset] = []
    async with store.transaction() as tx:
        for reset in resets:
            changed = await tx.execute(
                "UPDATE consumer_offsets SET next_offset = ?, topic_id = ? "
                "WHERE service = ? AND topic = ? AND kafka_partition = ? AND next_offset = ?",
                reset.new_offset,
                topic_id,
                service,
                topic,
                reset.partition,
                reset.stored_offset,
            )
            if changed:
                done.append(reset)
    return done


async def apply_batch(
    store: Store,
    service: Service,
    topic: str,
    partitions: dict[int, list[Record]],
    dead_letter: DeadLetter,
    accept_gaps: frozenset[int] = frozenset(),
    spans: dict[int, tuple[int, int]] | None = None,
    topic_id: str | None = None,
    isolate: bool = False,
) -> BatchResult:
    """Apply a batch in one transaction; raises StoreUnavailable (roll back, retry later).

    Any other error is one record's doing (a value the store refuses, a defect a body
    triggers): the caller applies the batch again with `isolate`, record by record, each in a
    savepoint, and a record that still fails is dead-lettered while the others are applied.

    `accept_gaps` names partitions already sought to their stored offset once, whose batch
    still starts later: the records between are gone from Kafka (retention), so go on from here.
    `spans` gives each partition's (first offset, last offset + 1) when the caller left out the
    records the service skips by their type header: a partition's list may then
    be shorter, or empty, and its offsets still advance over the whole batch.
    """
    if spans is None:
        spans = {p: (rs[0].offset, rs[-1].offset + 1) for p, rs in partitions.items()}
    result = BatchResult()
    # Headers and bodies are read before the transaction: it holds the store's write lock
    # (SQLite) or the jobs' rows (PostgreSQL), and the other services wait for it meanwhile.
    reads = {p: [_read(service, r) for r in rs] for p, rs in partitions.items()}
    async with store.transaction() as tx:
        advancing = tx.dialect == "postgresql"
        if advancing:
            rows = await _guard_and_advance(
                tx, service.name, topic, sorted(partitions), spans, accept_gaps, topic_id
            )
        else:
            # One statement, rows locked in partition order: two owners of overlapping
            # partitions (a zombie) lock alike.
            member, args = tx.in_list(sorted(partitions))
            rows = await tx.fetchall(
                "SELECT kafka_partition, next_offset FROM consumer_offsets "  # noqa: S608
                f"WHERE service = ? AND topic = ? AND kafka_partition {member} "
                f"ORDER BY kafka_partition{tx.for_update()}",
                service.name,
                topic,
                *args,
            )
        for partition, next_offset in rows:
            stored = int(next_offset)
            first = spans[int(partition)][0]
            if stored > first or (stored < first and int(partition) not in accept_gaps):
                result.seek[int(partition)] = stored
        taken = {p: r for p, r in reads.items() if p not in result.seek}
        records = [r for rs in taken.values() for r in rs]
        if records and isolate:
            await _apply_isolated(tx, service, records, dead_letter, result)
        elif records:
            await _apply_records(tx, service, records, dead_letter, result, isolated=False)
        if not advancing:
            await tx.insert_rows(
                "consumer_offsets",
                _OFFSET_COLUMNS,
                [(service.name, topic, p, spans[p][1], topic_id) for p in sorted(taken)],
                _ADVANCE,
            )
        result.next_offsets.update({p: spans[p][1] for p in taken})
    return result


async def _guard_and_advance(
    tx: Tx,
    service: str,
    topic: str,
    order: list[int],
    spans: dict[int, tuple[int, int]],
    accept_gaps: frozenset[int],
    topic_id: str | None,
) -> list[Sequence[Any]]:
    """Steps (a) and (d) in one statement (PostgreSQL, where each is a round trip) for the
    batch's partitions, `order` (only those: `spans` may name partitions revoked meanwhile):
    lock their stored offsets in partition order, store next_offset for each the guard lets
    through, and return the stored offsets as they were. Storing it before the records are
    applied changes nothing: the transaction commits them together or not at all."""
    return await tx.fetchall(
        _GUARD_AND_ADVANCE,
        service,
        topic,
        order,
        service,
        topic,
        topic_id,
        order,
        [spans[p][0] for p in order],
        [spans[p][1] for p in order],
        [p in accept_gaps for p in order],
    )


async def _apply_isolated(
    tx: Tx, service: Service, reads: list[_Read], dead_letter: DeadLetter, result: BatchResult
) -> None:
    """The batch's records one at a time, each in a savepoint: one that raises anything but
    StoreUnavailable is rolled back and dead-lettered, with a `dead_lettered` history row (its
    dedup key) where the store takes it."""
    now = int(time.time() * 1000)
    for read in reads:
        record = read.record
        await tx.execute("SAVEPOINT wazza_record")
        try:
            await _apply_records(tx, service, [read], dead_letter, result, isolated=True)
        except StoreUnavailable:
            raise
        except Exception as exc:
            await tx.execute("ROLLBACK TO SAVEPOINT wazza_record")
            await dead_letter(tx, record, exc)
            envelope = read.envelope
            result.outcomes.append(
                (
                    envelope.event_type if envelope else "unknown",
                    DEAD_LETTERED,
                    envelope.received_at_ms if envelope else None,
                )
            )
            if envelope is not None:
                await _record_dead_letter(tx, service, record, envelope, now)
        await tx.execute("RELEASE SAVEPOINT wazza_record")


async def _record_dead_letter(
    tx: Tx, service: Service, record: Record, envelope: contract.RawEnvelope, now: int
) -> None:
    """The dead letter's history row (its dedup key), as for any dead letter (what `dlq redrive`
    expects); skipped where the store refuses it too (the event may be what it refuses)."""
    await tx.execute("SAVEPOINT wazza_dead_letter")
    try:
        await tx.insert_rows(
            "event_history",
            HISTORY_COLUMNS,
            [
                _history_row(
                    service,
                    record,
                    (0, envelope, history_job(record.key), event_key(envelope.event_id)),
                    None,
                    now,
                )
            ],
            KEEP_FIRST,
        )
    except StoreUnavailable:
        raise
    except Exception as exc:
        await tx.execute("ROLLBACK TO SAVEPOINT wazza_dead_letter")
        log.warning(
            "%s[%d]@%d: no history row for the dead letter (%r)",
            record.topic,
            record.partition,
            record.offset,
            exc,
        )
    await tx.execute("RELEASE SAVEPOINT wazza_dead_letter")


class _Read(NamedTuple):
    """A record as read before the transaction: skipped by its type, or its envelope, job,
    event key and event (or what reading it raised, dealt with in the transaction)."""

    record: Record
    """The record."""
    skipped: bytes | None
    """Its type header, when the service does not take that type."""
    envelope: contract.RawEnvelope | None
    """Its contract headers; None when skipped or unreadable (then `event` says why)."""
    job: str
    """The job its history row is kept under."""
    key: bytes
    """Its event key."""
    event: JobEvent | Exception | None
    """Its event, or what reading it raised (EventError: a body that is no event; anything
    else: a defect, raised in the transaction to be tracked down); None when skipped."""


def _read(service: Service, record: Record) -> _Read:
    # Most records of a service are other services' events: skipped by their type header
    # alone (the contract puts it first), without reading the rest.
    raw_type = event_type_header(record.headers)
    if raw_type is not None and raw_type not in service.event_type_headers:
        return _Read(record, raw_type, None, "", b"", None)
    try:
        envelope = contract.RawEnvelope.from_headers(record.headers)
    except Exception as exc:  # ContractError is dead-lettered; anything else raised, in the tx
        return _Read(record, None, None, "", b"", exc)
    job, key = history_job(record.key), event_key(envelope.event_id)
    try:
        event: JobEvent | Exception = parse_event(record.value, envelope)
    except Exception as exc:  # EventError is dead-lettered; anything else raised, in the tx
        event = exc
    return _Read(record, None, envelope, job, key, event)


async def _apply_records(
    tx: Tx,
    service: Service,
    reads: list[_Read],
    dead_letter: DeadLetter,
    result: BatchResult,
    isolated: bool,
) -> None:
    """Steps (b) and (c) for a batch's records, with a handful of statements for all of them
    (`isolated`: one record, in a savepoint of its own)."""
    now = int(time.time() * 1000)
    slots: list[tuple[str, str, int | None] | None] = [None] * len(reads)
    candidates: list[_Candidate] = []
    for i, read in enumerate(reads):
        if read.skipped is not None:
            slots[i] = (read.skipped.decode(errors="replace"), SKIPPED, None)
        elif read.envelope is None:
            failure = read.event
            if isinstance(failure, contract.ContractError):
                await dead_letter(tx, read.record, failure)
                slots[i] = ("unknown", DEAD_LETTERED, None)
            elif isinstance(failure, Exception):
                raise failure  # a defect a record triggers: found record by record
        else:
            candidates.append((i, read.envelope, read.job, read.key))
    records = [read.record for read in reads]
    # (b) dedup: events the history holds, and repeats within the batch, are duplicates.
    first: dict[tuple[str, bytes], int] = {}
    for i, _, job, key in candidates:
        first.setdefault((job, key), i)
    unique = [c for c in candidates if first[c[2], c[3]] == c[0]]
    parsed: list[tuple[_Candidate, JobEvent | Exception]]
    claiming = tx.dialect == "postgresql"
    if claiming:
        # Several writers at once: each row is claimed before its event is applied (a copy's
        # insert in another transaction waits for this one, then conflicts), so its event is
        # parsed first, and an outcome other than `applied` is set once known.
        parsed = [(c, _event(reads[c[0]])) for c in unique]
        claimed = await claim(
            tx,
            [_history_row(service, records[c[0]], c, _or_none(event), now) for c, event in parsed],
        )
        parsed = [(c, event) for c, event in parsed if (c[2], c[3]) in claimed]
    else:
        # One writer at a time (SQLite's write lock, held since BEGIN): what the lookup does not
        # find stays new until this transaction commits.
        taken = await known(tx, service.name, [(c[2], c[3]) for c in unique])
        parsed = [(c, _event(reads[c[0]])) for c in unique if (c[2], c[3]) not in taken]
    fresh = {c[0] for c, _ in parsed}
    for i, envelope, _, _ in candidates:
        if i not in fresh:
            slots[i] = (envelope.event_type, DUPLICATE, envelope.received_at_ms)
    # (c) apply, record.
    history: list[list[object]] = []
    events: list[tuple[_Candidate, JobEvent]] = []
    for candidate, event in parsed:
        i, envelope = candidate[0], candidate[1]
        if isinstance(event, Exception):
            if not isinstance(event, EventError):
                raise event  # a defect a body triggers: found record by record
            await dead_letter(tx, records[i], event)
            slots[i] = (envelope.event_type, DEAD_LETTERED, envelope.received_at_ms)
            history.append(_history_row(service, records[i], candidate, None, now))
        else:
            events.append((candidate, event))
    outcomes = await _run_handlers(
        tx, service, [(records[c[0]], e) for c, e in events], dead_letter, isolated
    )
    changed: list[tuple[str, bytes, str]] = []
    for (candidate, event), outcome in zip(events, outcomes, strict=True):
        i, envelope = candidate[0], candidate[1]
        slots[i] = (envelope.event_type, outcome, envelope.received_at_ms)
        if claiming:
            if outcome != APPLIED:
                changed.append((candidate[2], candidate[3], outcome))
        else:
            history.append(_history_row(service, records[i], candidate, event, now, outcome))
    if claiming:
        await set_outcomes(tx, service.name, changed)
    else:
        await tx.insert_rows("event_history", HISTORY_COLUMNS, history)
    if service.tracks_jobs and not claiming:
        # (PostgreSQL: the built-in handlers mark what they supersede, the history being
        # claimed before them.)
        terminal = [e.job_id for _, e in events if e.terminal]
        if terminal:
            await settle_conflicts(tx, terminal)
    result.outcomes.extend(slot for slot in slots if slot is not None)


async def keep_dead_letter(
    tx: Tx, service: str, record: Record, letter: contract.DeadLetter, refusal: str
) -> None:
    """Keep a dead letter the dead-letter topic refused in the store (`dead_letters`), with the
    broker's refusal: bytes as base64, headers as JSON."""
    headers = [[name, base64.b64encode(value or b"").decode()] for name, value in record.headers]
    await tx.insert_rows(
        "dead_letters",
        _KEPT_COLUMNS,
        [
            (
                service,
                record.topic,
                record.partition,
                record.offset,
                letter.error_class,
                letter.error_message[: contract.DeadLetter.MAX_MESSAGE_BYTES],
                refusal[: contract.DeadLetter.MAX_MESSAGE_BYTES],
                None if record.key is None else base64.b64encode(record.key).decode(),
                base64.b64encode(record.value).decode(),
                orjson.dumps(headers).decode(),
                int(time.time() * 1000),
            )
        ],
        "ON CONFLICT (service, topic, kafka_partition, kafka_offset) DO NOTHING",
    )


@dataclass(frozen=True, slots=True)
class KeptDeadLetter:
    """A dead letter the dead-letter topic refused, as the store keeps it."""

    service: str
    """The service that gave the record up."""
    topic: str
    """Where the record was read."""
    partition: int
    """Its partition there."""
    offset: int
    """Its offset there."""
    error_class: str
    """Why the service gave it up."""
    error_message: str
    """That error's message."""
    refusal: str
    """Why the dead-letter topic refused it."""
    job_id: str | None
    """The record key (the jobId), where it had one."""
    kept_ms: int
    """When it was kept."""


async def kept_dead_letters(
    store: Store, topic: str, service: str | None = None
) -> list[KeptDeadLetter]:
    """The dead letters kept in the store for records of `topic` (of one service, if given),
    oldest first."""
    async with store.reader() as tx:
        found = await tx.fetchall(
            "SELECT service, topic, kafka_partition, kafka_offset, error_class, error_message, "
            "refusal, record_key, kept_ms FROM dead_letters WHERE topic = ? "
            "ORDER BY kept_ms, service, kafka_partition, kafka_offset",
            topic,
        )
    letters = []
    for row in found:
        if service is not None and row[0] != service:
            continue
        key = None if row[7] is None else base64.b64decode(row[7]).decode(errors="replace")
        letters.append(
            KeptDeadLetter(
                service=str(row[0]),
                topic=str(row[1]),
                partition=int(row[2]),
                offset=int(row[3]),
                error_class=str(row[4]),
                error_message=str(row[5]),
                refusal=str(row[6]),
                job_id=key,
                kept_ms=int(row[8]),
            )
        )
    return letters


def event_type_header(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The event type header's value (the contract puts it first), or None."""
    for name, value in headers:
        if name == contract.H_EVENT_TYPE:
            return value
    return None


async def _run_handlers(
    tx: Tx,
    service: Service,
    items: list[tuple[Record, JobEvent]],
    dead_letter: DeadLetter,
    isolated: bool,
) -> list[str]:
    """The batch handler when the service has one; else, or when it fails, one by one."""
    if not items:
        return []
    if service.batch_handler is not None and service.tracks_jobs and not isolated:
        # The built-in handler, on a whole batch: without the savepoint (two round trips on
        # PostgreSQL). Should it fail, the batch is rolled back and the runtime applies it again
        # record by record, each in its savepoint, where this handler falls back to one by one.
        return await service.batch_handler([e for _, e in items], tx)
    if service.batch_handler is not None:
        await tx.execute("SAVEPOINT wazza_batch")
        try:
            outcomes = await service.batch_handler([e for _, e in items], tx)
        except StoreUnavailable:
            raise
        except Exception as exc:
            await tx.execute("ROLLBACK TO SAVEPOINT wazza_batch")
            await tx.execute("RELEASE SAVEPOINT wazza_batch")
            log.warning("batch handler failed (%r); applying the batch event by event", exc)
        else:
            await tx.execute("RELEASE SAVEPOINT wazza_batch")
            return outcomes
    return [await _handle(tx, service, record, event, dead_letter) for record, event in items]


async def _handle(
    tx: Tx, service: Service, record: Record, event: JobEvent, dead_letter: DeadLetter
) -> str:
    """The handler in a savepoint, retried; dead-lettered when it keeps failing."""
    attempt = 0
    while True:
        await tx.execute("SAVEPOINT wazza_handler")
        try:
            outcome = await service.handler(event, tx)
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
            await dead_letter(tx, record, exc)
            return DEAD_LETTERED
        await tx.execute("RELEASE SAVEPOINT wazza_handler")
        return outcome or APPLIED


_Candidate = tuple[int, contract.RawEnvelope, str, bytes]
"""A record a service takes: its index in the batch, envelope, job and event key."""


def _event(read: _Read) -> JobEvent | Exception:
    """The event of a record the service takes (or what reading it raised)."""
    assert read.event is not None  # noqa: S101 - only skipped records have none
    return read.event


def _or_none(event: JobEvent | Exception) -> JobEvent | None:
    return None if isinstance(event, Exception) else event


def _history_row(
    service: Service,
    record: Record,
    candidate: _Candidate,
    event: JobEvent | None,
    now: int,
    outcome: str = APPLIED,
) -> list[object]:
    """A row of HISTORY_COLUMNS; without an event (a body that is none, a record given up) it is
    `dead_lettered`, at the record's receive time."""
    _, envelope, job, key = candidate
    return [
        job,
        service.name,
        key,
        event_name(envelope.event_id, key),
        envelope.event_type,
        envelope.received_at_ms if event is None else event.event_time_ms,
        now,
        now,
        DEAD_LETTERED if event is None else outcome,
        record.topic,
        record.partition,
        record.offset,
    ]
