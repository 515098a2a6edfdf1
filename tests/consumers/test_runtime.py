"""The runtime against the real broker and both stores: duplicates, arrival order, dead letters,
and a user's own service through the extension API."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

import consumers.runtime
import wazza_hooks.producers
from consumers import JobEvent, Service, Tx
from consumers import metrics as consumer_metrics
from consumers.log_identity import TopicIdRequest, topic_id_of
from consumers.service import BUILTIN, load_service
from consumers.settings import ConsumerSettings
from consumers.store import Store, open_store
from tests.support.consumers import (
    SETTLE_SECONDS,
    completed,
    counter,
    failed,
    history,
    ids,
    job,
    offsets_reach,
    progress,
    publish,
    rows,
    running,
    settings_for,
    settings_on,
    until,
)
from tests.support.deadend import broker_advertising_a_dead_end
from tests.support.env import ROOT
from tests.support.kafka import make_topics, read_topic
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker


async def test_the_same_event_delivered_five_times_is_applied_once(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    raw = completed("job_dup", "2025-10-22T10:30:00Z")
    before = counter("completion", "job.completed", "duplicate")
    await publish(broker.bootstrap_servers, topics.raw, [raw] * 5)

    async with running(store, settings_on(broker, topics), BUILTIN["completion"]):
        await until(lambda: offsets_reach(store, "completion", 5), "5 records consumed")

    state = await job(store, "job_dup")
    assert state is not None
    assert state["status"] == "completed"
    assert await history(store, "job_dup") == [
        ("completion", "job.completed", ids([raw])[0], "applied")
    ]
    assert counter("completion", "job.completed", "duplicate") - before == 4


@pytest.mark.parametrize("order", ["forward", "reversed"])
async def test_shuffled_delivery_reaches_the_state_the_order_rules_require(
    broker: LocalBroker, store: Store, order: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers)
    events = [
        progress("job_mix", 20, "2025-10-22T10:00:00Z"),
        progress("job_mix", 60, "2025-10-22T10:05:00Z"),
        completed("job_mix", "2025-10-22T10:10:00Z"),
        failed("job_mix", "2025-10-22T10:20:00Z"),  # later: the failure wins
        progress("job_mix", 90, "2025-10-22T10:07:00Z"),  # after a terminal state: stale
    ]
    sent = events if order == "forward" else list(reversed(events))
    await publish(broker.bootstrap_servers, topics.raw, sent)

    async with running(
        store,
        settings_on(broker, topics),
        *(BUILTIN[s] for s in ("progress", "completion", "failure")),
    ):
        for service in ("progress", "completion", "failure"):
            await until(lambda s=service: offsets_reach(store, s, 5), f"{service} done")  # type: ignore[misc]

    state = await job(store, "job_mix")
    assert state is not None
    assert (state["status"], state["stage"], state["percent"]) == ("failed", "failed", None)
    assert state["error"] == {
        "code": "CONTENT_POLICY_VIOLATION",
        "message": "Content violates safety policy",
    }
    assert state["terminal_event_id"] == ids([events[3]])[0]
    outcomes = {event_id: outcome for _, _, event_id, outcome in await history(store, "job_mix")}
    assert outcomes[ids([events[2]])[0]] == "conflict"  # the completion lost, in either order
    assert outcomes[ids([events[3]])[0]] == "applied"
    assert len(outcomes) == 5


async def test_a_record_whose_handler_keeps_failing_is_dead_lettered_and_the_rest_applied(
    broker: LocalBroker, store: Store
) -> None:
    topics = await make_topics(broker.bootstrap_servers)

    async def picky(event: JobEvent, tx: Tx) -> str | None:
        if event.job_id == "job_poison":
            raise RuntimeError("cannot handle this one")
        await tx.execute("INSERT INTO picked (job_id) VALUES (?)", event.job_id)
        return None

    service = Service(
        "picky",
        [contract.JOB_COMPLETED],
        picky,
        schema=["CREATE TABLE IF NOT EXISTS picked (job_id TEXT PRIMARY KEY)"],
    )
    bodies = [completed(j, "2025-10-22T10:30:00Z") for j in ("job_a", "job_poison", "job_b")]
    await publish(broker.bootstrap_servers, topics.raw, bodies)

    async with running(store, settings_on(broker, topics), service) as [runtime]:
        await until(lambda: offsets_reach(store, "picky", 3), "3 records consumed")

    assert sorted(r[0] for r in await rows(store, "SELECT job_id FROM picked")) == [
        "job_a",
        "job_b",
    ]
    [letter] = await read_topic(broker.bootstrap_servers, topics.dlq, expect=1)
    assert letter.value == bodies[1]
    assert letter.key == b"job_poison"
    dead = contract.DeadLetter.from_headers(letter.headers)
    assert (dead.group, dead.error_class) == (runtime.group_id, "RuntimeError")
    assert dead.error_message == "cannot handle this one"
    assert dead.topic == topics.raw
    assert await history(store, "job_poison") == [
        ("picky", "job.completed", ids([bodies[1]])[0], "dead_lettered")
    ]


async def test_the_readme_extension_example_runs_against_the_real_broker_and_store(
    broker: LocalBroker, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/deliveries.py, loaded the way `wazza-consumer examples.deliveries:service` does."""
    monkeypatch.syspath_prepend(str(ROOT))
    service = load_service("examples.deliveries:service")
    topics = await make_topics(broker.bootstrap_servers)
    bodies = [
        completed("job_x", "2025-10-22T10:30:00Z"),
        progress("job_x", 50, "2025-10-22T10:00:00Z"),
    ]
    await publish(broker.bootstrap_servers, topics.raw, bodies + bodies[:1])

    async with running(store, settings_on(broker, topics), service):
        await until(lambda: offsets_reach(store, "deliveries", 3), "3 records consumed")

    assert [tuple(r) for r in await rows(store, "SELECT job_id, url FROM deliveries")] == [
        ("job_x", orjson.loads(bodies[0])["output"]["url"])
    ]


def test_the_readme_shows_the_example_verbatim_in_at_most_20_lines() -> None:
    example = (ROOT / "examples" / "deliveries.py").read_text()
    assert len(example.splitlines()) <= 20
    assert example.strip() in (ROOT / "README.md").read_text()


async def test_lag_and_assignment_are_measured(broker: LocalBroker, store: Store) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    await publish(
        broker.bootstrap_servers,
        topics.raw,
        [progress(f"job_{i}", 10, "2025-10-22T10:00:00Z") for i in range(20)],
    )
    async with running(store, settings_on(broker, topics), BUILTIN["progress"]):
        await until(lambda: offsets_reach(store, "progress", 20), "20 records consumed")
        assigned = consumer_metrics.ASSIGNED.labels("progress")._value.get()
        lags = [consumer_metrics.LAG.labels("progress", str(p))._value.get() for p in range(2)]
    assert assigned == 2
    assert lags == [0, 0]


async def test_records_of_other_types_are_counted_as_skipped_and_their_offsets_stored(
    broker: LocalBroker, store: Store
) -> None:
    """The failure service reads a stream of only other services' events, then one of its own:
    each skipped record counted by its type, the offsets past all of them, the failure applied."""
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    others = [progress(f"job_{i}", 10, "2025-10-22T10:00:00Z") for i in range(30)]
    others += [completed(f"job_{i}", "2025-10-22T10:30:00Z") for i in range(10)]
    mine = failed("job_x", "2025-10-22T10:31:00Z")
    before = {t: counter("failure", t, "skipped") for t in ("job.processing", "job.completed")}
    applied_before = counter("failure", "job.failed", "applied")
    await publish(broker.bootstrap_servers, topics.raw, [*others, mine])
    async with running(store, settings_on(broker, topics), BUILTIN["failure"]):
        await until(lambda: offsets_reach(store, "failure", 41), "41 records consumed")
    assert counter("failure", "job.processing", "skipped") - before["job.processing"] == 30
    assert counter("failure", "job.completed", "skipped") - before["job.completed"] == 10
    assert counter("failure", "job.failed", "applied") - applied_before == 1
    assert await history(store, "job_x") == [("failure", "job.failed", ids([mine])[0], "applied")]
    assert await rows(store, "SELECT COUNT(*) FROM job_events WHERE service = 'failure'") == [(1,)]


async def test_a_service_schema_waits_out_a_store_locked_at_start(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's own table is created once another process's write lock is released,
    rather than the service failing at start."""
    monkeypatch.syspath_prepend(str(ROOT))
    service = load_service("examples.deliveries:service")
    topics = await make_topics(broker.bootstrap_servers)
    body = completed("job_l", "2025-10-22T10:30:00Z")
    await publish(broker.bootstrap_servers, topics.raw, [body])
    store = await open_store(f"sqlite:///{tmp_path}/locked.db")
    locker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        async with running(store, settings_on(broker, topics), service):
            await asyncio.sleep(2.5)  # past the 1 s busy timeout, twice
            locker.execute("COMMIT")
            await until(lambda: offsets_reach(store, "deliveries", 1), "the record consumed")
        assert [tuple(r) for r in await rows(store, "SELECT job_id FROM deliveries")] == [
            ("job_l",)
        ]
    finally:
        locker.close()
        await store.close()


async def test_a_producer_start_that_never_ends_is_bounded_logged_and_retried(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead-letter producer is idempotent by default; against a broker whose advertised
    address leads nowhere its start would wait for a producer id without end, silently. Each
    start is bounded and logged, the runtime stays not ready, and it stops when asked."""
    monkeypatch.setattr(consumers.runtime, "START_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(wazza_hooks.producers, "START_TIMEOUT_SECONDS", 1.0)
    caplog.set_level(logging.WARNING, logger="wazza.consumers.runtime")
    with broker_advertising_a_dead_end() as bootstrap:
        settings = ConsumerSettings(
            database_url="unused: the store is opened by the test",
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            raw_topic="deadend.raw",
            dlq_topic="deadend.dlq",
            group_prefix=f"test-{uuid.uuid4().hex[:8]}-",
        )
        started = time.monotonic()
        async with running(store, settings, BUILTIN["completion"]) as [runtime]:

            async def said_twice() -> bool:
                return sum("took over 1 s" in r.getMessage() for r in caplog.records) >= 2

            await until(said_twice, "two bounded starts logged")
            assert runtime.not_ready() == "not_joined"
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 5  # stopped within one bounded start
    said = next(r for r in caplog.records if "took over 1 s" in r.getMessage())
    assert f"broker {bootstrap} unreachable" in said.getMessage()
    assert time.monotonic() - started < 30


async def test_a_stop_during_a_start_that_hangs_ends_the_service_at_once(store: Store) -> None:
    """A start that does not end (a broker whose advertised address leads nowhere) is not waited
    out when the service is told to stop: a SIGTERM during a slow group join must not take the
    whole start bound (30 s)."""
    with broker_advertising_a_dead_end() as bootstrap:
        settings = settings_for(bootstrap, "deadend.raw", "deadend.dlq")
        async with running(store, settings, BUILTIN["completion"]) as [runtime]:
            await asyncio.sleep(1.0)  # inside the producer's start now
            assert runtime.not_ready() == "not_joined"
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3


async def test_a_service_says_what_it_does_on_start_join_while_busy_and_on_stop(
    broker: LocalBroker,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(consumers.runtime, "_SUMMARY_SECONDS", 0.5)
    caplog.set_level(logging.INFO, logger="wazza.consumers.runtime")
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    settings = settings_on(broker, topics)
    await publish(
        broker.bootstrap_servers,
        topics.raw,
        [progress(f"job_said_{i}", 10, "2025-10-22T10:00:00Z") for i in range(8)],
    )
    async with running(store, settings, BUILTIN["progress"]):
        await until(lambda: offsets_reach(store, "progress", 8), "8 records consumed")
        await asyncio.sleep(1.2)  # a summary is due
    said = [r.getMessage() for r in caplog.records if r.name == "wazza.consumers.runtime"]
    group = f"{settings.group_prefix}progress"
    assert any(
        m.startswith(f"progress: starting on {topics.raw}, group {group}") and store.url in m
        for m in said
    ), said
    assert any(
        m.startswith(f"progress: joined group {group}: {topics.raw}[0] from 0") for m in said
    ), said
    summary = "progress: 8 applied, 0 duplicate, 0 stale, 0 conflict, 0 skipped, 0 dead_lettered"
    assert f"{summary}; lag 0" in said, said
    assert said[-1] == f"progress: stopped, group {group} left", said


# --- another log under the stored offsets (invariant 7) --------------------------------------


def resets_counted(service: str) -> float:
    return consumer_metrics.LOG_RESETS.labels(service)._value.get()  # type: ignore[no-any-return]


async def partition_offsets(store: Store, service: str, topic: str) -> dict[int, int]:
    return {
        int(p): int(o)
        for p, o in await rows(
            store,
            "SELECT kafka_partition, next_offset FROM consumer_offsets "
            "WHERE service = ? AND topic = ?",
            service,
            topic,
        )
    }


async def history_holds(store: Store, service: str, events: int) -> bool:
    found = await rows(store, "SELECT COUNT(*) FROM job_events WHERE service = ?", service)
    return int(found[0][0]) == events


async def topic_id_now(admin: Any, topic: str) -> str | None:
    """The topic's id as the broker serves it now; None while it has no such topic."""
    client = admin._client
    response = await client.send(client.get_random_node(), TopicIdRequest(topic))
    return topic_id_of(response, topic)


async def offsets_equal(store: Store, service: str, topic: str, records: int) -> bool:
    return sum((await partition_offsets(store, service, topic)).values()) == records


async def test_only_the_partition_whose_stored_offset_lies_beyond_its_end_is_read_again(
    broker: LocalBroker, store: Store
) -> None:
    """Three partitions applied; one's stored offset then lies past its log's end (as after a
    truncation or a restore). New events on every partition are all applied: that partition is
    taken from its first record again (its old events counted as duplicates, nothing applied
    twice), the two others go on where they stood."""
    topics = await make_topics(broker.bootstrap_servers, partitions=3)
    settings = settings_on(broker, topics)
    first = [progress(f"job_a{i}", 10, "2025-10-22T10:00:00Z") for i in range(30)]
    await publish(broker.bootstrap_servers, topics.raw, first)
    async with running(store, settings, BUILTIN["progress"]):
        await until(lambda: offsets_reach(store, "progress", 30), "30 records consumed")
    before = await partition_offsets(store, "progress", topics.raw)
    moved = max(before, key=lambda p: before[p])  # the partition with the most records
    async with store.transaction() as tx:
        await tx.execute(
            "UPDATE consumer_offsets SET next_offset = next_offset + 1000 "
            "WHERE service = 'progress' AND topic = ? AND kafka_partition = ?",
            topics.raw,
            moved,
        )
    resets = resets_counted("progress")
    duplicates = counter("progress", "job.processing", "duplicate")

    second = [progress(f"job_b{i}", 10, "2025-10-22T10:00:00Z") for i in range(30)]
    await publish(broker.bootstrap_servers, topics.raw, second)
    async with running(store, settings, BUILTIN["progress"]):
        await until(lambda: history_holds(store, "progress", 60), "60 events applied")
        await until(lambda: offsets_equal(store, "progress", topics.raw, 60), "the partitions read")

    assert resets_counted("progress") - resets == 1
    assert counter("progress", "job.processing", "duplicate") - duplicates == before[moved]
    applied = await rows(store, "SELECT COUNT(*) FROM job_events WHERE service = 'progress'")
    assert applied == [(60,)]
    after = await partition_offsets(store, "progress", topics.raw)
    assert sum(after.values()) == 60


async def test_a_raw_topic_deleted_and_recreated_while_the_service_runs_is_read_anew(
    broker: LocalBroker, store: Store
) -> None:
    """The new topic gets more records than the old one had, so its offsets pass the stored
    ones: only its new topic id tells it apart. Every new event is applied, each once."""
    from aiokafka.admin import AIOKafkaAdminClient

    from wazza_tools.dev.topics import ensure_topics

    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    settings = settings_on(broker, topics)
    resets = resets_counted("completion")
    first = [completed(f"job_c{i}", "2025-10-22T10:00:00Z") for i in range(10)]
    await publish(broker.bootstrap_servers, topics.raw, first)
    async with running(store, settings, BUILTIN["completion"]):
        await until(lambda: offsets_reach(store, "completion", 10), "10 records consumed")
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            old_id = await topic_id_now(admin, topics.raw)
            assert old_id is not None
            await admin.delete_topics([topics.raw])
            # Apache Kafka answers the deletion before its broker has applied it; a create
            # meanwhile finds the old topic "already exists", and the test would go on
            # publishing to the old log. (Tansu recreates a topic asked about: a new id too.)
            deadline = time.monotonic() + SETTLE_SECONDS
            while await topic_id_now(admin, topics.raw) == old_id:
                assert time.monotonic() < deadline, "the deleted topic is still served"
                await asyncio.sleep(0.05)
            await ensure_topics(broker.bootstrap_servers, {topics.raw: 2})
            new_id = await topic_id_now(admin, topics.raw)
            assert new_id not in (None, old_id)
        finally:
            await admin.close()
        second = [completed(f"job_d{i}", "2025-10-22T10:00:00Z") for i in range(40)]
        await publish(broker.bootstrap_servers, topics.raw, second)

        await until(
            lambda: history_holds(store, "completion", 50), "the new topic's events applied"
        )
        await until(
            lambda: offsets_equal(store, "completion", topics.raw, 40), "the new topic read"
        )
    assert resets_counted("completion") - resets == 2  # both partitions had stored offsets
    for i in range(40):
        state = await job(store, f"job_d{i}")
        assert state is not None
        assert state["status"] == "completed"
