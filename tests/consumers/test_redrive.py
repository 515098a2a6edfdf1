"""A redrive's store side (consumers/redrive.py) on SQLite and PostgreSQL, without a broker:
what it deletes and keeps, and how a second, an interrupted and a needless redrive end."""

from __future__ import annotations

import time

from consumers.history import HISTORY_COLUMNS
from consumers.redrive import (
    ALREADY_REDRIVEN,
    ALREADY_TAKEN,
    NOT_RECORDED_YET,
    REDRIVEN,
    DeadLetterPosition,
    claim_redrive,
    mark_published,
)
from consumers.store import Store
from consumers.store.keys import event_key
from tests.support.consumers import completed, envelope_of, rows

DLQ = "t.dlq"
BODY = completed("job_poison", "2025-10-22T10:30:00Z")
EVENT = envelope_of(BODY).event_id
KEY = event_key(EVENT)
LONG_AGO = 1_000


def letter(offset: int = 7) -> DeadLetterPosition:
    """The dead letter of the event at `offset` of partition 1 of the dead-letter topic."""
    return DeadLetterPosition(DLQ, 1, offset, EVENT)


async def took(store: Store, service: str, outcome: str) -> None:
    """The service took the event (long ago): its history row, which is its dedup key."""
    async with store.transaction() as tx:
        await tx.insert_rows(
            "event_history",
            HISTORY_COLUMNS,
            [("job_poison", service, KEY, None, "job.completed", 0, LONG_AGO, LONG_AGO, outcome,
              "t.raw", 0, 3)],
            "ON CONFLICT (job_id, service, event_key) DO UPDATE SET outcome = excluded.outcome",
        )  # fmt: skip


async def keys(store: Store) -> dict[str, int]:
    """Each service's row of the event: when it was last renewed (kept_ms)."""
    found = await rows(store, "SELECT service, kept_ms FROM event_history WHERE event_key = ?", KEY)
    return {str(s): int(ms) for s, ms in found}


async def outcomes(store: Store) -> dict[str, str]:
    found = await rows(store, "SELECT service, outcome FROM event_history WHERE event_key = ?", KEY)
    return {str(s): str(o) for s, o in found}


async def redrives(store: Store) -> list[tuple[int, bool]]:
    found = await rows(store, "SELECT dlq_offset, published_ms FROM dlq_redrives")
    return sorted((int(o), p is not None) for o, p in found)


async def publish(store: Store, offset: int = 7) -> None:
    await mark_published(store, letter(offset), 0, 9)


async def test_a_redrive_clears_its_services_key_and_refreshes_the_others(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    await took(store, "completion", "applied")
    before = int(time.time() * 1000)

    assert await claim_redrive(store, letter(), b"job_poison", "picky") == REDRIVEN

    assert await outcomes(store) == {"completion": "applied"}  # the dead_lettered row is gone
    refreshed = await keys(store)
    assert list(refreshed) == ["completion"]  # picky's row gone: its copy will be applied
    assert refreshed["completion"] >= before  # completion's kept fresh: it drops the copy
    assert await redrives(store) == [(7, False)]  # recorded, not yet published

    await publish(store)
    assert await claim_redrive(store, letter(), b"job_poison", "picky") == ALREADY_REDRIVEN


async def test_an_interrupted_redrive_is_finished_by_the_next_and_never_clears_a_new_key(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    assert await claim_redrive(store, letter(), b"job_poison", "picky") == REDRIVEN
    # The broker never acknowledged: the next redrive goes on from there.
    assert await claim_redrive(store, letter(), b"job_poison", "picky") == REDRIVEN
    assert await redrives(store) == [(7, False)]

    # Its copy had landed after all and the service applied it: nothing more to send, and
    # the service's new key stays.
    await took(store, "picky", "applied")
    assert await claim_redrive(store, letter(), b"job_poison", "picky") == ALREADY_TAKEN
    assert await keys(store) == {"picky": LONG_AGO}
    assert await outcomes(store) == {"picky": "applied"}
    assert await redrives(store) == [(7, True)]


async def test_a_dead_letter_whose_event_was_taken_since_is_not_sent_and_leaves_no_trace(
    store: Store,
) -> None:
    await took(store, "picky", "dead_lettered")
    assert await claim_redrive(store, letter(7), b"job_poison", "picky") == REDRIVEN
    await publish(store, 7)
    await took(store, "picky", "applied")  # the copy was applied

    # The same event dead-lettered at another position (say, before the fix was deployed).
    assert await claim_redrive(store, letter(8), b"job_poison", "picky") == ALREADY_TAKEN
    assert await redrives(store) == [(7, True)]
    assert await keys(store) == {"picky": LONG_AGO}


async def test_a_dead_letter_its_service_has_not_recorded_yet_is_left_alone_until_it_has(
    store: Store,
) -> None:
    # The service publishes a dead letter before the batch that records it commits: a redrive
    # in between finds no history row for it. Sending the copy then would meet the dedup key
    # the batch is about to commit, and the redrive would stand as done.
    await took(store, "completion", "applied")

    assert await claim_redrive(store, letter(), b"job_poison", "picky") == NOT_RECORDED_YET
    assert await redrives(store) == []  # no trace: the next redrive starts afresh
    assert await keys(store) == {"completion": LONG_AGO}

    await took(store, "picky", "dead_lettered")  # the batch committed
    assert await claim_redrive(store, letter(), b"job_poison", "picky") == REDRIVEN
