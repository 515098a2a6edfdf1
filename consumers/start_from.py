"""Where a service reads from on its first start (`wazza-consumer --start-from`,
`WAZZA_START_FROM`): `beginning` (every record the topic holds), `now` (only what arrives
from then on) or a TIME (the first record written at or after it).

It counts only while the store holds no offset of the service on the raw topic. The offsets it
chooses, for every partition of the topic, are recorded in the store at once: a restart before
the first batch, or a second instance joining, starts from the same place, and every later start
continues from the stored offsets whatever the option says. A partition added to the topic later
has no stored offset and is read from its beginning, so that nothing written to it is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from wazza_hooks import contract

from .batch import _OFFSET_COLUMNS, stored_offsets
from .log_identity import Stored
from .store import Store

BEGINNING = "beginning"
NOW = "now"


@dataclass(frozen=True, slots=True)
class StartFrom:
    """A parsed `--start-from`."""

    text: str
    """`beginning`, `now`, or the TIME as given (for log lines)."""
    at_ms: int | None = None
    """The TIME in ms since the epoch; None for `beginning` and `now`."""

    @property
    def beginning(self) -> bool:
        """True for the default: nothing to choose, nothing to record."""
        return self.text == BEGINNING


FROM_BEGINNING = StartFrom(BEGINNING)


def parse_start_from(text: str, now_ms: int | None = None) -> StartFrom:
    """`beginning`, `now` or an ISO-8601 time (UTC when it has no offset); raises ValueError
    saying what is accepted, or that the time is still to come (`now` says that)."""
    cleaned = text.strip()
    if cleaned.lower() in (BEGINNING, NOW):
        return StartFrom(cleaned.lower())
    at_ms = contract.parse_time_ms(cleaned)
    if at_ms is None or not contract.MIN_TIME_MS <= at_ms <= contract.MAX_TIME_MS:
        raise ValueError(
            f"{text!r} is not beginning, now or an ISO-8601 time (e.g. 2026-11-26T09:00:00Z)"
        )
    if at_ms > (int(time.time() * 1000) if now_ms is None else now_ms):
        raise ValueError(f"{text!r} is in the future (use now)")
    return StartFrom(cleaned, at_ms)


async def chosen_offsets(
    consumer: AIOKafkaConsumer, topic: str, start_from: StartFrom
) -> dict[int, int]:
    """The offset each partition of `topic` starts from: its end (`now`), or the first record
    written at or after the TIME (its end when there is none yet). Raises KafkaError."""
    known = consumer.partitions_for_topic(topic) or set()
    partitions = [TopicPartition(topic, p) for p in sorted(known)]
    ends = await consumer.end_offsets(partitions)
    chosen = {tp.partition: int(ends[tp]) for tp in partitions}
    if start_from.at_ms is not None:
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, start_from.at_ms))
        for tp, at in found.items():
            if at is not None:
                chosen[tp.partition] = int(at.offset)
    return chosen


async def record_first_offsets(
    store: Store, service: str, topic: str, offsets: dict[int, int], topic_id: str | None
) -> dict[int, Stored]:
    """Store `offsets` where the store has none for the partition (an instance that started
    at the same moment may have stored its own first); the stored offsets afterwards."""
    async with store.transaction() as tx:
        await tx.insert_rows(
            "consumer_offsets",
            _OFFSET_COLUMNS,
            [(service, topic, p, o, topic_id) for p, o in sorted(offsets.items())],
            "ON CONFLICT (service, topic, kafka_partition) DO NOTHING",
        )
    return await stored_offsets(store, service, topic)
