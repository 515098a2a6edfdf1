"""The tests' topics on the real broker: made fresh per test, read back whole."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ingest.settings import IngestSettings
from tests.support.env import SECRET
from wazza_tools.dev.topics import ensure_topics


@dataclass(frozen=True)
class Topics:
    """The topics of one test."""

    raw: str
    quarantine: str
    dlq: str


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def make_topics(bootstrap: str, partitions: int = 3) -> Topics:
    """Create a fresh raw/quarantine/dlq trio on the broker."""
    topics = Topics(unique("test.raw"), unique("test.quarantine"), unique("test.dlq"))
    await ensure_topics(
        bootstrap, dict.fromkeys((topics.raw, topics.quarantine, topics.dlq), partitions)
    )
    return topics


def ingest_settings(bootstrap: str, topics: Topics, **overrides: str) -> IngestSettings:
    """Settings as the environment would give them, pointed at the test broker and topics."""
    env = {
        "WAZZA_WEBHOOK_SECRETS": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "WAZZA_RAW_TOPIC": topics.raw,
        "WAZZA_QUARANTINE_TOPIC": topics.quarantine,
        **overrides,
    }
    return IngestSettings.from_env(env)


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 10.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic from the beginning; waits until `expect` arrived (or timeout),
    then reads a little longer so that unexpected extra records are seen too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        # From 0, not seek_to_beginning(): Tansu's ListOffsets(earliest) was seen to answer
        # past a partition's first records after two producers wrote to it (7 for records
        # 0-19; CI lost two of sixty records that way). The test broker never deletes any.
        for tp in tps:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            if len(records) >= expect:
                # Keep reading briefly: a duplicate or stray record must not go unseen.
                settle = settle or time.monotonic() + 0.5
                if time.monotonic() >= settle:
                    break
        return records
    finally:
        await consumer.stop()
