"""Whether the offsets a service stored belong to the log it now reads (invariant 7 of
docs/architecture.md).

A consumer seeks each partition to the next offset kept in its store. That is only right while
the partition is the same log the offset was taken from. When it is not (a broker that started
over empty, a raw topic deleted and recreated, a cluster restored from an older snapshot, an
unclean leader election that truncated a partition), the stored offset points into another log:
every record of the new one below it would be taken for a replay and passed over, silently.

Two signs tell a log apart from the one the offsets were stored against:

- the topic id: Kafka (2.8+) gives every topic a random id when it is created, reported from
  Metadata v10 on; a recreated topic has a new one. The store keeps it beside the offsets.
- the log's end: within one log, a stored offset (`last applied + 1`) can never pass the
  partition's high watermark, which only grows. A stored offset beyond the end is another log.

A partition found on another log is taken from the new log's first record: the store's dedup
keys still hold, so nothing already applied is applied twice. A stored offset *below* the log's
start is not this: it is retention that deleted records before they were read (a gap, counted as
lost, handled by the runtime).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeAlias

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

# The topic id a broker reports for a topic it does not know (or for one without an id).
_NO_TOPIC_ID = bytes(16)


class _Uuid(AbstractType[bytes]):  # type: ignore[misc]
    """Kafka's UUID type: 16 raw bytes."""

    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        value = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return value


class _MetadataResponseV10(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class _MetadataRequestV10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = _MetadataResponseV10
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


_TopicIdStruct: TypeAlias = _MetadataRequestV10


class TopicIdRequest(Request[_TopicIdStruct]):  # type: ignore[misc]
    """Metadata v10 for one topic: the first version that reports topic ids. aiokafka's own
    MetadataRequest stops at v5, before them."""

    API_KEY = 3

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[_TopicIdStruct]) -> _TopicIdStruct:
        return request_struct_class([(_NO_TOPIC_ID, self._topic, {})], False, False, False, {})


def topic_id_of(response: Any, topic: str) -> str | None:
    """The topic's id in a TopicIdRequest's answer (as a UUID string), or None when the broker
    gave none (no such topic, or a broker without topic ids)."""
    for error_code, name, raw_id, *_ in response.topics:
        if name == topic and error_code == 0 and raw_id != _NO_TOPIC_ID:
            return str(uuid.UUID(bytes=raw_id))
    return None


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store holds for one partition of one service."""

    next_offset: int
    """The offset of the next record to take."""
    topic_id: str | None
    """The id of the topic the offset was taken from; None when the broker reported none."""


@dataclass(frozen=True, slots=True)
class LogReset:
    """A partition whose stored offset belongs to another log, and where to take it from."""

    partition: int
    """The partition."""
    stored_offset: int
    """The offset the store held (of the old log)."""
    new_offset: int
    """Where the new log is taken from: its first record."""
    reason: str
    """Why the log is another one, in words for the log line."""


def find_resets(
    stored: Mapping[int, Stored],
    topic_id: str | None,
    ends: Mapping[int, int],
    log_start: int = 0,
) -> list[LogReset]:
    """The partitions of `stored` that are on another log now: the topic id changed (where both
    are known), or the stored offset lies beyond the partition's end (`ends`, where known).
    They are taken from `log_start` (0: a broker whose log starts later moves a fetch at 0 to its
    first record). Partitions with nothing stored, or not in `ends` and with the same id, are
    left alone."""
    resets: list[LogReset] = []
    for partition, held in sorted(stored.items()):
        end = ends.get(partition)
        if topic_id is not None and held.topic_id is not None and held.topic_id != topic_id:
            reason = f"the topic id changed from {held.topic_id} to {topic_id}"
        elif end is not None and held.next_offset > end:
            reason = f"the stored offset {held.next_offset} lies beyond the log's end {end}"
        else:
            continue
        resets.append(LogReset(partition, held.next_offset, log_start, reason))
    return resets
