"""Direct delivery (idempotence off): one produce request per broker at a time, retriable errors
sent again within the deadline, the rest answered at once. A small fake broker client stands in
for aiokafka's here, so that each answer can be chosen; the real broker's side (acks, outages,
restarts) is in test_app_kafka.py and test_broker_outage.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import TopicPartition

from ingest.publisher import KafkaPublisher, PublishError

TOPIC = "direct.raw"
NOT_LEADER = 6  # NotLeaderForPartitionError: retriable, metadata stale
TOO_LARGE = 10  # MessageSizeTooLargeError: not retriable


@dataclass
class Response:
    topics: list[tuple[str, list[tuple[int, int]]]]


@dataclass
class Cluster:
    leaders: dict[int, int | None]

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        return self.leaders.get(tp.partition, 0)


@dataclass
class FakeClient:
    """Answers each produce request with the next scripted error code per partition (0 when
    the script is out), after `delay` seconds; remembers what every request carried."""

    script: dict[int, list[int | Exception | None]] = field(default_factory=dict)
    """Per partition, the next answers: an error code, an exception, or None (left out)."""
    delay: float = 0.0
    node_delays: dict[int, float] = field(default_factory=dict)
    cluster: Cluster = field(default_factory=lambda: Cluster({}))
    requests: list[dict[int, int]] = field(default_factory=list)
    """Per request: partition -> records."""
    values: list[bytes | None] = field(default_factory=list)
    """Every record's value, in the order the requests carried them."""
    in_flight: int = 0
    most_in_flight: int = 0
    metadata_updates: int = 0

    def force_metadata_update(self) -> None:
        self.metadata_updates += 1

    async def send(self, node: int, request: Any) -> Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.node_delays.get(node, self.delay))
            [(topic, partitions)] = request._topics
            self.requests.append({p: _records(data) for p, data in partitions})
            for _, data in partitions:
                self.values.extend(r.value for r in DefaultRecordBatch(bytearray(data)))
            answers = []
            for partition, _ in partitions:
                queue = self.script.get(partition, [])
                code = queue.pop(0) if queue else 0
                if isinstance(code, Exception):
                    raise code
                if code is not None:
                    answers.append((partition, code))
            return Response([(topic, answers)])
        finally:
            self.in_flight -= 1


def _records(batch: bytes) -> int:
    return int.from_bytes(batch[57:61], "big")  # v2 record batch: the record count


class FakeProducer:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.metadata: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Resolved when the topic's metadata arrives."""
        self.known: set[int] | None = None

    async def partitions_for(self, topic: str) -> set[int]:
        # As aiokafka's client: from the cache without suspending once it is filled, else
        # after the metadata answer (behind a shield, one more loop turn).
        if self.known is not None:
            return self.known
        await asyncio.shield(self.metadata)
        assert self.known is not None
        return self.known


async def publisher(client: FakeClient, partitions: int = 4) -> KafkaPublisher:
    pub = KafkaPublisher("unused:9092", client_id="test", enable_idempotence=False, linger_ms=0)
    pub._loop = asyncio.get_running_loop()
    pub._use(FakeProducer(client))  # type: ignore[arg-type]
    pub._partitions[TOPIC] = list(range(partitions))
    return pub


def key_for(pub: KafkaPublisher, partition: int) -> bytes:
    """A key that Kafka's partitioner puts on `partition`."""
    for i in range(10_000):
        key = f"job_{i}".encode()
        if pub._partition_of(key, pub._partitions[TOPIC]) == partition:
            return key
    raise AssertionError("no key found")


async def test_a_request_in_flight_holds_the_next_records_for_one_request() -> None:
    client = FakeClient(delay=0.05)
    pub = await publisher(client)
    keys = [key_for(pub, p) for p in range(4)]
    first = asyncio.create_task(pub.publish(TOPIC, keys[0], b"{}", [], 2.0))
    await asyncio.sleep(0.01)  # the first request is on its way
    rest = [pub.publish(TOPIC, keys[i % 4], b"{}", [], 2.0) for i in range(20)]
    await asyncio.gather(first, *rest)
    assert client.most_in_flight == 1
    assert client.requests == [{0: 1}, {0: 5, 1: 5, 2: 5, 3: 5}]


async def test_a_moving_leader_is_retried_and_the_partition_keeps_its_order() -> None:
    client = FakeClient(script={1: [NOT_LEADER, NOT_LEADER]})
    pub = await publisher(client)
    key = key_for(pub, 1)
    await asyncio.gather(*(pub.publish(TOPIC, key, b"%d" % i, [], 2.0) for i in range(3)))
    assert client.metadata_updates == 2
    assert client.requests == [{1: 3}, {1: 3}, {1: 3}]  # the same batch, sent again whole


async def test_a_refused_batch_fails_its_records_at_once_and_not_the_others() -> None:
    client = FakeClient(script={2: [TOO_LARGE]})
    pub = await publisher(client)
    started = time.monotonic()
    results = await asyncio.gather(
        pub.publish(TOPIC, key_for(pub, 2), b"{}", [], 2.0),
        pub.publish(TOPIC, key_for(pub, 3), b"{}", [], 2.0),
        return_exceptions=True,
    )
    assert isinstance(results[0], PublishError)
    assert "MessageSizeTooLarge" in str(results[0])
    assert results[1] is None
    assert time.monotonic() - started < 0.5
    assert len(client.requests) == 1


async def test_no_leader_means_retries_until_the_deadline_then_a_publish_error() -> None:
    client = FakeClient(cluster=Cluster({0: None}))
    pub = await publisher(client)
    started = time.monotonic()
    with pytest.raises(PublishError, match="deadline"):
        await pub.publish(TOPIC, key_for(pub, 0), b"{}", [], 0.5)
    assert 0.45 <= time.monotonic() - started < 1.0
    assert client.requests == []
    assert client.metadata_updates >= 2
    await asyncio.sleep(0.25)  # the expired batch is dropped, not sent once a leader is known
    client.cluster.leaders[0] = 0
    await pub.publish(TOPIC, key_for(pub, 0), b"{}", [], 0.5)
    assert client.requests == [{0: 1}]


async def test_a_broken_connection_is_retried_and_the_records_land_once_it_is_back() -> None:
    client = FakeClient(script={3: [KafkaConnectionError("gone")]})
    pub = await publisher(client)
    await pub.publish(TOPIC, key_for(pub, 3), b"{}", [], 2.0)
    assert client.requests == [{3: 1}, {3: 1}]


async def test_a_slow_broker_holds_back_only_the_partitions_it_leads() -> None:
    client = FakeClient(cluster=Cluster({0: 0, 1: 1}), node_delays={0: 2.0})
    pub = await publisher(client, partitions=2)
    slow = asyncio.create_task(pub.publish(TOPIC, key_for(pub, 0), b"{}", [], 3.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await pub.publish(TOPIC, key_for(pub, 1), b"{}", [], 3.0)
    assert time.monotonic() - started < 0.5
    assert not slow.done()
    await slow


async def test_a_partition_the_answer_leaves_out_is_sent_again() -> None:
    client = FakeClient(script={2: [None]})
    pub = await publisher(client)
    await pub.publish(TOPIC, key_for(pub, 2), b"{}", [], 2.0)
    assert client.requests == [{2: 1}, {2: 1}]


async def test_a_partition_whose_leader_moves_keeps_its_order_across_the_move() -> None:
    client = FakeClient(script={0: [NOT_LEADER]}, node_delays={0: 0.2}, cluster=Cluster({0: 0}))
    pub = await publisher(client, partitions=1)
    key = key_for(pub, 0)
    first = asyncio.create_task(pub.publish(TOPIC, key, b"1", [], 3.0))
    await asyncio.sleep(0.05)  # on its way to broker 0
    client.cluster.leaders[0] = 1  # the leader moves
    later = [pub.publish(TOPIC, key, b"%d" % i, [], 3.0) for i in (2, 3)]
    await asyncio.gather(first, *later)
    # The newer records wait for the first batch's answer (refused: not the leader), then for
    # its retry to the new leader.
    assert client.requests == [{0: 1}, {0: 1}, {0: 2}]


async def test_records_published_while_the_topic_metadata_loads_keep_their_order() -> None:
    client = FakeClient()
    pub = await publisher(client, partitions=1)
    del pub._partitions[TOPIC]  # a topic this publisher has not sent to yet
    producer = pub._producer
    assert isinstance(producer, FakeProducer)
    key = b"job_1"
    early = [asyncio.create_task(pub.publish(TOPIC, key, b"%d" % i, [], 2.0)) for i in range(3)]
    await asyncio.sleep(0.01)  # all three wait for the metadata
    # The answer fills the cache; a publish starting in the same turn finds the partitions
    # without waiting, while the three are still to wake up: it must not overtake them.
    producer.known = {0}
    producer.metadata.set_result(None)
    late = asyncio.create_task(pub.publish(TOPIC, key, b"3", [], 2.0))
    await asyncio.gather(*early, late)
    assert client.values == [b"0", b"1", b"2", b"3"]
