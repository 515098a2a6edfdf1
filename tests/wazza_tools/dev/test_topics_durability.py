"""`wazza-hooks topics ensure` on Apache Kafka: topics created with their durability settings; an
existing topic with weaker settings refused (one line per setting, exit 1), then altered by
--fix, its other settings kept."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.commands import hooks
from tests.support.env import subprocess_env
from tests.support.kafka import unique
from wazza_tools.dev.apache_kafka import ApacheKafka

_WANTED = ("min.insync.replicas", "retention.ms", "max.message.bytes")


async def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    ((code, _message, _type, _name, entries),) = (r[:5] for r in response.resources)
    assert code == 0
    return {entry[0]: entry[1] for entry in entries}


def _names() -> list[str]:
    return [unique("dur.raw"), unique("dur.quarantine"), unique("dur.dlq")]


def _topic_args(names: list[str]) -> list[str]:
    return ["--raw-topic", names[0], "--quarantine-topic", names[1], "--dlq-topic", names[2]]


async def test_topics_are_created_with_their_durability_settings(broker: ApacheKafka) -> None:
    names = _names()
    env = subprocess_env(WAZZA_MAX_BODY_BYTES=str(2 * 1024 * 1024))

    result = await hooks(
        "topics", "ensure", "--bootstrap-servers", broker.bootstrap_servers,
        "--partitions", 2, "--raw-retention-hours", 200, "--dlq-retention-days", 40,
        *_topic_args(names), env=env,
    )  # fmt: skip

    assert result.code == 0, result
    raw, quarantine, dlq = [await _configs(broker.bootstrap_servers, n) for n in names]
    # One broker: min.insync.replicas can be no more than its one replica.
    assert {k: raw[k] for k in _WANTED} == {
        "min.insync.replicas": "1",
        "retention.ms": str(200 * 3600 * 1000),
        "max.message.bytes": str(2 * 1024 * 1024 + 64 * 1024),
    }
    assert quarantine["retention.ms"] == raw["retention.ms"]
    assert dlq["retention.ms"] == str(40 * 86400 * 1000)
    assert dlq["max.message.bytes"] == raw["max.message.bytes"]

    again = await hooks(
        "topics", "ensure", "--bootstrap-servers", broker.bootstrap_servers,
        "--partitions", 3, "--raw-retention-hours", 200, "--dlq-retention-days", 40,
        *_topic_args(names), env=env,
    )  # fmt: skip
    assert again.code == 0, again
    # Partitions are reported, never changed.
    assert f"{names[0]}: exists, 2 partitions (not 3" in again.out


async def test_a_weaker_existing_topic_is_refused_then_fixed(broker: ApacheKafka) -> None:
    names = _names()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        weak = {
            "retention.ms": str(3600 * 1000),
            "max.message.bytes": "100000",
            # A setting of the topic's own that a fix must keep.
            "cleanup.policy": "delete",
            "segment.ms": str(6 * 3600 * 1000),
        }
        await admin.create_topics([NewTopic(names[0], 1, 1, topic_configs=weak)])
    finally:
        await admin.close()
    env = subprocess_env()
    args = [
        "topics",
        "ensure",
        "--bootstrap-servers",
        broker.bootstrap_servers,
        *_topic_args(names),
    ]

    refused = await hooks(*args, env=env)

    assert refused.code == 1, refused
    lines = [line for line in refused.err.splitlines() if names[0] in line]
    assert sorted(lines) == [
        f"wazza-hooks: {names[0]}: max.message.bytes is 100000, weaker than the wanted 1114112",
        f"wazza-hooks: {names[0]}: retention.ms is 3600000, weaker than the wanted 604800000",
    ]
    assert "--fix" in refused.err
    assert (await _configs(broker.bootstrap_servers, names[0]))["retention.ms"] == "3600000"

    fixed = await hooks(*args, "--fix", env=env)

    assert fixed.code == 0, fixed
    assert "max.message.bytes 100000 -> 1114112" in fixed.out
    assert "retention.ms 3600000 -> 604800000" in fixed.out
    after = await _configs(broker.bootstrap_servers, names[0])
    assert after["retention.ms"] == "604800000"
    assert after["max.message.bytes"] == "1114112"
    assert after["segment.ms"] == str(6 * 3600 * 1000)  # kept

    assert (await hooks(*args, env=env)).code == 0
