"""The store's side of sending a dead letter back (`wazza-hooks dlq redrive`).

A dead-lettered event keeps a `dead_lettered` history row for its service, and that row is its
dedup key: a copy published as it is would be dropped as a duplicate. A redrive of one
dead-letter record:

1. `claim_redrive`, in one transaction: records the redrive (`dlq_redrives`, pending), deletes
   the service's `dead_lettered` history row for the event, and renews the rows of the other
   services that took the event (`kept_ms`), so that they drop the copy as a duplicate even
   when their rows were about to be pruned;
2. (the tool) publishes the original record to the raw topic;
3. `mark_published`, with the copy's raw position.

So the event is applied once by the service that gave it up and by no other. Redriving the
same record again does nothing once published; a redrive interrupted between 1 and 3 is
completed by the next one (a second copy, if the first did land, is a duplicate). An event
taken since (its history no longer `dead_lettered`) is not sent again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .history import history_job
from .store import Store
from .store.keys import event_key

# What step 1 found.
REDRIVEN = "redriven"
"""Claimed: publish the copy."""
ALREADY_REDRIVEN = "already_redriven"
"""A redrive of this record was published before: nothing to do."""
ALREADY_TAKEN = "already_taken"
"""The service has taken the event since: not sent again."""
NOT_RECORDED_YET = "not_recorded_yet"
"""The service has not committed the batch that dead-lettered it: nothing done, try later."""


@dataclass(frozen=True, slots=True)
class Redrive:
    """A redrive recorded in the store."""

    requested_ms: int
    """When it was asked for."""
    published_ms: int | None
    """When the copy was acknowledged by the broker; None while pending (interrupted)."""
    raw_partition: int | None
    """Where the copy went on the raw topic."""
    raw_offset: int | None
    """Its offset there."""


@dataclass(frozen=True, slots=True)
class DeadLetterPosition:
    """A dead-letter record, as the store knows its redrive."""

    dlq_topic: str
    """The dead-letter topic."""
    partition: int
    """Its partition there."""
    offset: int
    """Its offset there."""
    event_id: str
    """Its event id (tells it from another record at the same place of a recreated topic)."""


async def redrives(store: Store, dlq_topic: str) -> dict[tuple[int, int, str], Redrive]:
    """The redrives recorded for records of `dlq_topic`, by (partition, offset, event id)."""
    async with store.reader() as tx:
        rows = await tx.fetchall(
            "SELECT dlq_partition, dlq_offset, event_id, requested_ms, published_ms, "
            "raw_partition, raw_offset FROM dlq_redrives WHERE dlq_topic = ?",
            dlq_topic,
        )
    return {
        (int(p), int(o), str(e)): Redrive(int(req), _int(pub), _int(raw_p), _int(raw_o))
        for p, o, e, req, pub, raw_p, raw_o in rows
    }


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


async def claim_redrive(
    store: Store, position: DeadLetterPosition, record_key: bytes | None, service: str
) -> str:
    """Step 1 of a redrive: REDRIVEN (go on and publish), ALREADY_REDRIVEN, ALREADY_TAKEN or
    NOT_RECORDED_YET. `record_key`: the dead letter's record key (the jobId), which keys the
    history.

    The `dlq_redrives` row is claimed first: of two redrives of one record at once, the second
    waits for the first's transaction. The history row is deleted only while it says
    `dead_lettered`, in one statement: once it is gone the service may apply a copy, and the
    row it writes then is never deleted by a late redrive of another copy.
    """
    now = int(time.time() * 1000)
    where = (position.dlq_topic, position.partition, position.offset, position.event_id)
    event = (history_job(record_key), event_key(position.event_id))
    async with store.transaction() as tx:
        claimed = await tx.execute(
            "INSERT INTO dlq_redrives (dlq_topic, dlq_partition, dlq_offset, event_id, "
            "service, requested_ms) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (dlq_topic, dlq_partition, dlq_offset, event_id) DO NOTHING",
            *where,
            service,
            now,
        )
        if not claimed:
            row = await tx.fetchone(
                "SELECT published_ms FROM dlq_redrives WHERE dlq_topic = ? "
                "AND dlq_partition = ? AND dlq_offset = ? AND event_id = ?",
                *where,
            )
            if row is not None and row[0] is not None:
                return ALREADY_REDRIVEN
        elif not await tx.fetchone(
            "SELECT 1 FROM event_history WHERE job_id = ? AND service = ? AND event_key = ?",
            event[0],
            service,
            event[1],
        ):
            # A service publishes a dead letter, and waits for its ack, before the batch that
            # records it (its history row) commits. Sent now, the copy would meet that row as a
            # duplicate, and the redrive would stand as done: the event never applied.
            await tx.execute(
                "DELETE FROM dlq_redrives WHERE dlq_topic = ? AND dlq_partition = ? "
                "AND dlq_offset = ? AND event_id = ?",
                *where,
            )
            return NOT_RECORDED_YET
        await tx.execute(
            "DELETE FROM event_history WHERE job_id = ? AND service = ? AND event_key = ? "
            "AND outcome = 'dead_lettered'",
            event[0],
            service,
            event[1],
        )
        if await tx.fetchone(
            "SELECT 1 FROM event_history WHERE job_id = ? AND service = ? AND event_key = ?",
            event[0],
            service,
            event[1],
        ):
            if claimed:  # this redrive did nothing: it leaves no trace
                await tx.execute(
                    "DELETE FROM dlq_redrives WHERE dlq_topic = ? AND dlq_partition = ? "
                    "AND dlq_offset = ? AND event_id = ?",
                    *where,
                )
            else:  # an interrupted one's copy did land (or the event came again): it is done
                await tx.execute(
                    "UPDATE dlq_redrives SET published_ms = ? WHERE dlq_topic = ? "
                    "AND dlq_partition = ? AND dlq_offset = ? AND event_id = ?",
                    now,
                    *where,
                )
            return ALREADY_TAKEN
        # The other services that took the event keep their rows for a whole retention from
        # now: the copy reaches them too, and must meet the row.
        await tx.execute(
            "UPDATE event_history SET kept_ms = ? WHERE job_id = ? AND event_key = ? "
            "AND service <> ?",
            now,
            event[0],
            event[1],
            service,
        )
    return REDRIVEN


async def mark_published(
    store: Store, position: DeadLetterPosition, raw_partition: int, raw_offset: int
) -> None:
    """Step 3 of a redrive: the copy is on the raw topic at (raw_partition, raw_offset)."""
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE dlq_redrives SET published_ms = ?, raw_partition = ?, raw_offset = ? "
            "WHERE dlq_topic = ? AND dlq_partition = ? AND dlq_offset = ? AND event_id = ?",
            int(time.time() * 1000),
            raw_partition,
            raw_offset,
            position.dlq_topic,
            position.partition,
            position.offset,
            position.event_id,
        )
