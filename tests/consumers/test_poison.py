"""No single record can stop a consumer service (invariant 8 of docs/architecture.md): against
the real broker and both stores, records the ingester would never write (they reached the raw
topic some other way) are dead-lettered or kept in the store, and every other record is
applied."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers import metrics as consumer_metrics
from consumers.runtime import ConsumerRuntime
from consumers.service import BUILTIN
from consumers.settings import ConsumerSettings
from consumers.store import Store, open_store
from tests.support.consumers import (
    completed,
    envelope_of,
    progress,
    rows,
    running,
    settings_for,
    until,
)
from tests.support.env import BIN, subprocess_env
from tests.support.kafka import make_topics, read_topic
from tests.support.postgres import fresh_database
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker

SERVICES = ("completion", "failure", "progress")


@asynccontextmanager
async def consuming(
    store: Store, settings: ConsumerSettings, *names: str
) -> AsyncIterator[list[ConsumerRuntime]]:
    """The built-in services of these names running in this loop."""
    async with running(store, settings, *(BUILTIN[n] for n in names)) as runtimes:
        yield runtimes


async def offsets_at(store: Store, topic: str, service: str, records: int) -> bool:
    found = await rows(
        store,
        "SELECT SUM(next_offset) FROM consumer_offsets WHERE service = ? AND topic = ?",
        service,
        topic,
    )
    return found[0][0] is not None and int(found[0][0]) == records


async def send(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Write records as they are, headers included, to partition 0 (one order for all)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 << 20)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(topic, value, key=key, headers=headers, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def raw(body: bytes, **header_overrides: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A raw-topic record as the ingester writes it, with some headers replaced."""
    headers = [(k, header_overrides.get(k, v)) for k, v in envelope_of(body).to_headers()]
    return orjson.loads(body)["jobId"].encode(), body, headers


def dead_lettered(service: str) -> float:
    return sum(
        consumer_metrics.EVENTS.labels(service, t, "dead_lettered")._value.get()
        for t in (*sorted(contract.KNOWN_EVENT_TYPES), "other")
    )


async def test_records_the_store_cannot_take_are_dead_lettered_and_the_service_goes_on(
    broker: LocalBroker, store: Store
) -> None:
    """A receive time beyond 64 bits (SQLite raised OverflowError and the service exited), an
    event time before year 1 in UTC, an output nested 300 deep, a progress of 150 %: each is
    dead-lettered with its reason; the good events around them are applied; a completion that
    carries a stray progress of 100.5 % is applied, not lost."""
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    # Written by hand: orjson itself writes at most 254 levels.
    deep = b'{"event":"job.completed","jobId":"job_deep","output":' + b'{"n":' * 300 + b'"x"'
    deep += b"}" * 300 + b',"timestamp":"2025-10-22T10:30:00Z"}'
    good = completed("job_good_1", "2025-10-22T10:30:00Z")
    stray = orjson.loads(completed("job_stray", "2025-10-22T10:30:00Z"))
    stray["progress"] = {"percent": 100.5}
    poisoned = [
        raw(completed("job_huge_time", "2025-10-22T10:30:00Z"), **{
            contract.H_RECEIVED_AT_MS: str(2**64).encode()
        }),
        raw(completed("job_year_one", "0001-01-01T00:00:00+00:01")),
        raw(deep),
        raw(progress("job_over", 150, "2025-10-22T10:30:00Z")),
    ]  # fmt: skip
    await send(
        broker.bootstrap_servers,
        topics.raw,
        [
            raw(good),
            *poisoned,
            raw(orjson.dumps(stray)),
            raw(completed("job_good_2", "2025-10-22T10:31:00Z")),
        ],
    )
    before = {s: dead_lettered(s) for s in SERVICES}
    async with consuming(
        store, settings_for(broker.bootstrap_servers, topics.raw, topics.dlq), *SERVICES
    ):
        for service in SERVICES:
            await until(
                lambda s=service: offsets_at(store, topics.raw, s, 7),  # type: ignore[misc]
                f"{service} past all seven records",
            )
    assert dead_lettered("completion") - before["completion"] == 3
    assert dead_lettered("progress") - before["progress"] == 1
    applied = await rows(store, "SELECT job_id, status FROM jobs ORDER BY job_id")
    assert applied == [
        ("job_good_1", "completed"),
        ("job_good_2", "completed"),
        ("job_stray", "completed"),
    ]
    letters = await read_topic(broker.bootstrap_servers, topics.dlq, expect=4)
    reasons = sorted(dict(m.headers)[contract.H_DLQ_ERROR_MESSAGE].decode() for m in letters)
    assert len(reasons) == 4, reasons
    assert any("out of range" in r for r in reasons), reasons
    assert any("invalid_timestamp" in r for r in reasons), reasons
    assert any("too_deep" in r for r in reasons), reasons
    assert any("invalid_progress" in r for r in reasons), reasons


async def test_a_dead_letter_the_topic_refuses_is_kept_in_the_store_and_the_service_goes_on(
    broker: LocalBroker, store: Store
) -> None:
    """A dead letter larger than the dead-letter producer takes (the ingester's body limit set
    to 1 KiB here, so 100 KiB is refused): it used to be retried every 5 s forever, the
    service stuck. Now it is kept in the store with the refusal, counted, and the next record
    is applied."""
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    big = orjson.loads(progress("job_big", 150, "2025-10-22T10:30:00Z"))
    big["padding"] = "x" * 100_000
    after = completed("job_after", "2025-10-22T10:31:00Z")
    await send(broker.bootstrap_servers, topics.raw, [raw(orjson.dumps(big)), raw(after)])
    settings = settings_for(broker.bootstrap_servers, topics.raw, topics.dlq, max_body_bytes=1024)
    kept_before = consumer_metrics.DEAD_LETTERS_KEPT.labels("progress")._value.get()
    async with consuming(store, settings, "progress", "completion"):
        for service in ("progress", "completion"):
            await until(
                lambda s=service: offsets_at(store, topics.raw, s, 2),  # type: ignore[misc]
                f"{service} past both records",
            )
    kept = await rows(
        store,
        "SELECT service, kafka_offset, error_class, refusal FROM dead_letters WHERE topic = ?",
        topics.raw,
    )
    assert [(s, o, c) for s, o, c, _ in kept] == [("progress", 0, "EventError")]
    assert "MessageSizeTooLarge" in kept[0][3], kept
    assert consumer_metrics.DEAD_LETTERS_KEPT.labels("progress")._value.get() - kept_before == 1
    assert await rows(store, "SELECT job_id, status FROM jobs") == [("job_after", "completed")]
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "wazza-hooks"), "dlq", "list", "--json"],
        env=subprocess_env(
            DATABASE_URL=store.url,
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            KAFKA_ENABLE_IDEMPOTENCE="false",
            WAZZA_RAW_TOPIC=topics.raw,
            WAZZA_DLQ_TOPIC=topics.dlq,
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed
    [shown] = orjson.loads(listed.stdout)["keptInStore"]
    assert (shown["service"], shown["jobId"], shown["original"]["offset"]) == (
        "progress",
        "job_big",
        0,
    )


# JSON as orjson writes it: integers within 64 bits.
_int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_leaf = st.one_of(st.none(), _int64, st.floats(allow_nan=False), st.text(max_size=10))


def _nested(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


_json = st.recursive(_leaf, _nested, max_leaves=8)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda e, j, t, extra: orjson.dumps({"event": e, "jobId": j, "timestamp": t, **extra}),
        st.sampled_from(sorted(contract.KNOWN_EVENT_TYPES)),
        st.text(max_size=20),
        st.one_of(st.text(max_size=30), _int64),
        st.dictionaries(st.sampled_from(["progress", "output", "error", "metadata"]), _json),
    ),
)
_header_names = st.sampled_from(
    [
        contract.H_EVENT_TYPE,
        contract.H_EVENT_ID,
        contract.H_RECEIVED_AT_MS,
        contract.H_SIGNATURE_TIMESTAMP,
        "other",
    ]
)
_header_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [b"job.completed", b"job.failed", b"job.processing", b"1700000000000", b"-5", b"9" * 25]
    ),
)
records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=40)),
        _bodies,
        st.lists(st.tuples(_header_names, _header_values), max_size=6),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=records)
def test_arbitrary_records_never_stop_a_service_and_each_ends_applied_skipped_or_dead_lettered(
    broker: LocalBroker,
    postgres_server: str,
    tmp_path: Path,
    kind: str,
    batch: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
) -> None:
    """Records written straight to the raw topic, the contract's headers and body anything at
    all: every service reads past all of them, and accounts for each record by exactly one
    outcome (applied, duplicate, stale, conflict, skipped or dead-lettered)."""

    async def example() -> None:
        async with _fresh_store(kind, tmp_path, postgres_server) as store:
            topics = await make_topics(broker.bootstrap_servers, partitions=1)
            await send(broker.bootstrap_servers, topics.raw, batch)
            counted = {s: _outcomes(s) for s in SERVICES}
            async with consuming(
                store, settings_for(broker.bootstrap_servers, topics.raw, topics.dlq), *SERVICES
            ):
                for service in SERVICES:
                    await until(
                        lambda s=service: offsets_at(store, topics.raw, s, len(batch)),  # type: ignore[misc]
                        f"{service} past every record",
                    )
            for service in SERVICES:
                assert _outcomes(service) - counted[service] == len(batch), service

    asyncio.run(example())


@asynccontextmanager
async def _fresh_store(kind: str, tmp_path: Path, server: str) -> AsyncIterator[Store]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/fuzz-{uuid.uuid4().hex[:8]}.db"
        store = await open_store(url)
        try:
            yield store
        finally:
            await store.close()
        return
    async with fresh_database(server) as dsn:
        store = await open_store(dsn)
        try:
            yield store
        finally:
            await store.close()


def _outcomes(service: str) -> float:
    """Every event outcome the service counted so far."""
    return sum(
        child._value.get()  # type: ignore[attr-defined]
        for labels, child in consumer_metrics.EVENTS._metrics.items()  # type: ignore[attr-defined]
        if labels[0] == service
    )
