"""Creating the project's topics, idempotently, on any Kafka-protocol broker, with their
durability settings (`topic_configs`): created with them, and an existing topic weaker than
asked reported (or, with `fix`, altered). Partitions are never changed: only reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    InvalidRequestError,
    KafkaError,
    UnsupportedVersionError,
)

from wazza_hooks import contract
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity

log = logging.getLogger("wazza.topics")

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

# The consumers keep each event's history row, their dedup key, 7 days
# (WAZZA_HISTORY_RETENTION_SECONDS): a raw record older than that could be re-read as new after a
# replay, so the raw topic keeps at least as long.
DEFAULT_RAW_RETENTION_HOURS = 7 * 24
# Dead letters wait for a person: a month covers a holiday and the time to fix the cause.
DEFAULT_DLQ_RETENTION_DAYS = 30
# The ingester's default WAZZA_MAX_BODY_BYTES.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# What a record adds to its body: the contract's headers (a few hundred bytes), a dead letter's
# headers (its error message is cut at 2 KiB) and the record batch's framing, with ample room.
HEADER_ROOM_BYTES = 64 * 1024
# acks=all waits for this many in-sync replicas: two survive the loss of one broker without losing
# an acknowledged record. A topic with fewer replicas can require no more than it has.
_WANTED_MIN_ISR = 2
# Kafka's errors for a request the broker does not offer (UNSUPPORTED_VERSION, INVALID_REQUEST):
# brokers such as Tansu that lack describe/alter configs answer them per resource.
_NO_CONFIGS_CODES = (35, 42)
# DescribeConfigs v1+ config_source of a value set on the topic itself (DYNAMIC_TOPIC_CONFIG).
_TOPIC_SOURCE = 1
# Settings compared as "at least": a value below the wanted one is weaker. For retention,
# -1 means forever, which nothing is weaker than.
_AT_LEAST = ("min.insync.replicas", "retention.ms", "max.message.bytes")


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


class TopicsTooWeak(TopicError):
    """Existing topics have weaker settings than asked; `problems` says each, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            f"{len(problems)} topic setting(s) weaker than asked "
            "(run again with --fix to alter them):\n" + "\n".join(problems)
        )
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """What `ensure_topics` did for one topic."""

    name: str
    """The topic."""
    created: bool
    """True when this call created it; False when it existed."""
    partitions: int
    """Its partition count now."""
    fixed: tuple[str, ...] = field(default=())
    """The settings this call altered (with `fix`), one line each."""
    configs_checked: bool = True
    """False when the broker could not describe its configs (Tansu): nothing was compared."""


def topic_configs(
    raw: str,
    quarantine: str,
    dlq: str,
    *,
    replication_factor: int,
    raw_retention_hours: int = DEFAULT_RAW_RETENTION_HOURS,
    dlq_retention_days: int = DEFAULT_DLQ_RETENTION_DAYS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> dict[str, dict[str, str]]:
    """The durability settings of each topic: min.insync.replicas of min(2, replicas), the raw
    and quarantine topics kept `raw_retention_hours` (at least the dedup window), the dead
    letters `dlq_retention_days`, and records up to the body limit plus headers."""
    common = {
        "min.insync.replicas": str(min(_WANTED_MIN_ISR, replication_factor)),
        "max.message.bytes": str(max_body_bytes + HEADER_ROOM_BYTES),
    }
    raw_ms = str(raw_retention_hours * 3600 * 1000)
    return {
        raw: {**common, "retention.ms": raw_ms},
        quarantine: {**common, "retention.ms": raw_ms},
        dlq: {**common, "retention.ms": str(dlq_retention_days * 86400 * 1000)},
    }


def local_topic_configs(memory_only: bool) -> dict[str, dict[str, str]] | None:
    """The settings of the local broker's topics (one replica, the defaults), or None on Tansu
    (memory only), which keeps no configs: they are then skipped, said in one log line."""
    if memory_only:
        log.info("Tansu keeps no topic configs: retention and size limits not set")
        return None
    return topic_configs(
        contract.RAW_TOPIC, contract.QUARANTINE_TOPIC, contract.DLQ_TOPIC, replication_factor=1
    )


def default_topics(partitions: int = DEFAULT_PARTITIONS) -> dict[str, int]:
    """The raw, quarantine and dead-letter topics with their partition counts."""
    return {
        contract.RAW_TOPIC: partitions,
        contract.QUARANTINE_TOPIC: partitions,
        contract.DLQ_TOPIC: partitions,
    }


async def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    fix: bool = False,
    security: KafkaSecurity = PLAINTEXT,
) -> list[TopicStatus]:
    """Create each missing topic with its partition count and `configs`; leave existing ones'
    partitions as they are. With `configs`, an existing topic is compared with them
    (min.insync.replicas, retention.ms, max.message.bytes: each at least the wanted value;
    min.insync.replicas capped at the topic's own replica count): a weaker one raises
    TopicsTooWeak, or with `fix` is altered (its other topic-level settings kept). A broker
    that cannot describe configs (Tansu) is not compared: logged, not failed."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(_ADMIN_TIMEOUT_SECONDS * 1000),
        **security.client_options(),
    )
    try:
        async with asyncio.timeout(_ADMIN_TIMEOUT_SECONDS):
            await admin.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise TopicError(f"cannot reach the broker at {bootstrap_servers}: {exc!r}") from exc
    wanted = configs or {}
    fixed: dict[str, list[str]] = {}
    checked = True
    try:
        async with asyncio.timeout(_ADMIN_TIMEOUT_SECONDS):
            response = await admin.create_topics(
                [
                    NewTopic(
                        name, count, replication_factor, topic_configs=dict(wanted.get(name, {}))
                    )
                    for name, count in topics.items()
                ]
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
            existing = [name for name in topics if name not in created and name in wanted]
            if existing:
                replicas = {str(d["topic"]): _replica_count(d) for d in described}
                checked, fixed = await _compare(admin, existing, wanted, replicas, fix)
    except (KafkaError, TimeoutError) as exc:
        raise TopicError(f"topic administration failed on {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    return [
        TopicStatus(
            name,
            name in created,
            counts.get(name, 0),
            tuple(fixed.get(name, ())),
            checked or name in created,
        )
        for name in topics
    ]


def _replica_count(described: Mapping[str, Any]) -> int:
    partitions = described.get("partitions") or []
    return min((len(p.get("replicas", [])) for p in partitions), default=1) or 1


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's effective settings, and under the key "<topic>\0own" the ones set on the
    topic itself; raises _NoConfigs when the broker does not offer DescribeConfigs."""
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    except (UnsupportedVersionError, InvalidRequestError, IncompatibleBrokerVersion) as exc:
        raise _NoConfigs(repr(exc)) from exc
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        version = response.API_VERSION
        for resource in response.resources:
            code, message, _type, name, entries = resource[:5]
            if code in _NO_CONFIGS_CODES:
                raise _NoConfigs(f"error {code}: {message}")
            if code:
                raise TopicError(f"cannot describe the configs of {name}: {message} (error {code})")
            values = found.setdefault(name, {})
            own = found.setdefault(f"{name}\0own", {})
            for entry in entries:
                key, value = entry[0], entry[1]
                if value is None:
                    continue
                values[key] = value
                # v0 says is_default (a bool); v1+ says where the value comes from.
                on_topic = (not entry[3]) if version == 0 else entry[3] == _TOPIC_SOURCE
                if on_topic and not entry[2]:  # read-only settings cannot be sent back
                    own[key] = value
    return found


class _NoConfigs(Exception):
    """The broker does not describe or alter topic configs."""


def _weaker(key: str, have: str | None, want: str) -> bool:
    if key not in _AT_LEAST:
        return have != want
    if have is None:
        return True
    have_n, want_n = int(have), int(want)
    if key == "retention.ms":
        if have_n < 0:
            return False  # kept forever
        if want_n < 0:
            return True
    return have_n < want_n


def _problems(
    name: str, current: Mapping[str, str], wanted: Mapping[str, str], replicas: int
) -> dict[str, tuple[str | None, str, str]]:
    """key -> (current value, wanted value, one line saying so) for each weaker setting."""
    found: dict[str, tuple[str | None, str, str]] = {}
    for key, want in wanted.items():
        if key == "min.insync.replicas":
            # More than the topic's replicas would refuse every acks=all write.
            want = str(min(int(want), replicas))
        have = current.get(key)
        if _weaker(key, have, want):
            found[key] = (have, want, f"{name}: {key} is {have}, weaker than the wanted {want}")
    return found


async def _compare(
    admin: AIOKafkaAdminClient,
    names: list[str],
    wanted: Mapping[str, Mapping[str, str]],
    replicas: Mapping[str, int],
    fix: bool,
) -> tuple[bool, dict[str, list[str]]]:
    """(whether compared, what was altered per topic); raises TopicsTooWeak."""
    try:
        current = await _describe(admin, names)
    except _NoConfigs as exc:
        log.warning(
            "the broker does not describe topic configs (%s): settings of existing topics "
            "not checked",
            exc,
        )
        return False, {}
    weak = {
        name: _problems(name, current.get(name, {}), wanted[name], replicas.get(name, 1))
        for name in names
    }
    weak = {name: found for name, found in weak.items() if found}
    if not weak:
        return True, {}
    if not fix:
        raise TopicsTooWeak([line for found in weak.values() for _, _, line in found.values()])
    # AlterConfigs replaces a topic's whole set of own settings: send those it has, with the
    # weak ones raised (IncrementalAlterConfigs would not need it; aiokafka 0.14 lacks it).
    resources = [
        ConfigResource(
            ConfigResourceType.TOPIC,
            name,
            {
                **current.get(f"{name}\0own", {}),
                **{key: want for key, (_, want, _) in found.items()},
            },
        )
        for name, found in weak.items()
    ]
    for response in await admin.alter_configs(resources):
        for code, message, _type, name in response.resources:
            if code:
                raise TopicError(f"cannot alter the configs of {name}: {message} (error {code})")
    after = await _describe(admin, list(weak))
    still = [
        line
        for name in weak
        for _, _, line in _problems(
            name, after.get(name, {}), wanted[name], replicas.get(name, 1)
        ).values()
    ]
    if still:
        raise TopicsTooWeak(still)
    return True, {
        name: [f"{key} {have} -> {want}" for key, (have, want, _) in found.items()]
        for name, found in weak.items()
    }
