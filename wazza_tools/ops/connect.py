"""What the operator tools (`wazza-hooks replay|dlq`) connect to: the consumers' store and the
broker, read without a consumer group. Every failure to reach either becomes an `OpsError`
whose message is one line naming the place (password hidden), for the command to print.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.store import Store, StoreError, Tx, open_existing_store
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity
from wazza_hooks.producers import refusal, start_problem
from wazza_tools.sqlite_file import say_sqlite_file

# A reachable broker answers metadata and offset requests in milliseconds; an unreachable one is
# reported after this long rather than leaving an operator's terminal hanging.
BROKER_TIMEOUT_SECONDS = 15.0


class OpsError(Exception):
    """An operator command cannot go on; the message is one line for the terminal (exit 1)."""

    exit_code = 1


class UsageError(OpsError):
    """The arguments make no sense (a malformed or future time): exit 2, like argparse."""

    exit_code = 2


@asynccontextmanager
async def store_at(url: str) -> AsyncIterator[Store]:
    """The consumers' store at `url`, migrated; one that does not exist is refused
    (`open_existing_store`), and every failure to open it is an `OpsError`."""
    try:
        say_sqlite_file(url)
        store = await open_existing_store(url)
    except StoreError as exc:
        raise OpsError(str(exc)) from exc
    try:
        yield store
    finally:
        await store.close()


async def known_services(tx: Tx, topic: str) -> list[str]:
    """The services the store holds offsets for on `topic` (those that have consumed it)."""
    rows = await tx.fetchall(
        "SELECT DISTINCT service FROM consumer_offsets WHERE topic = ? ORDER BY service", topic
    )
    return [str(row[0]) for row in rows]


def unknown_service(service: str, topic: str, known: list[str]) -> OpsError:
    """The refusal for a service the store has never seen consume `topic`."""
    names = ", ".join(known) if known else "none yet"
    return OpsError(
        f"unknown service {service!r}: the store holds no offsets for it on {topic} "
        f"(services it knows: {names})"
    )


@asynccontextmanager
async def broker_reader(
    bootstrap_servers: str, security: KafkaSecurity = PLAINTEXT
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group: it reads by assignment and never commits."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        # A position that retention deleted meanwhile moves to the oldest record left, not to
        # the end (the reader would then never reach the end offsets it was given).
        auto_offset_reset="earliest",
        request_timeout_ms=int(BROKER_TIMEOUT_SECONDS * 1000),
        **security.client_options(),
    )
    await _start(consumer, bootstrap_servers)
    try:
        yield consumer
    finally:
        await consumer.stop()


@asynccontextmanager
async def broker_writer(
    bootstrap_servers: str, enable_idempotence: bool, security: KafkaSecurity = PLAINTEXT
) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer with `acks=all`, as the ingester publishes."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=enable_idempotence,
        request_timeout_ms=int(BROKER_TIMEOUT_SECONDS * 1000),
        **security.client_options(),
    )
    await _start(producer, bootstrap_servers, idempotent=enable_idempotence)
    try:
        yield producer
    finally:
        await producer.stop()


async def _start(
    client: AIOKafkaConsumer | AIOKafkaProducer, bootstrap_servers: str, idempotent: bool = False
) -> None:
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
            await client.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        await client.stop()
        if refusal(exc, idempotent) is not None:
            raise OpsError(start_problem(exc, bootstrap_servers, idempotent)) from exc
        raise OpsError(f"cannot reach the broker at {bootstrap_servers}: {exc!r}") from exc


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`; raises OpsError when the broker does not have it."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
            # A metadata request for every topic, read from its own answer: the consumer's
            # cached metadata holds only the topics it tracks (on Apache Kafka, none here).
            cluster = await consumer._client.fetch_all_metadata()
    except (KafkaError, TimeoutError) as exc:
        raise OpsError(f"cannot read the broker's topics: {exc!r}") from exc
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise OpsError(f"the broker has no topic {topic}")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def offset_bounds(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> tuple[dict[int, int], dict[int, int]]:
    """(first offset still held, end offset) per partition: the broker holds the records from
    the first to the end, the end excluded (the offset the next record gets)."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
            beginnings = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
    except (KafkaError, TimeoutError) as exc:
        raise OpsError(f"cannot read the offsets of {partitions[0].topic}: {exc!r}") from exc
    return (
        {tp.partition: int(o) for tp, o in beginnings.items()},
        {tp.partition: int(o) for tp, o in ends.items()},
    )


async def offsets_since(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], since_ms: int
) -> dict[int, int | None]:
    """Per partition, the first offset whose record's timestamp is `since_ms` or later (Kafka's
    offsets-for-times); None where every record held is older."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
            found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    except (KafkaError, TimeoutError) as exc:
        raise OpsError(f"cannot read the offsets of {partitions[0].topic}: {exc!r}") from exc
    return {tp.partition: None if at is None else int(at.offset) for tp, at in found.items()}
