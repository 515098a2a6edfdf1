"""Batched delivery (ingest/batched.py): our batches handed to aiokafka's producer, the path the
ingester takes with idempotence on, the default for Apache Kafka. These tests run that path with
a producer that is not idempotent (the broker's de-duplication by sequence number is Apache
Kafka's side, not measured here); what they check is ours: batches per partition handed to the
producer one at a time, each request answered after its own ack, in order per key, a deadline
when the broker hangs, and a flush of what is in flight at shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ingest.publisher import KafkaPublisher, PublishError
from tests.support.kafka import make_topics, read_topic
from tests.support.processes import hang
from wazza_tools.dev.localbroker import LocalBroker
from wazza_tools.dev.topics import ensure_topics

pytestmark = pytest.mark.slow

HEADERS = [("wazza-event-type", b"job.processing")]
# A deadline that a hung broker runs out, with room for a loaded machine's loop turn.
DEADLINE = 1.0
SLACK = 0.5


@asynccontextmanager
async def batched(bootstrap: str) -> AsyncIterator[KafkaPublisher]:
    pub = KafkaPublisher(bootstrap, client_id="batched-test", enable_idempotence=False, linger_ms=0)
    pub._direct = False  # the idempotent path's delivery, without idempotence
    async with pub:
        deadline = time.monotonic() + 20
        while not pub.connected:
            if time.monotonic() > deadline:
                pytest.fail("the publisher never connected to the broker")
            await asyncio.sleep(0.05)
        yield pub


async def test_every_record_lands_once_in_order_per_key_with_its_bytes_and_headers(
    broker: LocalBroker,
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=3)
    keys = [f"job_{k}".encode() for k in range(12)]
    async with batched(broker.bootstrap_servers) as pub:

        async def lane(key: bytes) -> None:
            # A key's records a moment apart, none waiting for the one before it to be
            # acknowledged: they spread over successive batches of the partition, some handed
            # to the producer while earlier ones are still on their way, so the order that
            # lands is the batched path's doing, not the test's.
            sent = []
            for n in range(40):
                value = b'{"jobId":"%s","n":%d}' % (key, n)
                sent.append(
                    asyncio.ensure_future(pub.publish(topics.raw, key, value, HEADERS, 10.0))
                )
                await asyncio.sleep(0.001)
            await asyncio.gather(*sent)

        await asyncio.gather(*(lane(key) for key in keys))
    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=12 * 40)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None
        assert record.value is not None
        assert record.value.startswith(b'{"jobId":"%s",' % record.key)
        assert list(record.headers) == HEADERS
        by_key[record.key].append(int(record.value.rsplit(b":", 1)[1].rstrip(b"}")))
    assert by_key == {key: list(range(40)) for key in keys}


async def test_records_still_waiting_for_their_ack_at_shutdown_are_flushed(
    broker: LocalBroker,
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=3)
    async with batched(broker.bootstrap_servers) as pub:
        pending = [
            asyncio.ensure_future(
                pub.publish(topics.raw, b"job_%d" % (n % 7), b"v%d" % n, HEADERS, 10.0)
            )
            for n in range(300)
        ]
        await asyncio.sleep(0)  # appended to their batches, none acknowledged yet
        assert not any(p.done() for p in pending)
    # Leaving the context flushed them: every request has its ack, every record its place.
    assert all(p.done() and p.exception() is None for p in pending)
    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=300)
    assert sorted(r.value for r in records if r.value) == sorted(b"v%d" % n for n in range(300))


async def test_a_hung_broker_fails_each_publish_at_its_deadline_and_later_ones_succeed(
    tmp_path: Path,
) -> None:
    own = LocalBroker(log_path=tmp_path / "broker.log")
    own.start()
    try:
        await ensure_topics(own.bootstrap_servers, {"batched.raw": 3})
        async with batched(own.bootstrap_servers) as pub:
            # The first publish loads the topic's metadata: on a loaded machine, slower.
            await pub.publish("batched.raw", b"job_up", b"up", HEADERS, 10.0)
            assert own.pid is not None
            try:
                await hang(own.pid)

                async def timed(n: int) -> tuple[type[BaseException] | None, float]:
                    started = time.monotonic()
                    try:
                        await pub.publish("batched.raw", b"job_%d" % n, b"hung", HEADERS, DEADLINE)
                    except PublishError as exc:
                        return type(exc), time.monotonic() - started
                    return None, time.monotonic() - started

                outcomes = await asyncio.gather(*(timed(n) for n in range(6)))
            finally:
                os.kill(own.pid, signal.SIGCONT)
            assert {error for error, _ in outcomes} == {PublishError}
            assert max(elapsed for _, elapsed in outcomes) <= DEADLINE + SLACK
            # Back: publishes succeed again without a new publisher (the producer's retries of
            # the hung batches may take a moment to drain).
            deadline = time.monotonic() + 20
            while True:
                try:
                    await pub.publish("batched.raw", b"job_back", b"back", HEADERS, DEADLINE)
                    break
                except PublishError:
                    if time.monotonic() > deadline:
                        pytest.fail("publishes did not succeed again within 20 s")
        records = await read_topic(own.bootstrap_servers, "batched.raw", expect=2)
        assert {b"up", b"back"} <= {r.value for r in records}
    finally:
        own.stop()
