"""`wazza-hooks dlq list|redrive`, run as the operator runs them, against a user's service whose
handler fails on the real broker and both stores: the dead letter is listed with why and from
where; once the cause is fixed a redrive applies it exactly once, for that service only; a
second redrive does nothing; and every refusal is one line with a non-zero exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumers import JobEvent, Service, Tx
from consumers.service import BUILTIN
from consumers.store import Store
from tests.support.commands import hooks
from tests.support.consumers import (
    completed,
    counter,
    history,
    ids,
    job,
    offsets_reach,
    publish,
    rows,
    running,
    settings_on,
    until,
)
from tests.support.kafka import make_topics, read_topic
from tests.support.ops import env_for, iso, one_line_refusal, store_offset
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, free_port
from wazza_tools.ops.connect import OpsError, broker_writer


def picky_service(broken: dict[str, bool]) -> Service:
    """A user's service that logs every event it applies, and fails on job_poison while
    `broken["now"]` holds (the bug that a deploy later fixes)."""

    async def pick(event: JobEvent, tx: Tx) -> str | None:
        if event.job_id == "job_poison" and broken["now"]:
            raise RuntimeError("cannot handle this one")
        await tx.execute("INSERT INTO picked_log (job_id) VALUES (?)", event.job_id)
        return None

    return Service(
        "picky",
        [contract.JOB_COMPLETED],
        pick,
        schema=["CREATE TABLE IF NOT EXISTS picked_log (job_id TEXT NOT NULL)"],
    )


async def applications(store: Store, job_id: str) -> int:
    found = await rows(store, "SELECT COUNT(*) FROM picked_log WHERE job_id = ?", job_id)
    return int(found[0][0])


async def test_a_dead_letter_is_listed_then_redriven_once_for_its_service_only(
    broker: LocalBroker,
    store: Store,
    store_url: str,
) -> None:
    topics = await make_topics(broker.bootstrap_servers, partitions=2)
    settings = settings_on(broker, topics)
    env = env_for(settings, store_url)
    bodies = [completed(j, "2025-10-22T10:30:00Z") for j in ("job_a", "job_poison", "job_b")]
    poison_id = ids([bodies[1]])[0]
    await publish(broker.bootstrap_servers, topics.raw, bodies)
    broken = {"now": True}
    picky = picky_service(broken)

    async with running(store, settings, picky, BUILTIN["completion"]) as runtimes:
        for service in ("picky", "completion"):
            await until(lambda s=service: offsets_reach(store, s, 3), f"{service} done")  # type: ignore[misc]
        state = await job(store, "job_poison")
        completion_dups = counter("completion", "job.completed", "duplicate")

        [letter], listing, text, others = await asyncio.gather(
            read_topic(broker.bootstrap_servers, topics.dlq, expect=1),
            hooks("dlq", "list", "--json", env=env),
            hooks("dlq", "list", env=env),
            hooks("dlq", "list", "--service", "completion", "--json", env=env),
        )
        original = contract.DeadLetter.from_headers(letter.headers)
        assert listing.code == 0, listing
        dead_id = f"{letter.partition}:{letter.offset}"
        assert listing.json() == {
            "topic": topics.dlq,
            "deadLetters": [
                {
                    "id": dead_id,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "deadLetteredAt": iso(letter.timestamp),
                    "service": "picky",
                    "group": runtimes[0].group_id,
                    "errorClass": "RuntimeError",
                    "errorMessage": "cannot handle this one",
                    "original": {
                        "topic": topics.raw,
                        "partition": original.partition,
                        "offset": original.offset,
                    },
                    "eventType": "job.completed",
                    "eventId": poison_id,
                    "jobId": "job_poison",
                    "receivedAt": iso(
                        contract.RawEnvelope.from_headers(letter.headers).received_at_ms
                    ),
                    "redriven": None,
                }
            ],
            "keptInStore": [],
        }
        assert text.code == 0, text
        assert text.out.startswith(f"{dead_id}  ")
        assert "RuntimeError: cannot handle this one" in text.out
        assert f"{topics.raw}[{original.partition}]@{original.offset}" in text.out
        assert "redriven  no" in text.out
        assert others.json()["deadLetters"] == []

        broken["now"] = False  # the fix is deployed
        first = await hooks("dlq", "redrive", "--id", dead_id, "--json", env=env)
        assert first.code == 0, first
        [done] = first.json()["results"]
        assert (done["id"], done["service"], done["result"]) == (dead_id, "picky", "redriven")
        assert (done["eventId"], done["jobId"]) == (poison_id, "job_poison")
        await until(lambda: _applied(store, "job_poison"), "the redriven event applied")
        # Both services have read the copy: picky applied it, completion counted a duplicate.
        await until(lambda: offsets_reach(store, "completion", 4), "completion read the copy")
        await until(lambda: offsets_reach(store, "picky", 4), "picky read the copy")

        again, every, after = await asyncio.gather(
            hooks("dlq", "redrive", "--id", dead_id, "--json", env=env),
            hooks("dlq", "redrive", env=env),
            hooks("dlq", "list", "--json", env=env),
        )
        assert again.code == 0, again
        assert [r["result"] for r in again.json()["results"]] == ["already_redriven"]
        assert again.json()["results"][0]["raw"] == done["raw"]
        assert every.code == 0, every
        assert f"{dead_id}  picky  job_poison  already_redriven" in every.out
        listed = after.json()["deadLetters"]

    assert await applications(store, "job_poison") == 1  # exactly once
    assert await applications(store, "job_a") == 1
    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=4)
    assert len(records) == 4  # one copy: the second and third redrive sent nothing
    [copy] = [r for r in records if dict(r.headers).get(contract.H_REDRIVEN_FROM)]
    assert (copy.partition, copy.offset) == (done["raw"]["partition"], done["raw"]["offset"])
    assert (copy.key, copy.value) == (b"job_poison", bodies[1])
    assert dict(copy.headers)[contract.H_REDRIVEN_FROM] == f"{topics.dlq}:{dead_id}".encode()
    assert contract.RawEnvelope.from_headers(copy.headers).event_id == poison_id
    assert sorted(await history(store, "job_poison")) == [
        ("completion", "job.completed", poison_id, "applied"),
        ("picky", "job.completed", poison_id, "applied"),
    ]
    assert await job(store, "job_poison") == state  # the completion service applied nothing
    assert counter("completion", "job.completed", "duplicate") - completion_dups == 1
    [entry] = listed
    assert entry["redriven"]["raw"] == done["raw"]
    assert entry["redriven"]["publishedAt"] is not None


async def _applied(store: Store, job_id: str) -> bool:
    return await applications(store, job_id) >= 1


async def test_dlq_refusals_are_one_line_with_a_non_zero_exit(
    broker: LocalBroker, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/wazza.db"
    topics = await make_topics(broker.bootstrap_servers, partitions=1)
    settings = settings_on(broker, topics)
    await store_offset(url, topics.raw, 0)
    env = env_for(settings, url)

    nowhere = f"127.0.0.1:{free_port()}"
    (
        empty,
        unknown,
        list_unknown,
        no_such_id,
        bad_id,
        list_nowhere,
        redrive_nowhere,
        missing,
    ) = await asyncio.gather(
        hooks("dlq", "list", env=env),
        hooks("dlq", "redrive", "--service", "nosuch", env=env),
        hooks("dlq", "list", "--service", "nosuch", env=env),
        hooks("dlq", "redrive", "--id", "0:99", env=env),
        hooks("dlq", "redrive", "--id", "seven", env=env),
        hooks("dlq", "list", "--bootstrap-servers", nowhere, env=env),
        hooks("dlq", "redrive", "--bootstrap-servers", nowhere, env=env),
        hooks("dlq", "list", "--database-url", f"sqlite:///{tmp_path}/no.db", env=env),
    )

    assert (empty.code, empty.out) == (0, f"no dead letters in {topics.dlq}\n")
    for refused in (unknown, list_unknown):
        assert "unknown service 'nosuch'" in one_line_refusal(refused)
    assert f"no dead letter 0:99 in {topics.dlq}" in one_line_refusal(no_such_id)
    assert "not a dead-letter id" in one_line_refusal(bad_id, code=2)
    for unreachable in (list_nowhere, redrive_nowhere):
        assert f"cannot reach the broker at {nowhere}" in one_line_refusal(unreachable)
    assert "does not exist" in one_line_refusal(missing)


async def test_redriving_through_a_broker_that_refuses_idempotence_names_the_setting(
    tansu_broker: LocalBroker,
) -> None:
    """Idempotence is on by default (for Apache Kafka); the local broker refuses it, and the
    redrive's producer says which setting to change instead of 'cannot reach the broker'."""
    broker = tansu_broker
    with pytest.raises(OpsError) as refused:
        async with broker_writer(broker.bootstrap_servers, enable_idempotence=True):
            pass
    assert "did not give the idempotent producer an id (UnknownError)" in str(refused.value)
    assert "KAFKA_ENABLE_IDEMPOTENCE=false" in str(refused.value)
    async with broker_writer(broker.bootstrap_servers, enable_idempotence=False) as producer:
        assert producer.client.cluster.brokers()
