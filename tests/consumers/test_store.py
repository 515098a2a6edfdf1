"""The store on both databases: migrations, transactions, the batch's offset guard and dedup."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from consumers.batch import Record, apply_batch, stored_offsets
from consumers.history import HISTORY_COLUMNS, prune_history
from consumers.log_identity import Stored
from consumers.service import BUILTIN
from consumers.store import Store, StoreError, StoreUnavailable, Tx, open_store
from consumers.store.schema import MIGRATIONS
from tests.support.consumers import completed, envelope_of, job, progress, rows


def record(offset: int, raw: bytes, partition: int = 0) -> Record:
    import orjson

    key = orjson.loads(raw)["jobId"].encode()
    return Record("t.raw", partition, offset, key, raw, envelope_of(raw).to_headers())


async def never(tx: Tx, record: Record, error: BaseException) -> None:
    raise AssertionError(f"unexpected dead letter: {error!r}")


async def test_opening_twice_applies_the_migrations_once(store_url: str) -> None:
    first = await open_store(store_url)
    await first.close()
    again = await open_store(store_url)
    async with again.reader() as tx:
        versions = await tx.fetchall("SELECT version FROM schema_version")
    await again.close()
    assert [tuple(v) for v in versions] == [(n,) for n in range(1, len(MIGRATIONS) + 1)]


async def test_a_batch_applies_its_events_and_stores_the_next_offset(store: Store) -> None:
    batch = {0: [record(0, progress("j1", 40, "2025-10-22T10:00:00Z"))]}

    result = await apply_batch(store, BUILTIN["progress"], "t.raw", batch, never)

    assert [o for _, o, _ in result.outcomes] == ["applied"]
    assert await stored_offsets(store, "progress", "t.raw") == {0: Stored(1, None)}
    state = await job(store, "j1")
    assert state is not None
    assert (state["status"], state["percent"], state["stage"]) == ("processing", 40.0, "rendering")


async def test_a_replayed_batch_is_refused_by_the_offset_guard_and_changes_nothing(
    store: Store,
) -> None:
    raw = progress("j1", 40, "2025-10-22T10:00:00Z")
    await apply_batch(store, BUILTIN["progress"], "t.raw", {0: [record(0, raw)]}, never)

    replay = await apply_batch(store, BUILTIN["progress"], "t.raw", {0: [record(0, raw)]}, never)

    assert replay.seek == {0: 1}
    assert replay.outcomes == []
    assert await stored_offsets(store, "progress", "t.raw") == {0: Stored(1, None)}


async def test_a_batch_past_its_stored_offset_is_applied_only_where_the_gap_is_accepted(
    store: Store,
) -> None:
    """Two partitions stored at offset 1 whose batches start at 5 (records 1 to 4 gone): the one
    whose gap is accepted is applied and advanced, the other left as it was and sought back; a
    partition stored past its batch is sought forward, and writes nothing either."""
    service = BUILTIN["progress"]
    first = {
        p: [record(0, progress(f"j{p}", 10, "2025-10-22T10:00:00Z"), partition=p)]
        for p in (0, 1, 2)
    }
    await apply_batch(store, service, "t.raw", first, never)
    async with store.transaction() as tx:
        await tx.execute("UPDATE consumer_offsets SET next_offset = 9 WHERE kafka_partition = 2")
    later = {
        p: [record(5, progress(f"j{p}", 50, "2025-10-22T10:05:00Z"), partition=p)]
        for p in (0, 1, 2)
    }

    result = await apply_batch(store, service, "t.raw", later, never, accept_gaps=frozenset({1}))

    assert result.seek == {0: 1, 2: 9}
    assert result.next_offsets == {1: 6}
    assert await stored_offsets(store, "progress", "t.raw") == {
        0: Stored(1, None),
        1: Stored(6, None),
        2: Stored(9, None),
    }
    percents = await rows(store, "SELECT job_id, percent FROM jobs ORDER BY job_id")
    assert [tuple(r) for r in percents] == [("j0", 10.0), ("j1", 50.0), ("j2", 10.0)]


async def test_only_the_batchs_partitions_are_advanced_whatever_the_spans_name(
    store: Store,
) -> None:
    """The runtime drops partitions revoked while the batch was read, but not their spans: a
    partition left out of the batch keeps its stored offset (its records were not applied)."""
    batch = {0: [record(0, progress("j1", 40, "2025-10-22T10:00:00Z"))]}

    result = await apply_batch(
        store, BUILTIN["progress"], "t.raw", batch, never, spans={0: (0, 1), 1: (0, 5)}
    )

    assert result.next_offsets == {0: 1}
    assert await stored_offsets(store, "progress", "t.raw") == {0: Stored(1, None)}


async def test_the_same_event_at_another_offset_is_a_duplicate(store: Store) -> None:
    raw = completed("j2", "2025-10-22T10:30:00Z")
    batch = {0: [record(0, raw), record(1, raw), record(2, raw)]}

    result = await apply_batch(store, BUILTIN["completion"], "t.raw", batch, never)

    assert [o for _, o, _ in result.outcomes] == ["applied", "duplicate", "duplicate"]


async def test_a_service_skips_event_types_it_does_not_take(store: Store) -> None:
    batch = {0: [record(0, completed("j3", "2025-10-22T10:30:00Z"))]}

    result = await apply_batch(store, BUILTIN["progress"], "t.raw", batch, never)

    assert [o for _, o, _ in result.outcomes] == ["skipped"]
    assert await job(store, "j3") is None
    assert await stored_offsets(store, "progress", "t.raw") == {0: Stored(1, None)}


async def test_a_job_created_by_another_transaction_meanwhile_is_locked_and_applied(
    postgres_dsn: str,
) -> None:
    """PostgreSQL creates and locks a batch's jobs in one statement, whose parts read one
    snapshot: a job another transaction inserts and commits while the statement waits for it is
    in neither part, and is locked again before the order rules run."""
    import asyncpg

    store = await open_store(postgres_dsn)
    other = await asyncpg.connect(postgres_dsn)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute(
            "INSERT INTO jobs (job_id, status, percent, created_ms, updated_ms) "
            "VALUES ('j7', 'processing', 20, 1, 1)"
        )
        batch = {0: [record(0, progress("j7", 40, "2025-10-22T10:00:00Z"))]}
        applying = asyncio.create_task(
            apply_batch(store, BUILTIN["progress"], "t.raw", batch, never)
        )
        await asyncio.sleep(0.3)
        assert not applying.done()  # waiting for the other transaction's row
        await holding.commit()
        result = await asyncio.wait_for(applying, 10)
    finally:
        await other.close()
        await store.close()

    assert [o for _, o, _ in result.outcomes] == ["applied"]
    store = await open_store(postgres_dsn)
    try:
        state = await rows(store, "SELECT percent, created_ms FROM jobs WHERE job_id = 'j7'")
    finally:
        await store.close()
    assert [tuple(r) for r in state] == [(40.0, 1)]  # the other's row, this batch's progress


async def test_a_bad_database_url_is_a_store_error_naming_it() -> None:
    with pytest.raises(StoreError, match="DATABASE_URL"):
        await open_store("mysql://nope")


async def test_pruning_deletes_only_this_services_keys_past_its_window(store: Store) -> None:
    day_ms = 86_400_000
    now = int(time.time() * 1000)
    kept = [
        ("progress", "old", now - 8 * day_ms),
        ("progress", "recent", now - 6 * day_ms),
        ("completion", "old-too", now - 8 * day_ms),
    ]
    rows = [
        ("j", service, name.encode().ljust(32, b"."), name, "job.processing", 0, ms, ms,
         "applied", "t.raw", 0, 0)
        for service, name, ms in kept
    ]  # fmt: skip
    async with store.transaction() as tx:
        await tx.insert_rows("event_history", HISTORY_COLUMNS, rows)

    pruned = await prune_history(store, "progress", 7 * 86_400)

    assert pruned == 1
    async with store.reader() as tx:
        left = await tx.fetchall("SELECT service, event_id FROM processed_events")
    assert sorted(tuple(r) for r in left) == [("completion", "old-too"), ("progress", "recent")]


async def test_opening_a_current_sqlite_store_needs_no_write_lock(tmp_path: Path) -> None:
    """`jobs list` while a consumer holds the write lock: it opens and reads at once."""
    url = f"sqlite:///{tmp_path}/held.db"
    await (await open_store(url)).close()  # created and migrated
    writer = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO schema_version (version) VALUES (999)")
    try:
        started = time.monotonic()
        reader = await open_store(url)
        async with reader.reader() as tx:
            versions = await tx.fetchall("SELECT version FROM schema_version")
        await reader.close()
        assert time.monotonic() - started < 0.5  # the busy timeout is 1 s
        assert [tuple(v) for v in versions] == [(n,) for n in range(1, len(MIGRATIONS) + 1)]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


class LoopGaps:
    """The longest time the event loop went without running a 1 ms ticker."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    async def __aenter__(self) -> LoopGaps:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)  # the ticker has started
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await asyncio.sleep(0.005)  # the ticker measures the gap up to now
        self._task.cancel()


async def test_a_batch_waits_for_sqlites_write_lock_without_holding_the_event_loop(
    tmp_path: Path,
) -> None:
    """Another service holds the write lock for half a second: the transaction waits for it,
    while the loop goes on (the holder's release is itself a callback on this loop, so a
    blocking wait would run out its busy timeout and fail)."""
    url = f"sqlite:///{tmp_path}/shared.db"
    store = await open_store(url)
    holder = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        asyncio.get_running_loop().call_later(0.5, holder.execute, "ROLLBACK")
        async with LoopGaps() as gaps:
            started = time.monotonic()
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO schema_version (version) VALUES (998)")
            waited = time.monotonic() - started
        assert waited > 0.45  # (past 1 s it would have raised StoreUnavailable)
        assert gaps.longest < 0.25, f"the loop was held {gaps.longest * 1000:.0f} ms at once"
        async with store.reader() as tx:
            assert await tx.fetchone("SELECT version FROM schema_version WHERE version = 998")
    finally:
        holder.close()
        await store.close()


async def test_a_write_lock_held_past_the_busy_timeout_is_store_unavailable(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/held.db"
    store = await open_store(url)
    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        async with LoopGaps() as gaps:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                async with store.transaction():
                    pytest.fail("the transaction began while another held the write lock")
            waited = time.monotonic() - started
        assert 0.95 < waited < 2.0  # the busy timeout, 1 s
        assert gaps.longest < 0.25, f"the loop was held {gaps.longest * 1000:.0f} ms at once"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()
