"""`wazza-hooks events list|show`, run as a person runs them, against what a real ingester
published to the real broker: a job's deliveries are found in the raw and quarantine topics
by reading only its partition (and the count of records read is the true one), by event id,
type and time; one delivery is printed with its headers and exact bytes; every refusal is one
line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import Counter

from aiokafka import TopicPartition

from tests.support.commands import hooks
from tests.support.env import subprocess_env
from tests.support.ingesters import deliver, serving, warm_up
from tests.support.kafka import Topics, read_topic
from tests.support.ops import iso, one_line_refusal
from tests.support.signing import completed_body, processing_body
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, free_port
from wazza_tools.ops.records import key_partition

NOT_UTF8 = b"\xff\xfe not JSON, not UTF-8 \x00"


def env_on(broker: LocalBroker, topics: Topics) -> dict[str, str]:
    return subprocess_env(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        WAZZA_DLQ_TOPIC=topics.dlq,
    )


async def test_a_jobs_deliveries_are_found_in_its_partition_and_shown_byte_for_byte(
    broker: LocalBroker, topics: Topics
) -> None:
    progress, done, other = (
        processing_body("job_e1", 40),
        completed_body("job_e1"),
        completed_body("job_e2"),
    )
    beyond = processing_body("job_e1", 150)
    async with serving(broker.bootstrap_servers, topics) as url:
        await warm_up(url)
        answers = [await deliver(url, body) for body in (progress, done, other, beyond, NOT_UTF8)]
    assert [status for status, _ in answers] == [200, 200, 200, 202, 202], answers
    env = env_on(broker, topics)
    raw = await read_topic(broker.bootstrap_servers, topics.raw, expect=4)
    quarantined = await read_topic(broker.bootstrap_servers, topics.quarantine, expect=3)

    found = await hooks("events", "list", "--job", "job_e1", "--json", env=env)

    assert found.code == 0, found
    doc = found.json()
    events = doc["events"]
    assert {(e["eventType"], e["outcome"], e["reason"]) for e in events} == {
        ("job.processing", "accepted", None),
        ("job.completed", "accepted", None),
        ("job.processing", "quarantined", "invalid_progress"),
    }
    assert {e["jobId"] for e in events} == {"job_e1"}
    assert doc["matched"] == 3
    # Only the job's partition of each topic was read, and every record in it counted.
    partitions = {
        topic: key_partition("job_e1", [TopicPartition(topic, p) for p in range(3)]).partition
        for topic in (topics.raw, topics.quarantine)
    }
    assert {(r["topic"], r["partition"]) for r in doc["read"]} == set(partitions.items())
    held = Counter((r.topic, r.partition) for r in raw + quarantined)
    assert doc["scanned"] == sum(held[item] for item in partitions.items())
    completed_record = next(e for e in events if e["eventType"] == "job.completed")
    assert completed_record["eventId"] == hashlib.sha256(done).hexdigest()
    [record] = [r for r in raw if r.value == done]
    assert completed_record["id"] == f"{topics.raw}:{record.partition}:{record.offset}"
    assert completed_record["receivedAt"] is not None
    assert completed_record["deadLetter"] is None

    table = await hooks("events", "list", "--job", "job_e1", env=env)
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "RECEIVED",
        "EVENT",
        "TYPE",
        "JOB",
        "OUTCOME",
        "RECORD",
        "EVENT",
        "ID",
    ]
    assert sum("quarantined: invalid_progress" in line for line in lines) == 1
    assert lines[-1].startswith(f"3 deliveries matched; read {doc['scanned']} records of ")

    by_type = await hooks("events", "list", "--type", "completed", "--json", env=env)
    assert {e["jobId"] for e in by_type.json()["events"]} == {"job_e1", "job_e2", "job_warm_up"}
    by_id = await hooks(
        "events", "list", "--event-id", completed_record["eventId"], "--json", env=env
    )
    assert [e["id"] for e in by_id.json()["events"]] == [completed_record["id"]]
    latest = await hooks("events", "list", "--limit", 1, "--json", env=env)
    assert latest.json()["matched"] == len(raw) + len(quarantined)
    newest = max(
        raw + quarantined,
        key=lambda r: int(contract.headers_dict(r.headers)[contract.H_RECEIVED_AT_MS]),
    )
    assert [e["id"] for e in latest.json()["events"]] == [
        f"{newest.topic}:{newest.partition}:{newest.offset}"
    ]
    assert latest.json()["scanned"] == len(raw) + len(quarantined)

    # The body, exactly: found by event id, and by position.
    body = await hooks("events", "show", completed_record["eventId"], "--body", env=env)
    assert body.code == 0, body
    assert body.out.encode() == done
    shown = await hooks("events", "show", completed_record["id"], env=env)
    assert shown.code == 0, shown
    assert f"record      {completed_record['id']}\n" in shown.out
    assert "  wazza-event-type: job.completed\n" in shown.out
    assert f"  wazza-event-id: {completed_record['eventId']}\n" in shown.out
    assert shown.out.endswith(f"body ({len(done)} bytes):\n{done.decode()}\n")

    # A body that is neither JSON nor UTF-8, quarantined: its exact bytes in base64.
    [odd] = [r for r in quarantined if r.value == NOT_UTF8]
    whole = await hooks(
        "events", "show", f"{topics.quarantine}:{odd.partition}:{odd.offset}", "--json", env=env
    )
    assert whole.code == 0, whole
    odd_doc = whole.json()
    assert (odd_doc["bodyEncoding"], base64.b64decode(odd_doc["body"])) == ("base64", NOT_UTF8)
    assert (odd_doc["outcome"], odd_doc["reason"], odd_doc["jobId"]) == (
        "quarantined",
        "invalid_json",
        None,
    )
    assert {
        "name": "wazza-quarantine-reason",
        "value": "invalid_json",
        "encoding": "text",
    } in odd_doc["headers"]


async def test_since_and_until_keep_the_deliveries_received_in_the_range(
    broker: LocalBroker, topics: Topics
) -> None:
    early, late = completed_body("job_early"), completed_body("job_late")
    async with serving(broker.bootstrap_servers, topics) as url:
        await warm_up(url)
        assert (await deliver(url, early))[0] == 200
        await asyncio.sleep(0.01)
        between = int(time.time() * 1000)
        await asyncio.sleep(0.01)
        assert (await deliver(url, late))[0] == 200
    env = env_on(broker, topics)

    after = await hooks("events", "list", "--since", iso(between), "--json", env=env)
    before = await hooks("events", "list", "--until", iso(between), "--json", env=env)

    assert [e["jobId"] for e in after.json()["events"]] == ["job_late"], after
    assert [
        e["jobId"] for e in before.json()["events"] if e["jobId"] not in ("job_warm_up", None)
    ] == ["job_early"], before
    # --since starts each partition at the first record of the time (offsets-for-times): the
    # early record is not read at all.
    assert after.json()["scanned"] == 1


async def test_refusals_are_one_line(broker: LocalBroker, topics: Topics) -> None:
    env = env_on(broker, topics)
    async with serving(broker.bootstrap_servers, topics) as url:
        await warm_up(url)
    held = len(await read_topic(broker.bootstrap_servers, topics.raw, expect=1)) + len(
        await read_topic(broker.bootstrap_servers, topics.quarantine, expect=1)
    )

    unknown = one_line_refusal(await hooks("events", "show", "f" * 64, env=env))
    assert unknown == (
        f"wazza-hooks: no event {'f' * 64}: read {held} records of {topics.raw}, "
        f"{topics.quarantine}, up to their ends when the command started"
    )
    nowhere = one_line_refusal(await hooks("events", "show", f"{topics.raw}:0:999", env=env))
    assert nowhere.startswith(f"wazza-hooks: no record at {topics.raw}:0:999 (that partition holds")
    other = one_line_refusal(await hooks("events", "show", "some.topic:0:1", env=env))
    assert other.startswith("wazza-hooks: some.topic is not one of the topics")
    bad_time = one_line_refusal(await hooks("events", "list", "--since", "yesterday", env=env), 2)
    assert bad_time == (
        "wazza-hooks: --since 'yesterday' is not an ISO-8601 time (e.g. 2026-11-26T09:00:00Z)"
    )
    down = f"127.0.0.1:{free_port()}"
    unreachable = one_line_refusal(
        await hooks("events", "list", "--job", "job_x", "--bootstrap-servers", down, env=env)
    )
    assert unreachable.startswith(f"wazza-hooks: cannot reach the broker at {down}")
