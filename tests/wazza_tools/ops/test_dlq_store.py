"""A redrive's store side (`claim_redrive`) on SQLite and PostgreSQL, without a broker: what it
deletes and keeps, and how a second, an interrupted and a needless redrive end."""

from __future__ import annotations

import time

from consumers.store import Store
from tests.support.consumers import completed, envelope_of, rows
from wazza_hooks import contract
from wazza_tools.ops.deadletters import (
    ALREADY_REDRIVEN,
    ALREADY_TAKEN,
    NOT_RECORDED_YET,
    REDRIVEN,
    DeadLetterRecord,
    claim_redrive,
)

DLQ = "t.dlq"
BODY = completed("job_poison", "2025-10-22T10:30:00Z")
EVENT = envelope_of(BODY).event_id
LONG_AGO = 1_000


def letter(offset: int = 7) -> DeadLetterRecord:
    headers = tuple(envelope_of(BODY).to_headers())
    return DeadLetterRecord(
        partition=1,
        offset=offset,
        timestamp_ms=int(time.time() * 1000),
        key=b"job_poison",
        value=BODY,
        headers=headers,
        letter=contract.DeadLetter("wazza-picky", "RuntimeError", "boom", "t.raw", 0, 3),
        envelope=contract.RawEnvelope.from_headers(headers),
        service="picky",
    )


async def took(store: Store, service: str, outcome: str) -> None:
    """The service took the event (long ago): its dedup key and its history row."""
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO processed_events (service, event_id, processed_ms) VALUES (?, ?, ?)",
            service,
            EVENT,
            LONG_AGO,
        )
        await tx.execute(
            "INSERT INTO job_events (service, event_id, job_id, event_type, event_time_ms, "
            "applied_ms, outcome, topic, kafka_partition, kafka_offset) "
            "VALUES (?, ?, 'job_poison', 'job.completed', 0, ?, ?, 't.raw', 0, 3)",
            service,
            EVENT,
            LONG_AGO,
            outcome,
        )


async def keys(store: Store) -> dict[str, int]:
    found = await rows(
        store, "SELECT service, processed_ms FROM processed_events WHERE event_id = ?", EVENT
    )
    return {str(s): int(ms) for s, ms in found}


async def outcomes(store: Store) -> dict[str, str]:
    found = await rows(store, "SELECT service, outcome FROM job_events WHERE event_id = ?", EVENT)
    return {str(s): str(o) for s, o in found}


async def redrives(store: Store) -> list[tuple[int, bool]]:
    found = await rows(store, "SELECT dlq_offset, published_ms FROM dlq_redrives")
    return sorted((int(o), p is not None) for o, p in found)


async def publish(store: Store, offset: int = 7) -> None:
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE dlq_redrives SET published_ms = 1, raw_partition = 0, raw_offset = 9 "
            "WHERE dlq_offset = ?",
            offset,
        )


async def test_a_redrive_clears_its_services_key_and_refreshes_the_others(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    await took(store, "completion", "applied")
    before = int(time.time() * 1000)

    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == REDRIVEN

    assert await outcomes(store) == {"completion": "applied"}  # the dead_lettered row is gone
    refreshed = await keys(store)
    assert list(refreshed) == ["completion"]  # picky's key gone: its copy will be applied
    assert refreshed["completion"] >= before  # completion's kept fresh: it drops the copy
    assert await redrives(store) == [(7, False)]  # recorded, not yet published

    await publish(store)
    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == ALREADY_REDRIVEN


async def test_an_interrupted_redrive_is_finished_by_the_next_and_never_clears_a_new_key(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == REDRIVEN
    # The broker never acknowledged: the next redrive goes on from there.
    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == REDRIVEN
    assert await redrives(store) == [(7, False)]

    # Its copy had landed after all and the service applied it: nothing more to send, and
    # the service's new key stays.
    await took(store, "picky", "applied")
    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == ALREADY_TAKEN
    assert await keys(store) == {"picky": LONG_AGO}
    assert await outcomes(store) == {"picky": "applied"}
    assert await redrives(store) == [(7, True)]


async def test_a_dead_letter_whose_event_was_taken_since_is_not_sent_and_leaves_no_trace(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    assert await claim_redrive(store, DLQ, letter(7), "picky", EVENT) == REDRIVEN
    await publish(store, 7)
    await took(store, "picky", "applied")  # the copy was applied

    # The same event dead-lettered at another position (say, before the fix was deployed).
    assert await claim_redrive(store, DLQ, letter(8), "picky", EVENT) == ALREADY_TAKEN
    assert await redrives(store) == [(7, True)]
    assert await keys(store) == {"picky": LONG_AGO}


async def test_a_dead_letter_its_service_has_not_recorded_yet_is_left_alone_until_it_has(
    store: Store,
) -> None:
    # The service publishes a dead letter before the batch that records it commits: a redrive
    # in between finds no history row for it. Sending the copy then would meet the dedup key
    # the batch is about to commit, and the redrive would stand as done.
    await took(store, "completion", "applied")

    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == NOT_RECORDED_YET
    assert await redrives(store) == []  # no trace: the next redrive starts afresh
    assert await keys(store) == {"completion": LONG_AGO}

    await took(store, "picky", "dead_lettered")  # the batch committed
    assert await claim_redrive(store, DLQ, letter(), "picky", EVENT) == REDRIVEN
