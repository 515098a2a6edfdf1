"""The history that is the dedup (consumers/history.py): its keys, the migration that carries a
store over to it, what the tools read from it, and the redrive's side of it
(consumers/redrive.py), on both databases."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest

from consumers import history
from consumers.batch import Record, apply_batch
from consumers.redrive import (
    ALREADY_REDRIVEN,
    ALREADY_TAKEN,
    NOT_RECORDED_YET,
    REDRIVEN,
    DeadLetterPosition,
    claim_redrive,
    mark_published,
    redrives,
)
from consumers.service import BUILTIN
from consumers.store import Store, Tx, open_store
from consumers.store import postgres as pg_store
from consumers.store import sqlite as sqlite_store
from consumers.store.keys import event_id_of, event_key, event_name
from consumers.store.schema import MIGRATIONS
from tests.support.consumers import completed, envelope_of, failed, opened, progress, rows

SHA_ID = hashlib.sha256(b"a body").hexdigest()


def record(offset: int, raw: bytes, event_id: str | None = None) -> Record:
    envelope = envelope_of(raw)
    headers = envelope.to_headers()
    if event_id is not None:
        headers = [(k, event_id.encode() if k == "wazza-event-id" else v) for k, v in headers]
    return Record("t.raw", 0, offset, orjson.loads(raw)["jobId"].encode(), raw, headers)


async def never(tx: Tx, record: Record, error: BaseException) -> None:
    raise AssertionError(f"unexpected dead letter: {error!r}")


def test_a_sha256_hex_id_is_its_own_32_bytes_and_any_other_id_is_hashed_and_named() -> None:
    assert event_key(SHA_ID) == bytes.fromhex(SHA_ID)
    assert event_name(SHA_ID, event_key(SHA_ID)) is None
    for other in ("msg_2Kx9", SHA_ID.upper(), SHA_ID[:63] + "g", " " + SHA_ID[1:]):
        key = event_key(other)
        assert len(key) == 32
        assert key != bytes.fromhex(SHA_ID)
        assert event_name(other, key) == other
        assert event_id_of(key, event_name(other, key)) == other
    assert event_id_of(event_key(SHA_ID), None) == SHA_ID


async def test_a_copy_of_an_event_with_a_senders_id_is_a_duplicate(store: Store) -> None:
    raw = completed("j1", "2025-10-22T10:30:00Z")
    batch = {0: [record(0, raw, "msg_1"), record(1, raw, "msg_1")]}
    first = await apply_batch(store, BUILTIN["completion"], "t.raw", batch, never)
    again = await apply_batch(
        store, BUILTIN["completion"], "t.raw", {0: [record(2, raw, "msg_1")]}, never
    )

    assert [o for _, o, _ in first.outcomes + again.outcomes] == [
        "applied",
        "duplicate",
        "duplicate",
    ]
    found = await rows(store, "SELECT service, event_id, outcome FROM job_events")
    assert [tuple(r) for r in found] == [("completion", "msg_1", "applied")]


async def test_a_jobs_history_and_a_replays_first_offsets_come_from_the_history(
    store: Store,
) -> None:
    start = int(time.time() * 1000)
    bodies = [
        progress("j1", 10, "2025-10-22T10:00:00Z"),
        progress("j1", 5, "2025-10-22T09:59:00Z"),
        progress("j2", 50, "2025-10-22T10:01:00Z"),
    ]
    batch = {0: [record(i, raw) for i, raw in enumerate(bodies)]}
    await apply_batch(store, BUILTIN["progress"], "t.raw", batch, never)

    async with store.reader() as tx:
        events = await history.job_history(tx, "j1")
        both = await history.jobs_history(tx, ["j2", "j1"])
        firsts = await history.first_offsets_since(tx, "progress", "t.raw", start)
        later = await history.first_offsets_since(tx, "progress", "t.raw", start + 3_600_000)
        last = await history.last_kept_ms(tx, "progress")
        untaken = await history.last_kept_ms(tx, "completion")
    assert [(e.service, e.event_id, e.outcome) for e in events] == [
        ("progress", envelope_of(bodies[1]).event_id, "stale"),
        ("progress", envelope_of(bodies[0]).event_id, "applied"),
    ]
    assert [(e.job_id, e.topic, e.partition, e.offset) for e in both] == [
        ("j1", "t.raw", 0, 1),
        ("j1", "t.raw", 0, 0),
        ("j2", "t.raw", 0, 2),
    ]
    assert firsts == {0: 0}
    assert later == {}
    assert last is not None
    assert last >= start
    assert untaken is None


async def test_a_terminal_event_that_loses_to_a_later_one_says_conflict(store: Store) -> None:
    done = completed("j1", "2025-10-22T10:30:00Z")
    await apply_batch(store, BUILTIN["completion"], "t.raw", {0: [record(0, done)]}, never)
    fail = failed("j1", "2025-10-22T10:31:00Z")
    await apply_batch(store, BUILTIN["failure"], "t.raw", {0: [record(1, fail)]}, never)

    async with store.reader() as tx:
        events = await history.job_history(tx, "j1")
    assert [(e.service, e.outcome) for e in events] == [
        ("completion", "conflict"),
        ("failure", "applied"),
    ]


@pytest.mark.parametrize("isolate", [False, True], ids=["whole", "record-by-record"])
async def test_a_terminal_event_superseded_within_its_batch_says_conflict(
    store: Store, isolate: bool
) -> None:
    """Two completions of one job in one batch: the later one wins, the earlier one (applied
    first, then superseded) says conflict, whether the batch is applied whole or record by
    record (the handler one event at a time)."""
    early = completed("j1", "2025-10-22T10:30:00Z")
    late = completed("j1", "2025-10-22T10:40:00Z")
    batch = {0: [record(0, early), record(1, late)]}

    result = await apply_batch(store, BUILTIN["completion"], "t.raw", batch, never, isolate=isolate)

    assert [o for _, o, _ in result.outcomes] == ["applied", "applied"]
    async with store.reader() as tx:
        events = await history.job_history(tx, "j1")
    assert [(e.event_id, e.outcome) for e in events] == [
        (envelope_of(early).event_id, "conflict"),
        (envelope_of(late).event_id, "applied"),
    ]
    state = await rows(store, "SELECT terminal_event_id FROM jobs WHERE job_id = 'j1'")
    assert [tuple(r) for r in state] == [(envelope_of(late).event_id,)]


async def test_postgresql_looks_a_batchs_keys_up_one_by_one_before_the_history_is_analysed(
    postgres_dsn: str,
) -> None:
    """A new store's history has no statistics until autovacuum first analyses it (a minute
    or more), while a busy service adds thousands of rows. The batch statements that join its
    keys to the history must still look each key up by the primary key: never read the
    service's rows through another index, which grows with the history (it once did, for every
    batch with a stale event: 8 ms a batch at 35k rows)."""
    service, other = "progress", "completion"
    keys = [hashlib.sha256(b"%d" % i).digest() for i in range(20_000)]
    history_rows = [
        (f"job_{i // 5:05d}", service if i % 10 else other, key, None, "job.processing",
         i, i, i, "applied", "t.raw", 0, i)
        for i, key in enumerate(keys)
    ]  # fmt: skip
    taken = [r for r in history_rows[::701] if r[1] == service]
    jobs, event_keys = [r[0] for r in taken], [r[2] for r in taken]
    async with opened(postgres_dsn) as store:
        async with store.transaction() as tx:
            await tx.insert_rows("event_history", history.HISTORY_COLUMNS, history_rows)
        async with store.transaction() as tx:
            plans = {
                "known": await tx.fetchall(
                    "EXPLAIN " + history.KNOWN_POSTGRESQL, jobs, [service] * len(jobs), event_keys
                ),
                "set_outcomes": await tx.fetchall(
                    "EXPLAIN " + history.SET_OUTCOMES,
                    jobs,
                    [service] * len(jobs),
                    event_keys,
                    ["stale"] * len(jobs),
                ),
            }
            for name, plan in plans.items():
                text = "\n".join(str(line[0]) for line in plan)
                assert "Scan using event_history_pkey" in text, (name, text)
                assert "event_history_kept" not in text, (name, text)
                assert "Hash" not in text, (name, text)
            assert await history.known(
                tx, service, list(zip(jobs, event_keys, strict=True))
            ) == set(zip(jobs, event_keys, strict=True))
            await history.set_outcomes(
                tx, service, [(j, k, "stale") for j, k in zip(jobs, event_keys, strict=True)]
            )
        stale = await rows(store, "SELECT event_key FROM event_history WHERE outcome = 'stale'")
    assert sorted(bytes(r[0]) for r in stale) == sorted(event_keys)


async def test_the_migration_carries_every_key_over_and_no_event_is_applied_twice(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store at migration 4 with history and keys (a body's id, a sender's id, a key pruned
    already): after the upgrade every event it took is a duplicate, the views read as the
    tables did, and a new event is applied."""
    for module in (sqlite_store, pg_store):
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:4])
    old = await open_store(store_url)
    done = completed("j1", "2025-10-22T10:30:00Z")
    moving = progress("j2", 40, "2025-10-22T10:00:00Z")
    pruned = progress("j3", 40, "2025-10-22T10:00:00Z")
    now = int(time.time() * 1000)
    carried = [
        ("completion", envelope_of(done).event_id, "j1", "job.completed", 1, now - 5, 0),
        ("progress", "msg_7", "j2", "job.processing", 2, now - 4, 1),
        ("progress", envelope_of(pruned).event_id, "j3", "job.processing", 3, now - 3, 2),
    ]
    async with old.transaction() as tx:
        for service, event_id, job_id, event_type, at, applied, offset in carried:
            await tx.execute(
                "INSERT INTO job_events (service, event_id, job_id, event_type, event_time_ms, "
                "applied_ms, outcome, topic, kafka_partition, kafka_offset) "
                "VALUES (?, ?, ?, ?, ?, ?, 'applied', 't.raw', 0, ?)",
                service,
                event_id,
                job_id,
                event_type,
                at,
                applied,
                offset,
            )
        for service, event_id, *_ in carried[:2]:
            await tx.execute(
                "INSERT INTO processed_events (service, event_id, processed_ms) VALUES (?, ?, ?)",
                service,
                event_id,
                now,
            )
    await old.close()
    monkeypatch.undo()

    store = await open_store(store_url)
    try:
        found = await rows(
            store,
            "SELECT service, event_id, job_id, event_type, event_time_ms, applied_ms, outcome, "
            "topic, kafka_partition, kafka_offset FROM job_events ORDER BY kafka_offset",
        )
        assert [tuple(r) for r in found] == [
            (s, e, j, t, a, p, "applied", "t.raw", 0, o) for s, e, j, t, a, p, o in carried
        ]
        kept = await rows(store, "SELECT event_id, processed_ms FROM processed_events")
        assert sorted(tuple(r) for r in kept) == sorted(
            [(carried[0][1], now), ("msg_7", now), (carried[2][1], carried[2][5])]
        )
        again = await apply_batch(
            store,
            BUILTIN["progress"],
            "t.raw",
            {0: [record(3, moving, "msg_7"), record(4, pruned), record(5, moving)]},
            never,
        )
        taken = await apply_batch(
            store, BUILTIN["completion"], "t.raw", {0: [record(6, done)]}, never
        )
        assert [o for _, o, _ in again.outcomes + taken.outcomes] == [
            "duplicate",
            "duplicate",
            "applied",
            "duplicate",
        ]
    finally:
        await store.close()


async def dead_letter_of(store: Store, raw: bytes) -> None:
    """`raw` dead-lettered by the completion service, as a batch records it."""

    async def gave_up(tx: Tx, record: Record, error: BaseException) -> None:
        return None

    async def refuse(event: object, tx: Tx) -> str:
        raise ValueError("no")

    service = BUILTIN["completion"]
    failing = type(service)(service.name, service.event_types, refuse)  # type: ignore[arg-type]
    result = await apply_batch(
        store, failing, "t.raw", {0: [record(0, raw)]}, gave_up, isolate=False
    )
    assert [o for _, o, _ in result.outcomes] == ["dead_lettered"]


async def test_a_redrive_frees_the_event_for_its_service_and_keeps_it_a_duplicate_for_others(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers import batch

    monkeypatch.setattr(batch, "HANDLER_RETRY_DELAYS", ())
    raw = completed("j1", "2025-10-22T10:30:00Z")
    event_id = envelope_of(raw).event_id
    position = DeadLetterPosition("t.dlq", 0, 0, event_id)
    assert await claim_redrive(store, position, b"j1", "completion") == NOT_RECORDED_YET
    await dead_letter_of(store, raw)
    async with store.transaction() as tx:  # another service took the event long ago
        await tx.insert_rows(
            "event_history",
            history.HISTORY_COLUMNS,
            [("j1", "audit", event_key(event_id), None, "job.completed", 1, 1, 1, "applied",
              "t.raw", 0, 0)],
        )  # fmt: skip

    assert await claim_redrive(store, position, b"j1", "completion") == REDRIVEN
    await mark_published(store, position, 3, 17)

    assert await claim_redrive(store, position, b"j1", "completion") == ALREADY_REDRIVEN
    found = (await redrives(store, "t.dlq"))[(0, 0, event_id)]
    assert (found.raw_partition, found.raw_offset) == (3, 17)
    kept = await rows(store, "SELECT service, processed_ms FROM processed_events")
    assert [s for s, _ in kept] == ["audit"]
    assert int(kept[0][1]) > 1
    copy = await apply_batch(store, BUILTIN["completion"], "t.raw", {0: [record(1, raw)]}, never)
    assert [o for _, o, _ in copy.outcomes] == ["applied"]
    other = DeadLetterPosition("t.dlq", 0, 1, event_id)
    assert await claim_redrive(store, other, b"j1", "completion") == ALREADY_TAKEN
