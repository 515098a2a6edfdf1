"""The stores' many-row statements (one statement over arrays on PostgreSQL, executemany on
SQLite) and the batch's header-only skip, on both databases."""

from __future__ import annotations

from consumers.batch import Record, apply_batch
from consumers.service import BUILTIN
from consumers.store import Store, Tx
from tests.support.consumers import completed, envelope_of, progress, rows
from wazza_hooks import contract

COLUMNS = [
    ("job_id", "text"),
    ("status", "text"),
    ("created_ms", "bigint"),
    ("updated_ms", "bigint"),
]


async def test_insert_rows_inserts_every_row_and_honours_its_conflict_clause(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_rows("jobs", COLUMNS, [("a", "processing", 1, 1), ("b", "failed", 2, 2)])
    async with store.transaction() as tx:
        await tx.insert_rows(
            "jobs",
            COLUMNS,
            [("b", "completed", 3, 3), ("c", "processing", 4, 4)],
            "ON CONFLICT (job_id) DO NOTHING",
        )
        await tx.insert_rows("jobs", COLUMNS, [])  # nothing to do is no statement at all

    found = await rows(store, "SELECT job_id, status, created_ms FROM jobs ORDER BY job_id")
    assert [tuple(r) for r in found] == [
        ("a", "processing", 1),
        ("b", "failed", 2),
        ("c", "processing", 4),
    ]


async def test_update_rows_sets_the_columns_of_the_matching_rows_only(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_rows("jobs", COLUMNS, [(j, "processing", 1, 1) for j in "abc"])
    async with store.transaction() as tx:
        await tx.update_rows(
            "jobs",
            ("job_id", "text"),
            [("percent", "double precision"), ("stage", "text"), ("updated_ms", "bigint")],
            # An int where the column is a double, and a NULL: both as the driver takes them.
            [(45, "rendering", 9, "a"), (12.5, None, 8, "c"), (99, "x", 7, "missing")],
        )

    found = await rows(store, "SELECT job_id, percent, stage, updated_ms FROM jobs ORDER BY job_id")
    assert [tuple(r) for r in found] == [
        ("a", 45.0, "rendering", 9),
        ("b", None, None, 1),
        ("c", 12.5, None, 8),
    ]


def _record(offset: int, raw: bytes, headers: list[tuple[str, bytes]]) -> Record:
    return Record("t.raw", 0, offset, b"j9", raw, headers)


async def test_a_record_of_another_type_is_skipped_by_its_type_header_even_if_the_rest_is_broken(
    store: Store,
) -> None:
    letters: list[tuple[int, str]] = []

    async def dead_letter(tx: Tx, record: Record, error: BaseException) -> None:
        letters.append((record.offset, type(error).__name__))

    raw_progress = progress("j9", 10, "2025-10-22T10:00:00Z")
    raw_completed = completed("j9", "2025-10-22T10:30:00Z")
    broken_progress = [(contract.H_EVENT_TYPE, b"job.processing")]  # no event id, no time
    batch = {
        0: [
            _record(0, raw_completed, envelope_of(raw_completed).to_headers()),
            _record(1, raw_progress, broken_progress),
            _record(2, raw_progress, envelope_of(raw_progress).to_headers()),
        ]
    }

    skipping = await apply_batch(store, BUILTIN["completion"], "t.raw", batch, dead_letter)
    taking = await apply_batch(store, BUILTIN["progress"], "t.raw", batch, dead_letter)

    assert [(t, o) for t, o, _ in skipping.outcomes] == [
        ("job.completed", "applied"),
        ("job.processing", "skipped"),
        ("job.processing", "skipped"),
    ]
    # The service that takes the type reads the rest of the contract, and refuses it there;
    # the sound progress event is taken (stale: the job completed in the batch before).
    assert [o for _, o, _ in taking.outcomes] == ["skipped", "dead_lettered", "stale"]
    assert letters == [(1, "ContractError")]
