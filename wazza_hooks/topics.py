"""Creating the project's topics, idempotently, on any Kafka-protocol broker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from . import contract

# Kafka's error code for "Topic with this name already exists".
_TOPIC_ALREADY_EXISTS = 36
# Admin calls against a reachable broker answer in milliseconds; an unreachable one is reported
# after this long rather than hanging a deploy script.
_ADMIN_TIMEOUT_SECONDS = 15.0
# The partition count caps consumer parallelism (one partition, one consumer of a group). Twelve
# divides evenly among 1, 2, 3, 4, 6 and 12 replicas.
DEFAULT_PARTITIONS = 12


# How often a topic just created is asked for its leaders.
_LEADER_POLL_SECONDS = 0.05


def _led(described: list[dict[str, object]], topics: Mapping[str, int]) -> bool:
    """Every topic of `topics` described, without error, with a leader for each partition."""
    found = {str(d["topic"]): d for d in described}
    for name in topics:
        topic = found.get(name)
        if topic is None or topic.get("error_code"):
            return False
        partitions = topic.get("partitions")
        if not isinstance(partitions, list) or not partitions:
            return False
        if any(p.get("leader", -1) < 0 or p.get("error_code") for p in partitions):
            return False
    return True


class TopicError(RuntimeError):
    """A topic could not be created or the broker could not be reached."""


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """What `ensure_topics` did for one topic."""

    name: str
    """The topic."""
    created: bool
    """True when this call created it; False when it existed."""
    partitions: int
    """Its partition count now."""


def default_topics(partitions: int = DEFAULT_PARTITIONS) -> dict[str, int]:
    """The raw, quarantine and dead-letter topics with their partition counts."""
    return {
        contract.RAW_TOPIC: partitions,
        contract.QUARANTINE_TOPIC: partitions,
        contract.DLQ_TOPIC: partitions,
    }


async def ensure_topics(
    bootstrap_servers: str, topics: Mapping[str, int], replication_factor: int = 1
) -> list[TopicStatus]:
    """Create each missing topic with its partition count; leave existing ones as they are."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(_ADMIN_TIMEOUT_SECONDS * 1000)
    )
    try:
        async with asyncio.timeout(_ADMIN_TIMEOUT_SECONDS):
            await admin.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise TopicError(f"cannot reach the broker at {bootstrap_servers}: {exc!r}") from exc
    try:
        async with asyncio.timeout(_ADMIN_TIMEOUT_SECONDS):
            response = await admin.create_topics(
                [NewTopic(name, count, replication_factor) for name, count in topics.items()]
            )
            created: set[str] = set()
            for name, code, message in response.topic_errors:
                if code == 0:
                    created.add(name)
                elif code != _TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"cannot create topic {name}: {message} (error {code})")
            described = await admin.describe_topics(list(topics))
            # A topic is created once the controller has it; a broker serves it a moment later
            # (Apache Kafka applies the metadata asynchronously). Until every partition has a
            # leader, a produce or a fetch there is refused, so wait for that, within the bound.
            while not _led(described, topics):
                await asyncio.sleep(_LEADER_POLL_SECONDS)
                described = await admin.describe_topics(list(topics))
    except (KafkaError, TimeoutError) as exc:
        raise TopicError(f"topic administration failed on {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    return [TopicStatus(name, name in created, counts.get(name, 0)) for name in topics]
