"""`wazza-hooks replay`, run as the operator runs it, against services on the real broker and
both stores: a replay re-reads the history and changes nothing (effectively once), while the
service runs or while it is stopped; and every refusal is one line with a non-zero exit."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from consumers.service import BUILTIN
from consumers.store import Store, open_store
from tests.support.commands import hooks
from tests.support.consumers import (
    completed,
    counter,
    failed,
    ids,
    offsets_reach,
    progress,
    publish,
    rows,
    running,
    settings_on,
    until,
)
from tests.support.kafka import Topics, make_topics
from tests.support.ops import env_for, iso, one_line_refusal, snapshot, store_offset, stored
from wazza_tools.dev.localbroker import LocalBroker, free_port

SERVICES = ("progress", "completion", "failure")


def workload(tag: str) -> list[bytes]:
    """Three jobs' events over the three services, with duplicate deliveries."""
    events = []
    for n in range(3):
        job = f"job_{tag}_{n}"
        events += [
            progress(job, 20, "2025-10-22T10:00:00Z"),
            progress(job, 60, "2025-10-22T10:05:00Z"),
            (failed if n == 1 else completed)(job, "2025-10-22T10:10:00Z"),
        ]
    return events + events[:4]  # the sender's retries: the same bytes again


def of_type(bodies: list[bytes], event_type: str) -> int:
    return sum(1 for b in bodies if orjson.loads(b)["event"] == event_type)


async def test_replaying_a_running_service_changes_no_state_and_doubles_no_history(
    broker: LocalBroker,
    store: Store,
    store_url: str,
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    early, late = workload("early"), workload("late")
    busy = [completed(f"job_busy_{i}", "2025-10-22T11:00:00Z") for i in range(150)]
    settings = settings_on(broker, topics)
    env = env_for(settings, store_url)
    await publish(broker.bootstrap_servers, topics.raw, early)

    async with running(store, settings, *(BUILTIN[s] for s in SERVICES)):
        await all_taken(store, len(early))
        middle = await stored(store, "progress")
        await asyncio.sleep(0.005)
        since = iso(int(time.time() * 1000))
        await asyncio.sleep(0.005)
        await publish(broker.bootstrap_servers, topics.raw, late)
        await all_taken(store, len(early) + len(late))
        before = await snapshot(store)
        end = {s: await stored(store, s) for s in SERVICES}
        progress_dups = counter("progress", "job.processing", "duplicate")
        completion_dups = counter("completion", "job.completed", "duplicate")
        failure_dups = counter("failure", "job.failed", "duplicate")

        # --from: each partition goes back to where the late events began, not further.
        dry = await hooks("replay", "--service", "progress", "--from", since, "--dry-run",
                          "--json", env=env)  # fmt: skip
        assert dry.code == 0, dry
        assert await stored(store, "progress") == end["progress"]  # a dry run changes nothing
        result = await hooks("replay", "--service", "progress", "--from", since, "--json", env=env)
        assert result.code == 0, result
        document = result.json()
        assert document == dry.json() | {"dryRun": False}
        assert (document["service"], document["topic"], document["from"]) == (
            "progress",
            topics.raw,
            since,
        )
        assert {m["partition"]: (m["from"], m["to"]) for m in document["partitions"]} == {
            p: (end["progress"][p], middle[p])
            for p in end["progress"]
            if end["progress"][p] > middle[p]
        }
        assert (document["records"], document["reapplied"]) == (len(late), 0)
        # The partitions are idle: the runtime's comparison with the store notices the replay.
        await until(
            lambda: duplicates_reach(
                "progress", "job.processing", progress_dups, of_type(late, "job.processing")
            ),
            "the late progress records read again",
        )
        await until(lambda: offsets_are(store, "progress", end), "progress back at the end")

        # --from-beginning, for another service, while its batches keep committing: new jobs
        # arrive a few records at a time meanwhile.
        feeding = asyncio.create_task(trickle(broker, topics.raw, busy))
        result = await hooks("replay", "--service", "completion", "--from-beginning", env=env)
        await feeding
        assert result.code == 0, result
        assert "replay of completion" in result.out
        found = re.search(r"(\d+) records to read again", result.out)
        assert found is not None, result.out
        # All the early and late records, and the new ones taken before the replay landed.
        replayed = int(found[1])
        assert len(early + late) <= replayed <= len(early + late + busy)
        reread = of_type(early + late, "job.completed") + replayed - len(early + late)
        await until(
            lambda: duplicates_reach("completion", "job.completed", completion_dups, reread),
            "every completion record read again",
        )
        total = len(early + late + busy)
        await until(lambda: offsets_reach(store, "completion", total), "completion at the end")
        # The comparison runs each second: room for a late one to show.
        await asyncio.sleep(1.5)

    # Job rows, history rows (none doubled, none added) and dedup keys: all as they were...
    assert await snapshot(store, leaving_out=busy) == before
    assert counter("failure", "job.failed", "duplicate") == failure_dups  # the others untouched
    assert counter("progress", "job.processing", "duplicate") - progress_dups == of_type(
        late, "job.processing"
    )
    # ...every record below the offsets the replay moved from was read again (a batch that
    # wrote its own next offset over the replay would leave some unread), none twice...
    assert counter("completion", "job.completed", "duplicate") - completion_dups == reread
    # ...and the new jobs were applied once each.
    taken = await rows(
        store, "SELECT event_id, outcome FROM job_events WHERE job_id LIKE 'job_busy_%'"
    )
    assert sorted(tuple(r) for r in taken) == sorted((i, "applied") for i in ids(busy))


async def all_taken(store: Store, count: int) -> None:
    for service in SERVICES:
        await until(lambda s=service: offsets_reach(store, s, count), f"{service} done")  # type: ignore[misc]


async def duplicates_reach(service: str, event_type: str, before: float, count: int) -> bool:
    return counter(service, event_type, "duplicate") - before >= count


async def offsets_are(store: Store, service: str, end: dict[str, dict[int, int]]) -> bool:
    return await stored(store, service) == end[service]


async def trickle(broker: LocalBroker, topic: str, bodies: list[bytes]) -> None:
    """Publish a few records every few milliseconds: batches keep committing meanwhile."""
    for start in range(0, len(bodies), 10):
        await publish(broker.bootstrap_servers, topic, bodies[start : start + 10])
        await asyncio.sleep(0.02)


# --- refusals ---------------------------------------------------------------------------------


async def test_replay_refusals_are_one_line_with_a_non_zero_exit(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Also: records older than the history retention may have been forgotten by the service
    (their rows pruned) and would be applied again, so the replay is refused unless
    --allow-reapply says to go on. Their age is the broker's timestamp."""
    url = f"sqlite:///{tmp_path}/wazza.db"
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        for age_hours in (2, 0):  # one older than the hour of retention below, one not
            await producer.send_and_wait(
                topics.raw,
                completed(f"job_{age_hours}h", "2025-10-22T10:00:00Z"),
                key=f"job_{age_hours}h".encode(),
                partition=0,
                timestamp_ms=now_ms - age_hours * 3_600_000,
            )
    finally:
        await producer.stop()
    settings = settings_on(broker, topics)
    await store_offset(url, topics.raw, 2)
    env = {**env_for(settings, url), "WAZZA_HISTORY_RETENTION_SECONDS": "3600"}

    nowhere = f"127.0.0.1:{free_port()}"
    unknown, malformed, future, unreachable, missing, pruned = await asyncio.gather(
        hooks("replay", "--service", "nosuch", "--from-beginning", env=env),
        hooks("replay", "--service", "completion", "--from", "yesterday", env=env),
        hooks("replay", "--service", "completion", "--from", "2999-01-01T00:00:00Z", env=env),
        hooks("replay", "--service", "completion", "--from-beginning",
              "--bootstrap-servers", nowhere, env=env),
        hooks("replay", "--service", "completion", "--from-beginning",
              "--database-url", f"sqlite:///{tmp_path}/missing.db", env=env),
        hooks("replay", "--service", "completion", "--from-beginning", env=env),
    )  # fmt: skip

    assert "unknown service 'nosuch'" in one_line_refusal(unknown)
    assert "completion" in unknown.err  # the services it does know
    assert "not an ISO-8601 time" in one_line_refusal(malformed, code=2)
    assert "in the future" in one_line_refusal(future, code=2)
    assert f"cannot reach the broker at {nowhere}" in one_line_refusal(unreachable)
    assert "does not exist" in one_line_refusal(missing)
    assert not (tmp_path / "missing.db").exists()
    assert "1 records in that range are older than the history retention" in (
        one_line_refusal(pruned)
    )
    assert await rows_of(url, topics) == [(2,)]  # nothing moved by any of them

    allowed = await hooks(
        "replay", "--service", "completion", "--from-beginning", "--allow-reapply", "--json",
        env=env,
    )  # fmt: skip
    assert allowed.code == 0, allowed
    assert allowed.json()["partitions"] == [{"partition": 0, "from": 2, "to": 0}]
    assert allowed.json()["reapplied"] == 1  # the 2-hour-old record, not the new one
    assert await rows_of(url, topics) == [(0,)]


async def rows_of(url: str, topics: Topics) -> list[tuple[int]]:
    opened = await open_store(url)
    try:
        found = await rows(
            opened, "SELECT next_offset FROM consumer_offsets WHERE topic = ?", topics.raw
        )
    finally:
        await opened.close()
    return [(int(r[0]),) for r in found]


async def delete_before(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    """Delete each partition's records before its offset, as the broker's retention does: the
    log then starts there."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(o) for p, o in offsets.items()}
        )
    finally:
        await admin.close()


async def test_the_plan_counts_only_the_records_the_broker_still_holds(
    broker: LocalBroker, store: Store, store_url: str
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for n in range(30):
            for partition in (0, 1):
                body = completed(f"job_{partition}_{n}", "2025-10-22T10:00:00Z")
                await producer.send(topics.raw, body, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    # Retention took offsets 0-19 of both partitions: each holds 20-29.
    await delete_before(broker.bootstrap_servers, topics.raw, {0: 20, 1: 20})
    async with store.transaction() as tx:
        # Partition 0 was read to its end; partition 1's offset belongs to the log the topic
        # had before it was recreated (1314 records ago).
        for partition, offset in ((0, 30), (1, 1314)):
            await tx.execute(
                "INSERT INTO consumer_offsets (service, topic, kafka_partition, next_offset) "
                "VALUES ('completion', ?, ?, ?)",
                topics.raw,
                partition,
                offset,
            )
    env = env_for(settings_on(broker, topics), store_url)

    dry = await hooks("replay", "--service", "completion", "--from-beginning", "--dry-run",
                      "--json", env=env)  # fmt: skip
    told = await hooks("replay", "--service", "completion", "--from-beginning", "--dry-run",
                       env=env)  # fmt: skip

    assert dry.code == 0, dry
    assert dry.json()["partitions"] == [
        {"partition": 0, "from": 30, "to": 20},
        {"partition": 1, "from": 1314, "to": 20},
    ]
    assert dry.json()["records"] == 20  # 10 held in each, not 10 + 1294
    assert "20 records to read again" in told.out, told
