"""The Apache Kafka engine (wazza_tools.dev.apache_kafka): real JVMs on loopback, no mocks.

They need Java >= 17 and Maven, as the whole suite does (tests/conftest.py fails, naming what is
missing, where they are not). The first run fetches the jars with Maven (once, into the user's
cache), which takes longer than the rest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaClient, AIOKafkaProducer

from consumers.log_identity import TopicIdRequest, topic_id_of
from tests.support.env import ROOT
from tests.support.kafka import read_topic, unique
from wazza_tools.dev.apache_kafka import (
    ApacheKafka,
    ApacheKafkaCluster,
    ensure_jars,
    server_properties,
)
from wazza_tools.dev.topics import ensure_topics

pytestmark = pytest.mark.slow

# An acks=all record is acknowledged in milliseconds; after a node is killed, once its session
# expires (3 s in the cluster) and leaders move: a few seconds more.
ACK_SECONDS = 30.0


# --- topic ids -------------------------------------------------------------------------------


async def topic_id(bootstrap: str, topic: str) -> str:
    """The broker's id of `topic` (a recreated topic has a new one), as the consumers ask it."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node = next(iter(client.cluster.brokers())).nodeId
        response: Any = await client.send(node, TopicIdRequest(topic))
    finally:
        await client.close()
    found = topic_id_of(response, topic)
    assert found is not None, response
    return found


# --- helpers ------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Each value acknowledged by an idempotent acks=all producer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=10_000
    )
    await producer.start()
    try:
        for value in values:
            await asyncio.wait_for(producer.send_and_wait(topic, value, key=value), ACK_SECONDS)
    finally:
        await producer.stop()


async def values_of(bootstrap: str, topic: str, expect: int) -> list[bytes]:
    records = await read_topic(bootstrap, topic, expect=expect, timeout=20.0)
    return sorted(r.value for r in records if r.value is not None)


# --- tests --------------------------------------------------------------------------------------


def test_jars_are_fetched_once() -> None:
    libs = ensure_jars()
    assert any(libs.glob("kafka_2.13-*.jar"))
    assert any(libs.glob("log4j-slf4j-impl-*.jar"))
    assert ensure_jars() == libs


async def test_a_node_keeps_records_and_topic_ids_across_stop_and_kill(tmp_path: Path) -> None:
    node = ApacheKafka(tmp_path / "kafka")
    await asyncio.to_thread(node.start)
    try:
        bootstrap = node.bootstrap_servers
        topic = unique("test.durable")
        await ensure_topics(bootstrap, {topic: 3})
        first = [f"a{i}".encode() for i in range(20)]
        await produce(bootstrap, topic, first)
        assert await values_of(bootstrap, topic, len(first)) == sorted(first)
        topic_uuid = await topic_id(bootstrap, topic)

        # A clean stop and start on the same data dir (the same ports: the same node object).
        await asyncio.to_thread(node.stop)
        assert not node.running
        assert (node.data_dir / "meta.properties").is_file()
        await asyncio.to_thread(node.start)
        assert await values_of(bootstrap, topic, len(first)) == sorted(first)
        assert await topic_id(bootstrap, topic) == topic_uuid

        # A crash: what was acknowledged with acks=all is there after the restart.
        second = [f"b{i}".encode() for i in range(20)]
        await produce(bootstrap, topic, second)
        await asyncio.to_thread(node.kill)
        assert not node.running
        await asyncio.to_thread(node.start)
        assert await values_of(bootstrap, topic, 40) == sorted(first + second)
        assert await topic_id(bootstrap, topic) == topic_uuid
    finally:
        await asyncio.to_thread(node.stop)
    assert "Kafka Server started" in node.log_path.read_text()


def test_a_node_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    from wazza_tools.dev.localbroker import BrokerError

    node = ApacheKafka(tmp_path / "kafka", overrides={"num.network.threads": "not-a-number"})
    with pytest.raises(
        BrokerError, match=r"(?s)(exited at start|formatting).*num\.network\.threads"
    ):
        node.start()
    assert not node.running


def compose_kafka_settings() -> dict[str, str]:
    """The Kafka server settings of deploy/compose.yaml (KAFKA_FOO_BAR -> foo.bar), leaving
    out values the shell interpolates."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    env = compose["services"]["kafka"]["environment"]
    return {
        name.removeprefix("KAFKA_").lower().replace("_", "."): str(value)
        for name, value in env.items()
        if name.startswith("KAFKA_") and "${" not in str(value)
    }


def test_server_properties_agree_with_compose(tmp_path: Path) -> None:
    props = server_properties(
        node_id=1,
        host="127.0.0.1",
        port=9092,
        controller_port=9093,
        voters="1@127.0.0.1:9093",
        data_dir=tmp_path,
    )
    compose = compose_kafka_settings()
    # Where each runs differs by nature: addresses and paths.
    where = {"listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs"}
    shared = sorted((set(props) & set(compose)) - where)
    assert {
        "process.roles",
        "auto.create.topics.enable",
        "group.initial.rebalance.delay.ms",
        "offsets.topic.replication.factor",
    } <= set(shared)
    assert {k: props[k] for k in shared} == {k: compose[k] for k in shared}


async def test_a_cluster_acknowledges_with_one_node_killed(tmp_path: Path) -> None:
    cluster = ApacheKafkaCluster(tmp_path / "cluster")
    await asyncio.to_thread(cluster.start)
    try:
        bootstrap = cluster.bootstrap_servers
        topic = unique("test.replicated")
        await ensure_topics(bootstrap, {topic: 3}, replication_factor=3)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all"
        )
        await producer.start()
        try:
            for i in range(10):
                await asyncio.wait_for(producer.send_and_wait(topic, b"before%d" % i), ACK_SECONDS)
            await asyncio.to_thread(cluster.nodes[0].kill)
            for i in range(10):
                # Keys spread the records over every partition, the killed node's included.
                await asyncio.wait_for(
                    producer.send_and_wait(topic, b"after%d" % i, key=b"%d" % i), ACK_SECONDS
                )
        finally:
            await producer.stop()
        survivors = ",".join(n.bootstrap_servers for n in cluster.nodes[1:])
        assert len(await values_of(survivors, topic, 20)) == 20
    finally:
        await asyncio.to_thread(cluster.stop)
